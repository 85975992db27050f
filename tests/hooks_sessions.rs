//! The subscribe, publish and rpc proxies wired into sessions (issue 15
//! part 2b), end to end against the test backend (`tests/backend/app.py`):
//! what the backend receives, what each decision does for the client
//! (over `/ws`, `POST /send` and SSE), pipelined ops answered once each and
//! in order, and every failure (down, slow, 5xx, bad JSON, huge, a closed
//! connection, a restart during traffic) answered with error 14 while the
//! connection and a bystander stay served.

#[path = "backend_util/mod.rs"]
mod backend_util;
#[path = "support/bystander.rs"]
mod bystander;
#[path = "support/gateway.rs"]
mod gateway_support;
#[path = "stream_util/mod.rs"]
mod stream_util;

use std::time::{Duration, Instant};

use backend_util::{Backend, DEADLINE};
use bystander::Bystander;
use gateway_support::*;
use serde_json::{json, Value};
use tungstenite::Message;
use wsgate::config::{ChannelOverrides, Config, Millis};
use wsgate::server::Server;

/// `chat:` is checked by the backend (subscribe and publish), `room:` has
/// presence and is checked on subscribe; everything else is not.
fn hooked(cfg: &mut Config, backend: &Backend, timeout_ms: u64) {
    cfg.proxy.subscribe = backend.url("subscribe");
    cfg.proxy.publish = backend.url("publish");
    cfg.proxy.rpc = backend.url("rpc");
    cfg.proxy.timeout = Millis(timeout_ms);
    cfg.proxy.concurrency = 4;
    cfg.proxy.max_answer = 64 * 1024;
    cfg.proxy.forward_headers = vec!["X-Trace".into()];
    cfg.namespaces.insert(
        "chat".into(),
        ChannelOverrides {
            subscribe_proxy: Some(true),
            publish_proxy: Some(true),
            ..Default::default()
        },
    );
    cfg.namespaces.insert(
        "room".into(),
        ChannelOverrides {
            subscribe_proxy: Some(true),
            presence: Some(true),
            ..Default::default()
        },
    );
}

fn start(backend: &Backend, timeout_ms: u64) -> Server {
    start_gateway(|cfg| hooked(cfg, backend, timeout_ms))
}

fn code(r: &Value) -> u64 {
    r["error"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("an error reply: {r}"))
}

/// A `/ws` connection with a header the proxies forward, and one they
/// do not.
fn connect_traced(addr: std::net::SocketAddr, trace: &str) -> Client {
    Client::connect_with_headers(addr, "/ws", &[("X-Trace", trace), ("X-Secret", "no")])
}

#[test]
fn the_backend_decides_subscribes_publishes_and_rpcs_over_websocket() {
    let backend = Backend::start();
    let server = start(&backend, 5_000);
    let addr = server.local_addr();
    let mut by = Bystander::connect(addr, "bystander");
    let mut c = connect_traced(addr, "t-1");
    let mut reader = Client::connect(addr, "/ws");
    reader.subscribe("chat:1");
    assert_eq!(backend.log("subscribe").len(), 1);

    // Allowed: the backend saw Centrifugo's fields and the forwarded header.
    backend.set(
        "subscribe",
        json!({"mode": "result", "result": {"data": {"welcome": 1}}, "count": 1}),
    );
    let r = c.subscribe("chat:1");
    assert_eq!(r["data"], json!({"welcome": 1}), "{r}");
    let log = backend.log("subscribe");
    let req = &log.last().unwrap();
    assert_eq!(req["body"]["channel"], "chat:1");
    assert_eq!(req["body"]["transport"], "websocket");
    assert_eq!(req["body"]["user"], "");
    assert!(req["body"]["client"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(req["headers"]["x-trace"], "t-1", "{req}");
    assert!(req["headers"].get("x-secret").is_none(), "{req}");
    // Not in a proxied namespace: the backend is not asked.
    c.subscribe("news");
    assert_eq!(backend.log("subscribe").len(), 2);

    // Refused with the backend's own code; HTTP 403: permission denied.
    backend.set(
        "subscribe",
        json!({"mode": "error", "error": {"code": 1403, "message": "not a member"}, "count": 1}),
    );
    let r = c.call(json!({"op": "subscribe", "channel": "chat:2"}));
    assert_eq!(
        (code(&r), &r["error"]["message"]),
        (1403, &json!("not a member"))
    );
    backend.set(
        "subscribe",
        json!({"mode": "status", "status": 403, "count": 1}),
    );
    let r = c.call(json!({"op": "subscribe", "channel": "chat:2"}));
    assert_eq!(code(&r), 8, "{r}");
    // Not subscribed after a refusal: a later subscribe is asked again.
    c.subscribe("chat:2");

    // Publish: allowed as sent, replaced, refused.
    let r = c.call(json!({"op": "publish", "channel": "chat:1", "data": {"n": 1}}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(reader.next_publication("chat:1").1, json!({"n": 1}));
    let p = backend.log("publish");
    assert_eq!(p.last().unwrap()["body"]["data"], json!({"n": 1}));
    backend.set(
        "publish",
        json!({"mode": "result", "result": {"data": {"stored": 2}}, "count": 1}),
    );
    let r = c.call(json!({"op": "publish", "channel": "chat:1", "data": {"n": 2}}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(reader.next_publication("chat:1").1, json!({"stored": 2}));
    backend.set(
        "publish",
        json!({"mode": "error", "error": {"code": 429, "message": "slow down", "temporary": true}, "count": 1}),
    );
    let r = c.call(json!({"op": "publish", "channel": "chat:1", "data": {"n": 3}}));
    assert_eq!(code(&r), 429, "{r}");
    assert_eq!(r["error"]["temporary"], true, "{r}");
    // Not published: the next publication the reader gets is the 4th.
    c.call(json!({"op": "publish", "channel": "chat:1", "data": {"n": 4}}));
    assert_eq!(reader.next_publication("chat:1").1, json!({"n": 4}));

    // rpc: the backend's data, as is.
    let r = c.call(json!({"id": 77, "op": "rpc", "method": "sum", "data": {"a": [1, 2]}}));
    assert_eq!(
        r,
        json!({"id": 77, "ok": true, "data": {"method": "sum", "echo": {"a": [1, 2]}}})
    );
    backend.set(
        "rpc",
        json!({"mode": "error", "error": {"code": 404, "message": "no such method"}, "count": 1}),
    );
    let r = c.call(json!({"op": "rpc", "method": "nope"}));
    assert_eq!(code(&r), 404, "{r}");
    let r = c.call(json!({"op": "rpc"}));
    assert_eq!(code(&r), 3, "missing method: {r}");
    by.assert_served("decisions");

    // A disconnect closes the connection with its code.
    backend.set(
        "rpc",
        json!({"mode": "disconnect", "disconnect": {"code": 4501, "reason": "banned"}, "count": 1}),
    );
    c.send_json(&json!({"id": 1, "op": "rpc", "method": "m"}));
    loop {
        match c.try_next(WAIT) {
            Ok(m) => assert!(m.get("id") != Some(&json!(1)), "no reply: {m}"),
            Err(e) => {
                assert_eq!(format!("{e:?}"), "Closed(Some(4501))");
                break;
            }
        }
    }
    by.assert_served("disconnect");
    reader.assert_alive();
    stop_gateway(server);
}

#[test]
fn rpc_without_an_rpc_proxy_is_an_unknown_op() {
    let server = start_gateway(|_| {});
    let mut c = Client::connect(server.local_addr(), "/ws");
    let r = c.call(json!({"op": "rpc", "method": "m", "data": {}}));
    assert_eq!(code(&r), 2, "{r}");
    c.assert_alive();
    stop_gateway(server);
}

/// Several proxied ops in one TCP write: each answered once, in the order
/// sent, with the effects of one at a time (a subscribe allowed after a
/// pipelined unsubscribe of the same channel stays undone).
#[test]
fn pipelined_proxied_ops_are_answered_once_each_in_order() {
    let backend = Backend::start();
    let server = start(&backend, 10_000);
    let addr = server.local_addr();
    let mut by = Bystander::connect(addr, "bystander");
    // The first subscribe's decision comes late: everything after it that
    // does not depend on it is decided meanwhile, and waits for its turn.
    backend.set(
        "subscribe",
        json!({"mode": "slow", "delay_ms": 400, "count": 1}),
    );
    let mut c = Client::connect(addr, "/ws");
    let mut reader = Client::connect(addr, "/ws");
    reader.subscribe("chat:x");
    let ops = [
        json!({"id": 1, "op": "subscribe", "channel": "room:a"}),
        json!({"id": 2, "op": "rpc", "method": "m", "data": 2}),
        json!({"id": 3, "op": "publish", "channel": "chat:x", "data": 3}),
        json!({"id": 4, "op": "ping"}),
        json!({"id": 5, "op": "unsubscribe", "channel": "room:a"}),
        json!({"id": 6, "op": "subscribe", "channel": "room:a"}),
        json!({"id": 7, "op": "unsubscribe", "channel": "room:a"}),
        json!({"id": 8, "op": "publish", "channel": "chat:x", "data": 8}),
        json!({"id": 9, "op": "rpc", "method": "m", "data": 9}),
    ];
    for op in &ops {
        c.ws.write(Message::Text(op.to_string())).unwrap();
    }
    c.ws.flush().unwrap();
    let mut ids = Vec::new();
    for _ in &ops {
        let m = c.next();
        ids.push(m["id"].as_u64().unwrap_or_else(|| panic!("a reply: {m}")));
        assert_eq!(m["ok"], true, "{m}");
        match m["id"].as_u64() {
            Some(2 | 9) => assert_eq!(m["data"]["echo"], m["id"], "{m}"),
            Some(3 | 8) => assert!(m["offset"].as_u64().is_some(), "{m}"),
            _ => {}
        }
    }
    assert_eq!(ids, (1..=9).collect::<Vec<u64>>());
    // The publications reached the broker in the order sent.
    assert_eq!(reader.next_publication("chat:x").1, json!(3));
    assert_eq!(reader.next_publication("chat:x").1, json!(8));
    // In a subscribe-proxy namespace history needs the subscription the
    // backend allowed.
    let h = c.call(json!({"op": "history", "channel": "chat:x"}));
    assert_eq!(code(&h), 8, "{h}");
    let h = reader.call(json!({"op": "history", "channel": "chat:x"}));
    assert_eq!(h["ok"], true, "{h}");
    // Unsubscribed at the end: not in the room's presence.
    let p = api_presence(addr, "room:a");
    assert_eq!(p["members"], json!([]), "{p}");
    c.assert_nothing_pending();
    by.assert_served("pipelined");
    stop_gateway(server);
}

/// Every way the backend can fail to decide: error 14 (temporary), nothing
/// applied, the connection kept and a bystander served.
#[test]
fn backend_failures_are_error_14_and_the_connection_is_kept() {
    let mut backend = Backend::start();
    let server = start(&backend, 700);
    let addr = server.local_addr();
    let mut by = Bystander::connect(addr, "bystander");
    let mut c = Client::connect(addr, "/ws");
    let mut reader = Client::connect(addr, "/ws");
    reader.subscribe("chat:r");
    let cases = [
        ("slow", json!({"mode": "slow", "delay_ms": 3000})),
        ("5xx", json!({"mode": "status", "status": 500})),
        ("404", json!({"mode": "status", "status": 404})),
        ("bad JSON", json!({"mode": "badjson"})),
        ("huge", json!({"mode": "huge", "size": 200_000})),
        ("closed", json!({"mode": "close"})),
        (
            "code out of range",
            json!({"mode": "error", "error": {"code": 10, "message": "x"}}),
        ),
    ];
    for (what, mode) in &cases {
        for hook in ["subscribe", "publish", "rpc"] {
            let mut b = mode.clone();
            b["count"] = json!(1);
            backend.set(hook, b);
        }
        let r = c.call(json!({"op": "subscribe", "channel": "chat:f"}));
        assert_eq!(code(&r), 14, "{what}: {r}");
        assert_eq!(r["error"]["temporary"], true, "{what}: {r}");
        let r = c.call(json!({"op": "publish", "channel": "chat:r", "data": what}));
        assert_eq!(code(&r), 14, "{what}: {r}");
        let r = c.call(json!({"op": "rpc", "method": "m"}));
        assert_eq!(code(&r), 14, "{what}: {r}");
        c.assert_alive();
        by.assert_served(what);
    }
    // Nothing was applied: not subscribed (a subscribe is allowed now), and
    // no failed publish reached the reader.
    backend.reset();
    c.subscribe("chat:f");
    c.call(json!({"op": "publish", "channel": "chat:r", "data": "after"}));
    assert_eq!(reader.next_publication("chat:r").1, json!("after"));

    // Each failure counted by hook and kind on /metrics.
    let m = http_get(addr, "/metrics").text();
    for (kind, n) in [
        ("timeout", 1),
        ("status", 2),
        ("too_big", 1),
        ("bad_answer", 2),
    ] {
        for hook in ["subscribe", "publish", "rpc"] {
            let line =
                format!("wsgate_proxy_failures_total{{hook=\"{hook}\",kind=\"{kind}\"}} {n}\n");
            assert!(m.contains(&line), "{line} in:\n{m}");
        }
    }
    assert!(
        m.contains("wsgate_proxy_seconds_count{hook=\"rpc\"}"),
        "{m}"
    );

    // Down: refused connections.
    backend.kill();
    let r = c.call(json!({"op": "rpc", "method": "m"}));
    assert_eq!(code(&r), 14, "down: {r}");
    let r = c.call(json!({"op": "subscribe", "channel": "chat:g"}));
    assert_eq!(code(&r), 14, "down: {r}");
    by.assert_served("down");
    backend.restart();
    let r = c.call(json!({"op": "rpc", "method": "m", "data": 1}));
    assert_eq!(r["data"]["echo"], 1, "back: {r}");
    c.subscribe("chat:g");
    stop_gateway(server);
}

/// The backend restarts while rpcs flow: every call is answered exactly
/// once (ok, or 14 while it is down) and calls succeed again after.
#[test]
fn the_backend_restarts_during_traffic() {
    let mut backend = Backend::start();
    let server = start(&backend, 2_000);
    let addr = server.local_addr();
    let mut by = Bystander::connect(addr, "bystander");
    let restarted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = restarted.clone();
    let worker = std::thread::spawn(move || {
        use std::sync::atomic::Ordering;
        let mut c = Client::connect(addr, "/ws");
        let (mut before, mut failed, mut after) = (0u32, 0u32, 0u32);
        let end = Instant::now() + Duration::from_secs(25);
        // Bounded in count and time; every reply matched to its id once.
        for n in 0..20_000u32 {
            if Instant::now() > end || after >= 20 {
                break;
            }
            let done = flag.load(Ordering::Acquire);
            let r = c.call(json!({"op": "rpc", "method": "m", "data": n}));
            if r["ok"] == true {
                assert_eq!(r["data"]["echo"], n, "{r}");
                if done {
                    after += 1;
                } else {
                    before += 1;
                }
            } else {
                assert_eq!(code(&r), 14, "{r}");
                failed += 1;
            }
        }
        c.assert_nothing_pending();
        (before, failed, after)
    });
    backend_util::wait_for(DEADLINE, "some rpcs answered", || {
        backend.stats()["requests"]["rpc"].as_u64() > Some(20)
    });
    backend.restart();
    restarted.store(true, std::sync::atomic::Ordering::Release);
    let (before, failed, after) = worker.join().expect("the client thread");
    assert!(
        before > 0 && after >= 20,
        "ok before {before}, failed {failed}, ok after the restart {after}"
    );
    // After the restart calls go through again.
    let mut c = Client::connect(addr, "/ws");
    let r = c.call(json!({"op": "rpc", "method": "m", "data": "x"}));
    assert_eq!(r["data"]["echo"], "x", "{r}");
    by.assert_served("restart");
    stop_gateway(server);
}

/// A decision that comes after its connection closed is dropped: a late
/// allowed subscribe is never made (the room's presence stays empty).
#[test]
fn a_late_decision_for_a_closed_connection_is_dropped() {
    let backend = Backend::start();
    let server = start(&backend, 10_000);
    let addr = server.local_addr();
    let mut by = Bystander::connect(addr, "bystander");
    backend.set("subscribe", json!({"mode": "slow", "delay_ms": 500}));
    let mut c = Client::connect(addr, "/ws");
    c.send_json(&json!({"id": 1, "op": "subscribe", "channel": "room:late"}));
    backend_util::wait_for(DEADLINE, "the backend asked", || {
        backend.stats()["in_flight"]["subscribe"].as_u64() == Some(1)
    });
    drop(c);
    backend_util::wait_for(DEADLINE, "the backend answered", || {
        backend.stats()["in_flight"]["subscribe"].as_u64() == Some(0)
    });
    // Answered: a later subscribe on another connection is decided after
    // it, and the late one was not made.
    backend.reset();
    let mut d = Client::connect(addr, "/ws");
    d.subscribe("room:other");
    let p = api_presence(addr, "room:late");
    assert_eq!(p["members"], json!([]), "{p}");
    by.assert_served("late decision");
    stop_gateway(server);
}

/// `POST /send`: rpc and a proxied publish, with the backend's refusal as
/// the HTTP status and 502 when it cannot decide.
#[test]
fn send_carries_rpc_and_proxied_publish() {
    let backend = Backend::start();
    let server = start(&backend, 700);
    let addr = server.local_addr();
    let mut by = Bystander::connect(addr, "bystander");
    let mut reader = Client::connect(addr, "/ws");
    reader.subscribe("chat:s");
    let send = |v: Value| {
        let r = http(
            addr,
            "POST",
            "/send",
            &[("Content-Type", "application/json"), ("X-Trace", "s-1")],
            v.to_string().as_bytes(),
        );
        (r.status, r.json())
    };
    let (status, r) = send(json!({"id": 5, "op": "rpc", "method": "m", "data": [1]}));
    assert_eq!(
        (status, r),
        (
            200,
            json!({"id": 5, "ok": true, "data": {"method": "m", "echo": [1]}})
        )
    );
    let log = backend.log("rpc");
    assert_eq!(log.last().unwrap()["body"]["transport"], "send");
    assert_eq!(log.last().unwrap()["headers"]["x-trace"], "s-1");
    let (status, r) = send(json!({"id": 6, "op": "publish", "channel": "chat:s", "data": 6}));
    assert_eq!(status, 200, "{r}");
    assert!(r["offset"].as_u64().is_some(), "{r}");
    assert_eq!(reader.next_publication("chat:s").1, json!(6));
    backend.set(
        "publish",
        json!({"mode": "error", "error": {"code": 403, "message": "read only"}, "count": 1}),
    );
    let (status, r) = send(json!({"id": 7, "op": "publish", "channel": "chat:s", "data": 7}));
    assert_eq!((status, code(&r)), (403, 403), "{r}");
    backend.set("rpc", json!({"mode": "status", "status": 503, "count": 1}));
    let (status, r) = send(json!({"id": 8, "op": "rpc", "method": "m"}));
    assert_eq!((status, code(&r)), (502, 14), "{r}");
    reader.call(json!({"op": "publish", "channel": "chat:s", "data": 9}));
    assert_eq!(
        reader.next_publication("chat:s").1,
        json!(9),
        "7 was not published"
    );
    by.assert_served("send");
    stop_gateway(server);
}

/// SSE and long-poll streams ask the subscribe proxy for the channels of
/// their URL: an allowed one streams, a refused one gets its error.
#[test]
fn streams_ask_the_subscribe_proxy_for_their_channels() {
    let backend = Backend::start();
    let server = start(&backend, 5_000);
    let addr = server.local_addr();
    let mut by = Bystander::connect(addr, "bystander");
    backend.set(
        "subscribe",
        json!({"mode": "error", "error": {"code": 1403, "message": "no"}, "count": 1}),
    );
    let mut sse = stream_util::SseReader::open(addr, "/sse?channel=chat:no", None);
    let e = sse.next_event(WAIT).expect("an event");
    assert_eq!(e.kind, "error", "{e:?}");
    let v: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(
        (v["channel"].clone(), v["error"]["code"].clone()),
        (json!("chat:no"), json!(1403))
    );
    let log = backend.log("subscribe");
    assert_eq!(log.last().unwrap()["body"]["transport"], "sse");

    let mut sse = stream_util::SseReader::open(addr, "/sse?channel=chat:yes", None);
    let e = sse.next_event(WAIT).expect("an event");
    assert_eq!(e.kind, "subscribed", "{e:?}");
    api_publish(addr, "chat:yes", json!("hello"));
    let e = sse.next_event(WAIT).expect("the publication");
    let v: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(v["data"], "hello", "{e:?}");

    backend.set(
        "subscribe",
        json!({"mode": "status", "status": 500, "count": 1}),
    );
    let (st, v) = stream_util::get_json(addr, "/poll?channel=chat:p&wait=0", WAIT).unwrap();
    assert_eq!(st, 200, "{v}");
    assert!(v.to_string().contains("\"code\":14"), "{v}");
    assert_eq!(
        backend.log("subscribe").last().unwrap()["body"]["transport"],
        "poll"
    );
    by.assert_served("streams");
    stop_gateway(server);
}

/// A `/ws` upgrade without a token waits for the connect proxy: its user,
/// data and channels when it accepts; its status or close code when it
/// refuses; 503 (never opened) when it cannot decide.
#[test]
fn the_connect_proxy_judges_websocket_upgrades_without_a_token() {
    let mut backend = Backend::start();
    let server = start_gateway(|cfg| {
        hooked(cfg, &backend, 1_500);
        cfg.proxy.connect = backend.url("connect");
    });
    let addr = server.local_addr();
    // The bystander connects through the connect proxy too (allowed): its
    // first message is `connected`.
    let mut by = Client::connect(addr, "/ws");
    let hello = by.next();
    let user = hello["connected"]["user"]
        .as_str()
        .expect("connected")
        .to_string();
    by.connect_reply(&format!("$user:{user}"));
    by.subscribe("bystander");
    let served = |by: &mut Client, what: &str| {
        api_publish(addr, "bystander", json!(what));
        assert_eq!(by.next_publication("bystander").1, json!(what));
        by.assert_alive();
    };
    backend.set(
        "connect",
        json!({"mode": "result", "result": {"user": "ann", "data": {"hi": 1}, "channels": ["inbox:ann"]}, "count": 1}),
    );
    let mut c =
        Client::connect_with_headers(addr, "/ws?channel=news&user=mallory", &[("X-Trace", "c-1")]);
    let first = c.next();
    assert_eq!(first["connected"]["user"], "ann", "{first}");
    assert_eq!(first["connected"]["data"], json!({"hi": 1}), "{first}");
    assert!(first["connected"]["client"].as_str().is_some(), "{first}");
    c.connect_reply("$user:ann");
    c.connect_reply("news");
    c.connect_reply("inbox:ann");
    let log = backend.log("connect");
    let req = &log.last().unwrap();
    assert_eq!(req["body"]["channels"], json!(["news"]), "{req}");
    assert_eq!(req["body"]["transport"], "websocket", "{req}");
    assert_eq!(req["headers"]["x-trace"], "c-1", "{req}");
    api_publish(addr, "inbox:ann", json!("for ann"));
    assert_eq!(c.next_publication("inbox:ann").1, json!("for ann"));
    // The backend's user is the connection's (never `?user=`).
    let r = c.call(json!({"op": "rpc", "method": "who"}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(backend.log("rpc").last().unwrap()["body"]["user"], "ann");

    // Upgraded, or refused: (status, JSON body).
    let upgrade = |path: &str| {
        use tungstenite::client::IntoClientRequest;
        let req = format!("ws://{addr}{path}").into_client_request().unwrap();
        let sock = std::net::TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        match tungstenite::client::client(req, sock) {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                let body = resp.body().as_deref().unwrap_or(b"{}");
                Err((
                    resp.status().as_u16(),
                    serde_json::from_slice::<Value>(body).unwrap(),
                ))
            }
            Err(e) => panic!("{path}: {e}"),
        }
    };
    // Refused with an HTTP status.
    backend.set(
        "connect",
        json!({"mode": "error", "error": {"code": 403, "message": "no session"}, "count": 1}),
    );
    match upgrade("/ws") {
        Err((status, body)) => assert_eq!((status, &body["error"]["code"]), (403, &json!(403))),
        Ok(_) => panic!("refused with 403"),
    }
    // A disconnect: upgraded, then closed with its code.
    backend.set(
        "connect",
        json!({"mode": "disconnect", "disconnect": {"code": 4501, "reason": "unauthorized"}, "count": 1}),
    );
    let mut ws = upgrade("/ws").expect("upgraded");
    match ws.read() {
        Ok(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 4501),
        other => panic!("a close 4501: {other:?}"),
    }
    // Cannot decide (a 500, then the backend down): 503, error 14, never opened.
    backend.set(
        "connect",
        json!({"mode": "status", "status": 500, "count": 1}),
    );
    for round in ["500", "down"] {
        if round == "down" {
            backend.kill();
        }
        match upgrade("/ws") {
            Err((status, body)) => {
                assert_eq!(
                    (status, &body["error"]["code"]),
                    (503, &json!(14)),
                    "{round}: {body}"
                )
            }
            Ok(_) => panic!("{round}: refused with 503"),
        }
        served(&mut by, round);
    }
    backend.restart();
    // SSE, long-poll and /send without a token ask it too
    // (tests/hooks_connect.rs): allowed by the default answer now.
    let r = http_post_json(addr, "/send", &json!({"id": 1, "op": "ping"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        backend.log("connect").last().unwrap()["body"]["transport"],
        "send"
    );
    c.assert_alive();
    stop_gateway(server);
}
