//! Live handoff (issue 17), `/ws` sessions: a subscriber moves to the new
//! process with its subscription, while a publisher publishes throughout
//! (over a kept-alive backend API connection, which moves too). With the
//! Redis broker every publication arrives exactly once, in order (the
//! subscription is asked again from its position in the new process, and
//! what was published meanwhile comes as the recovered gap); the
//! connection is never closed and ops are answered after the move. A
//! bystander echo client is served throughout.

#[path = "support/handoff.rs"]
mod handoff_util;
#[path = "support/process.rs"]
mod process;
mod redis_util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use handoff_util::{hand_over, start, wait_for, Successor, DEADLINE};
use redis_util::{Api, Client, Event, RedisServer};
use serde_json::json;

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
    /// The offset of each publication accepted, by number.
    offsets: Vec<u64>,
    events: Vec<Event>,
    ended: Option<String>,
    log: String,
    /// The new process, serving until the test ends.
    _new: Successor,
}

/// A subscriber's reader: what it saw, why it ended early (if it did),
/// and what the test goes on with.
type Reader<T> = std::thread::JoinHandle<(Vec<Event>, Option<String>, T)>;

/// Read on `next` until publication `target` came, the connection ended
/// (`Err`), or a generous deadline.
fn read_until(
    target: Arc<AtomicU64>,
    mut next: impl FnMut(&mut Vec<Event>) -> Result<(), String>,
) -> (Vec<Event>, Option<String>) {
    let mut events = Vec::new();
    let until = Instant::now() + DEADLINE * 2;
    loop {
        let t = target.load(Ordering::Acquire);
        let done = events
            .iter()
            .any(|e| matches!(e, Event::Pub(_, d) if d["n"].as_u64() == Some(t)));
        if done || Instant::now() > until {
            return (events, None);
        }
        if let Err(e) = next(&mut events) {
            return (events, Some(e));
        }
    }
}

/// A gateway started with `args`, a subscriber (`subscribe`: subscribed
/// when it returns, reading on its thread until the target publication),
/// a publisher publishing every 2 ms over one kept-alive backend API
/// connection, a bystander echo client; SIGUSR2 once 100 publications
/// were accepted, 100 more after the old process left. Returns what the
/// subscriber saw and what its reader kept.
fn across<T: Send + 'static>(
    name: &str,
    args: &[&str],
    subscribe: impl FnOnce(SocketAddr, Arc<AtomicU64>) -> Reader<T>,
) -> (Seen, T) {
    let (mut gw, pid_file) = start(name, args);
    let addr = gw.addr;
    let mut bystander = echo_client(addr);
    echoes(&mut bystander, "before");
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let reader = subscribe(addr, target.clone());

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
    wait_for("publications before the signal", || {
        accepted.load(Ordering::Acquire) > 100
    });
    let new = hand_over(&gw, &pid_file);
    wait_for("the old process to exit", || gw.exited().is_some());
    let at_exit = accepted.load(Ordering::Acquire);
    wait_for("publications after the old process left", || {
        accepted.load(Ordering::Acquire) > at_exit + 100
    });
    stop.store(true, Ordering::Release);
    let (offsets, failures) = publisher.join().unwrap();
    // 503 (error 10): the memory broker is sealed from the moment its
    // channels are taken until the connections moved; not made, retried.
    assert!(
        failures.iter().filter(|s| **s != 503).count() <= 1,
        "publishes failed: {failures:?}"
    );
    target.store(offsets.len() as u64 - 1, Ordering::Release);
    let (events, ended, kept) = reader.join().unwrap();
    let log = gw.log_text();
    echoes(&mut bystander, "after");
    let _ = std::fs::remove_file(pid_file);
    let seen = Seen {
        offsets,
        events,
        ended,
        log,
        _new: new,
    };
    (seen, kept)
}

/// A `/ws` subscriber of `live`, which answers an op before the handoff.
fn ws_subscriber(addr: SocketAddr, target: Arc<AtomicU64>) -> Reader<(Client, u64)> {
    let mut sub = Client::connect(addr, "");
    let (answer, _) = sub.subscribe("live", None);
    let base = answer["offset"].as_u64().unwrap();
    let id = sub.send(json!({"op": "ping"}));
    assert_eq!(sub.next()["id"], json!(id));
    std::thread::spawn(move || {
        let (events, ended) = read_until(target, |events| {
            match sub.try_next_event(Duration::from_millis(200)) {
                Ok(e) => {
                    events.push(e);
                    Ok(())
                }
                Err(e) if e == redis_util::TIMED_OUT => Ok(()),
                Err(e) => Err(e),
            }
        });
        (events, ended, (sub, base))
    })
}

/// After the move, the `/ws` subscriber's ops are answered by the new
/// process.
fn ops_answered(sub: &mut Client) {
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

/// An SSE stream being read: the event and the line in progress survive
/// a read timeout (the reader then looks at its deadline).
struct SseReader {
    r: std::io::BufReader<TcpStream>,
    name: String,
    data: String,
    line: String,
}

impl SseReader {
    /// The next event, `Ok(None)` when nothing came for a while.
    fn event(&mut self) -> Result<Option<(String, String)>, String> {
        loop {
            match std::io::BufRead::read_line(&mut self.r, &mut self.line) {
                Ok(0) => return Err("the stream ended".into()),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e.to_string()),
            }
            let line = std::mem::take(&mut self.line);
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    let name = std::mem::replace(&mut self.name, "message".into());
                    return Ok(Some((name, std::mem::take(&mut self.data))));
                }
            } else if let Some(v) = line.strip_prefix("event: ") {
                self.name = v.into();
            } else if let Some(v) = line.strip_prefix("data: ") {
                self.data = v.into();
            }
        }
    }
}

/// An SSE subscriber of `live`: subscribed (its `subscribed` event came)
/// when this returns. A second `subscribed` event would be a defect: it
/// is kept as `Event::Other`, as is anything but publications and
/// resyncs.
fn sse_subscriber(addr: SocketAddr, target: Arc<AtomicU64>) -> Reader<()> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(b"GET /sse?channel=live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut r = SseReader {
        r: std::io::BufReader::new(s),
        name: "message".into(),
        data: String::new(),
        line: String::new(),
    };
    let until = Instant::now() + DEADLINE;
    let (name, data) = loop {
        assert!(Instant::now() < until, "no subscribed event");
        if let Some(e) = r.event().unwrap() {
            break e;
        }
    };
    assert_eq!(name, "subscribed", "{data}");
    std::thread::spawn(move || {
        let (events, ended) = read_until(target, |events| {
            let Some((name, data)) = r.event()? else {
                return Ok(());
            };
            let v: serde_json::Value = serde_json::from_str(&data).map_err(|e| e.to_string())?;
            events.push(match name.as_str() {
                "message" | "resync" => redis_util::classify(v),
                _ => Event::Other(json!({ name: v })),
            });
            Ok(())
        });
        (events, ended, ())
    })
}

/// A long-poll subscriber of `live`, polling on one kept-alive
/// connection with its cursor (a first poll with `wait=0` places it).
fn poll_subscriber(addr: SocketAddr, target: Arc<AtomicU64>) -> Reader<()> {
    let mut api = Api::new(addr);
    let (status, v) = api.get("/poll?channel=live&wait=0");
    assert_eq!(status, 200, "{v}");
    let mut cursor = v["cursor"].as_str().unwrap().to_owned();
    std::thread::spawn(move || {
        let (events, ended) = read_until(target, |events| {
            let (status, v) = api
                // Under the client's 5 s read timeout: the last poll, once
                // the publisher stopped, waits its full `wait` for nothing.
                .try_get(&format!("/poll?channel=live&cursor={cursor}&wait=2"))
                .map_err(|e| e.to_string())?;
            if status != 200 {
                return Err(format!("{status} {v}"));
            }
            for m in v["messages"].as_array().into_iter().flatten() {
                events.push(redis_util::classify(m.clone()));
            }
            if v["recovered"]["live"] == json!(false) {
                events.push(Event::Other(v.clone()));
            }
            cursor = v["cursor"].as_str().ok_or("no cursor")?.to_owned();
            Ok(())
        });
        (events, ended, ())
    })
}

/// Every publication accepted came exactly once, in order, nothing else
/// (no resync, no second `subscribed`, no lost gap), and the stream never
/// ended.
fn exactly_once(seen: &Seen) {
    assert!(
        seen.ended.is_none(),
        "the subscriber's connection ended: {:?}\n{}",
        seen.ended,
        seen.log
    );
    let got = numbers(&seen.events);
    let want: Vec<u64> = (0..seen.offsets.len() as u64).collect();
    assert!(
        got == want,
        "{} publications accepted, {} came; first differences: {:?}; last: {:?}\n{}",
        want.len(),
        got.len(),
        got.iter()
            .zip(&want)
            .filter(|(a, b)| a != b)
            .take(5)
            .collect::<Vec<_>>(),
        redis_util::tail(&seen.events),
        seen.log
    );
    assert_eq!(redis_util::offsets(&seen.events), seen.offsets);
    let other: Vec<_> = seen
        .events
        .iter()
        .filter(|e| !matches!(e, Event::Pub(..)))
        .collect();
    assert!(other.is_empty(), "{other:?}");
}

#[test]
fn an_sse_stream_moves_and_misses_nothing_with_the_redis_broker() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (seen, ()) = across("sse", &["--redis", &url], sse_subscriber);
    exactly_once(&seen);
    assert!(
        seen.log.contains("handoff: took 3 connections"),
        "{}",
        seen.log
    );
}

/// A held long-poll is answered when the handoff begins (with what it
/// gathered, as a drain does); its next poll, on the same kept-alive
/// connection, is the new process's.
#[test]
fn a_long_poll_goes_on_across_a_handoff_with_the_redis_broker() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (seen, ()) = across("poll", &["--redis", &url], poll_subscriber);
    exactly_once(&seen);
    assert!(
        seen.log.contains("handoff: took 3 connections"),
        "{}",
        seen.log
    );
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
    let (seen, (mut sub, base)) = across("redis", &["--redis", &url], ws_subscriber);
    exactly_once(&seen);
    assert_eq!(seen.offsets.first(), Some(&(base + 1)));
    assert!(
        seen.log.contains("handoff: took 3 connections"),
        "{}",
        seen.log
    );
    ops_answered(&mut sub);
}

/// The memory broker: its channels move with the handoff (history, epoch,
/// offsets), so the subscriber's gap is recovered from the new process's
/// history: every publication exactly once, no resync.
#[test]
fn a_ws_subscriber_moves_and_misses_nothing_with_the_memory_broker() {
    let (seen, (mut sub, base)) = across("memory", &[], ws_subscriber);
    exactly_once(&seen);
    assert_eq!(seen.offsets.first(), Some(&(base + 1)));
    assert!(
        seen.log.contains("handoff: took 3 connections"),
        "{}",
        seen.log
    );
    ops_answered(&mut sub);
}
