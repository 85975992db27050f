//! Webhooks from the engine (memory broker) against the test backend, which
//! checks every signature; publish options on the `publish` op and the
//! API; the `history` op; user presence (`GET /api/presence/users`). Each
//! failure case keeps a bystander served.

#[path = "backend_util/mod.rs"]
mod backend_util;
#[path = "support/gateway.rs"]
mod gateway_support;
#[path = "stream_util/mod.rs"]
mod stream_util;

use std::collections::HashSet;
use std::net::SocketAddr;

use backend_util::{send_webhooks_to, webhook_events, Backend, DEADLINE};
use gateway_support::*;
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use wsgate::config::{ChannelOverrides, Config};

fn namespaces(cfg: &mut Config) {
    cfg.namespaces.insert(
        "room".into(),
        ChannelOverrides {
            presence: Some(true),
            ..Default::default()
        },
    );
    cfg.namespaces.insert(
        "chat".into(),
        ChannelOverrides {
            client_events: Some(true),
            ..Default::default()
        },
    );
}

/// (name, the field that identifies it) of the events, for comparisons.
fn named<'a>(evs: &'a [Value], name: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["name"] == name).collect()
}

fn wait_events(backend: &Backend, what: &str, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut last = Vec::new();
    backend_util::wait_for(DEADLINE, what, || {
        last = webhook_events(backend);
        cond(&last)
    });
    last
}

fn close_with(mut c: Client, code: u16) {
    let _ = c.ws.close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: "bye".into(),
    }));
    let end = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < end && c.ws.read().is_ok() {}
}

/// The client id of the connection as presence shows it.
fn client_id(c: &mut Client, channel: &str) -> String {
    let r = c.call(json!({"op": "presence", "channel": channel}));
    let ids: Vec<String> = r["members"]
        .as_array()
        .unwrap_or_else(|| panic!("presence: {r}"))
        .iter()
        .map(|m| m["client"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "{r}");
    ids[0].clone()
}

#[test]
fn engine_events_reach_the_backend_signed_once_each_and_in_order() {
    let backend = Backend::start();
    let server = start_gateway(|cfg| {
        send_webhooks_to(cfg, &backend);
        namespaces(cfg);
    });
    let addr = server.local_addr();
    let mut bystander = Client::connect(addr, "/ws");
    bystander.subscribe("news");

    let mut a = Client::connect(addr, "/ws?user=ann");
    a.assert_alive();
    let mut a2 = Client::connect(addr, "/ws?user=ann");
    a2.assert_alive();
    a.subscribe("room:1");
    let a_id = client_id(&mut a, "room:1");
    let r = a.call(json!({"op": "publish", "channel": "chat:1", "data": {"text": "hi"}}));
    assert_eq!(r["ok"], true, "{r}");
    // Not a client_events namespace: no event.
    let r = a.call(json!({"op": "publish", "channel": "news", "data": 1}));
    assert_eq!(r["ok"], true, "{r}");
    let r = a.call(json!({"op": "unsubscribe", "channel": "room:1"}));
    assert_eq!(r["ok"], true, "{r}");
    close_with(a, 4001);

    let evs = wait_events(&backend, "a's events", |e| {
        !named(e, "client_disconnected").is_empty()
    });
    let names: Vec<&str> = evs.iter().map(|e| e["name"].as_str().unwrap()).collect();
    let online = named(&evs, "user_online");
    assert_eq!(online.len(), 1, "ann came online once: {names:?}");
    assert_eq!(online[0]["user_id"], "ann");
    let at = |name: &str, ch: &str| {
        evs.iter()
            .position(|e| e["name"] == name && e["channel"] == ch)
            .unwrap_or_else(|| panic!("no {name} of {ch}: {names:?}"))
    };
    assert!(
        evs.iter().position(|e| e["name"] == "user_online") < Some(at("member_added", "room:1")),
        "online before anything ann did: {names:?}"
    );
    // Ann's personal channel is hers while she has a connection.
    assert!(at("channel_occupied", "$user:ann") < at("member_added", "room:1"));
    let room: Vec<&str> = evs
        .iter()
        .filter(|e| e["channel"] == "room:1")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        room,
        [
            "channel_occupied",
            "member_added",
            "member_removed",
            "channel_vacated"
        ],
        "{names:?}"
    );
    let added = &evs[at("member_added", "room:1")];
    assert_eq!(
        (&added["client_id"], &added["user_id"]),
        (&json!(a_id), &json!("ann"))
    );
    let ce = named(&evs, "client_event");
    assert_eq!(ce.len(), 1, "only the chat namespace asks: {names:?}");
    assert_eq!(ce[0]["channel"], "chat:1");
    assert_eq!(ce[0]["data"], json!({"text": "hi"}));
    assert_eq!(ce[0]["client_id"], json!(a_id));
    let gone = named(&evs, "client_disconnected");
    assert_eq!(gone.len(), 1, "{names:?}");
    assert_eq!(
        (&gone[0]["client_id"], &gone[0]["user_id"], &gone[0]["code"]),
        (&json!(a_id), &json!("ann"), &json!(4001))
    );
    assert!(
        named(&evs, "user_offline").is_empty(),
        "ann still has a2: {names:?}"
    );

    // The last connection of ann goes without a close frame: offline.
    drop(a2);
    let evs = wait_events(&backend, "ann offline", |e| {
        !named(e, "user_offline").is_empty()
    });
    let gone = named(&evs, "client_disconnected");
    assert_eq!(gone.len(), 2);
    assert_eq!(gone[1]["code"], 1006, "no close frame: abnormal");
    assert_eq!(named(&evs, "user_offline").len(), 1);
    assert_eq!(evs.last().unwrap()["name"], "user_offline");
    let stats = http_get(addr, "/api/stats").json();
    let delivered = stats["webhooks"]["delivered"].as_u64().unwrap();
    assert!(delivered >= evs.len() as u64, "{stats}");
    assert_eq!(stats["webhooks"]["dropped"], 0);
    bystander.assert_alive();
    stop_gateway(server);
}

#[test]
fn a_backend_that_fails_then_restarts_gets_every_event_once_by_id() {
    let mut backend = Backend::start();
    backend.set(
        "webhook",
        json!({"mode": "status", "status": 500, "count": 3}),
    );
    let server = start_gateway(|cfg| {
        send_webhooks_to(cfg, &backend);
        namespaces(cfg);
    });
    let addr = server.local_addr();
    let mut bystander = Client::connect(addr, "/ws");
    let mut before = Vec::new();
    for i in 0..5 {
        let mut c = Client::connect(addr, "/ws");
        c.subscribe(&format!("room:{i}"));
        if i == 2 {
            // What the backend accepted so far (its log dies with it).
            before = webhook_events(&backend);
            backend.kill();
        }
        c.close();
    }
    bystander.assert_alive();
    backend.restart();
    let merged = |after: &[Value]| -> Vec<Value> {
        let mut seen = HashSet::new();
        before
            .iter()
            .chain(after)
            .filter(|e| seen.insert(e["id"].as_str().unwrap().to_string()))
            .cloned()
            .collect()
    };
    let mut evs = Vec::new();
    backend_util::wait_for(DEADLINE, "every room's vacated", || {
        evs = merged(&webhook_events(&backend));
        named(&evs, "channel_vacated").len() == 5
    });
    for i in 0..5 {
        let ch = format!("room:{i}");
        let mine: Vec<&str> = evs
            .iter()
            .filter(|e| e["channel"] == ch.as_str())
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            mine,
            [
                "channel_occupied",
                "member_added",
                "member_removed",
                "channel_vacated"
            ],
            "{ch}"
        );
    }
    bystander.assert_alive();
    stop_gateway(server);
}

fn publish_api(addr: SocketAddr, body: Value) -> HttpResponse {
    http_post_json(addr, "/api/publish", &body)
}

#[test]
fn exclude_client_skips_only_the_publishers_connection() {
    let server = start_gateway(namespaces);
    let addr = server.local_addr();
    let mut bystander = Client::connect(addr, "/ws");
    let mut a = Client::connect(addr, "/ws?user=ann");
    let mut b = Client::connect(addr, "/ws?user=ann");
    for c in [&mut a, &mut b] {
        c.connect_reply("$user:ann");
        c.subscribe("room:x");
    }
    let r =
        a.call(json!({"op": "publish", "channel": "room:x", "data": 1, "exclude_client": true}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(b.next_publication("room:x"), (1, json!(1)));
    // The API names the connection by its client id (as presence shows
    // it: b is alone in room:solo).
    b.subscribe("room:solo");
    let b_id = client_id(&mut b, "room:solo");
    let r = publish_api(
        addr,
        json!({"channel": "room:x", "data": 2, "exclude_client": b_id}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.next_publication("room:x"), (2, json!(2)));
    // Neither excluded publication reached the excluded connection: the
    // next thing each gets is the pong of a ping.
    a.assert_nothing_pending();
    b.assert_nothing_pending();
    for bad in [json!("no spaces allowed"), json!(""), json!(7)] {
        let r = publish_api(
            addr,
            json!({"channel": "room:x", "data": 3, "exclude_client": bad}),
        );
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    bystander.assert_alive();
    stop_gateway(server);
}

#[test]
fn idempotency_keys_answer_the_first_result_even_pipelined() {
    let server = start_gateway(|_| {});
    let addr = server.local_addr();
    let mut bystander = Client::connect(addr, "/ws");
    let mut sub = Client::connect(addr, "/ws");
    sub.subscribe("orders");
    let mut p = Client::connect(addr, "/ws");
    // Twenty publishes with one key, sent before any reply is read.
    for i in 0..20 {
        p.send_json(&json!({"id": i, "op": "publish", "channel": "orders",
            "data": {"n": i}, "idempotency_key": "order-1"}));
    }
    for i in 0..20 {
        let r = p.reply_to(&json!(i));
        assert_eq!(
            (r["ok"].clone(), r["offset"].clone()),
            (json!(true), json!(1)),
            "{r}"
        );
    }
    assert_eq!(sub.next_publication("orders"), (1, json!({"n": 0})));
    // Another key is another publication; the API shares the keys.
    let r = publish_api(
        addr,
        json!({"channel": "orders", "data": "x", "idempotency_key": "order-2"}),
    );
    assert_eq!(r.json()["offset"], 2);
    let r = publish_api(
        addr,
        json!({"channel": "orders", "data": "y", "idempotency_key": "order-1"}),
    );
    assert_eq!(r.json()["offset"], 1, "the first result: {}", r.text());
    // Same key, other channel: independent.
    let r = publish_api(
        addr,
        json!({"channel": "other", "data": "z", "idempotency_key": "order-1"}),
    );
    assert_eq!(r.json()["offset"], 1);
    assert_eq!(sub.next_publication("orders"), (2, json!("x")));
    sub.assert_nothing_pending();
    let h = http_get(addr, "/api/history?channel=orders").json();
    assert_eq!(h["publications"].as_array().unwrap().len(), 2, "{h}");
    // Bad keys are refused, on the op and the API, and nothing is published.
    let long = "k".repeat(129);
    for bad in [json!(""), json!(long), json!("tab\there"), json!(5)] {
        let r = p
            .call(json!({"op": "publish", "channel": "orders", "data": 0, "idempotency_key": bad}));
        assert_eq!(r["error"]["code"], 3, "{bad}: {r}");
        let r = publish_api(
            addr,
            json!({"channel": "orders", "data": 0, "idempotency_key": bad}),
        );
        assert_eq!(r.status, 400, "{bad}");
    }
    let r = publish_api(
        addr,
        json!([{"channel": "orders", "data": 0, "idempotency_key": "k"}]),
    );
    assert_eq!(r.status, 400, "no options in batches: {}", r.text());
    sub.assert_nothing_pending();
    bystander.assert_alive();
    stop_gateway(server);
}

#[test]
fn skip_history_delivers_without_an_offset_and_keeps_nothing() {
    let server = start_gateway(|_| {});
    let addr = server.local_addr();
    let mut sub = Client::connect(addr, "/ws");
    sub.subscribe("ticks");
    let first = publish_api(addr, json!({"channel": "ticks", "data": "kept"})).json();
    assert_eq!(sub.next_publication("ticks"), (1, json!("kept")));
    let r = publish_api(
        addr,
        json!({"channel": "ticks", "data": "live", "skip_history": true}),
    );
    assert_eq!(r.json(), first, "the position does not move: {}", r.text());
    assert_eq!(sub.next(), json!({"channel": "ticks", "data": "live"}));
    let mut p = Client::connect(addr, "/ws");
    let r =
        p.call(json!({"op": "publish", "channel": "ticks", "data": "op", "skip_history": true}));
    assert_eq!(
        (r["ok"].clone(), r["offset"].clone()),
        (json!(true), json!(1)),
        "{r}"
    );
    assert_eq!(sub.next(), json!({"channel": "ticks", "data": "op"}));
    let h = http_get(addr, "/api/history?channel=ticks").json();
    assert_eq!(h["publications"].as_array().unwrap().len(), 1, "{h}");
    // A subscriber recovering from offset 1 missed nothing kept.
    let mut late = Client::connect(addr, "/ws");
    let epoch = first["epoch"].as_str().unwrap();
    let r = late.subscribe_since("ticks", epoch, 1);
    assert_eq!(r["recovered"], true, "{r}");
    late.assert_nothing_pending();
    stop_gateway(server);
}

#[test]
fn the_history_op_pages_by_since_limit_and_reverse() {
    let server = start_gateway(|cfg| {
        cfg.channels.history_size = 2000;
    });
    let addr = server.local_addr();
    let mut bystander = Client::connect(addr, "/ws");
    bystander.subscribe("news");
    let items: Vec<Value> = (1..=1100)
        .map(|i| json!({"channel": "feed", "data": i}))
        .collect();
    for chunk in items.chunks(100) {
        api_batch(addr, chunk);
    }
    let mut c = Client::connect(addr, "/ws");
    let offsets = |r: &Value| -> Vec<u64> {
        r["publications"]
            .as_array()
            .unwrap_or_else(|| panic!("no publications: {r}"))
            .iter()
            .map(|p| {
                assert_eq!(p["channel"], "feed");
                assert_eq!(p["data"], p["offset"], "{p}");
                p["offset"].as_u64().unwrap()
            })
            .collect()
    };
    let r = c.call(json!({"op": "history", "channel": "feed", "limit": 3}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["offset"], 1100);
    let epoch = r["epoch"].as_str().unwrap().to_string();
    assert_eq!(offsets(&r), [1098, 1099, 1100]);
    let r = c.call(json!({"op": "history", "channel": "feed", "limit": 3, "reverse": true}));
    assert_eq!(offsets(&r), [1100, 1099, 1098]);
    let r = c.call(json!({"op": "history", "channel": "feed", "limit": 2,
        "since": {"epoch": epoch, "offset": 5}}));
    assert_eq!(
        (offsets(&r), r["recovered"].clone()),
        (vec![6, 7], json!(true))
    );
    // Default limit, and a huge one bounded.
    let r = c.call(json!({"op": "history", "channel": "feed"}));
    assert_eq!(offsets(&r).len(), 100);
    let r = c.call(json!({"op": "history", "channel": "feed", "limit": 1_000_000_000u64}));
    let got = offsets(&r);
    assert_eq!((got.len(), got[0]), (1000, 101), "bounded to the last 1000");
    // limit 0: the position only.
    let r = c.call(json!({"op": "history", "channel": "feed", "limit": 0}));
    assert_eq!((offsets(&r).len(), r["offset"].clone()), (0, json!(1100)));
    // A position from another epoch: nothing, recovered false.
    let r = c.call(json!({"op": "history", "channel": "feed",
        "since": {"epoch": "not-this-one", "offset": 5}}));
    assert_eq!(
        (offsets(&r).len(), r["recovered"].clone()),
        (0, json!(false)),
        "{r}"
    );
    // Bad requests: each answered with its error, in order.
    for (op, code) in [
        (json!({"op": "history"}), 3),
        (json!({"op": "history", "channel": "bad channel"}), 4),
        (json!({"op": "history", "channel": "feed", "limit": -1}), 3),
        (
            json!({"op": "history", "channel": "feed", "since": {"epoch": "e", "offset": "x"}}),
            3,
        ),
        (
            json!({"op": "history", "channel": "feed", "reverse": true,
            "since": {"epoch": epoch, "offset": 5}}),
            3,
        ),
    ] {
        let r = c.call(op.clone());
        assert_eq!(r["error"]["code"], code, "{op}: {r}");
    }
    // Over POST /send too.
    let r = http_post_json(
        addr,
        "/send",
        &json!({"id": 9, "op": "history", "channel": "feed", "limit": 2, "reverse": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(offsets(&r.json()), [1100, 1099]);
    assert_eq!(r.json()["id"], 9);
    bystander.assert_alive();
    stop_gateway(server);
}

fn users_online(addr: SocketAddr, users: &[&str]) -> HttpResponse {
    let q: Vec<String> = users
        .iter()
        .map(|u| format!("user={}", url_encode(u)))
        .collect();
    http_get(addr, &format!("/api/presence/users?{}", q.join("&")))
}

#[test]
fn user_presence_is_answered_for_many_users_at_once() {
    // A thousand user ids fit in a request head.
    let server = start_gateway(|cfg| cfg.limits.max_head = 32 << 10);
    let addr = server.local_addr();
    let mut bystander = Client::connect(addr, "/ws");
    let a1 = Client::connect(addr, "/ws?user=ann");
    let mut a2 = Client::connect(addr, "/ws?user=ann");
    a2.assert_alive();
    let mut b = Client::connect(addr, "/ws?user=bob");
    b.assert_alive();
    let r = users_online(addr, &["ann", "bob", "cid"]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"users": {"ann": true, "bob": true, "cid": false}})
    );
    a1.close();
    b.close();
    wait_until(WAIT, "bob offline, ann still online", || {
        users_online(addr, &["ann", "bob"]).json() == json!({"users": {"ann": true, "bob": false}})
    });
    a2.close();
    wait_until(WAIT, "ann offline", || {
        users_online(addr, &["ann"]).json() == json!({"users": {"ann": false}})
    });
    // A thousand users in one request; one more is refused.
    let many: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let r = users_online(addr, &refs[..1000]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["users"].as_object().unwrap().len(), 1000);
    assert_eq!(users_online(addr, &refs).status, 400);
    assert_eq!(users_online(addr, &["bad user"]).status, 400);
    assert_eq!(http_get(addr, "/api/presence/users").status, 400);
    bystander.assert_alive();
    stop_gateway(server);
}

#[test]
fn an_sse_stream_counts_in_presence_and_a_long_poll_request_does_not() {
    let backend = Backend::start();
    let server = start_gateway(|cfg| send_webhooks_to(cfg, &backend));
    let addr = server.local_addr();
    let mut bystander = Client::connect(addr, "/ws");
    let mut sse = stream_util::SseReader::open(addr, "/sse?user=sam&channel=news", None);
    sse.next_event(WAIT).expect("the stream's first event");
    // A long-poll request of pat comes and goes (an empty poll: wait=0).
    let (st, _) = stream_util::get_json(addr, "/poll?user=pat&channel=news&wait=0", WAIT).unwrap();
    assert_eq!(st, 200);
    // So does a POST /send op of pat.
    let r = http_post_json(addr, "/send?user=pat", &json!({"id": 1, "op": "ping"}));
    assert_eq!(r.status, 200);
    let r = users_online(addr, &["sam", "pat"]);
    assert_eq!(r.json(), json!({"users": {"sam": true, "pat": false}}));
    drop(sse);
    wait_until(WAIT, "sam offline", || {
        users_online(addr, &["sam"]).json() == json!({"users": {"sam": false}})
    });
    let evs = wait_events(&backend, "sam's events", |e| {
        !named(e, "user_offline").is_empty() && !named(e, "client_disconnected").is_empty()
    });
    let about = |user: &str| -> Vec<&str> {
        evs.iter()
            .filter(|e| e["user_id"] == user && e.get("channel").is_none())
            .map(|e| e["name"].as_str().unwrap())
            .collect()
    };
    assert_eq!(
        about("sam"),
        ["user_online", "client_disconnected", "user_offline"]
    );
    assert!(
        about("pat").is_empty(),
        "a request is not a connection: {evs:#?}"
    );
    bystander.assert_alive();
    stop_gateway(server);
}

/// A raw WebSocket of `user` (so that its events can be told apart): the
/// upgrade, then `frame` as sent; returns the close frame's payload the
/// gateway answered with (code, reason).
fn raw_protocol_error(addr: SocketAddr, user: &str, frame: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET /ws?user={user} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).expect("the 101");
        assert!(n > 0, "closed before the 101");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(
        buf.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    let head = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    buf.drain(..head);
    s.write_all(frame).unwrap();
    // Everything until the gateway closes: the personal channel's reply,
    // then the close frame.
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let mut rest = &buf[..];
    while rest.len() >= 2 {
        let (op, len) = (rest[0] & 0x0F, (rest[1] & 0x7F) as usize);
        assert!(len < 126, "small server frames only here");
        let payload = &rest[2..2 + len];
        if op == 0x8 {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            return (code, String::from_utf8(payload[2..].to_vec()).unwrap());
        }
        rest = &rest[2 + len..];
    }
    panic!("no close frame from the gateway: {buf:?}");
}

#[test]
fn client_disconnected_reports_the_close_code_and_reason_the_gateway_sent() {
    let backend = Backend::start();
    let server = start_gateway(|cfg| {
        send_webhooks_to(cfg, &backend);
        cfg.limits.max_message = 1024;
    });
    let addr = server.local_addr();
    let mut bystander = Client::connect(addr, "/ws");
    bystander.subscribe("news");
    // Each a protocol error the gateway closes with its code (RFC 6455
    // §7.4.1): an unmasked client frame (1002), text that is not UTF-8
    // (1007, masked with a zero key), a frame over limits.max_message
    // (1009).
    let cases: [(&str, Vec<u8>, u16, &str); 3] = [
        (
            "p1002",
            vec![0x81, 0x02, b'h', b'i'],
            1002,
            "client frame not masked",
        ),
        (
            "p1007",
            vec![0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe],
            1007,
            "invalid UTF-8",
        ),
        (
            "p1009",
            vec![0x81, 0xFE, 0x10, 0x00, 0, 0, 0, 0],
            1009,
            "message too big",
        ),
    ];
    for (user, frame, code, reason) in &cases {
        let sent = raw_protocol_error(addr, user, frame);
        assert_eq!(sent, (*code, reason.to_string()), "{user}");
        bystander.assert_alive();
    }
    let evs = wait_events(&backend, "three client_disconnected", |e| {
        named(e, "client_disconnected").len() == 3
    });
    for (user, _, code, reason) in &cases {
        let gone: Vec<&Value> = named(&evs, "client_disconnected")
            .into_iter()
            .filter(|e| e["user_id"] == *user)
            .collect();
        assert_eq!(gone.len(), 1, "{user}: {evs:#?}");
        assert_eq!(
            (&gone[0]["code"], &gone[0]["reason"]),
            (&json!(code), &json!(reason)),
            "{user}: the code and reason the gateway sent, not 1006"
        );
    }
    // A client's own close frame: its code and reason, as before.
    let mut c = Client::connect(addr, "/ws?user=polite");
    c.assert_alive();
    close_with(c, 4001);
    let evs = wait_events(&backend, "polite's client_disconnected", |e| {
        named(e, "client_disconnected").len() == 4
    });
    let last = named(&evs, "client_disconnected")[3];
    assert_eq!(
        (&last["user_id"], &last["code"], &last["reason"]),
        (&json!("polite"), &json!(4001), &json!("bye"))
    );
    bystander.assert_alive();
    stop_gateway(server);
}

/// A publish repeating an idempotency key (pipelined behind the first, or
/// later) is answered with the first result and sends no second
/// `client_event`.
#[test]
fn a_repeated_idempotency_key_sends_one_client_event() {
    let backend = Backend::start();
    let server = start_gateway(|cfg| {
        namespaces(cfg);
        send_webhooks_to(cfg, &backend);
    });
    let addr = server.local_addr();
    let mut bystander = Client::connect(addr, "/ws");
    bystander.subscribe("news");
    let mut c = Client::connect(addr, "/ws?user=ann");
    for (i, data) in ["first", "again", "and again"].iter().enumerate() {
        c.send_json(&json!({"id": i, "op": "publish", "channel": "chat:1",
            "data": data, "idempotency_key": "k-1"}));
    }
    for i in 0..3 {
        let r = c.reply_to(&json!(i));
        assert_eq!((&r["ok"], &r["offset"]), (&json!(true), &json!(1)), "{r}");
    }
    let r = c.call(
        json!({"op": "publish", "channel": "chat:1", "data": "later", "idempotency_key": "k-1"}),
    );
    assert_eq!(r["offset"], 1, "the first result: {r}");
    let r = c.call(json!({"op": "publish", "channel": "chat:1", "data": "marker"}));
    assert_eq!(r["offset"], 2, "{r}");
    let evs = wait_events(&backend, "the marker's client_event", |evs| {
        evs.iter()
            .any(|e| e["name"] == "client_event" && e["data"] == "marker")
    });
    let data: Vec<&Value> = named(&evs, "client_event")
        .iter()
        .map(|e| &e["data"])
        .collect();
    assert_eq!(data, [&json!("first"), &json!("marker")], "{evs:#?}");
    bystander.assert_alive();
    stop_gateway(server);
}
