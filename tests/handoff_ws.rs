//! Live handoff (issue 17), `/ws` sessions: a subscriber moves to the new
//! process with its subscription, while a publisher publishes throughout
//! (over a kept-alive backend API connection, which moves too). With the
//! Redis broker every publication arrives exactly once, in order (the
//! subscription is asked again from its position in the new process, and
//! what was published meanwhile comes as the recovered gap); the
//! connection is never closed and ops are answered after the move. A
//! bystander echo client is served throughout.

#[path = "support/process.rs"]
mod process;
mod redis_util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use process::Wsgate;
use redis_util::{Api, Client, Event, RedisServer};
use serde_json::json;
use wsgate::server::handoff::upgrade;

const DEADLINE: Duration = Duration::from_secs(30);

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("wsgate-how-{}-{name}", std::process::id()))
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The successor is not our child: kill it by pid when the test ends.
struct Successor(u32);

impl Drop for Successor {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid the pid file named.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// An `/echo` client that must stay served.
fn echoes(s: &mut TcpStream, text: &str) {
    let key = [1u8, 2, 3, 4];
    let mut f = vec![0x81, 0x80 | text.len() as u8];
    f.extend_from_slice(&key);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ key[i % 4]));
    s.write_all(&f).unwrap();
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    assert_eq!(h[0], 0x81, "the echo of {text}");
    let mut p = vec![0u8; usize::from(h[1])];
    s.read_exact(&mut p).unwrap();
    assert_eq!(p, text.as_bytes());
}

fn echo_client(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    s
}

/// What the subscriber saw across the handoff.
struct Seen {
    /// Its subscribe answer's offset.
    base: u64,
    /// The offset of each publication accepted, by number.
    offsets: Vec<u64>,
    events: Vec<Event>,
    ended: Option<String>,
    log: String,
}

/// A subscriber and a publisher across a handoff of a gateway started
/// with `args`.
fn across(name: &str, args: &[&str]) -> Seen {
    let pid_file = temp(&format!("{name}.pid"));
    let _ = std::fs::remove_file(&pid_file);
    let cfg = temp(&format!("{name}.toml"));
    std::fs::write(
        &cfg,
        "[timeouts]\ndrain_window = \"1s\"\ndrain_timeout = \"10s\"\n",
    )
    .unwrap();
    let mut all = vec![
        "--workers",
        "2",
        "-c",
        cfg.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let mut gw = Wsgate::start(name, &all, &[]);
    wait_for("the pid file", || {
        upgrade::read_pid_file(&pid_file).ok() == Some(gw.pid())
    });
    let addr = gw.addr;
    let old = gw.pid();
    let mut bystander = echo_client(addr);
    echoes(&mut bystander, "before");

    let mut sub = Client::connect(addr, "");
    let (answer, _) = sub.subscribe("live", None);
    let base = answer["offset"].as_u64().unwrap();
    let id = sub.send(json!({"op": "ping"}));
    assert_eq!(sub.next()["id"], json!(id));

    // The publisher: one kept-alive API connection, a publication every
    // 2 ms until told to stop, its data numbered; what was accepted.
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (stop, accepted) = (stop.clone(), accepted.clone());
        std::thread::spawn(move || {
            let mut api = Api::new(addr);
            let mut n = 0u64;
            let mut offsets = Vec::new();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Acquire) && n < 20_000 {
                match api.publish("live", json!({ "n": n })) {
                    Ok((_, off)) => {
                        offsets.push(off);
                        n += 1;
                        accepted.store(n, Ordering::Release);
                    }
                    // A connection the old process kept (a request at the
                    // broker when it froze) is answered, then closed: the
                    // next request goes to the new process.
                    Err(status) => failures.push(status),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (offsets, failures)
        })
    };
    // The subscriber reads on its own thread until publication `target`.
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let reader = {
        let target = target.clone();
        std::thread::spawn(move || {
            let mut events = Vec::new();
            let until = Instant::now() + DEADLINE * 2;
            loop {
                let done = events.iter().any(|e| {
                    matches!(e, Event::Pub(_, d) if d["n"].as_u64() == Some(target.load(Ordering::Acquire)))
                });
                if done || Instant::now() > until {
                    return (sub, events, None);
                }
                match sub.try_next_event(Duration::from_millis(200)) {
                    Ok(e) => events.push(e),
                    Err(e) if e == redis_util::TIMED_OUT => {}
                    Err(e) => return (sub, events, Some(e)),
                }
            }
        })
    };
    wait_for("publications before the signal", || {
        accepted.load(Ordering::Acquire) > 100
    });
    gw.signal(libc::SIGUSR2);
    wait_for("the new process's pid", || {
        upgrade::read_pid_file(&pid_file).is_ok_and(|p| p != old)
    });
    let _guard = Successor(upgrade::read_pid_file(&pid_file).unwrap());
    wait_for("the old process to exit", || gw.exited().is_some());
    let at_exit = accepted.load(Ordering::Acquire);
    wait_for("publications after the old process left", || {
        accepted.load(Ordering::Acquire) > at_exit + 100
    });
    stop.store(true, Ordering::Release);
    let (offsets, failures) = publisher.join().unwrap();
    assert!(failures.len() <= 1, "publishes failed: {failures:?}");
    target.store(offsets.len() as u64 - 1, Ordering::Release);
    let (mut sub, events, ended) = reader.join().unwrap();
    let log = gw.log_text();
    for l in log.lines().filter(|l| l.contains("handoff")) {
        eprintln!("{l}");
    }
    if ended.is_none() {
        // Ops are answered by the new process.
        let id = sub.send(json!({"op": "ping"}));
        let v = sub.next();
        assert_eq!(v["id"], json!(id), "{v}");
        let id = sub.send(json!({"op": "unsubscribe", "channel": "live"}));
        let v = loop {
            let v = sub.next();
            if v.get("id").is_some() {
                break v;
            }
        };
        assert_eq!(
            (v["id"].clone(), v["ok"].clone()),
            (json!(id), json!(true)),
            "{v}"
        );
    }
    echoes(&mut bystander, "after");
    let _ = std::fs::remove_file(&pid_file);
    Seen {
        base,
        offsets,
        events,
        ended,
        log,
    }
}

/// The numbers of the publications received, in the order they came.
fn numbers(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Pub(_, d) => d["n"].as_u64(),
            _ => None,
        })
        .collect()
}

#[test]
fn a_ws_subscriber_moves_and_misses_nothing_with_the_redis_broker() {
    let redis = RedisServer::start();
    let url = redis.url();
    let seen = across("redis", &["--redis", &url]);
    assert!(
        seen.ended.is_none(),
        "the subscriber's connection ended: {:?}\n{}",
        seen.ended,
        seen.log
    );
    assert!(
        seen.log.contains("handoff: took 3 connections"),
        "{}",
        seen.log
    );
    // Every publication accepted, exactly once, in order, at the offset
    // its publisher was told.
    let got = numbers(&seen.events);
    let want: Vec<u64> = (0..seen.offsets.len() as u64).collect();
    assert!(
        got == want,
        "{} publications accepted, {} came; first differences: {:?}\n{}",
        want.len(),
        got.len(),
        got.iter()
            .zip(&want)
            .filter(|(a, b)| a != b)
            .take(5)
            .collect::<Vec<_>>(),
        seen.log
    );
    assert_eq!(redis_util::offsets(&seen.events), seen.offsets);
    assert_eq!(seen.offsets.first(), Some(&(seen.base + 1)));
    assert!(
        !seen.events.iter().any(|e| matches!(e, Event::Resync(..))),
        "a resync: {:?}",
        seen.events
    );
}

/// The memory broker: its history does not move on this branch (the
/// broker state is another engineer's, branch m2), so what holds here is
/// the connection: kept, no close frame, ops answered after the move (in
/// `across`), the subscription live in the new process (the last
/// publication comes), nothing doubled; a gap is told as a `resync`.
#[test]
fn a_ws_subscriber_moves_with_the_memory_broker() {
    let seen = across("memory", &[]);
    assert!(
        seen.ended.is_none(),
        "the subscriber's connection ended: {:?}\n{}",
        seen.ended,
        seen.log
    );
    assert!(
        seen.log.contains("handoff: took 3 connections"),
        "{}",
        seen.log
    );
    let got = numbers(&seen.events);
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "publications out of order or doubled: {got:?}"
    );
    assert_eq!(got.last().copied(), Some(seen.offsets.len() as u64 - 1));
    let gap = got.windows(2).any(|w| w[1] != w[0] + 1);
    assert!(
        !gap || seen.events.iter().any(|e| matches!(e, Event::Resync(..))),
        "publications lost without a resync: {got:?}"
    );
    // needs the broker state (branch m2): with the history moved, the gap
    // is recovered and every publication comes exactly once, no resync:
    // assert_eq!(got, (0..seen.offsets.len() as u64).collect::<Vec<_>>());
}
