//! `allowed_origins` covers every browser transport, not just the
//! WebSocket routes: `/sse`, `/poll` and `/send` refuse another site's
//! Origin with 403 before a stream opens or an op runs, and so does
//! `/api/*` (a page elsewhere can make a browser send it a simple POST).
//! Requests without an Origin (backends, curl) and from an allowed origin
//! are served. A `/ws` bystander subscribed to the channel the refused
//! requests try to publish on gets only the allowed publications.

#[path = "support/bystander.rs"]
mod bystander;
#[path = "support/gateway.rs"]
mod gateway_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use bystander::Bystander;
use gateway_support::*;
use serde_json::json;

const ALLOWED: &str = "https://app.example";
const EVIL: &str = "https://evil.example";

/// Send `request`; the status of its response and the whole text (the
/// server closes after a refusal).
fn status_of(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut sock, &mut buf);
    (r.status, format!("{:?} {}", r.headers, r.text()))
}

#[test]
fn a_refused_origin_gets_403_on_every_browser_transport_and_the_api() {
    let server = start_gateway(|cfg| cfg.allowed_origins = vec![ALLOWED.into()]);
    let addr = server.local_addr();
    let mut bystander = Bystander::connect(addr, "bystander");
    // A subscriber of the channel the requests publish on, and a session
    // of bob, whom they try to disconnect.
    let mut watcher = Client::connect(addr, "/ws?channel=news");
    watcher.connect_reply("news");
    let mut bob = Client::connect(addr, "/ws?user=bob");
    bob.connect_reply("$user:bob");
    let publish = r#"{"op":"publish","channel":"news","data":"from /send"}"#;
    let api_publish_body = r#"{"channel":"news","data":"from the API"}"#;
    let requests = |origin: &str| -> Vec<(&'static str, String)> {
        let h = |m: &str, t: &str, body: &str| {
            format!(
                "{m} {t} HTTP/1.1\r\nHost: gw\r\nOrigin: {origin}\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            )
        };
        vec![
            ("/sse", h("GET", "/sse?channel=news", "")),
            ("/poll", h("GET", "/poll?channel=news&wait=0", "")),
            ("/send", h("POST", "/send", publish)),
            ("/api/publish", h("POST", "/api/publish", api_publish_body)),
            ("/api/history", h("GET", "/api/history?channel=news", "")),
            (
                "/api/disconnect",
                h("POST", "/api/disconnect", r#"{"user":"bob"}"#),
            ),
        ]
    };
    for (what, req) in requests(EVIL) {
        let (status, text) = status_of(addr, &req);
        assert_eq!(status, 403, "{what} from {EVIL}: {text}");
        assert!(text.contains("\"Connection\", \"close\""), "{what}: {text}");
        bystander.assert_served(what);
    }
    // Two Origin fields, one allowed: refused.
    let (status, text) = status_of(
        addr,
        &format!(
            "GET /poll?channel=news&wait=0 HTTP/1.1\r\nHost: gw\r\nOrigin: {ALLOWED}\r\n\
             Origin: {EVIL}\r\n\r\n"
        ),
    );
    assert_eq!(status, 403, "two origins: {text}");
    // The WebSocket routes, as before.
    let upgrade = |origin: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Origin: {origin}\r\n\r\n"
        )
    };
    assert_eq!(status_of(addr, &upgrade(EVIL)).0, 403);
    // Routes that act for nobody stay open to any page.
    let (status, text) = status_of(
        addr,
        &format!(
            "GET /healthz HTTP/1.1\r\nHost: gw\r\nOrigin: {EVIL}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 200, "/healthz: {text}");
    // Nothing the refused requests asked for happened: the first
    // publication on news is the one made now, and bob is still here.
    api_publish(addr, "news", json!("marker"));
    assert_eq!(watcher.next_publication("news"), (1, json!("marker")));
    bob.assert_alive();

    // An allowed origin (any case) and no origin at all are served.
    for origin in [ALLOWED, "HTTPS://APP.EXAMPLE"] {
        for (what, req) in requests(origin) {
            if what == "/sse" {
                // A stream: its head is enough.
                let mut sock = TcpStream::connect(addr).unwrap();
                sock.set_read_timeout(Some(WAIT)).unwrap();
                sock.write_all(req.as_bytes()).unwrap();
                let mut head = [0u8; 15];
                sock.read_exact(&mut head).unwrap();
                assert_eq!(&head, b"HTTP/1.1 200 OK", "/sse from {origin}");
                continue;
            }
            let (status, text) = status_of(addr, &req);
            assert_eq!(status, 200, "{what} from {origin}: {text}");
            match what {
                "/send" => assert_eq!(watcher.next_publication("news").1, "from /send"),
                "/api/publish" => assert_eq!(watcher.next_publication("news").1, "from the API"),
                "/api/disconnect" => match bob.try_next(WAIT) {
                    Err(NoMessage::Closed(code)) => assert_eq!(code, Some(4000)),
                    other => panic!("bob was not disconnected: {other:?}"),
                },
                _ => {}
            }
            bystander.assert_served(what);
        }
        bob = Client::connect(addr, "/ws?user=bob");
        bob.connect_reply("$user:bob");
    }
    // And a backend, which sends no Origin.
    let r = http(addr, "POST", "/send", &[], publish.as_bytes());
    assert_eq!(r.status, 200, "/send without an Origin: {}", r.text());
    assert_eq!(watcher.next_publication("news").1, "from /send");
    bystander.close();
    drop(bob);
    stop_gateway(server);
}

/// Without `allowed_origins`, any origin is served on every route.
#[test]
fn without_allowed_origins_every_origin_is_served() {
    let server = start_gateway(|_| {});
    let addr = server.local_addr();
    let mut bystander = Bystander::connect(addr, "bystander");
    let r = http(
        addr,
        "GET",
        "/poll?channel=news&wait=0",
        &[("Origin", EVIL)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http(
        addr,
        "POST",
        "/send",
        &[("Origin", EVIL)],
        br#"{"op":"publish","channel":"news","data":1}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["ok"], json!(true));
    bystander.assert_served("any origin");
    bystander.close();
    stop_gateway(server);
}
