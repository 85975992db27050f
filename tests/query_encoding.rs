//! A query parameter that is not valid percent-encoded UTF-8 (a `%` without
//! two hex digits, or bytes that are not UTF-8) gets 400, error code 3, a
//! message naming the parameter, and the connection closes: on every route
//! that reads a query. It used to vanish, so a bad cursor or resume token
//! silently meant "no cursor". Values that are not what the parameter
//! takes (`wait`, `limit`, a cursor that is not a token, a `Last-Event-ID`
//! that is not UTF-8) get the same. A `/ws` bystander is served after each.

#[path = "support/bystander.rs"]
mod bystander;
#[path = "support/gateway.rs"]
mod gateway_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use bystander::Bystander;
use gateway_support::*;
use serde_json::json;

/// Send raw request bytes; the response, and the connection must then be
/// closed by the server.
fn raw(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.write_all(request).unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut sock, &mut buf);
    let mut rest = Vec::new();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let _ = sock.read_to_end(&mut rest);
    assert!(
        buf.is_empty() && rest.is_empty(),
        "bytes after the response"
    );
    r
}

/// 400, code 3, a message that contains `names`, `Connection: close`.
fn assert_refused(r: &HttpResponse, names: &str, what: &str) {
    assert_eq!(r.status, 400, "{what}: {}", r.text());
    assert_eq!(r.error_code(), 3, "{what}: {}", r.text());
    let message = r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains(names),
        "{what}: {message:?} should name {names}"
    );
}

#[test]
fn a_malformed_query_parameter_gets_400_naming_it_on_every_route() {
    let server = start_gateway(|_| {});
    let addr = server.local_addr();
    let mut bystander = Bystander::connect(addr, "bystander");
    for (target, name) in [
        ("/poll?channel=a&cursor=%zz&wait=0", "\"cursor\""),
        ("/poll?channel=a&cursor=abc%&wait=0", "\"cursor\""),
        ("/poll?channel=a&cursor=%4&wait=0", "\"cursor\""),
        ("/poll?channel=a&wait=%", "\"wait\""),
        ("/poll?channel=%FF&wait=0", "\"channel\""),
        ("/poll?channel=a&user=%C0%80&wait=0", "\"user\""),
        ("/poll?channel=a&token=ab%2&wait=0", "\"token\""),
        ("/poll?channel=a&wait=0&x%zz=1", "\"x%zz\""),
        (
            "/sse?channel=a&last_event_id=%E2%28%A1",
            "\"last_event_id\"",
        ),
        ("/api/history?channel=%zz", "\"channel\""),
        ("/api/presence?channel=a%G0", "\"channel\""),
        ("/api/history?channel=a&since=1&epoch=%", "\"epoch\""),
        ("/healthz?%", "\"%\""),
    ] {
        let r = raw(
            addr,
            format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
        assert_refused(&r, name, target);
        assert_eq!(r.header("connection"), Some("close"), "{target}");
        bystander.assert_served(target);
    }
    // The upgrade: 400 instead of 101.
    let r = raw(
        addr,
        b"GET /ws?channel=ok&channel=%zz HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_refused(&r, "\"channel\"", "/ws");
    assert!(r.header("sec-websocket-accept").is_none());
    bystander.assert_served("/ws");
    // POST routes: refused before anything is published.
    let body = br#"{"channel":"posted","data":1}"#;
    let send = br#"{"op":"publish","channel":"posted","data":2}"#;
    for (target, body) in [
        ("/api/publish?x=%zz", &body[..]),
        ("/send?user=%zz", &send[..]),
    ] {
        let r = http(addr, "POST", target, &[], body);
        assert_refused(&r, "is not valid percent-encoded UTF-8", target);
        bystander.assert_served(target);
    }
    let page = http_get(addr, "/api/history?channel=posted").json();
    assert_eq!(page["offset"], 0, "nothing was published: {page}");
    bystander.close();
    stop_gateway(server);
}

#[test]
fn values_a_parameter_cannot_take_get_400_naming_it() {
    let server = start_gateway(|_| {});
    let addr = server.local_addr();
    let mut bystander = Bystander::connect(addr, "bystander");
    for (target, name) in [
        ("/poll?channel=a&wait=soon", "wait:"),
        ("/poll?channel=a&wait=-1", "wait:"),
        ("/poll?channel=a&wait=inf", "wait:"),
        ("/poll?channel=a&cursor=!!&wait=0", "cursor:"),
        ("/sse?channel=a&last_event_id=!!", "last_event_id:"),
        ("/api/history?channel=a&limit=ten", "limit"),
        ("/api/history?channel=a&since=x&epoch=e", "since"),
    ] {
        let r = http_get(addr, target);
        assert_refused(&r, name, target);
        bystander.assert_served(target);
    }
    // A Last-Event-ID header that is not UTF-8 (obs-text bytes, which
    // HTTP lets through).
    let r = raw(
        addr,
        b"GET /sse?channel=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: \xff\xfe\r\nConnection: close\r\n\r\n",
    );
    assert_refused(&r, "Last-Event-ID: not UTF-8", "Last-Event-ID");
    bystander.assert_served("Last-Event-ID");
    bystander.close();
    stop_gateway(server);
}

/// Well-formed encodings are read as they should be: a percent-encoded
/// parameter name, an encoded channel, and a cursor that resumes.
#[test]
fn well_formed_parameters_still_work() {
    let server = start_gateway(|_| {});
    let addr = server.local_addr();
    let mut bystander = Bystander::connect(addr, "bystander");
    api_publish(addr, "news:eu", json!(1));
    api_publish(addr, "news:eu", json!(2));
    let first = http_get(addr, "/poll?%63hannel=news%3Aeu&wait=0").json();
    assert_eq!(first["messages"], json!([]), "{first}");
    // A cursor one publication back: the poll resumes there.
    let page = http_get(addr, "/api/history?channel=news%3Aeu&limit=1").json();
    let epoch = page["epoch"].as_str().unwrap();
    let cursor = {
        use base64::Engine;
        let triples = json!([["news:eu", epoch, 1]]).to_string();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(triples)
    };
    let v = http_get(
        addr,
        &format!("/poll?channel=news%3Aeu&cursor={cursor}&wait=0"),
    )
    .json();
    assert_eq!(v["recovered"], json!({ "news:eu": true }), "{v}");
    assert_eq!(
        v["messages"],
        json!([{ "channel": "news:eu", "offset": 2, "data": 2 }]),
        "{v}"
    );
    bystander.assert_served("well-formed polls");
    bystander.close();
    stop_gateway(server);
}
