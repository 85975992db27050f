//! A subscriber that stops reading while its channel is busy: its out queue
//! is capped (`limits.max_queued_bytes`), the other subscribers are not
//! held back, memory stays bounded, and the policy applies: close with
//! 4001, or drop the channel with a notice that lets it recover.

#[path = "support/gateway.rs"]
mod gateway_support;
mod support;

use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gateway_support::*;
use serde_json::{json, Value};
use support::{frame, vm_rss_kib, Raw, OP_CLOSE, OP_TEXT};
use wsgate::config::{Millis, SlowConsumer};

/// The tests push tens of MB through in-process servers: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const BATCHES: u64 = 300;
const PER_BATCH: u64 = 100;
const TOTAL: u64 = BATCHES * PER_BATCH;
/// ~10,000 messages a second.
const TICK: Duration = Duration::from_millis(10);

fn pad() -> String {
    "p".repeat(1000)
}

/// Publish `TOTAL` ~1 KiB messages to `channel` in batches of 100, one
/// batch per tick. A late tick shifts the schedule rather than bursting.
fn publish_paced(addr: std::net::SocketAddr, channel: &str) {
    let pad = pad();
    let mut due = Instant::now();
    for b in 0..BATCHES {
        match due.checked_duration_since(Instant::now()) {
            Some(wait) => std::thread::sleep(wait),
            None => due = Instant::now(),
        }
        due += TICK;
        let mut body = String::with_capacity(PER_BATCH as usize * (pad.len() + 64));
        body.push('[');
        for k in 1..=PER_BATCH {
            if k > 1 {
                body.push(',');
            }
            let n = b * PER_BATCH + k;
            body.push_str(&format!(
                r#"{{"channel":"{channel}","data":{{"n":{n},"pad":"{pad}"}}}}"#
            ));
        }
        body.push(']');
        let r = http(
            addr,
            "POST",
            "/api/publish",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "batch publish: {}", r.text());
        let results = r.json();
        assert_eq!(
            results[PER_BATCH as usize - 1]["offset"],
            (b + 1) * PER_BATCH
        );
    }
}

/// A publication as the readers check it (the pad is skipped unparsed).
#[derive(serde::Deserialize)]
struct Publication<'a> {
    #[serde(borrow)]
    channel: &'a str,
    offset: u64,
    data: PubData,
}

#[derive(serde::Deserialize)]
struct PubData {
    n: u64,
}

/// A tungstenite subscriber reading every publication in a thread;
/// returns the client once it has seen offset `TOTAL` (all in order).
/// Reading is kept cheap, so that it keeps up on a busy machine.
fn reader(mut c: Client, channel: &'static str) -> JoinHandle<Client> {
    std::thread::spawn(move || {
        c.ws.get_mut()
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut i = 1;
        while i <= TOTAL {
            let text = match c.ws.read() {
                Ok(tungstenite::Message::Text(t)) => t,
                Ok(tungstenite::Message::Close(f)) => {
                    panic!("normal subscriber closed by the server before message {i}: {f:?}")
                }
                Ok(_) => continue,
                Err(e) => panic!("normal subscriber: message {i} never came: {e}"),
            };
            let p: Publication<'_> = serde_json::from_str(&text).unwrap_or_else(|e| {
                panic!("normal subscriber: message {i} is not a publication ({e}): {text:.200}")
            });
            assert_eq!(p.channel, channel);
            assert_eq!(p.offset, i, "normal subscriber: out of order");
            assert_eq!(p.data.n, i);
            i += 1;
        }
        c
    })
}

/// A raw client that subscribes to `channel`, reads the reply, and then
/// reads nothing until the test says so. Returns it and the epoch.
fn raw_subscriber(addr: std::net::SocketAddr, channel: &str) -> (Raw, String) {
    let mut raw = Raw::upgrade(addr, "/ws");
    let op = json!({ "id": 1, "op": "subscribe", "channel": channel }).to_string();
    raw.send(&frame(true, 0, OP_TEXT, op.as_bytes()));
    let reply = raw_json(&mut raw);
    assert_eq!(reply["id"], 1, "{reply}");
    assert_eq!(reply["ok"], true, "{reply}");
    (raw, reply["epoch"].as_str().unwrap().to_string())
}

/// The next frame of a raw client, which must be a JSON text frame.
fn raw_json(raw: &mut Raw) -> Value {
    let f = raw.read_frame(Duration::from_secs(30));
    assert_eq!(f.opcode, OP_TEXT, "expected a text frame: {f:?}");
    serde_json::from_slice(&f.payload).expect("JSON text frame")
}

#[test]
fn slow_consumer_is_closed_with_4001_and_others_get_everything() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rss_before = vm_rss_kib();
    let server = start_gateway(|cfg| {
        // The cap applies to the normal readers too: 4 MiB (~0.4 s of this
        // stream) lets them stall on a busy machine; the slow one, sent
        // ~30 MiB, still overflows.
        cfg.limits.max_queued_bytes = 4 << 20;
        cfg.limits.slow_consumer = SlowConsumer::Close;
        // Long enough that the close frame still waits in the queue when the
        // slow client finally reads.
        cfg.timeouts.close_linger = Millis(120_000);
    });
    let addr = server.local_addr();

    let (mut slow, _) = raw_subscriber(addr, "feed");
    let mut readers = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect(addr, "/ws");
        c.subscribe("feed");
        readers.push(reader(c, "feed"));
    }

    publish_paced(addr, "feed");
    let mut clients = Vec::new();
    for r in readers {
        clients.push(r.join().expect("a normal subscriber missed something"));
    }
    let stats = || server.shared().stats();
    wait_until(WAIT, "a slow-consumer close", || {
        stats()
            .slow_consumer_closes
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    });
    let rss_after = vm_rss_kib();
    let grown_mib = rss_after.saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 64,
        "RSS grew by {grown_mib} MiB ({rss_before} → {rss_after} KiB) for ~{} MiB published",
        TOTAL / 1024
    );

    // The normal subscribers are still subscribed and connected.
    for c in &mut clients {
        c.assert_nothing_pending();
    }

    // The slow one now reads: an unbroken prefix of the stream, then the
    // close frame 4001.
    let mut next = 1u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let close = loop {
        let f = slow
            .try_read_frame(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|end| {
                panic!(
                    "slow client: the stream ended after offset {} without a close frame: {end:?}",
                    next - 1
                )
            });
        if f.opcode == OP_CLOSE {
            break f;
        }
        assert_eq!(f.opcode, OP_TEXT, "{f:?}");
        let m: Value = serde_json::from_slice(&f.payload).expect("JSON");
        assert_eq!(m["offset"], next, "slow client: a gap or reordering");
        next += 1;
    };
    assert!(
        next - 1 < TOTAL,
        "the slow client got everything: it was never slow?"
    );
    assert_eq!(close.close_code(), Some(4001), "{close:?}");
    assert_eq!(close.close_reason(), b"slow consumer");
    slow.send_close(4001, b"");
    let (rest, _) = slow.expect_tcp_closed(WAIT);
    assert!(rest.is_empty(), "bytes after the close frame");

    // Others keep working.
    let n = api_publish(addr, "feed", json!({ "n": TOTAL + 1 }))["offset"].clone();
    assert_eq!(n, TOTAL + 1);
    for c in &mut clients {
        assert_eq!(c.next()["offset"], TOTAL + 1);
    }
    assert_eq!(
        stats()
            .slow_consumer_closes
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "only the slow client was closed"
    );
    for c in clients {
        c.close();
    }
    stop_gateway(server);
}

#[test]
fn drop_policy_sends_a_notice_and_the_client_recovers_with_since() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = start_gateway(|cfg| {
        // The cap applies to the normal readers too: 4 MiB (~0.4 s of this
        // stream) lets them stall on a busy machine; the slow one, sent
        // ~30 MiB, still overflows.
        cfg.limits.max_queued_bytes = 4 << 20;
        cfg.limits.slow_consumer = SlowConsumer::Drop;
        cfg.channels.history_size = 2 * TOTAL as usize;
        cfg.channels.history_bytes = 256 << 20;
    });
    let addr = server.local_addr();

    let (mut slow, epoch) = raw_subscriber(addr, "feed");
    let mut c = Client::connect(addr, "/ws");
    c.subscribe("feed");
    let normal = reader(c, "feed");

    publish_paced(addr, "feed");
    let mut c = normal
        .join()
        .expect("the normal subscriber missed something");
    c.assert_nothing_pending();
    let dropped = || {
        server
            .shared()
            .stats()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    wait_until(WAIT, "a dropped channel", || dropped() >= 1);

    // The slow client reads: an unbroken prefix, then the notice naming the
    // last offset it was sent.
    let mut last = 0u64;
    let notice = loop {
        let m = raw_json(&mut slow);
        if m.get("dropped").is_some() {
            break m;
        }
        assert_eq!(m["channel"], "feed", "{m}");
        assert_eq!(m["offset"], last + 1, "slow client: a gap or reordering");
        last += 1;
    };
    assert!(last < TOTAL, "the slow client got everything: never slow?");
    assert_eq!(
        notice,
        json!({ "channel": "feed", "dropped": { "reason": "slow consumer", "offset": last } })
    );

    // Unsubscribed: nothing more comes, not even new publications.
    api_publish(addr, "feed", json!({ "n": TOTAL + 1 }));
    assert_eq!(c.next()["offset"], TOTAL + 1);
    let ping = json!({ "id": 2, "op": "ping" }).to_string();
    slow.send(&frame(true, 0, OP_TEXT, ping.as_bytes()));
    assert_eq!(
        raw_json(&mut slow),
        json!({ "id": 2, "ok": true, "pong": true }),
        "nothing after the notice"
    );

    // Resubscribe with since: recovered, the rest in order, then live.
    let op = json!({
        "id": 3, "op": "subscribe", "channel": "feed",
        "since": { "epoch": epoch, "offset": last },
    })
    .to_string();
    slow.send(&frame(true, 0, OP_TEXT, op.as_bytes()));
    let r = raw_json(&mut slow);
    assert_eq!(r["id"], 3, "{r}");
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(r["offset"], TOTAL + 1, "{r}");
    for i in last + 1..=TOTAL + 1 {
        let m = raw_json(&mut slow);
        assert_eq!(m["offset"], i, "recovery replay");
        assert_eq!(m["data"]["n"], i);
    }
    api_publish(addr, "feed", json!({ "n": TOTAL + 2 }));
    assert_eq!(raw_json(&mut slow)["offset"], TOTAL + 2);
    assert_eq!(c.next()["offset"], TOTAL + 2);
    assert_eq!(
        server
            .shared()
            .stats()
            .slow_consumer_closes
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    c.close();
    slow.send_close(1000, b"");
    stop_gateway(server);
}

/// The cap bounds what a connection that does not read holds, not what one
/// loop iteration queues: a subscriber that reads (its socket is empty)
/// gets one API batch larger than `max_queued_bytes` whole.
#[test]
fn a_batch_larger_than_the_cap_reaches_a_subscriber_that_reads() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for policy in [SlowConsumer::Close, SlowConsumer::Drop] {
        let server = start_gateway(|cfg| {
            // The cap applies to the normal readers too: 4 MiB (~0.4 s of this
            // stream) lets them stall on a busy machine; the slow one, sent
            // ~30 MiB, still overflows.
            cfg.limits.max_queued_bytes = 4 << 20;
            cfg.limits.slow_consumer = policy;
        });
        let addr = server.local_addr();
        let mut c = Client::connect(addr, "/ws");
        c.subscribe("burst");
        // 100 publications of ~1 KiB: ~100 KiB in one request.
        let pad = pad();
        let items: Vec<Value> = (1..=100u64)
            .map(|n| json!({ "channel": "burst", "data": { "n": n, "pad": pad } }))
            .collect();
        api_batch(addr, &items);
        for i in 1..=100u64 {
            let m = match c.try_next(WAIT) {
                Ok(m) => m,
                Err(e) => panic!("{policy:?}: publication {i} never came: {e:?}"),
            };
            assert_eq!(
                m["offset"], i,
                "{policy:?}: expected publication {i}, got {m:.200}"
            );
        }
        c.assert_nothing_pending();
        c.close();
        stop_gateway(server);
    }
}

/// The drop notice names the last *publication* the client was sent, even
/// when what did not fit was a presence event (which has no offset):
/// resubscribing from it must not replay what the client already has.
#[test]
fn drop_notice_after_a_presence_event_names_the_last_publication() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = start_gateway(|cfg| {
        // The cap applies to the normal readers too: 4 MiB (~0.4 s of this
        // stream) lets them stall on a busy machine; the slow one, sent
        // ~30 MiB, still overflows.
        cfg.limits.max_queued_bytes = 4 << 20;
        cfg.limits.slow_consumer = SlowConsumer::Drop;
        cfg.limits.max_head = 64 * 1024;
        // User ids are checked like channel names: the long ones below
        // need a longer channel limit.
        cfg.limits.max_channel_length = 40_000;
        cfg.namespaces.insert(
            "lobby".into(),
            wsgate::config::ChannelOverrides {
                join_leave: Some(true),
                ..Default::default()
            },
        );
    });
    let addr = server.local_addr();
    let (mut slow, epoch) = raw_subscriber(addr, "lobby:x");
    for n in 1..=5u64 {
        api_publish(addr, "lobby:x", json!({ "n": n }));
    }
    // Big join and leave events (a long user name) until the slow client's
    // queue overflows on one of them.
    let dropped = || {
        server
            .shared()
            .stats()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut joiners = 0;
    while dropped() == 0 {
        joiners += 1;
        assert!(joiners <= 1000, "no overflow after {joiners} joiners");
        let user = format!("u{joiners}-{}", "x".repeat(30_000));
        let mut j = Client::connect(addr, &format!("/ws?user={user}"));
        j.subscribe("lobby:x");
        j.close();
    }

    // The slow client reads: publications 1..=5, events, then the notice.
    let mut last = 0;
    let notice = loop {
        let m = raw_json(&mut slow);
        if m.get("dropped").is_some() {
            break m;
        }
        if let Some(off) = m.get("offset") {
            assert_eq!(off, &json!(last + 1), "{m:.200}");
            last += 1;
        } else {
            assert!(
                m.get("join").is_some() || m.get("leave").is_some(),
                "{m:.200}"
            );
        }
    };
    assert_eq!(last, 5, "every publication fitted before the overflow");
    assert_eq!(
        notice["dropped"]["offset"], last,
        "the notice names the last publication sent: {notice}"
    );
    // Resubscribing from what the notice says replays nothing twice.
    let since = notice["dropped"]["offset"].as_u64().unwrap();
    let op = json!({
        "id": 9, "op": "subscribe", "channel": "lobby:x",
        "since": { "epoch": epoch, "offset": since },
    })
    .to_string();
    slow.send(&frame(true, 0, OP_TEXT, op.as_bytes()));
    let mut replayed = Vec::new();
    loop {
        let m = raw_json(&mut slow);
        if m.get("id") == Some(&json!(9)) {
            assert_eq!(m["recovered"], true, "{m}");
            continue;
        }
        match m.get("offset") {
            Some(o) => replayed.push(o.as_u64().unwrap()),
            None => break,
        }
        if replayed.len() > 10 {
            break;
        }
    }
    assert!(
        replayed.iter().all(|&o| o > 5),
        "offsets the client already had were replayed: {replayed:?}"
    );
    slow.send_close(1000, b"");
    stop_gateway(server);
}
