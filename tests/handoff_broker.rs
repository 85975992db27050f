//! Live handoff (issue 17): the in-memory broker's channels move with it.
//! After SIGUSR2 the new process holds the old one's histories (same
//! epochs, offsets and data), idle positions and idempotency keys, so a
//! client that comes back with `since` recovers exactly what it missed; a
//! publish made during the handoff is either in the new history or was
//! refused with error 10 (never accepted and lost); the history TTL goes
//! on. A successor that refuses the state leaves the old process serving,
//! unsealed, with nothing lost; a new binary given a state version it does
//! not know refuses and never serves. Every test has a client that must
//! stay served: it moves with the handoff and is served by the new
//! process.

#[path = "support/gateway.rs"]
mod gateway_support;
#[path = "support/handoff.rs"]
mod handoff_util;
#[path = "support/process.rs"]
mod process;

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_support::*;
use handoff_util::{hand_over, start_with as start, temp, wait_for, DEADLINE};
use serde_json::{json, Value};
use wsgate::broker::memory::snapshot;
use wsgate::server::handoff::{upgrade, wire, Channel, ListenerRole, Msg, ENV_FD};

fn history(addr: SocketAddr, channel: &str) -> Value {
    let r = http_get(addr, &format!("/api/history?channel={channel}&limit=1000"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn publish_keyed(addr: SocketAddr, channel: &str, key: &str, data: Value) -> HttpResponse {
    http_post_json(
        addr,
        "/api/publish",
        &json!({ "channel": channel, "data": data, "idempotency_key": key }),
    )
}

/// Histories, epochs and offsets move; a client that reconnects with its
/// position recovers exactly what it missed, in the same epoch; an idle
/// channel's position and an idempotency key move too; a history larger
/// than one handoff record crosses in parts.
#[test]
fn recovery_works_across_a_handoff() {
    let (mut gw, pid_file) = start("recover", "", &[]);
    let addr = gw.addr;
    // Three channels, one of them over 128 KiB (several state records).
    for (ch, n, size) in [("a", 20, 10), ("b", 7, 10), ("big", 30, 10_000)] {
        for i in 1..=n {
            api_publish(addr, ch, json!({ "n": i, "pad": "x".repeat(size) }));
        }
    }
    let keyed = publish_keyed(addr, "b", "once", json!("k"));
    assert_eq!(keyed.status, 200, "{}", keyed.text());
    // An idle channel: a position (epoch, offset 0), no history.
    let mut quiet = Client::connect(addr, "/ws");
    let q = quiet.subscribe("quiet");
    quiet.close();
    let before: Vec<Value> = ["a", "b", "big"].iter().map(|c| history(addr, c)).collect();
    // The bystander: subscribed to "a" at its top on the old process.
    let mut bystander = Client::connect(addr, "/ws");
    let sub = bystander.subscribe("a");
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    assert_eq!(sub["offset"], 20);
    bystander.assert_alive();

    let _new = hand_over(&gw, &pid_file);
    wait_for("the old process to exit", || gw.exited().is_some());
    assert!(gw.exited().unwrap().success(), "{}", gw.log_text());
    let log = gw.log_text();
    assert!(log.contains("bytes of channel state sent"), "{log}");
    assert!(log.contains("and 3 channels; serving"), "{log}");

    // The new process: the same histories.
    for (ch, b) in ["a", "b", "big"].iter().zip(&before) {
        assert_eq!(&history(addr, ch), b, "{ch}");
    }
    // Published while the bystander was away.
    for i in 21..=25 {
        let r = api_publish(addr, "a", json!({ "n": i }));
        assert_eq!(
            (r["epoch"].as_str(), &r["offset"]),
            (Some(&*epoch), &json!(i))
        );
    }
    // The bystander moved with its subscription: it gets them live.
    for i in 21..=25 {
        assert_eq!(bystander.next_publication("a"), (i, json!({ "n": i })));
    }
    bystander.assert_alive();
    // Back with its position: exactly 21..=25, recovered, same epoch.
    let mut back = Client::connect(addr, "/ws");
    let r = back.subscribe_since("a", &epoch, 20);
    assert_eq!(
        (&r["recovered"], &r["epoch"], &r["offset"]),
        (&json!(true), &json!(epoch), &json!(25)),
        "{r}"
    );
    for i in 21..=25 {
        assert_eq!(back.next_publication("a"), (i, json!({ "n": i })));
    }
    back.assert_nothing_pending();
    // The idle position resumes in its epoch.
    let r = back.subscribe_since("quiet", q["epoch"].as_str().unwrap(), 0);
    assert_eq!((&r["recovered"], &r["epoch"]), (&json!(true), &q["epoch"]));
    // The key moved: the same answer, not published again.
    let again = publish_keyed(addr, "b", "once", json!("k"));
    assert_eq!(again.json(), keyed.json());
    assert_eq!(history(addr, "b")["offset"], 8);
    // Live publications reach the recovered client.
    api_publish(addr, "a", json!({ "n": 26 }));
    assert_eq!(back.next_publication("a"), (26, json!({ "n": 26 })));
    let _ = std::fs::remove_file(&pid_file);
}

/// Publishes through `/api/publish` throughout a handoff, one after
/// another: each is either accepted (and then in the new history at its
/// offset, with its data, in the one epoch) or refused with error 10 (503)
/// while the broker is sealed; none accepted is lost, none doubled.
#[test]
fn a_publish_during_the_handoff_is_kept_or_refused_never_lost() {
    let (mut gw, pid_file) = start("during", "", &[]);
    let addr = gw.addr;
    let mut bystander = Client::connect(addr, "/echo");
    bystander.send_text("before");
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut accepted, mut refused) = (Vec::new(), 0u32);
            let until = Instant::now() + DEADLINE * 2;
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) && Instant::now() < until && n < 20_000 {
                n += 1;
                let r = http_post_json(
                    addr,
                    "/api/publish",
                    &json!({ "channel": "p", "data": { "n": n } }),
                );
                match r.status {
                    200 => {
                        let v = r.json();
                        accepted.push((n, v["epoch"].clone(), v["offset"].as_u64().unwrap()));
                    }
                    503 => {
                        assert_eq!(r.error_code(), 10, "{}", r.text());
                        assert!(r.text().contains("handoff"), "{}", r.text());
                        refused += 1;
                    }
                    s => panic!("publish {n}: {s} {}", r.text()),
                }
            }
            (accepted, refused)
        })
    };
    wait_for("some publications", || {
        history(addr, "p")["offset"].as_u64().unwrap_or(0) >= 20
    });
    let _new = hand_over(&gw, &pid_file);
    wait_for("the old process to exit", || gw.exited().is_some());
    // Some more after the handoff.
    let top = history(addr, "p")["offset"].as_u64().unwrap();
    wait_for("publications on the new process", || {
        history(addr, "p")["offset"].as_u64().unwrap() >= top + 20
    });
    stop.store(true, Ordering::Release);
    let (accepted, refused) = publisher.join().unwrap();
    let h = history(addr, "p");
    // Offsets 1, 2, 3, … with no gap and no repeat: a publication accepted
    // by the old process and lost would have had its offset given again
    // by the new one.
    let offsets: Vec<u64> = accepted.iter().map(|(_, _, o)| *o).collect();
    let first_wrong = offsets.iter().zip(1u64..).find(|(o, want)| **o != *want);
    assert_eq!(first_wrong, None, "accepted offsets not 1, 2, 3, …");
    assert_eq!(h["offset"], json!(accepted.len()), "{refused} refused");
    // The history's last page is exactly the last ones accepted, with
    // their data (the API shows at most 1,000).
    let held: Vec<(u64, Value)> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["offset"].as_u64().unwrap(), p["data"]["n"].clone()))
        .collect();
    let tail = &accepted[accepted.len() - held.len()..];
    assert!(!held.is_empty());
    for ((off, n), (want_n, _, want_off)) in held.iter().zip(tail) {
        assert_eq!((off, n), (want_off, &json!(want_n)));
    }
    let epochs: std::collections::HashSet<_> = accepted.iter().map(|(_, e, _)| e).collect();
    assert_eq!(epochs.len(), 1, "one epoch throughout");
    assert_eq!(&h["epoch"], *epochs.iter().next().unwrap());
    eprintln!(
        "{} accepted, {refused} refused during the seal",
        accepted.len()
    );
    // The bystander was served before and, moved, after; a new one is
    // served by the new process.
    assert_eq!(bystander.ws.read().unwrap().into_text().unwrap(), "before");
    bystander.send_text("moved");
    assert_eq!(bystander.ws.read().unwrap().into_text().unwrap(), "moved");
    let mut again = Client::connect(addr, "/echo");
    again.send_text("after");
    assert_eq!(again.ws.read().unwrap().into_text().unwrap(), "after");
    let _ = std::fs::remove_file(&pid_file);
}

/// The history TTL goes on in the new process: a publication moved with
/// the channel leaves by age there (ages move, not times: the unit test
/// `channels_move_with_offsets_epochs_data_ages_idle_positions_and_keys`
/// checks the exact ages), and a recovery into it then fails plainly.
#[test]
fn history_ttl_still_applies_after_a_handoff() {
    let (mut gw, pid_file) = start("ttl", "[channels]\nhistory_ttl = \"3s\"\n", &[]);
    let addr = gw.addr;
    let p = api_publish(addr, "t", json!("soon gone"));
    let mut bystander = Client::connect(addr, "/ws");
    bystander.subscribe("other");
    let _new = hand_over(&gw, &pid_file);
    wait_for("the old process to exit", || gw.exited().is_some());
    bystander.assert_alive();
    // Moved (if it has not expired yet), then gone by age.
    wait_for("the moved publication to expire", || {
        let h = history(addr, "t");
        assert_eq!((&h["epoch"], &h["offset"]), (&p["epoch"], &json!(1)), "{h}");
        h["publications"].as_array().unwrap().is_empty()
    });
    let mut c = Client::connect(addr, "/ws");
    let r = c.subscribe_since("t", p["epoch"].as_str().unwrap(), 0);
    assert_eq!((&r["recovered"], &r["epoch"]), (&json!(false), &p["epoch"]));
    // The bystander, back, is served.
    let mut b = Client::connect(addr, "/ws");
    b.subscribe("other");
    api_publish(addr, "other", json!(1));
    assert_eq!(b.next_publication("other"), (1, json!(1)));
    let _ = std::fs::remove_file(&pid_file);
}

fn script(name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = temp(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A successor that takes the state, then refuses it: while it holds the
/// handoff the old broker is sealed (a publish gets 503, code 10); once it
/// refuses, the old process unseals and serves on, with every publication
/// it accepted before and the next offset after them.
#[test]
fn a_refused_state_leaves_the_old_process_serving_unsealed() {
    let sealed = temp("sealed");
    let go = temp("go");
    let _ = std::fs::remove_file(&sealed);
    let _ = std::fs::remove_file(&go);
    let fake = script(
        "refuse.py",
        &format!(
            "#!/usr/bin/env python3\n\
             import os, socket, struct, time\n\
             s = socket.socket(fileno=int(os.environ['WSGATE_HANDOFF_FD']))\n\
             s.recv(1024)\n\
             s.send(b'WSGATEHO' + struct.pack('<H', {v}) + bytes([2]))\n\
             state = b''\n\
             while True:\n\
             \x20   r = s.recv(1 << 17)\n\
             \x20   if r[10] == 6:\n\
             \x20       state += r[16:]\n\
             \x20       if r[11] == 1:\n\
             \x20           break\n\
             assert state[:8] == b'WSGCHANS', state[:8]\n\
             open({sealed:?}, 'w').close()\n\
             end = time.time() + 30\n\
             while not os.path.exists({go:?}) and time.time() < end:\n\
             \x20   time.sleep(0.02)\n\
             why = b'broker state format version 1 unknown (a fake)'\n\
             s.send(b'WSGATEHO' + struct.pack('<H', {v}) + bytes([3]) + struct.pack('<H', len(why)) + why)\n\
             time.sleep(30)\n",
            sealed = sealed.to_str().unwrap(),
            go = go.to_str().unwrap(),
            v = wire::VERSION,
        ),
    );
    let (mut gw, pid_file) = start("refused", "", &["--upgrade-binary", fake.to_str().unwrap()]);
    let addr = gw.addr;
    let mut bystander = Client::connect(addr, "/ws");
    let sub = bystander.subscribe("c");
    for i in 1..=5 {
        api_publish(addr, "c", json!(i));
        assert_eq!(bystander.next_publication("c"), (i, json!(i)));
    }
    gw.signal(libc::SIGUSR2);
    wait_for("the fake to hold the state", || sealed.exists());
    // Sealed: refused, not made.
    let r = http_post_json(addr, "/api/publish", &json!({ "channel": "c", "data": 6 }));
    assert_eq!((r.status, r.error_code()), (503, 10), "{}", r.text());
    bystander.assert_alive();
    std::fs::write(&go, "").unwrap();
    // The handoff thread's line ("handoff failed: …; still serving"; the
    // workers' "handoff failed: N connections resume here" can come first).
    wait_for("the failure in the log", || {
        gw.log_text().contains("still serving")
    });
    let log = gw.log_text();
    assert!(log.contains("version 1 unknown (a fake)"), "{log}");
    assert!(log.contains("still serving"), "{log}");
    assert!(gw.exited().is_none());
    assert_eq!(upgrade::read_pid_file(&pid_file).unwrap(), gw.pid());
    // Unsealed: the next publish is made at offset 6, in the same epoch,
    // and reaches the bystander; the history holds all six.
    let r = api_publish(addr, "c", json!(6));
    assert_eq!((&r["epoch"], &r["offset"]), (&sub["epoch"], &json!(6)));
    assert_eq!(bystander.next_publication("c"), (6, json!(6)));
    let h = history(addr, "c");
    let data: Vec<_> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"].clone())
        .collect();
    assert_eq!(data, (1..=6).map(|i| json!(i)).collect::<Vec<_>>());
    for f in [&fake, &sealed, &go, &pid_file] {
        let _ = std::fs::remove_file(f);
    }
}

/// The new binary, handed a broker state of a version it does not know
/// (the test plays the old process): answers Refuse naming the version,
/// exits with failure, never serves; the listener it was handed is still
/// the old side's, and the connection waiting in its backlog is served
/// there.
#[test]
fn the_new_binary_refuses_a_state_of_another_version() {
    let (old, theirs) = Channel::pair().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["--listen", &addr.to_string(), "--workers", "1"])
        .env(ENV_FD, std::os::fd::AsRawFd::as_raw_fd(&theirs).to_string())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(theirs);
    // A client in the backlog throughout (the bystander).
    let mut waiting = std::net::TcpStream::connect(addr).unwrap();
    old.send(&Msg::Hello.encode(), &[]).unwrap();
    let (bytes, _) = old.recv(DEADLINE).unwrap();
    assert_eq!(Msg::decode(&bytes), Ok(Msg::Ready));
    old.send(
        &Msg::Listeners(vec![ListenerRole::Main]).encode(),
        &[listener.as_fd()],
    )
    .unwrap();
    let state = snapshot::State::default().encode_as(99);
    old.send(
        &Msg::BrokerState {
            last: true,
            bytes: state,
        }
        .encode(),
        &[],
    )
    .unwrap();
    let (bytes, _) = old.recv(DEADLINE).unwrap();
    match Msg::decode(&bytes).unwrap() {
        Msg::Refuse(why) => assert!(why.contains("version 99 unknown"), "{why}"),
        m => panic!("expected Refuse, got {m:?}"),
    }
    let until = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < until, "the new binary did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("cannot take over"), "{err}");
    // The old side still has its listener and the waiting client.
    let (mut served, _) = listener.accept().unwrap();
    std::io::Write::write_all(&mut waiting, b"ping").unwrap();
    let mut b = [0u8; 4];
    std::io::Read::read_exact(&mut served, &mut b).unwrap();
    assert_eq!(&b, b"ping");
}
