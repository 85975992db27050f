//! The connect proxy on every transport, the refresh proxy, and what the
//! connect answer attaches to a connection (issue 15), end to end against
//! the test backend (`tests/backend/app.py`): SSE, long-poll and `POST
//! /send` without a token wait for the backend as a `/ws` upgrade does
//! (its user, channels, `transport`; its refusals as HTTP statuses; 503
//! with error 14 when it cannot decide); a connect answer's `expire_at`
//! asks the refresh proxy, which renews, ends (4501, or its own code) or
//! cannot decide (kept, asked again); `meta` goes with every later call;
//! and a publish waiting at the publish proxy when its connection closes
//! is dropped, with the publishes queued behind it. A bystander stays
//! served throughout.

#[path = "backend_util/mod.rs"]
mod backend_util;
#[path = "support/gateway.rs"]
mod gateway_support;
#[path = "stream_util/mod.rs"]
mod stream_util;

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use backend_util::{Backend, DEADLINE};
use gateway_support::*;
use serde_json::{json, Value};
use tungstenite::Message;
use wsgate::config::{ChannelOverrides, Config, Millis};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Connect, refresh, subscribe, publish and rpc proxies; `chat:` is
/// checked on publish, `room:` on subscribe (with presence); `lobby:` has
/// presence and is not checked.
fn hooked(cfg: &mut Config, backend: &Backend, timeout_ms: u64) {
    cfg.proxy.connect = backend.url("connect");
    cfg.proxy.refresh = backend.url("refresh");
    cfg.proxy.publish = backend.url("publish");
    cfg.proxy.rpc = backend.url("rpc");
    cfg.proxy.subscribe = backend.url("subscribe");
    cfg.proxy.timeout = Millis(timeout_ms);
    cfg.proxy.concurrency = 4;
    cfg.namespaces.insert(
        "chat".into(),
        ChannelOverrides {
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
    cfg.namespaces.insert(
        "lobby".into(),
        ChannelOverrides {
            presence: Some(true),
            ..Default::default()
        },
    );
}

/// A `/ws` connection admitted by the connect proxy (whatever user it
/// gives), subscribed to `bystander`: it must stay served.
struct Bystander {
    addr: SocketAddr,
    c: Client,
}

impl Bystander {
    fn connect(addr: SocketAddr) -> Bystander {
        let mut c = Client::connect(addr, "/ws");
        let hello = c.next();
        let user = hello["connected"]["user"]
            .as_str()
            .unwrap_or_else(|| panic!("a connected message: {hello}"))
            .to_string();
        c.connect_reply(&format!("$user:{user}"));
        c.subscribe("bystander");
        Bystander { addr, c }
    }

    fn served(&mut self, after: &str) {
        api_publish(self.addr, "bystander", json!(after));
        assert_eq!(self.c.next_publication("bystander").1, json!(after));
        self.c.assert_alive();
    }
}

/// Abort a connection: SO_LINGER 0, then close, so the kernel sends RST.
fn abort(c: Client) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a pointer to a live
    // `linger` of the size we pass.
    let r = unsafe {
        libc::setsockopt(
            c.ws.get_ref().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(c);
}

fn send(addr: SocketAddr, op: &Value) -> (u16, Value) {
    let r = http_post_json(addr, "/send", op);
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

/// SSE, long-poll and `POST /send` without a token ask the connect proxy
/// (their `transport`, the URL's channels), get its user and channels
/// (never `?user=`), and are refused with its status, or 503 and error 14
/// when it cannot decide: never opened unjudged.
#[test]
fn sse_poll_and_send_ask_the_connect_proxy() {
    let mut backend = Backend::start();
    let server = start_gateway(|cfg| hooked(cfg, &backend, 1_500));
    let addr = server.local_addr();
    let mut by = Bystander::connect(addr);

    // SSE: the backend's user and channels, the URL's asked for.
    backend.set(
        "connect",
        json!({"mode": "result", "result": {"user": "sam", "channels": ["inbox:sam"]}, "count": 1}),
    );
    let mut sse = stream_util::SseReader::open(addr, "/sse?channel=news&user=mallory", None);
    let hello = sse.next_event(WAIT).expect("the connected event");
    assert_eq!(hello.kind, "connected", "{hello:?}");
    let mut subscribed = Vec::new();
    while subscribed.len() < 3 {
        let e = sse.next_event(WAIT).expect("a subscribed event");
        assert_eq!(e.kind, "subscribed", "{e:?}");
        let v: Value = serde_json::from_str(&e.data).unwrap();
        subscribed.push(v["channel"].as_str().unwrap().to_string());
    }
    subscribed.sort();
    assert_eq!(subscribed, ["$user:sam", "inbox:sam", "news"]);
    let req = backend.log("connect").last().cloned().unwrap();
    assert_eq!(req["body"]["transport"], "sse", "{req}");
    assert_eq!(req["body"]["channels"], json!(["news"]), "{req}");
    api_publish(addr, "inbox:sam", json!("for sam"));
    let e = sse.next_event(WAIT).expect("the publication");
    let v: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(
        (&v["channel"], &v["data"]),
        (&json!("inbox:sam"), &json!("for sam"))
    );
    by.served("sse accepted");

    // Long-poll.
    let (st, v) = stream_util::get_json(addr, "/poll?channel=news&wait=0", WAIT).unwrap();
    assert_eq!(st, 200, "{v}");
    assert!(v["cursor"].is_string(), "{v}");
    let req = backend.log("connect").last().cloned().unwrap();
    assert_eq!(req["body"]["transport"], "poll", "{req}");

    // /send: the op runs as the backend's user.
    backend.set(
        "connect",
        json!({"mode": "result", "result": {"user": "sue"}, "count": 1}),
    );
    let (st, v) = send(addr, &json!({"id": 4, "op": "rpc", "method": "who"}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["id"], 4, "{v}");
    assert_eq!(
        backend.log("connect").last().unwrap()["body"]["transport"],
        "send"
    );
    let rpc = backend.log("rpc").last().cloned().unwrap();
    assert_eq!(rpc["body"]["user"], "sue", "{rpc}");
    assert_eq!(rpc["body"]["transport"], "send", "{rpc}");
    // A malformed op is answered without asking the backend.
    let asked = backend.log("connect").len();
    let (st, v) = send(addr, &json!({"op": "nope"}));
    assert_eq!((st, v["error"]["code"].as_u64()), (400, Some(2)), "{v}");
    assert_eq!(backend.log("connect").len(), asked);

    // Refused with the backend's status; a disconnect is its HTTP status.
    backend.set(
        "connect",
        json!({"mode": "error", "error": {"code": 403, "message": "no session"}, "count": 2}),
    );
    let r = http_get(addr, "/sse?channel=news");
    assert_eq!((r.status, r.error_code()), (403, 403), "{}", r.text());
    let (st, v) = stream_util::get_json(addr, "/poll?channel=news&wait=0", WAIT).unwrap();
    assert_eq!((st, &v["error"]["code"]), (403, &json!(403)), "{v}");
    backend.set(
        "connect",
        json!({"mode": "disconnect", "disconnect": {"code": 4501, "reason": "unauthorized"}, "count": 1}),
    );
    let (st, v) = send(addr, &json!({"op": "ping"}));
    assert_eq!((st, &v["error"]["code"]), (403, &json!(4501)), "{v}");
    by.served("refusals");

    // Cannot decide (a 500, bad JSON, slow past the timeout, then the
    // backend down): 503 with error 14, nothing opened, nothing run.
    let published = api_publish(addr, "chat:never", json!(0))["offset"].clone();
    for (round, behaviour) in [
        ("500", json!({"mode": "status", "status": 500})),
        ("badjson", json!({"mode": "badjson"})),
        ("slow", json!({"mode": "slow", "delay_ms": 3000})),
        ("down", Value::Null),
    ] {
        if behaviour.is_null() {
            backend.kill();
        } else {
            backend.reset();
            let mut b = behaviour;
            b["count"] = json!(3);
            backend.set("connect", b);
        }
        let r = http_get(addr, "/sse?channel=news");
        assert_eq!(
            (r.status, r.error_code()),
            (503, 14),
            "{round}: {}",
            r.text()
        );
        let (st, v) = stream_util::get_json(addr, "/poll?channel=news&wait=0", WAIT).unwrap();
        assert_eq!((st, &v["error"]["code"]), (503, &json!(14)), "{round}: {v}");
        let op = json!({"op": "publish", "channel": "chat:never", "data": 1});
        let (st, v) = send(addr, &op);
        assert_eq!((st, &v["error"]["code"]), (503, &json!(14)), "{round}: {v}");
        by.served(round);
    }
    backend.restart();
    // Nothing was published by the refused /send requests.
    let h = http_get(addr, "/api/history?channel=chat:never&limit=10").json();
    let offsets: Vec<_> = h["publications"]
        .as_array()
        .map(|a| a.iter().map(|p| p["offset"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(offsets, [published], "{h}");
    stop_gateway(server);
}

/// A connect answer's `expire_at` asks the refresh proxy: a new
/// `expire_at` renews the connection, a failure keeps it and asks again,
/// `expired` closes it 4501, a `disconnect` with its code; the backend
/// down keeps it until it is back. Every refresh request carries the
/// connection's client, user and `meta`.
#[test]
fn the_refresh_proxy_renews_or_ends_proxied_connections() {
    let mut backend = Backend::start();
    // proxy.timeout 1 s: a refresh that cannot be decided is asked again
    // 2 s later.
    let server = start_gateway(|cfg| hooked(cfg, &backend, 1_000));
    let addr = server.local_addr();
    let mut by = Bystander::connect(addr);

    // Renewed once (with new info), then a 500 (kept), then expired.
    backend.set(
        "refresh",
        json!({"mode": "result", "result": {"expired": true}}),
    );
    backend.set(
        "refresh",
        json!({"mode": "status", "status": 500, "count": 1}),
    );
    backend.set(
        "refresh",
        json!({"mode": "result", "result": {"expire_at": unix_now() + 2, "info": {"v": 2}}, "count": 1}),
    );
    backend.set(
        "connect",
        json!({"mode": "result", "count": 1, "result": {
            "user": "ann", "expire_at": unix_now() + 1, "info": {"v": 1}, "meta": {"sid": "s-1"}}}),
    );
    let mut c = Client::connect(addr, "/ws");
    let hello = c.next();
    let client = hello["connected"]["client"].clone();
    assert_eq!(hello["connected"]["user"], "ann", "{hello}");
    c.connect_reply("$user:ann");
    // `meta` goes with every later call of the connection.
    let r = c.call(json!({"op": "rpc", "method": "m"}));
    assert_eq!(r["ok"], true, "{r}");
    let rpc = backend.log("rpc").last().cloned().unwrap();
    assert_eq!(rpc["body"]["meta"], json!({"sid": "s-1"}), "{rpc}");
    backend_util::wait_for(DEADLINE, "the second refresh (answered 500)", || {
        backend.stats()["requests"]["refresh"].as_u64() >= Some(2)
    });
    // Kept after the failure.
    c.assert_alive();
    match c.try_next(WAIT) {
        Err(NoMessage::Closed(Some(code))) => assert_eq!(code, 4501),
        other => panic!("a close 4501 once the backend says expired: {other:?}"),
    }
    let log = backend.log("refresh");
    assert_eq!(log.len(), 3, "renewed, failed, expired: {log:?}");
    for req in &log {
        let b = &req["body"];
        assert_eq!(
            (&b["client"], &b["user"], &b["transport"], &b["meta"]),
            (
                &client,
                &json!("ann"),
                &json!("websocket"),
                &json!({"sid": "s-1"})
            ),
            "{req}"
        );
    }
    by.served("expired");

    // A disconnect closes with its code.
    backend.reset();
    backend.set(
        "refresh",
        json!({"mode": "disconnect", "disconnect": {"code": 4403, "reason": "banned"}}),
    );
    backend.set(
        "connect",
        json!({"mode": "result", "count": 1, "result": {"user": "bob", "expire_at": unix_now() + 1}}),
    );
    let mut d = Client::connect(addr, "/ws");
    assert_eq!(d.next()["connected"]["user"], "bob");
    d.connect_reply("$user:bob");
    match d.try_next(WAIT) {
        Err(NoMessage::Closed(Some(code))) => assert_eq!(code, 4403),
        other => panic!("a close 4403: {other:?}"),
    }
    by.served("disconnect");

    // The backend down: kept (asked again every 2 s) until it is back and
    // renews it.
    backend.reset();
    backend.set(
        "connect",
        json!({"mode": "result", "count": 1, "result": {"user": "eve", "expire_at": unix_now() + 1}}),
    );
    let mut e = Client::connect(addr, "/ws");
    assert_eq!(e.next()["connected"]["user"], "eve");
    e.connect_reply("$user:eve");
    backend.kill();
    let failures = || {
        let m = http_get(addr, "/metrics").text();
        m.lines()
            .filter(|l| l.starts_with("wsgate_proxy_failures_total{hook=\"refresh\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    wait_until(
        WAIT * 2,
        "two refresh failures while the backend is down",
        || failures() >= 2,
    );
    e.assert_alive();
    backend.restart();
    backend_util::wait_for(DEADLINE, "a refresh once the backend is back", || {
        backend.stats()["requests"]["refresh"].as_u64() >= Some(1)
    });
    // Renewed for an hour (the default answer): nothing more is asked.
    e.assert_alive();
    assert!(e.try_next(std::time::Duration::from_secs(3)).is_err());
    assert_eq!(backend.stats()["requests"]["refresh"], 1);
    by.served("backend back");
    stop_gateway(server);
}

/// A publish waiting at the publish proxy when its connection is gone
/// (reset) is not published, whatever the backend decides (as Centrifugo
/// drops it with its client), and neither is a publish queued behind it
/// (the backend never judged it): nothing reaches the channel unjudged.
#[test]
fn a_publish_at_the_publish_proxy_is_dropped_with_its_connection() {
    let backend = Backend::start();
    let server = start_gateway(|cfg| {
        hooked(cfg, &backend, 5_000);
        // Token-less connections without a connect proxy here.
        cfg.proxy.connect = String::new();
        cfg.proxy.refresh = String::new();
    });
    let addr = server.local_addr();
    let mut reader = Client::connect(addr, "/ws");
    reader.subscribe("chat:x");
    backend.set(
        "publish",
        json!({"mode": "slow", "delay_ms": 700, "count": 1}),
    );
    let mut c = Client::connect(addr, "/ws");
    // One write: the second waits for the first's decision.
    for (id, data) in [(1, "a"), (2, "b")] {
        let op = json!({"id": id, "op": "publish", "channel": "chat:x", "data": data});
        c.ws.write(Message::Text(op.to_string())).unwrap();
    }
    c.ws.flush().unwrap();
    backend_util::wait_for(DEADLINE, "the backend asked", || {
        backend.stats()["in_flight"]["publish"].as_u64() == Some(1)
    });
    // Gone (RST), not half-closed: a half-closed client still waits for
    // its replies, and gets both publishes decided and published.
    abort(c);
    backend_util::wait_for(DEADLINE, "the backend answered", || {
        backend.stats()["in_flight"]["publish"].as_u64() == Some(0)
    });
    api_publish(addr, "chat:x", json!("marker"));
    assert_eq!(
        reader.next_publication("chat:x").1,
        json!("marker"),
        "neither the publish at the proxy nor the one behind it"
    );
    assert_eq!(
        backend.stats()["requests"]["publish"],
        1,
        "b was never asked"
    );
    reader.assert_nothing_pending();
    stop_gateway(server);
}

/// The connect answer's `info` is the connection's `conn_info` in
/// presence, its `subs` give a channel's `chan_info`, and a subscribe
/// grant's `info` is that channel's `chan_info`; the answer's `data` is
/// in the first message.
#[test]
fn connect_and_subscribe_infos_show_in_presence() {
    let backend = Backend::start();
    let server = start_gateway(|cfg| hooked(cfg, &backend, 5_000));
    let addr = server.local_addr();
    let mut by = Bystander::connect(addr);
    backend.set(
        "connect",
        json!({"mode": "result", "count": 1, "result": {
            "user": "ann", "info": {"name": "Ann"}, "data": {"motd": "hi"},
            "subs": {"lobby:1": {"info": {"seat": 1}}}}}),
    );
    let mut c = Client::connect(addr, "/ws");
    let hello = c.next();
    assert_eq!(hello["connected"]["data"], json!({"motd": "hi"}), "{hello}");
    let client = hello["connected"]["client"].clone();
    c.connect_reply("$user:ann");
    c.connect_reply("lobby:1");
    let p = api_presence(addr, "lobby:1");
    assert_eq!(
        p["members"],
        json!([{"client": client, "user": "ann", "conn_info": {"name": "Ann"}, "chan_info": {"seat": 1}}]),
        "{p}"
    );
    backend.set(
        "subscribe",
        json!({"mode": "result", "count": 1, "result": {"info": {"role": "mod"}}}),
    );
    c.subscribe("room:1");
    let p = c.call(json!({"op": "presence", "channel": "room:1"}));
    assert_eq!(
        p["members"],
        json!([{"client": client, "user": "ann", "conn_info": {"name": "Ann"}, "chan_info": {"role": "mod"}}]),
        "{p}"
    );
    // Without a grant info, only the connection's.
    c.subscribe("room:2");
    let p = api_presence(addr, "room:2");
    assert_eq!(
        p["members"],
        json!([{"client": client, "user": "ann", "conn_info": {"name": "Ann"}}]),
        "{p}"
    );
    by.served("infos");
    stop_gateway(server);
}

/// A subscribe grant's `expire_at` ends the subscription then: an
/// `unsubscribed` notice (code 8) over WebSocket, an `unsubscribed` event
/// on SSE; it leaves presence; the connection goes on, and subscribing
/// again asks the backend again.
#[test]
fn a_subscribe_grant_ends_at_its_expire_at() {
    let backend = Backend::start();
    let server = start_gateway(|cfg| hooked(cfg, &backend, 5_000));
    let addr = server.local_addr();
    let mut by = Bystander::connect(addr);
    let mut c = Client::connect(addr, "/ws");
    let user = c.next()["connected"]["user"].as_str().unwrap().to_string();
    c.connect_reply(&format!("$user:{user}"));
    backend.set(
        "subscribe",
        json!({"mode": "result", "count": 1, "result": {"expire_at": unix_now() + 1}}),
    );
    c.subscribe("room:e");
    c.subscribe("room:kept");
    assert_eq!(api_presence(addr, "room:e")["clients"], 1);
    let m = c.next();
    assert_eq!(m["channel"], "room:e", "{m}");
    assert_eq!(m["unsubscribed"]["code"], 8, "{m}");
    assert_eq!(api_presence(addr, "room:e")["clients"], 0);
    api_publish(addr, "room:kept", json!("still"));
    assert_eq!(c.next_publication("room:kept").1, json!("still"));
    let asked = backend.log("subscribe").len();
    c.subscribe("room:e");
    assert_eq!(backend.log("subscribe").len(), asked + 1, "asked again");
    c.assert_nothing_pending();

    backend.set(
        "subscribe",
        json!({"mode": "result", "count": 1, "result": {"expire_at": unix_now() + 1}}),
    );
    let mut sse = stream_util::SseReader::open(addr, "/sse?channel=room:s", None);
    let mut kinds = Vec::new();
    while !kinds.contains(&"unsubscribed".to_string()) {
        let e = sse.next_event(WAIT).expect("an event");
        if e.kind == "unsubscribed" {
            let v: Value = serde_json::from_str(&e.data).unwrap();
            assert_eq!(
                (&v["channel"], &v["unsubscribed"]["code"]),
                (&json!("room:s"), &json!(8))
            );
        }
        kinds.push(e.kind);
    }
    assert!(kinds.contains(&"subscribed".to_string()), "{kinds:?}");
    by.served("grants ran out");
    stop_gateway(server);
}

/// `/ws` upgrade headers, for a request that must be refused before 101.
const UPGRADE: &[(&str, &str)] = &[
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
];

/// The answer to a `/ws` upgrade refused before it opened.
fn refused_upgrade(addr: SocketAddr, target: &str) -> HttpResponse {
    let mut sock = std::net::TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(WAIT)).unwrap();
    write_request(&mut sock, "GET", target, UPGRADE, b"", false);
    read_response_for(&mut sock, &mut Vec::new(), target)
}

/// The connection request's `name`, `version` and `data` (query
/// parameters, as Centrifugo's unidirectional transports take them) reach
/// the connect proxy on `/ws`, SSE, long-poll and `/send`; a `data` that
/// is not JSON or is over 4 KiB, a `name` over 256 bytes: 400 with error
/// 3 on each, the backend never asked, a bystander served.
#[test]
fn the_connect_request_carries_name_version_and_data() {
    let backend = Backend::start();
    let server = start_gateway(|cfg| hooked(cfg, &backend, 5_000));
    let addr = server.local_addr();
    let mut by = Bystander::connect(addr);
    let data = json!({"room": "a b&c=d", "n": [1, 2]});
    let says = |name: &str| {
        format!(
            "name={name}&version=1.2.3&data={}",
            url_encode(&data.to_string())
        )
    };
    let last_connect = || backend.log("connect").last().cloned().expect("asked");
    let check = |name: &str, transport: &str| {
        let req = last_connect();
        assert_eq!(
            (&req["body"]["name"], &req["body"]["version"]),
            (&json!(name), &json!("1.2.3")),
            "{req}"
        );
        assert_eq!(req["body"]["data"], data, "{req}");
        assert_eq!(req["body"]["transport"], transport, "{req}");
    };

    let mut ws = Client::connect(addr, &format!("/ws?{}", says("web")));
    assert!(ws.next().get("connected").is_some());
    check("web", "websocket");
    let mut sse =
        stream_util::SseReader::open(addr, &format!("/sse?channel=news&{}", says("s")), None);
    sse.next_event(WAIT).expect("an event");
    check("s", "sse");
    let (st, v) = stream_util::get_json(
        addr,
        &format!("/poll?channel=news&wait=0&{}", says("p")),
        WAIT,
    )
    .unwrap();
    assert_eq!(st, 200, "{v}");
    check("p", "poll");
    let r = http_post_json(
        addr,
        &format!("/send?{}", says("op")),
        &json!({"op": "ping"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    check("op", "send");
    // None given: none sent.
    Client::connect(addr, "/ws").next();
    let req = last_connect();
    for f in ["name", "version", "data"] {
        assert!(req["body"].get(f).is_none(), "{req}");
    }
    by.served("name, version, data");

    let asked = backend.log("connect").len();
    let long_name = "n".repeat(257);
    let big = url_encode(&json!("x".repeat(4100)).to_string());
    for bad in [
        "data=%7Bnope".to_string(),
        "data=".to_string(),
        format!("data={big}"),
        format!("name={long_name}"),
        format!("version={long_name}"),
    ] {
        let r = refused_upgrade(addr, &format!("/ws?{bad}"));
        assert_eq!(
            (r.status, r.error_code()),
            (400, 3),
            "/ws {bad}: {}",
            r.text()
        );
        let r = http_get(addr, &format!("/sse?channel=news&{bad}"));
        assert_eq!(
            (r.status, r.error_code()),
            (400, 3),
            "/sse {bad}: {}",
            r.text()
        );
        let (st, v) =
            stream_util::get_json(addr, &format!("/poll?channel=news&wait=0&{bad}"), WAIT).unwrap();
        assert_eq!(
            (st, &v["error"]["code"]),
            (400, &json!(3)),
            "/poll {bad}: {v}"
        );
        let r = http_post_json(addr, &format!("/send?{bad}"), &json!({"op": "ping"}));
        assert_eq!(
            (r.status, r.error_code()),
            (400, 3),
            "/send {bad}: {}",
            r.text()
        );
        by.served(&bad);
    }
    assert_eq!(backend.log("connect").len(), asked, "never asked");
    // At the limits: accepted.
    let name = "n".repeat(256);
    let edge = url_encode(&json!("x".repeat(4094)).to_string());
    let mut ws = Client::connect(addr, &format!("/ws?name={name}&data={edge}"));
    assert!(ws.next().get("connected").is_some());
    assert_eq!(last_connect()["body"]["name"], json!(name));
    by.served("at the limits");
    stop_gateway(server);
}

/// SSE and long-poll admitted by the connect proxy get the `connected`
/// message a WebSocket gets first: SSE as its first event (`event:
/// connected`), a poll as its answer's first message, which does not make
/// a long poll answer early (it still waits for a publication).
#[test]
fn sse_and_poll_get_the_connected_message() {
    let backend = Backend::start();
    let server = start_gateway(|cfg| hooked(cfg, &backend, 5_000));
    let addr = server.local_addr();
    let mut by = Bystander::connect(addr);
    let admit = |user: &str| {
        backend.set(
            "connect",
            json!({"mode": "result", "result": {"user": user, "data": {"hi": [1, "x"]}}, "count": 1}),
        );
    };

    admit("sam");
    let mut sse = stream_util::SseReader::open(addr, "/sse?channel=news", None);
    let first = sse.next_event(WAIT).expect("the first event");
    assert_eq!(first.kind, "connected", "{first:?}");
    let v: Value = serde_json::from_str(&first.data).unwrap();
    let client = v["connected"]["client"].as_str().expect("a client id");
    assert!(!client.is_empty(), "{v}");
    assert_eq!(
        (&v["connected"]["user"], &v["connected"]["data"]),
        (&json!("sam"), &json!({"hi": [1, "x"]})),
        "{v}"
    );
    let next = sse.next_event(WAIT).expect("then subscribed");
    assert_eq!(next.kind, "subscribed", "{next:?}");

    admit("pat");
    let (st, v) = stream_util::get_json(addr, "/poll?channel=news&wait=0", WAIT).unwrap();
    assert_eq!(st, 200, "{v}");
    let msgs = v["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 1, "{v}");
    assert_eq!(msgs[0]["connected"]["user"], "pat", "{v}");
    assert_eq!(msgs[0]["connected"]["data"], json!({"hi": [1, "x"]}), "{v}");
    by.served("sse and a short poll");

    // A long poll: answered with the publication after its connected.
    admit("pia");
    let long = std::thread::spawn(move || {
        stream_util::get_json(addr, "/poll?channel=lobby:wait&wait=20", DEADLINE).unwrap()
    });
    backend_util::wait_for(DEADLINE, "the long poll in presence", || {
        api_presence(addr, "lobby:wait")["clients"] == 1
    });
    api_publish(addr, "lobby:wait", json!("late"));
    let (st, v) = long.join().expect("the poll");
    assert_eq!(st, 200, "{v}");
    let msgs = v["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 2, "{v}");
    assert_eq!(msgs[0]["connected"]["user"], "pia", "{v}");
    assert_eq!(
        (&msgs[1]["channel"], &msgs[1]["data"]),
        (&json!("lobby:wait"), &json!("late")),
        "{v}"
    );
    by.served("a long poll");
    stop_gateway(server);
}
