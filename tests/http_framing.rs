//! Strict HTTP/1.1 framing (RFC 9112), on every route, the WebSocket
//! upgrade included: requests a front proxy could frame differently get
//! 400 and the connection closes, before any route acts on them. Above
//! all a `Content-Length` is digits only (`+27` was read as 27 and its body
//! published), and a line ends with CRLF (a bare LF is refused). A `/ws`
//! bystander is served after every case; a request answered before a bad
//! one on the same connection keeps its answer.

#[path = "support/bystander.rs"]
mod bystander;
#[path = "support/gateway.rs"]
mod gateway_support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};

use bystander::Bystander;
use gateway_support::*;
use serde_json::json;

/// A publish body of exactly 27 bytes.
const BODY: &str = r#"{"channel":"f","data":1234}"#;

/// Send `request`; the response, which must be followed by the end of the
/// connection (EOF, or a reset when the server closed with input unread).
fn refused(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut sock = TcpStream::connect(addr).unwrap();
    // The server may close before reading all: a failed write is fine.
    let _ = sock.write_all(request);
    let mut buf = Vec::new();
    let r = read_response(&mut sock, &mut buf);
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut rest = [0u8; 64];
    match sock.read(&mut rest) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Ok(n) => panic!("bytes after the response: {:?}", &rest[..n]),
        Err(e) => panic!("the connection stayed open after the response: {e}"),
    }
    assert!(buf.is_empty(), "bytes after the response: {buf:?}");
    assert_eq!(r.header("connection"), Some("close"), "{:?}", r.headers);
    r
}

#[test]
fn requests_a_proxy_could_frame_differently_get_400_and_close() {
    let server = start_gateway(|_| {});
    let addr = server.local_addr();
    let mut bystander = Bystander::connect(addr, "bystander");
    assert_eq!(BODY.len(), 27);
    let post = |cl: &str| {
        format!("POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: {cl}\r\n\r\n{BODY}")
    };
    let upgrade = "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let cases: Vec<(&str, String, u16)> = vec![
        // Content-Length = 1*DIGIT, once.
        ("a signed length", post("+27"), 400),
        ("a negative length", post("-27"), 400),
        ("a hex length", post("0x1b"), 400),
        ("a list of lengths", post("27, 27"), 400),
        ("two lengths in one value", post("27 27"), 400),
        ("an empty length", post(""), 400),
        (
            "two Content-Length lines",
            format!(
                "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 27\r\n\
                 Content-Length: 27\r\n\r\n{BODY}"
            ),
            400,
        ),
        // Bare LF line ends.
        (
            "bare LF everywhere",
            format!("POST /api/publish HTTP/1.1\nHost: x\nContent-Length: 27\n\n{BODY}"),
            400,
        ),
        (
            "a bare LF hiding a header",
            format!("POST /api/publish HTTP/1.1\r\nHost: x\r\nX: y\nContent-Length: 27\r\n\r\n{BODY}"),
            400,
        ),
        // Host: required in HTTP/1.1, once, a valid authority.
        ("no Host", "GET /healthz HTTP/1.1\r\n\r\n".into(), 400),
        ("two Host lines", "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into(), 400),
        ("a Host with user info", "GET /healthz HTTP/1.1\r\nHost: u@a\r\n\r\n".into(), 400),
        // Both framings at once.
        (
            "Content-Length and Transfer-Encoding",
            format!(
                "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 27\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{BODY}"
            ),
            400,
        ),
        // Transfer-Encoding without a Content-Length: 411 for chunked (as
        // before), 400 when chunked is not the last coding.
        (
            "a chunked body",
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .into(),
            411,
        ),
        (
            "a gzip body",
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".into(),
            400,
        ),
        // Field syntax (httparse): whitespace before the colon, obs-fold,
        // control characters in a value.
        ("a space before the colon", post("27").replace("Content-Length:", "Content-Length :"), 400),
        (
            "obs-fold",
            format!("POST /api/publish HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\nContent-Length: 27\r\n\r\n{BODY}"),
            400,
        ),
        ("a NUL in a value", "GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n".into(), 400),
        // An upgrade with a body: frames to us, a body to a proxy.
        (
            "an upgrade with a body",
            format!("{upgrade}Content-Length: 5\r\n\r\nhello"),
            400,
        ),
        (
            "an upgrade with a bare LF",
            format!("{upgrade}X: y\n\r\n"),
            400,
        ),
        // The head limit, as before.
        (
            "a 10 KiB header",
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n", "a".repeat(10 << 10)),
            431,
        ),
    ];
    for (what, req, status) in &cases {
        let r = refused(addr, req.as_bytes());
        assert_eq!(r.status, *status, "{what}: {}", r.text());
        bystander.assert_served(what);
    }
    // None of those bodies was published.
    let page = http_get(addr, "/api/history?channel=f").json();
    assert_eq!(page["offset"], 0, "a refused request was published: {page}");
    // And the well-framed forms are served.
    for (what, req) in [
        ("a plain length", post("27")),
        ("a length with leading zeros and OWS", post("\t0027 ")),
    ] {
        let mut sock = TcpStream::connect(addr).unwrap();
        sock.write_all(req.as_bytes()).unwrap();
        let r = read_response(&mut sock, &mut Vec::new());
        assert_eq!(r.status, 200, "{what}: {}", r.text());
    }
    let r = http(addr, "GET", "/healthz", &[], b"");
    assert_eq!(r.status, 200);
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    let r = read_response(&mut sock, &mut Vec::new());
    assert_eq!(r.status, 200, "HTTP/1.0 needs no Host: {}", r.text());
    bystander.close();
    stop_gateway(server);
}

/// Pipelined on one connection: a good publish, then one with `+27`. The
/// first is answered and published; the second gets 400 and the
/// connection closes.
#[test]
fn a_bad_request_after_a_good_one_keeps_the_first_answer() {
    let server = start_gateway(|_| {});
    let addr = server.local_addr();
    let mut bystander = Bystander::connect(addr, "bystander");
    let mut watcher = Client::connect(addr, "/ws?channel=f");
    watcher.connect_reply("f");
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 27\r\n\r\n{BODY}\
         POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: +27\r\n\r\n{BODY}"
    );
    sock.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let first = read_response_for(&mut sock, &mut buf, "the good request");
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.json()["offset"], 1);
    let second = read_response_for(&mut sock, &mut buf, "the bad request");
    assert_eq!(second.status, 400, "{}", second.text());
    assert_eq!(second.header("connection"), Some("close"));
    assert_eq!(watcher.next_publication("f"), (1, json!(1234)));
    // Nothing more: the second body was never published.
    api_publish(addr, "f", json!("next"));
    assert_eq!(watcher.next_publication("f"), (2, json!("next")));
    bystander.assert_served("pipelined");
    bystander.close();
    stop_gateway(server);
}
