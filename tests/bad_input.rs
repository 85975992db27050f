//! Hostile or broken input, handshake and frames. Every case runs while a
//! "bystander" tungstenite client is connected (opened before the bad input
//! starts); afterwards the bystander must still get its echo, the server's
//! connection count must come back to one (the bystander), and the counters
//! must add up.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tungstenite::Message;
use wsgate::server::{Server, ServerConfig};

/// A server, a connected bystander, and the counters before the case.
struct Case {
    server: Server,
    bystander: Ws,
    before: Stats,
    /// Messages the case itself got echoed (besides the bystander's two).
    extra_messages: u64,
}

impl Case {
    fn start(tweak: impl FnOnce(&mut ServerConfig)) -> Case {
        let server = start(tweak);
        let mut bystander = ws_connect(server.local_addr());
        assert_echo(&mut bystander, Message::Text("bystander before".into()));
        wait_connections(server.shared(), 1);
        let before = stats(server.shared());
        Case {
            server,
            bystander,
            before,
            extra_messages: 0,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    fn stats(&self) -> Stats {
        stats(self.server.shared())
    }

    /// After the case: the bad connection(s) are gone, the bystander still
    /// echoes, the counters add up, and the server stops cleanly.
    /// `errors`: protocol errors the case should have counted.
    fn finish(mut self, errors: u64) {
        wait_connections(self.server.shared(), 1);
        assert_echo(
            &mut self.bystander,
            Message::Text("bystander after ✓".into()),
        );
        assert_echo(&mut self.bystander, Message::Binary(vec![0, 255, 1, 254]));
        let s = self.stats();
        assert_eq!(
            s.accepted,
            s.closed + 1,
            "every connection but the bystander is counted closed: {s:?}"
        );
        assert_eq!(s.connections, 1, "{s:?}");
        assert_eq!(s.refused, 0, "{s:?}");
        assert_eq!(
            s.protocol_errors - self.before.protocol_errors,
            errors,
            "protocol errors counted by this case: {s:?}"
        );
        assert_eq!(
            s.messages_in - self.before.messages_in,
            2 + self.extra_messages,
            "only the expected messages were delivered: {s:?}"
        );
        assert!(s.bytes_in > self.before.bytes_in && s.bytes_out > self.before.bytes_out);
        self.bystander.close(None).unwrap();
        stop(self.server);
    }
}

// ------------------------------------------------------------ handshake --

/// Send `request`, expect an HTTP error `status` and the TCP connection
/// closed after the response; returns the response.
fn http_error(addr: SocketAddr, request: &[u8], status: u16) -> Response {
    let mut c = Raw::connect(addr);
    // The server may answer and close before reading everything we send:
    // a failed write is fine, the response is what matters.
    let _ = c.try_send(request);
    let (r, body) = c.read_error_response();
    assert_eq!(
        r.status,
        status,
        "{}{}",
        r.head,
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        r.header("connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("close"),
        "{}",
        r.head
    );
    assert!(r.header("sec-websocket-accept").is_none(), "{}", r.head);
    r
}

/// A valid upgrade request with one substitution.
fn request_with(addr: SocketAddr, from: &str, to: &str) -> String {
    let req = upgrade_request(addr, "/echo", "");
    assert!(req.contains(from), "{from:?} not in the request");
    req.replacen(from, to, 1)
}

#[test]
fn tls_client_hello_instead_of_a_request_gets_400_and_tcp_closed() {
    let case = Case::start(|_| {});
    // The start of a TLS 1.2 ClientHello record, as a browser would send to
    // a ws:// port it believes is wss://.
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ];
    hello.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    hello.extend([0x00, 0x00, 0x20, 0xcc, 0xa8, 0xcc, 0xa9, 0xc0, 0x2f]);
    hello.extend([0u8; 120]);
    http_error(case.addr(), &hello, 400);
    case.finish(1);
}

#[test]
fn random_bytes_instead_of_a_request_get_400_and_tcp_closed() {
    let case = Case::start(|_| {});
    let mut x = 0x2545_F491u32;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    http_error(case.addr(), &garbage, 400);
    case.finish(1);
}

#[test]
fn head_with_a_10_kib_header_line_gets_431() {
    let case = Case::start(|c| assert_eq!(c.max_head, 8 * 1024, "default max_head"));
    let big = format!("X-Big: {}\r\n", "a".repeat(10 * 1024));
    let req = upgrade_request(case.addr(), "/echo", &big);
    http_error(case.addr(), req.as_bytes(), 431);
    case.finish(1);
}

#[test]
fn too_many_header_lines_get_431() {
    let case = Case::start(|_| {});
    let many: String = (0..40).map(|i| format!("X-Pad-{i}: y\r\n")).collect();
    let req = upgrade_request(case.addr(), "/echo", &many);
    assert!(req.len() < 8 * 1024, "small head, just many lines");
    http_error(case.addr(), req.as_bytes(), 431);
    case.finish(1);
}

#[test]
fn version_8_gets_426_with_the_supported_version() {
    let case = Case::start(|_| {});
    let req = request_with(
        case.addr(),
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Version: 8",
    );
    let r = http_error(case.addr(), req.as_bytes(), 426);
    assert_eq!(r.header("sec-websocket-version"), Some("13"), "{}", r.head);
    case.finish(1);
}

#[test]
fn missing_key_gets_400() {
    let case = Case::start(|_| {});
    let req = request_with(case.addr(), &format!("Sec-WebSocket-Key: {KEY}\r\n"), "");
    http_error(case.addr(), req.as_bytes(), 400);
    case.finish(1);
}

#[test]
fn bad_keys_get_400() {
    let case = Case::start(|_| {});
    for bad in [
        "dGhlIHNhbXBsZSBub25j",         // 15 bytes
        "!!!!!!!!!!!!!!!!!!!!!!==",     // not base64
        "dGhlIHNhbXBsZSBub25jZQ==AAAA", // 19 bytes
        "",
    ] {
        let req = request_with(case.addr(), KEY, bad);
        http_error(case.addr(), req.as_bytes(), 400);
    }
    case.finish(4);
}

#[test]
fn post_gets_400() {
    let case = Case::start(|_| {});
    let req = request_with(case.addr(), "GET /echo", "POST /echo");
    http_error(case.addr(), req.as_bytes(), 400);
    case.finish(1);
}

#[test]
fn unknown_path_gets_404() {
    let case = Case::start(|_| {});
    let req = upgrade_request(case.addr(), "/no-such-route", "");
    http_error(case.addr(), req.as_bytes(), 404);
    case.finish(1);
}

#[test]
fn slowloris_is_dropped_at_the_handshake_deadline_while_others_are_served() {
    let mut case = Case::start(|c| c.timeouts.handshake_ms = 1000);
    let req = upgrade_request(case.addr(), "/echo", "X-Padding: slow slow slow\r\n");
    // Before the connect: the deadline runs from the accept.
    let t0 = Instant::now();
    let mut c = Raw::connect(case.addr());
    let mut served_meanwhile = false;
    let mut sent = 0;
    let (elapsed, end) = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "slow client still connected after {:?} ({sent} bytes sent)",
            t0.elapsed()
        );
        assert!(sent < req.len(), "the whole request went out");
        if let Err(e) = c.try_send(&req.as_bytes()[sent..sent + 1]) {
            break (t0.elapsed(), format!("write: {e}"));
        }
        sent += 1;
        match c.fill(Instant::now() + Duration::from_millis(200)) {
            Ok(_) => panic!(
                "the server answered an incomplete request: {:?}",
                String::from_utf8_lossy(&c.pending)
            ),
            Err(End::Timeout) => {}
            Err(end) if end.is_closed() => break (t0.elapsed(), format!("read: {end:?}")),
            Err(end) => panic!("unexpected: {end:?}"),
        }
        if !served_meanwhile && t0.elapsed() > Duration::from_millis(400) {
            // A new client, while the slow one holds its connection.
            let mut ws = ws_connect(case.addr());
            assert_echo(&mut ws, Message::Text("served meanwhile".into()));
            ws.close(None).unwrap();
            served_meanwhile = true;
            case.extra_messages += 1;
        }
    };
    assert!(served_meanwhile, "the check ran before the drop");
    assert!(
        elapsed >= Duration::from_millis(900),
        "dropped before the 1000 ms handshake deadline: {elapsed:?} ({end})"
    );
    assert!(case.stats().timeouts > case.before.timeouts);
    case.finish(0);
}

// --------------------------------------------------------------- frames --

/// Upgrade, send `bytes`, expect a close frame with `code`, then TCP closed.
fn frame_error(addr: SocketAddr, bytes: &[u8], code: u16) -> Frame {
    let mut c = Raw::upgrade(addr, "/echo");
    // The server may stop reading once it has failed the connection.
    let _ = c.try_send(bytes);
    c.assert_closed_with(code)
}

#[test]
fn tcp_reset_in_the_middle_of_a_frame_is_survived_and_counted() {
    let case = Case::start(|_| {});
    let mut c = Raw::upgrade(case.addr(), "/echo");
    // Header of a 1000-byte frame and 10 bytes of it.
    let f = frame_declared(true, OP_BINARY, 1000, &[7; 10]);
    let before_in = case.stats().bytes_in;
    c.send(&f);
    let shared = case.server.shared().clone();
    wait_for(TIMEOUT, "server read the partial frame", || {
        stats(&shared).bytes_in >= before_in + f.len() as u64
    });
    c.reset();
    wait_connections(&shared, 1);
    // The count of open connections drops just before `closed` rises.
    let closed = case.before.closed + 1;
    wait_for(TIMEOUT, "the reset connection counted as closed", || {
        stats(&shared).closed >= closed
    });
    let s = case.stats();
    assert_eq!(s.closed, closed, "{s:?}");
    case.finish(0);
}

#[test]
fn declared_1_gib_frame_gets_1009_without_allocating_it() {
    let case = Case::start(|_| {});
    let rss_before = vm_rss_kib();
    let f = frame_declared(true, OP_BINARY, 1 << 30, &[]);
    assert_eq!(f.len(), 14, "header only");
    frame_error(case.addr(), &f, 1009);
    let rss_after = vm_rss_kib();
    let grown_mib = rss_after.saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 64,
        "RSS grew by {grown_mib} MiB ({rss_before} -> {rss_after} KiB) on a declared length"
    );
    case.finish(1);
}

#[test]
fn invalid_utf8_split_across_fragments_gets_1007() {
    let case = Case::start(|_| {});
    // 0xCE starts a two-byte sequence; 0x41 cannot continue it.
    let mut bytes = frame(false, 0, OP_TEXT, b"ab\xCE");
    bytes.extend(frame(true, 0, OP_CONT, b"\x41bc"));
    frame_error(case.addr(), &bytes, 1007);
    case.finish(1);
}

#[test]
fn unmasked_frame_gets_1002() {
    let case = Case::start(|_| {});
    let f = raw_frame(true, 0, OP_TEXT, None, 5, b"hello");
    frame_error(case.addr(), &f, 1002);
    case.finish(1);
}

#[test]
fn reserved_opcodes_get_1002() {
    let case = Case::start(|_| {});
    for op in [0x3, 0x7, 0xB, 0xF] {
        frame_error(case.addr(), &frame(true, 0, op, b"x"), 1002);
    }
    case.finish(4);
}

#[test]
fn rsv1_without_an_extension_gets_1002() {
    let case = Case::start(|_| {});
    frame_error(case.addr(), &frame(true, 0b100, OP_TEXT, b"hi"), 1002);
    case.finish(1);
}

#[test]
fn ping_with_126_byte_payload_gets_1002() {
    let case = Case::start(|_| {});
    frame_error(case.addr(), &frame(true, 0, OP_PING, &[b'p'; 126]), 1002);
    case.finish(1);
}

#[test]
fn continuation_without_a_start_gets_1002() {
    let case = Case::start(|_| {});
    frame_error(case.addr(), &frame(true, 0, OP_CONT, b"orphan"), 1002);
    case.finish(1);
}

#[test]
fn close_with_a_1_byte_payload_gets_1002() {
    let case = Case::start(|_| {});
    frame_error(case.addr(), &frame(true, 0, OP_CLOSE, &[0x03]), 1002);
    case.finish(1);
}

#[test]
fn close_code_1005_gets_1002() {
    let case = Case::start(|_| {});
    let f = frame(true, 0, OP_CLOSE, &close_payload(1005, b""));
    frame_error(case.addr(), &f, 1002);
    case.finish(1);
}

#[test]
fn close_reason_invalid_utf8_gets_1007() {
    let case = Case::start(|_| {});
    let f = frame(true, 0, OP_CLOSE, &close_payload(1000, b"ok\xFF\xFE"));
    frame_error(case.addr(), &f, 1007);
    case.finish(1);
}

#[test]
fn fragmented_message_over_max_message_gets_1009() {
    let case = Case::start(|c| c.limits.max_message = 1 << 20);
    let piece = vec![b'z'; 400 * 1024];
    let mut c = Raw::upgrade(case.addr(), "/echo");
    // 400 + 400 KiB fit in 1 MiB; the third fragment does not.
    let mut bytes = frame(false, 0, OP_BINARY, &piece);
    bytes.extend(frame(false, 0, OP_CONT, &piece));
    bytes.extend(frame(true, 0, OP_CONT, &piece));
    let _ = c.try_send(&bytes);
    c.assert_closed_with(1009);
    case.finish(1);
}

#[test]
fn more_frame_violations_each_get_their_close_code() {
    // Not in the brief's list, but the same machinery: each case on its own
    // connection, one server, one bystander.
    let case = Case::start(|_| {});
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "invalid UTF-8 in one text frame",
            frame(true, 0, OP_TEXT, b"\xC0\xAF"),
            1007,
        ),
        (
            "text message ending inside a code point",
            frame(true, 0, OP_TEXT, b"ok\xE2\x82"),
            1007,
        ),
        (
            "new text frame while a message is fragmented",
            [
                frame(false, 0, OP_TEXT, b"a"),
                frame(true, 0, OP_TEXT, b"b"),
            ]
            .concat(),
            1002,
        ),
        (
            "fragmented ping (FIN clear)",
            frame(false, 0, OP_PING, b"p"),
            1002,
        ),
        (
            "64-bit length with its top bit set",
            frame_declared(true, OP_BINARY, 1 << 63, &[]),
            1002,
        ),
        ("RSV2", frame(true, 0b010, OP_BINARY, b"x"), 1002),
        ("RSV3", frame(true, 0b001, OP_BINARY, b"x"), 1002),
        (
            "close code 999",
            frame(true, 0, OP_CLOSE, &close_payload(999, b"")),
            1002,
        ),
        (
            "close code 1006",
            frame(true, 0, OP_CLOSE, &close_payload(1006, b"")),
            1002,
        ),
        (
            "close code 5000",
            frame(true, 0, OP_CLOSE, &close_payload(5000, b"")),
            1002,
        ),
    ];
    let n = cases.len() as u64;
    for (what, bytes, code) in cases {
        let mut c = Raw::upgrade(case.addr(), "/echo");
        let _ = c.try_send(&bytes);
        let close = c.read_frame(TIMEOUT);
        assert_eq!(
            (close.opcode, close.close_code()),
            (OP_CLOSE, Some(code)),
            "{what}: {close:?}"
        );
        let (rest, _) = c.expect_tcp_closed(Duration::from_secs(5));
        assert!(rest.is_empty(), "{what}: bytes after the close frame");
    }
    case.finish(n);
}
