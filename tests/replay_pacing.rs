//! Replays paced by the out queue (`gateway::replay`; SECURITY.md,
//! "replay"): a client that recovers long gaps on many channels gets every
//! publication, in order, each once, with the live ones published
//! meanwhile after them, on every transport; a long-poll answers a part no
//! bigger than `limits.max_queued_bytes` (plus one publication) with a
//! cursor that continues; a replay whose history is trimmed before the
//! client read it ends with the slow-consumer outcome and resumes
//! `recovered:false`. Bystanders are served throughout. What the pacing
//! bounds (the gateway's memory) is measured on the binary in
//! tests/abuse.rs.

#[path = "support/bystanders.rs"]
mod bystander;
#[path = "support/gateway.rs"]
mod gateway_support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bystander::Bystanders;
use gateway_support::*;
use serde_json::{json, Value};
use tungstenite::Message;

const CAP: usize = 64 << 10;

/// `n` publications of about `size` bytes to `channel`; returns its epoch.
fn fill(addr: SocketAddr, channel: &str, from: u64, n: u64, size: usize) -> String {
    let pad = "r".repeat(size);
    let mut epoch = String::new();
    let per = (512 << 10) / size.max(1);
    let items: Vec<Value> = (from..from + n)
        .map(|k| json!({ "channel": channel, "data": { "n": k, "pad": pad } }))
        .collect();
    for chunk in items.chunks(per.clamp(1, 100)) {
        epoch = api_batch(addr, chunk)[0]["epoch"]
            .as_str()
            .unwrap()
            .to_string();
    }
    epoch
}

/// A resume token / cursor for these positions.
fn token(positions: &[(&str, &str, u64)]) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(positions).unwrap())
}

/// Per channel, the offsets received must be exactly `1..=top`.
fn assert_whole(got: &BTreeMap<String, Vec<u64>>, tops: &[(&str, u64)]) {
    for (ch, top) in tops {
        let v = got.get(*ch).cloned().unwrap_or_default();
        assert_eq!(
            v,
            (1..=*top).collect::<Vec<_>>(),
            "{ch}: lost, doubled or reordered"
        );
    }
}

#[test]
fn a_websocket_replay_of_many_channels_arrives_whole_and_in_order_then_live() {
    let server = start_gateway(|c| c.limits.max_queued_bytes = CAP);
    let addr = server.local_addr();
    let names: Vec<String> = (0..8).map(|i| format!("ws-{i}")).collect();
    // 8 channels × 150 × 2 KiB: 2.4 MiB to replay through a 64 KiB queue.
    let epochs: Vec<String> = names.iter().map(|c| fill(addr, c, 1, 150, 2000)).collect();
    let by = Bystanders::start(addr);
    let mark = by.progress();

    let mut c = Client::connect(addr, "/ws");
    for (i, (ch, e)) in names.iter().zip(&epochs).enumerate() {
        let op = json!({ "id": i, "op": "subscribe", "channel": ch,
                         "since": { "epoch": e, "offset": 0 } });
        c.ws.write(Message::Text(op.to_string())).unwrap();
    }
    c.ws.flush().unwrap();
    // 30 more per channel while the replay runs.
    let live = {
        let names = names.clone();
        std::thread::spawn(move || {
            for ch in &names {
                fill(addr, ch, 151, 30, 2000);
            }
        })
    };
    let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut replies = 0;
    let deadline = Instant::now() + WAIT * 4;
    while got.values().map(Vec::len).sum::<usize>() < 8 * 180 {
        assert!(Instant::now() < deadline, "replay incomplete: {:?}", {
            got.iter().map(|(k, v)| (k, v.len())).collect::<Vec<_>>()
        });
        let m = c.next();
        if m.get("id").is_some() {
            assert_eq!(m["recovered"], true, "{m}");
            // Live publishing may begin before the subscribe is answered.
            assert!(m["offset"].as_u64().is_some_and(|o| o >= 150), "{m}");
            let ch = m["channel"].as_str().unwrap();
            assert!(
                !got.contains_key(ch),
                "a publication of {ch} before its reply"
            );
            got.insert(ch.to_string(), Vec::new());
            replies += 1;
            continue;
        }
        let ch = m["channel"].as_str().unwrap();
        let off = m["offset"].as_u64().unwrap_or_else(|| panic!("{m}"));
        assert_eq!(m["data"]["n"], off, "{m}");
        got.get_mut(ch)
            .unwrap_or_else(|| panic!("{ch} before its reply"))
            .push(off);
        if off.is_multiple_of(50) {
            // A slow reader: the gateway's queue fills and drains.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    live.join().unwrap();
    assert_eq!(replies, 8);
    let tops: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 180)).collect();
    assert_whole(&got, &tops);
    c.assert_nothing_pending();
    by.served(mark, 5);
    c.close();
    println!("bystanders {:?}", by.finish());
    stop_gateway(server);
}

#[test]
fn a_long_poll_answers_part_of_a_long_gap_and_its_cursor_continues() {
    let server = start_gateway(|c| c.limits.max_queued_bytes = CAP);
    let addr = server.local_addr();
    let e0 = fill(addr, "poll-0", 1, 100, 2000);
    let e1 = fill(addr, "poll-1", 1, 100, 2000);
    let by = Bystanders::start(addr);
    let mark = by.progress();

    let mut cursor = token(&[("poll-0", &e0, 0), ("poll-1", &e1, 0)]);
    let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut polls = 0;
    while got.values().map(Vec::len).sum::<usize>() < 200 {
        polls += 1;
        assert!(polls <= 20, "no progress after 20 polls: {got:?}");
        let r = http_get(
            addr,
            &format!("/poll?channel=poll-0&channel=poll-1&wait=0&cursor={cursor}"),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        // At most the cap, plus one publication and the envelope.
        assert!(r.body.len() <= CAP + 4096, "a {}-byte answer", r.body.len());
        let v = r.json();
        assert_eq!(
            v["recovered"],
            json!({"poll-0": true, "poll-1": true}),
            "a gap still held is recovered on every poll"
        );
        let msgs = v["messages"].as_array().unwrap();
        assert!(!msgs.is_empty(), "a held gap always moves");
        for m in msgs {
            got.entry(m["channel"].as_str().unwrap().to_string())
                .or_default()
                .push(m["offset"].as_u64().unwrap());
        }
        cursor = v["cursor"].as_str().unwrap().to_string();
    }
    assert!(polls >= 4, "3.2 MiB needs several 64 KiB answers ({polls})");
    assert_whole(&got, &[("poll-0", 100), ("poll-1", 100)]);
    // Caught up: the next poll waits for, and gets, the next publication.
    let next = std::thread::spawn(move || {
        http_get(
            addr,
            &format!("/poll?channel=poll-0&channel=poll-1&wait=10&cursor={cursor}"),
        )
    });
    wait_until(WAIT, "the poll to be held", || {
        api_publish(addr, "poll-1", json!({ "n": 101 }));
        next.is_finished()
    });
    let v = next.join().unwrap().json();
    assert_eq!(v["messages"][0]["offset"], 101, "{v}");
    by.served(mark, 5);
    println!("{polls} polls; bystanders {:?}", by.finish());
    stop_gateway(server);
}

/// One SSE event: (event, id, data).
type Event = (Option<String>, Option<String>, String);

/// Read SSE events until `done` says enough (or the deadline).
fn sse_events(sock: &mut TcpStream, mut done: impl FnMut(&[Event]) -> bool) -> Vec<Event> {
    let mut buf = Vec::new();
    let mut events = Vec::new();
    let mut head_done = false;
    let deadline = Instant::now() + WAIT * 4;
    let mut chunk = [0u8; 16 << 10];
    while !done(&events) {
        assert!(Instant::now() < deadline, "SSE stream incomplete");
        let n = sock.read(&mut chunk).expect("SSE read");
        assert!(n > 0, "the SSE stream ended");
        buf.extend_from_slice(&chunk[..n]);
        if !head_done {
            let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..i]).to_string();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            buf.drain(..i + 4);
            head_done = true;
        }
        while let Some(i) = buf.windows(2).position(|w| w == b"\n\n") {
            let block = String::from_utf8(buf[..i].to_vec()).expect("UTF-8 events");
            buf.drain(..i + 2);
            let (mut ev, mut id, mut data) = (None, None, None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    ev = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(v.to_string());
                }
            }
            if let Some(d) = data {
                events.push((ev, id, d));
            }
        }
        // A slow reader.
        std::thread::sleep(Duration::from_millis(1));
    }
    events
}

#[test]
fn an_sse_replay_is_paced_and_the_stream_goes_live() {
    let server = start_gateway(|c| c.limits.max_queued_bytes = CAP);
    let addr = server.local_addr();
    let e0 = fill(addr, "sse-0", 1, 100, 2000);
    let e1 = fill(addr, "sse-1", 1, 100, 2000);
    let by = Bystanders::start(addr);
    let mark = by.progress();

    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let last = token(&[("sse-0", &e0, 0), ("sse-1", &e1, 0)]);
    write!(
        sock,
        "GET /sse?channel=sse-0&channel=sse-1 HTTP/1.1\r\nHost: t\r\nLast-Event-ID: {last}\r\n\r\n"
    )
    .unwrap();
    let live = std::thread::spawn(move || {
        fill(addr, "sse-0", 101, 10, 2000);
        fill(addr, "sse-1", 101, 10, 2000);
    });
    let events = sse_events(&mut sock, |ev| {
        ev.iter().filter(|(e, _, _)| e.is_none()).count() >= 220
    });
    live.join().unwrap();
    let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut last_id = None;
    for (ev, id, data) in &events {
        let v: Value = serde_json::from_str(data).unwrap();
        let ch = v["channel"].as_str().unwrap().to_string();
        match ev.as_deref() {
            Some("subscribed") => {
                // The live publishing may start before the subscribe is
                // answered: its position is at least where the fill ended.
                assert_eq!(v["recovered"], json!(true), "{v}");
                assert!(v["offset"].as_u64().is_some_and(|o| o >= 100), "{v}");
                assert!(got.insert(ch, Vec::new()).is_none());
            }
            None => {
                got.get_mut(&ch)
                    .expect("after its subscribed event")
                    .push(v["offset"].as_u64().unwrap());
                last_id = id.clone();
            }
            other => panic!("unexpected event {other:?}: {data}"),
        }
    }
    assert_whole(&got, &[("sse-0", 110), ("sse-1", 110)]);
    // The last id resumes at the top of both.
    let t: Vec<(String, String, u64)> =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(last_id.unwrap()).unwrap()).unwrap();
    assert_eq!(
        t.iter().map(|p| p.2).collect::<Vec<_>>(),
        vec![110, 110],
        "{t:?}"
    );
    by.served(mark, 5);
    drop(sock);
    println!("bystanders {:?}", by.finish());
    stop_gateway(server);
}

/// Let the kernel hold little for this client (loopback buffers otherwise
/// take megabytes): what it does not read stays with the gateway.
fn small_receive_buffer(sock: &TcpStream) {
    use std::os::fd::AsRawFd;
    let v: libc::c_int = 16 << 10;
    // SAFETY: setsockopt on a socket we own, with a pointer to a live
    // c_int and its exact size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
}

#[test]
fn a_replay_that_outlives_its_history_closes_4001_and_resumes_unrecovered() {
    let server = start_gateway(|c| {
        c.limits.max_queued_bytes = CAP;
        c.channels.history_size = 100;
        c.channels.history_bytes = 32 << 20;
    });
    let addr = server.local_addr();
    // 16 MiB to replay: far more than the sockets' buffers take (the
    // gateway's send buffer alone may grow to tcp_wmem's 4 MiB).
    let epoch = fill(addr, "short", 1, 100, 160 << 10);
    let by = Bystanders::start(addr);
    let mark = by.progress();

    let mut c = Client::connect(addr, "/ws");
    small_receive_buffer(c.ws.get_ref());
    let r = c.subscribe_since("short", &epoch, 0);
    assert_eq!(r["recovered"], true, "{r}");
    // The client reads nothing while 100 more push its gap out of the
    // history (100 publications kept).
    fill(addr, "short", 101, 100, 160 << 10);
    let mut seen = Vec::new();
    let code = loop {
        match c.try_next(WAIT) {
            Ok(m) => seen.push(m["offset"].as_u64().unwrap_or_else(|| panic!("{m}"))),
            Err(NoMessage::Closed(code)) => break code,
            Err(NoMessage::Timeout) => panic!("neither the replay nor a close: {seen:?}"),
        }
    };
    assert_eq!(code, Some(4001));
    let k = seen.len() as u64;
    assert!(
        k < 100,
        "the replay got {k} of 100 before the history moved on"
    );
    assert_eq!(
        seen,
        (1..=k).collect::<Vec<_>>(),
        "contiguous up to the cut"
    );
    // Resuming from what it got: the rest is gone, and it is told so.
    let mut d = Client::connect(addr, "/ws");
    let r = d.subscribe_since("short", &epoch, k);
    assert_eq!(
        (r["recovered"].clone(), r["offset"].clone()),
        (json!(false), json!(200)),
        "{r}"
    );
    d.assert_nothing_pending();
    by.served(mark, 5);
    d.close();
    println!("cut after {k}; bystanders {:?}", by.finish());
    stop_gateway(server);
}
