//! User ids are checked like channel names on every path (issue 12, item
//! 13): `A-Z a-z 0-9 _ - : . @ / =`, at least one, and `$user:<id>` within
//! `limits.max_channel_length` (255: 249 bytes), so that it is a channel
//! like any other. `?user=` (open mode: `/ws`, `/sse`,
//! `/poll`, `/send`), the API's `{"user":…}` (publish, batch, disconnect),
//! `channel=$user:…` on the API: `400` with error code 4. A token whose
//! `sub` is not a user id: `401`. What another node sends through Redis
//! (a disconnect, a presence event): ignored. Valid ids work throughout,
//! and a bystander stays served.

#[path = "support/gateway.rs"]
mod gateway_support;
mod redis_util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use gateway_support::{
    http, http_get, http_post_json, start_gateway, stop_gateway, url_encode, Client, NoMessage,
};
use serde_json::{json, Value};

/// Ids that must be refused, and why.
fn bad_ids() -> Vec<(String, &'static str)> {
    vec![
        ("a\r\nb".into(), "CR LF"),
        ("a\0b".into(), "NUL"),
        ("a\"b".into(), "a quote"),
        ("a b".into(), "a space"),
        ("{tag}".into(), "braces (a Redis hash tag)"),
        ("auth0|5f3a".into(), "a bar"),
        ("ü".into(), "non-ASCII"),
        ("x".repeat(250), "250 bytes (`$user:` + 250 > 255)"),
        ("x".repeat(5000), "thousands of bytes"),
    ]
}

/// A request on a fresh connection; the whole answer, to EOF.
fn raw(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(gateway_support::WAIT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn upgrade(target: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// The answer is `status` with error code `code` in a JSON body.
fn assert_refused(answer: &str, status: u16, code: u64, what: &str) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "{what}: {answer:?}"
    );
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: Value = serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("{what}: a JSON body ({e}): {answer:?}"));
    assert_eq!(v["error"]["code"], code, "{what}: {answer:?}");
}

#[test]
fn invalid_user_ids_are_refused_on_every_path() {
    let server = start_gateway(|_| {});
    let addr = server.local_addr();
    let mut bystander = Client::connect(addr, "/ws?user=bystander");
    let _ = bystander.connect_reply("$user:bystander");
    for (id, why) in bad_ids() {
        let q = url_encode(&id);
        for target in [format!("/ws?user={q}"), format!("/ws?channel=c&user={q}")] {
            assert_refused(
                &raw(addr, &upgrade(&target)),
                400,
                4,
                &format!("{why}: {target}"),
            );
        }
        for target in [
            format!("/sse?channel=c&user={q}"),
            format!("/poll?channel=c&user={q}&wait=0"),
        ] {
            let answer = raw(
                addr,
                &format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
            );
            assert_refused(&answer, 400, 4, &format!("{why}: {target}"));
        }
        let r = http(
            addr,
            "POST",
            &format!("/send?user={q}"),
            &[],
            br#"{"id":1,"op":"ping"}"#,
        );
        assert_eq!(
            (r.status, r.error_code()),
            (400, 4),
            "{why}: /send: {}",
            r.text()
        );
        let r = http_post_json(addr, "/api/publish", &json!({"user": id, "data": 1}));
        assert_eq!(
            (r.status, r.error_code()),
            (400, 4),
            "{why}: publish: {}",
            r.text()
        );
        let r = http_post_json(
            addr,
            "/api/publish",
            &json!([{"channel": "ok", "data": 1}, {"user": id, "data": 2}]),
        );
        assert_eq!(
            (r.status, r.error_code()),
            (400, 4),
            "{why}: batch: {}",
            r.text()
        );
        let r = http_post_json(addr, "/api/disconnect", &json!({"user": id}));
        assert_eq!(
            (r.status, r.error_code()),
            (400, 4),
            "{why}: disconnect: {}",
            r.text()
        );
        for route in ["presence", "history"] {
            let channel = url_encode(&format!("$user:{id}"));
            let r = http_get(addr, &format!("/api/{route}?channel={channel}"));
            assert_eq!(
                (r.status, r.error_code()),
                (400, 4),
                "{why}: {route}: {}",
                r.text()
            );
        }
    }
    // Nothing was published by the refused batches.
    let page = http_get(addr, "/api/history?channel=ok").json();
    assert_eq!(page["offset"], 0, "{page}");

    // Valid ids work on every path.
    let id = "alice.b@example.com/x=1_2-3:4";
    let mut c = Client::connect(addr, &format!("/ws?user={}", url_encode(id)));
    let personal = format!("$user:{id}");
    let _ = c.connect_reply(&personal);
    let r = http_post_json(addr, "/api/publish", &json!({"user": id, "data": 1}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.next_publication(&personal), (1, json!(1)));
    let p = http_get(
        addr,
        &format!("/api/presence?channel={}", url_encode(&personal)),
    )
    .json();
    assert_eq!(
        p["clients"], 0,
        "personal channels track no presence of their own: {p}"
    );
    let r = http(
        addr,
        "POST",
        &format!("/send?user={}", url_encode(id)),
        &[],
        br#"{"id":1,"op":"ping"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // An empty `?user=` names no user.
    let mut anon = Client::connect(addr, "/ws?user=");
    anon.assert_nothing_pending();
    let r = http_post_json(addr, "/api/disconnect", &json!({"user": id}));
    assert_eq!(r.status, 200, "{}", r.text());
    match c.try_next(gateway_support::WAIT) {
        Err(NoMessage::Closed(Some(4000))) => {}
        other => panic!("disconnected with 4000: {other:?}"),
    }
    bystander.assert_alive();
    let r = http_post_json(
        addr,
        "/api/publish",
        &json!({"user": "bystander", "data": 2}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(bystander.next_publication("$user:bystander"), (1, json!(2)));
    anon.close();
    bystander.close();
    stop_gateway(server);
}

const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

fn token(sub: &str) -> String {
    gateway_support::hs256_token(SECRET, sub, 600, &["c"], &["c"])
}

#[test]
fn a_token_whose_sub_is_not_a_user_id_is_refused() {
    let server = start_gateway(|cfg| cfg.auth.jwt_hs256_secret = SECRET.into());
    let addr = server.local_addr();
    let good = token("bob");
    let mut bystander = Client::connect(addr, &format!("/ws?token={good}&channel=c"));
    let _ = bystander.connect_reply("c");
    for (id, why) in bad_ids() {
        let t = token(&id);
        let answer = raw(addr, &upgrade(&format!("/ws?token={t}")));
        assert!(answer.starts_with("HTTP/1.1 401 "), "{why}: {answer:?}");
        let answer = raw(
            addr,
            &format!("GET /sse?channel=c&token={t} HTTP/1.1\r\nHost: t\r\n\r\n"),
        );
        assert!(answer.starts_with("HTTP/1.1 401 "), "{why}: {answer:?}");
        let r = http(
            addr,
            "POST",
            &format!("/send?token={t}"),
            &[],
            br#"{"id":1,"op":"ping"}"#,
        );
        assert_eq!(r.status, 401, "{why}: {}", r.text());
        // Nor can a connection refresh into it.
        let r = bystander.call(json!({"op": "refresh", "token": t}));
        assert_eq!(r["error"]["code"], 11, "{why}: {r}");
    }
    bystander.assert_alive();
    bystander.close();
    stop_gateway(server);
}

/// Through Redis, other nodes send user ids too: a disconnect request on
/// the control channel, presence events and members. Invalid ones are
/// ignored (logged); valid ones still work.
#[test]
fn invalid_user_ids_from_redis_are_ignored() {
    let redis = redis_util::RedisServer::start();
    let server = redis_util::node(&redis.url(), |cfg| {
        cfg.namespaces.insert(
            "room".into(),
            wsgate::config::ChannelOverrides {
                join_leave: Some(true),
                ..Default::default()
            },
        );
    });
    let addr = server.local_addr();
    let mut con = redis.con();
    let mut c = Client::connect(addr, "/ws?user=carol&channel=room:1");
    let _ = c.connect_reply("$user:carol");
    let _ = c.connect_reply("room:1");
    // The node's own join event.
    let join = c.next();
    assert_eq!(join["join"]["user"], "carol", "{join}");
    // Another "node" announces members with bad user ids, and asks to
    // disconnect bad ids (and carol, by a bad spelling).
    let bad_member = json!({"client": "x1", "user": "a\r\nb"}).to_string();
    let _: i64 = redis::cmd("PUBLISH")
        .arg("wsgate:ch:{room:1}")
        .arg(format!("j{bad_member}"))
        .query(&mut con)
        .unwrap();
    let _: i64 = redis::cmd("HSET")
        .arg("wsgate:presence:{room:1}")
        .arg("x1")
        .arg(format!("99999999999999|{bad_member}"))
        .query(&mut con)
        .unwrap();
    for user in ["carol\n", "carol x", "{carol}"] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg("wsgate:control")
            .arg(format!("dother-node\n{user}"))
            .query(&mut con)
            .unwrap();
    }
    // A valid join event from another node comes through; the bad one did
    // not (it was published first).
    let good = json!({"client": "x2", "user": "dave"}).to_string();
    let _: i64 = redis::cmd("PUBLISH")
        .arg("wsgate:ch:{room:1}")
        .arg(format!("j{good}"))
        .query(&mut con)
        .unwrap();
    let m = c.next();
    assert_eq!(
        m["join"],
        json!({"client": "x2", "user": "dave"}),
        "the bad event was dropped: {m}"
    );
    // Presence lists carol only: the bad member is skipped.
    let p = http_get(addr, "/api/presence?channel=room:1").json();
    assert_eq!(p["clients"], 1, "{p}");
    assert_eq!(p["members"][0]["user"], "carol", "{p}");
    // carol is still connected; a valid disconnect reaches her.
    c.assert_alive();
    let _: i64 = redis::cmd("PUBLISH")
        .arg("wsgate:control")
        .arg("dother-node\ncarol")
        .query(&mut con)
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match c.try_next(Duration::from_secs(15)) {
            Err(NoMessage::Closed(Some(4000))) => break,
            Ok(_) if std::time::Instant::now() < deadline => {}
            other => panic!("carol disconnected with 4000: {other:?}"),
        }
    }
    stop_gateway(server);
}
