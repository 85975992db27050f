//! Every error a client op or an API call can get: its code (the table in
//! `src/gateway/error.rs`), the request id echoed, and the connection still
//! usable afterwards. Frames over `max_message` close with 1009.

#[path = "support/gateway.rs"]
mod gateway_support;

use std::io::Write;
use std::net::TcpStream;

use gateway_support::*;
use serde_json::{json, Value};
use tungstenite::Message;
use wsgate::config::{ChannelOverrides, Millis};

/// The next message must be an error with `code`; its `id` must be `id`
/// (`None`: no id in the reply). Then the connection must still answer a
/// ping.
fn expect_error(c: &mut Client, code: u64, id: Option<Value>, what: &str) {
    let m = c.next();
    assert_eq!(m["error"]["code"], code, "{what}: {m}");
    assert!(
        m["error"]["message"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{what}: an error has a message: {m}"
    );
    assert_eq!(m.get("id").cloned(), id, "{what}: the request id: {m}");
    assert!(m.get("ok").is_none(), "{what}: {m}");
    c.assert_nothing_pending();
}

/// Send `op` (which carries `"id"`) and expect error `code` with that id.
fn op_error(c: &mut Client, op: Value, code: u64) {
    let id = op["id"].clone();
    let what = op.to_string();
    c.send_json(&op);
    expect_error(c, code, Some(id), &what);
}

fn gateway_with_limits() -> wsgate::server::Server {
    start_gateway(|cfg| {
        cfg.limits.max_channel_length = 16;
        cfg.limits.max_channels_per_connection = 3;
        cfg.namespaces.insert(
            "ro".into(),
            ChannelOverrides {
                client_publish: Some(false),
                ..Default::default()
            },
        );
        cfg.namespaces.insert(
            "hidden".into(),
            ChannelOverrides {
                presence: Some(false),
                ..Default::default()
            },
        );
    })
}

#[test]
fn malformed_json_is_code_1() {
    let server = gateway_with_limits();
    let mut c = Client::connect(server.local_addr(), "/ws");
    for text in [
        r#"{"id":1,"op":"#,
        "not json",
        "",
        r#"{"id":1,"op":"ping"} x"#,
    ] {
        c.send_text(text);
        // No id can be read from text that does not parse.
        expect_error(&mut c, 1, None, text);
    }
    c.close();
    stop_gateway(server);
}

#[test]
fn unknown_op_is_code_2_and_missing_fields_are_code_3() {
    let server = gateway_with_limits();
    let mut c = Client::connect(server.local_addr(), "/ws");
    op_error(&mut c, json!({ "id": 1, "op": "dance" }), 2);
    op_error(
        &mut c,
        json!({ "id": "str-id", "op": "Subscribe", "channel": "a" }),
        2,
    );
    op_error(&mut c, json!({ "id": 2 }), 3);
    op_error(&mut c, json!({ "id": 3, "channel": "a" }), 3);
    for op in ["subscribe", "unsubscribe", "publish", "presence"] {
        op_error(&mut c, json!({ "id": 4, "op": op }), 3);
    }
    op_error(
        &mut c,
        json!({ "id": 5, "op": "publish", "channel": "a" }),
        3,
    );
    // An id of any JSON type comes back as given.
    op_error(
        &mut c,
        json!({ "id": { "nested": [1, 2] }, "op": "unsubscribe" }),
        3,
    );
    c.close();
    stop_gateway(server);
}

#[test]
fn binary_frames_are_code_3() {
    let server = gateway_with_limits();
    let mut c = Client::connect(server.local_addr(), "/ws");
    let op = json!({ "id": 1, "op": "ping" }).to_string().into_bytes();
    c.ws.send(Message::Binary(op)).expect("send binary");
    expect_error(&mut c, 3, None, "binary frame");
    c.close();
    stop_gateway(server);
}

/// The contract: every error reply carries the request id. A field of the
/// wrong type is a request whose id can be read all the same.
#[test]
fn wrong_types_are_code_3_with_the_request_id() {
    let server = gateway_with_limits();
    let mut c = Client::connect(server.local_addr(), "/ws");
    let cases = [
        json!({ "id": 10, "op": "subscribe", "channel": 5 }),
        json!({ "id": 11, "op": 42 }),
        json!({ "id": 12, "op": "subscribe", "channel": "a", "since": { "epoch": "e", "offset": "x" } }),
        json!({ "id": 13, "op": "subscribe", "channel": "a", "since": 41 }),
        json!({ "id": 14, "op": "publish", "channel": ["a"], "data": 1 }),
    ];
    let mut failures = Vec::new();
    for op in cases {
        c.send_json(&op);
        let m = c.next();
        assert_eq!(m["error"]["code"], 3, "{op}: {m}");
        if m.get("id") != Some(&op["id"]) {
            failures.push(format!("{op} -> {m}"));
        }
        c.assert_nothing_pending();
    }
    assert!(
        failures.is_empty(),
        "error replies without the request id:\n{}",
        failures.join("\n")
    );
    c.close();
    stop_gateway(server);
}

#[test]
fn bad_channel_names_are_code_4() {
    let server = gateway_with_limits();
    let mut c = Client::connect(server.local_addr(), "/ws");
    let too_long = "a".repeat(17);
    for (i, ch) in [
        "",
        too_long.as_str(),
        "with space",
        "ünï",
        "a\"b",
        "tab\there",
        "$user:x",
    ]
    .into_iter()
    .enumerate()
    {
        let id = i as u64 * 10;
        op_error(
            &mut c,
            json!({ "id": id, "op": "subscribe", "channel": ch }),
            4,
        );
        op_error(
            &mut c,
            json!({ "id": id + 1, "op": "publish", "channel": ch, "data": 1 }),
            4,
        );
        op_error(
            &mut c,
            json!({ "id": id + 2, "op": "presence", "channel": ch }),
            4,
        );
    }
    // Exactly at the limit is fine.
    let r = c.call(json!({ "op": "subscribe", "channel": "a".repeat(16) }));
    assert_eq!(r["ok"], true, "{r}");
    // A personal channel cannot be named by a client, even its own user's.
    let mut u = Client::connect(server.local_addr(), "/ws?user=x");
    u.connect_reply("$user:x");
    op_error(
        &mut u,
        json!({ "id": 1, "op": "publish", "channel": "$user:x", "data": 1 }),
        4,
    );
    c.close();
    u.close();
    stop_gateway(server);
}

#[test]
fn too_many_channels_is_code_5() {
    let server = gateway_with_limits();
    let mut c = Client::connect(server.local_addr(), "/ws");
    for ch in ["a", "b", "c"] {
        c.subscribe(ch);
    }
    op_error(
        &mut c,
        json!({ "id": 1, "op": "subscribe", "channel": "d" }),
        5,
    );
    let r = c.call(json!({ "op": "unsubscribe", "channel": "b" }));
    assert_eq!(r["ok"], true, "{r}");
    c.subscribe("d");
    op_error(
        &mut c,
        json!({ "id": 2, "op": "subscribe", "channel": "e" }),
        5,
    );
    c.close();

    // Over the limit in the URL: the extra ones get an error (no id).
    let mut u = Client::connect(
        server.local_addr(),
        "/ws?channel=a&channel=b&channel=c&channel=d",
    );
    for ch in ["a", "b", "c"] {
        u.connect_reply(ch);
    }
    expect_error(&mut u, 5, None, "fourth channel in the URL");
    u.close();
    stop_gateway(server);
}

#[test]
fn subscribe_twice_is_code_6_and_unsubscribe_unknown_is_code_7() {
    let server = gateway_with_limits();
    let mut c = Client::connect(server.local_addr(), "/ws");
    c.subscribe("twice");
    op_error(
        &mut c,
        json!({ "id": 1, "op": "subscribe", "channel": "twice" }),
        6,
    );
    op_error(
        &mut c,
        json!({ "id": 2, "op": "unsubscribe", "channel": "never" }),
        7,
    );
    let r = c.call(json!({ "id": 3, "op": "unsubscribe", "channel": "twice" }));
    assert_eq!(r, json!({ "id": 3, "ok": true, "channel": "twice" }));
    op_error(
        &mut c,
        json!({ "id": 4, "op": "unsubscribe", "channel": "twice" }),
        7,
    );
    // Two subscribes back to back (the second while the first is pending).
    c.send_json(&json!({ "id": 5, "op": "subscribe", "channel": "fast" }));
    c.send_json(&json!({ "id": 6, "op": "subscribe", "channel": "fast" }));
    let a = c.reply_to(&json!(5));
    let b = c.reply_to(&json!(6));
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(b["error"]["code"], 6, "{b}");
    c.assert_nothing_pending();
    c.close();
    stop_gateway(server);
}

#[test]
fn forbidden_publish_and_presence_are_code_8() {
    let server = gateway_with_limits();
    let addr = server.local_addr();
    let mut c = Client::connect(addr, "/ws");
    c.subscribe("ro:news");
    op_error(
        &mut c,
        json!({ "id": 1, "op": "publish", "channel": "ro:news", "data": "x" }),
        8,
    );
    op_error(
        &mut c,
        json!({ "id": 2, "op": "presence", "channel": "hidden:x" }),
        8,
    );
    // The API may publish there; the subscriber gets it.
    api_publish(addr, "ro:news", json!("from the backend"));
    assert_eq!(
        c.next_publication("ro:news"),
        (1, json!("from the backend"))
    );
    // And a channel outside the namespace allows client publishes.
    let r = c.call(json!({ "op": "publish", "channel": "rw", "data": 1 }));
    assert_eq!(
        (r["ok"].clone(), r["offset"].clone()),
        (json!(true), json!(1)),
        "{r}"
    );
    c.close();
    stop_gateway(server);
}

#[test]
fn a_frame_over_max_message_closes_with_1009() {
    let server = start_gateway(|cfg| cfg.limits.max_message = 4096);
    let addr = server.local_addr();
    let mut c = Client::connect(addr, "/ws");
    c.subscribe("big");
    // Just under the limit: published (data alone cannot exceed the frame,
    // so code 9 cannot be reached over WebSocket).
    let data = "x".repeat(4000);
    let r = c.call(json!({ "op": "publish", "channel": "big", "data": data }));
    assert_eq!(r["ok"], true, "{r}");
    let (off, got) = c.next_publication("big");
    assert_eq!((off, got.as_str().map(str::len)), (1, Some(4000)));

    let op = json!({ "id": 1, "op": "publish", "channel": "big", "data": "y".repeat(5000) });
    c.send_json(&op);
    match c.try_next(WAIT) {
        Err(NoMessage::Closed(code)) => assert_eq!(code, Some(1009)),
        other => panic!("expected close 1009, got {other:?}"),
    }
    // Nothing of it was published.
    let page = http_get(addr, "/api/history?channel=big").json();
    assert_eq!(page["offset"], 1, "{page}");
    stop_gateway(server);
}

// ------------------------------------------------------------------- API --

#[test]
fn api_key_is_required_when_set() {
    let server = start_gateway(|cfg| cfg.api_key = "s3cret".into());
    let addr = server.local_addr();
    let body = br#"{"channel":"k","data":1}"#;
    for (headers, status) in [
        (vec![], 401),
        (vec![("Authorization", "Bearer wrong")], 401),
        (vec![("Authorization", "s3cret")], 401),
        (vec![("X-API-Key", "s3cre")], 401),
        (vec![("Authorization", "Bearer s3cret")], 200),
        (vec![("X-API-Key", "s3cret")], 200),
    ] {
        for (method, target, body) in [
            ("GET", "/api/stats", &b""[..]),
            ("GET", "/api/history?channel=k", &b""[..]),
            ("GET", "/api/presence?channel=k", &b""[..]),
            ("POST", "/api/publish", &body[..]),
            ("GET", "/api/nope", &b""[..]),
        ] {
            let r = http(addr, method, target, &headers, body);
            let want = if status == 200 && target == "/api/nope" {
                404
            } else {
                status
            };
            assert_eq!(
                r.status,
                want,
                "{method} {target} {headers:?}: {}",
                r.text()
            );
            if want == 401 {
                assert_eq!(r.error_code(), 11, "{}", r.text());
            }
        }
    }
    // The key is not needed outside /api/.
    assert_eq!(http_get(addr, "/healthz").status, 200);
    assert_eq!(http_get(addr, "/metrics").status, 200);
    let mut c = Client::connect(addr, "/ws");
    c.assert_alive();
    c.close();
    stop_gateway(server);
}

#[test]
fn api_request_errors() {
    let server = start_gateway(|cfg| {
        cfg.limits.max_body = 1024;
        cfg.limits.max_channel_length = 16;
    });
    let addr = server.local_addr();
    let post = |body: &[u8]| http(addr, "POST", "/api/publish", &[], body);

    for (body, status, code) in [
        (&br#"{"channel":"#[..], 400, 1),
        (b"not json", 400, 1),
        (b"[{\"channel\":", 400, 1),
        (br#"{"data":1}"#, 400, 3),
        (br#"{"channel":"c"}"#, 400, 3),
        (br#"{"channel":"c","user":"u","data":1}"#, 400, 3),
        (br#"{"channel":"c","data":1,"extra":true}"#, 400, 3),
        (br#"{"channel":5,"data":1}"#, 400, 3),
        (br#"{"channel":"","data":1}"#, 400, 4),
        (br#"{"channel":"has space","data":1}"#, 400, 4),
        (br#"{"channel":"aaaaaaaaaaaaaaaaa","data":1}"#, 400, 4),
        // A user id is checked like a channel name (code 4).
        (br#"{"user":"","data":1}"#, 400, 4),
        (br#"{"user":"a\r\nb","data":1}"#, 400, 4),
        (br#"{"user":"a b","data":1}"#, 400, 4),
    ] {
        let r = post(body);
        let what = String::from_utf8_lossy(body);
        assert_eq!(r.status, status, "{what}: {}", r.text());
        assert_eq!(r.error_code(), code, "{what}: {}", r.text());
    }

    // A batch with one bad item is refused as a whole: nothing published.
    let r = post(br#"[{"channel":"ok","data":1},{"channel":"bad channel","data":2}]"#);
    assert_eq!((r.status, r.error_code()), (400, 4), "{}", r.text());
    let page = http_get(addr, "/api/history?channel=ok").json();
    assert_eq!(
        page["offset"], 0,
        "nothing of the batch was published: {page}"
    );

    // Missing or bad channel on GET routes.
    for target in [
        "/api/history",
        "/api/presence",
        "/api/history?channel=",
        "/api/presence?channel=bad%20name",
    ] {
        let r = http_get(addr, target);
        assert_eq!(r.status, 400, "{target}: {}", r.text());
    }

    // Unknown routes.
    for (method, target) in [
        ("GET", "/api/nope"),
        ("POST", "/api/history"),
        ("GET", "/api/publish"),
    ] {
        let r = http(addr, method, target, &[], b"");
        assert_eq!(r.status, 404, "{method} {target}: {}", r.text());
        assert_eq!(r.error_code(), 12, "{method} {target}");
    }
    assert_eq!(http_get(addr, "/nope").status, 404);

    // A body over max_body: 413.
    let big = format!(r#"{{"channel":"c","data":"{}"}}"#, "z".repeat(2000));
    let r = post(big.as_bytes());
    assert_eq!(r.status, 413, "{}", r.text());
    // Exactly at the limit is accepted.
    let at = format!(r#"{{"channel":"c","data":"{}"}}"#, "z".repeat(1024 - 25));
    assert_eq!(at.len(), 1024);
    let r = post(at.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());

    // Transfer-Encoding: chunked → 411.
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.write_all(
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut sock, &mut buf);
    assert_eq!(r.status, 411, "{}", r.text());

    // The server still serves.
    let r = api_publish(addr, "c", json!("still fine"));
    assert_eq!(r["offset"], 2, "{r}");
    stop_gateway(server);
}

/// Keep-alive and pipelining, on a connection of each worker (an answer
/// that waits for the broker comes back through the worker's inbox).
#[test]
fn http_keep_alive_serves_several_requests_on_one_connection() {
    // No timer may stand in for a missing wake-up: the idle deadline between
    // requests (the handshake timeout) is far beyond the test's waits.
    let server = start_gateway(|cfg| cfg.timeouts.handshake = Millis(300_000));
    let socks = tcp_on_each_worker(&server);
    let mut offset = 0;
    for (w, mut sock) in socks.into_iter().enumerate() {
        let mut buf = Vec::new();

        // One after the other.
        let body = br#"{"channel":"ka","data":1}"#;
        write_request(&mut sock, "POST", "/api/publish", &[], body, false);
        let r1 = read_response(&mut sock, &mut buf);
        assert_eq!(r1.status, 200, "worker {w}: {}", r1.text());
        offset += 1;
        assert_eq!(r1.json()["offset"], offset);
        assert_eq!(r1.header("connection"), Some("keep-alive"));
        write_request(&mut sock, "GET", "/api/history?channel=ka", &[], b"", false);
        let r2 = read_response(&mut sock, &mut buf);
        assert_eq!(r2.status, 200, "worker {w}: {}", r2.text());
        assert_eq!(r2.json()["publications"][0]["data"], 1);

        // Pipelined: three requests in one write, answered in order.
        let mut bytes = Vec::new();
        for i in 2..=3 {
            let b = format!(r#"{{"channel":"ka","data":{i}}}"#);
            bytes.extend(
                format!(
                    "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{b}",
                    b.len()
                )
                .into_bytes(),
            );
        }
        bytes.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        sock.write_all(&bytes).unwrap();
        for k in 1..=2 {
            let what = format!("worker {w}: pipelined publish {k} of 2");
            let r = read_response_for(&mut sock, &mut buf, &what);
            assert_eq!(
                r.status,
                200,
                "worker {w}, pipelined publish {k}: {}",
                r.text()
            );
            offset += 1;
            assert_eq!(r.json()["offset"], offset, "{}", r.text());
        }
        let what = format!("worker {w}: pipelined /healthz");
        let r = read_response_for(&mut sock, &mut buf, &what);
        assert_eq!(r.status, 200, "worker {w}: {}", r.text());
        assert_eq!(r.json()["status"], "ok");

        // Connection: close ends it after the answer.
        write_request(&mut sock, "GET", "/api/stats", &[], b"", true);
        let r = read_response(&mut sock, &mut buf);
        assert_eq!(r.status, 200, "worker {w}: {}", r.text());
        assert_eq!(r.header("connection"), Some("close"));
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut sock, &mut rest).unwrap();
        assert!(
            buf.is_empty() && rest.is_empty(),
            "nothing after the last answer"
        );
    }
    stop_gateway(server);
}
