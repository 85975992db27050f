//! `/echo` against an independent client (tungstenite), plus a few byte-exact
//! checks with the raw helper: message sizes around every length encoding,
//! fragmentation with an interleaved ping, many clients at once, the client
//! initiated close handshake, subprotocol negotiation and the Origin hook.

mod support;

use std::borrow::Cow;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

/// Sizes on either side of the 7-bit, 16-bit and 64-bit length encodings.
const SIZES: [usize; 7] = [0, 1, 125, 126, 65535, 65536, 1 << 20];

fn text_of(n: usize) -> String {
    // Multi-byte characters too, so that a split code point would show up;
    // padded with ASCII to exactly `n` bytes.
    let unit = "abcdefghijklmnopqrstuvwxyz0123456789-é€😀";
    let mut s = String::with_capacity(n);
    'fill: loop {
        for c in unit.chars() {
            if s.len() + c.len_utf8() > n {
                break 'fill;
            }
            s.push(c);
        }
    }
    while s.len() < n {
        s.push('.');
    }
    s
}

fn binary_of(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn text_and_binary_of_every_length_encoding_come_back_exactly() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.local_addr());
    for n in SIZES {
        assert_echo(&mut ws, Message::Text(text_of(n)));
        assert_echo(&mut ws, Message::Binary(binary_of(n)));
    }
    let s = stats(server.shared());
    assert_eq!(s.messages_in, 2 * SIZES.len() as u64);
    assert_eq!(s.messages_out, 2 * SIZES.len() as u64);
    assert_eq!(s.protocol_errors, 0);
    ws.close(None).unwrap();
    stop(server);
}

#[test]
fn fragmented_message_with_a_ping_between_fragments_comes_back_whole_after_the_pong() {
    let server = start(|_| {});
    let mut c = Raw::upgrade(server.local_addr(), "/echo");
    // "héllo wörld" split inside the two-byte 'é' as well.
    let msg = "héllo wörld".as_bytes();
    let mut bytes = frame(false, 0, OP_TEXT, &msg[..2]); // "h" + first byte of 'é'
    bytes.extend(frame(true, 0, OP_PING, b"are you there"));
    bytes.extend(frame(false, 0, OP_CONT, &msg[2..7]));
    bytes.extend(frame(true, 0, OP_CONT, &msg[7..]));
    c.send(&bytes);

    let pong = c.read_frame(TIMEOUT);
    assert_eq!(
        (pong.fin, pong.rsv, pong.opcode, pong.payload.as_slice()),
        (true, 0, OP_PONG, &b"are you there"[..]),
        "the pong comes first, with the ping's payload"
    );
    let echo = c.read_frame(TIMEOUT);
    assert_eq!(
        (echo.fin, echo.rsv, echo.opcode, echo.payload.as_slice()),
        (true, 0, OP_TEXT, msg),
        "the message comes back whole, as one text frame"
    );
    c.send_close(1000, b"");
    c.assert_closed_with(1000);
    stop(server);
}

#[test]
fn echoes_written_from_the_read_buffer_keep_their_order_around_a_pong_and_the_close() {
    // One write: echoes (written straight from the read buffer while the
    // out queue is empty), a ping (its pong is queued), more echoes (queued
    // behind the pong), a 16 KiB echo, then a close. Everything comes back
    // in the order sent; a bystander is served throughout.
    let server = start(|_| {});
    let mut bystander = ws_connect(server.local_addr());
    let mut c = Raw::upgrade(server.local_addr(), "/echo");
    let big = binary_of(16 * 1024);
    let mut bytes = Vec::new();
    for i in 0..5 {
        bytes.extend(frame(true, 0, OP_TEXT, format!("before {i}").as_bytes()));
    }
    bytes.extend(frame(true, 0, OP_PING, b"ping"));
    bytes.extend(frame(true, 0, OP_TEXT, b"after"));
    bytes.extend(frame(true, 0, OP_BINARY, &big));
    bytes.extend(frame(true, 0, OP_CLOSE, &close_payload(1000, b"")));
    c.send(&bytes);
    for i in 0..5 {
        let f = c.read_frame(TIMEOUT);
        assert_eq!(
            (f.opcode, f.payload.as_slice()),
            (OP_TEXT, format!("before {i}").as_bytes())
        );
    }
    let f = c.read_frame(TIMEOUT);
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OP_PONG, &b"ping"[..]),
        "the pong after the echoes before the ping"
    );
    let f = c.read_frame(TIMEOUT);
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_TEXT, &b"after"[..]));
    let f = c.read_frame(TIMEOUT);
    assert_eq!((f.opcode, f.payload.len()), (OP_BINARY, big.len()));
    assert!(f.payload == big, "16 KiB echo intact");
    c.assert_closed_with(1000);
    assert_echo(&mut bystander, Message::Text("still served".into()));
    let s = stats(server.shared());
    assert_eq!((s.messages_in, s.messages_out), (8, 8), "{s:?}");
    stop(server);
}

#[test]
fn frames_trickled_one_byte_at_a_time_are_reassembled() {
    // Exercises the spill path: every frame header and payload arrives split.
    let server = start(|_| {});
    let mut c = Raw::upgrade(server.local_addr(), "/echo");
    let payload = binary_of(300);
    let mut bytes = frame(false, 0, OP_BINARY, &payload[..130]);
    bytes.extend(frame(true, 0, OP_PING, b"p"));
    bytes.extend(frame(true, 0, OP_CONT, &payload[130..]));
    bytes.extend(frame(true, 0, OP_TEXT, "ü".as_bytes()));
    for b in &bytes {
        c.send(std::slice::from_ref(b));
        std::thread::sleep(Duration::from_millis(1));
    }
    let pong = c.read_frame(TIMEOUT);
    assert_eq!((pong.opcode, pong.payload.as_slice()), (OP_PONG, &b"p"[..]));
    let echo = c.read_frame(TIMEOUT);
    assert_eq!((echo.fin, echo.opcode), (true, OP_BINARY));
    assert!(echo.payload == payload, "binary echo differs");
    let echo = c.read_frame(TIMEOUT);
    assert_eq!(
        (echo.opcode, echo.payload.as_slice()),
        (OP_TEXT, "ü".as_bytes())
    );
    c.send_close(1000, b"");
    c.assert_closed_with(1000);
    stop(server);
}

#[test]
fn fifty_clients_on_two_workers_get_their_hundred_messages_back_in_order() {
    const CLIENTS: usize = 50;
    const MESSAGES: usize = 100;
    let server = start(|c| c.workers = 2);
    let addr = server.local_addr();
    let barrier = Arc::new(std::sync::Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut ws = ws_connect(addr);
                barrier.wait(); // all connected at once
                let msg = |i: usize| {
                    if i.is_multiple_of(2) {
                        Message::Text(format!("client {id} message {i} {}", "x".repeat(i)))
                    } else {
                        Message::Binary(format!("c{id}m{i}").into_bytes())
                    }
                };
                // Pipelined: all sent before any is read.
                for i in 0..MESSAGES {
                    ws.send(msg(i)).expect("send");
                }
                for i in 0..MESSAGES {
                    let got = ws.read().expect("read");
                    assert!(
                        got == msg(i),
                        "client {id}: message {i}: got {}",
                        describe(&got)
                    );
                }
                ws.close(None).unwrap();
                // Drain to the server's close reply.
                loop {
                    match ws.read() {
                        Ok(_) => {}
                        Err(tungstenite::Error::ConnectionClosed) => break,
                        Err(e) => panic!("client {id}: after close: {e}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let total = (CLIENTS * MESSAGES) as u64;
    wait_connections(server.shared(), 0);
    let s = stats(server.shared());
    assert_eq!((s.messages_in, s.messages_out), (total, total), "{s:?}");
    assert_eq!((s.accepted, s.closed), (CLIENTS as u64, CLIENTS as u64));
    assert_eq!(s.protocol_errors, 0);
    stop(server);
}

#[test]
fn client_close_1000_bye_is_echoed_then_the_server_closes_tcp() {
    let server = start(|_| {});
    let mut ws = ws_connect(server.local_addr());
    assert_echo(&mut ws, Message::Text("before close".into()));
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: Cow::Borrowed("bye"),
    }))
    .expect("send close");
    let reply = match ws.read().expect("read the close reply") {
        Message::Close(c) => c,
        other => panic!("unexpected message after close: {}", describe(&other)),
    };
    let reply = reply.expect("the reply carries a status code");
    assert_eq!(reply.code, CloseCode::Normal);
    // The server closes TCP first (RFC 6455 §7.1.1): we see EOF without
    // closing our side.
    let sock = ws.get_mut();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    match sock.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("{n} bytes after the close reply"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("server did not close TCP after the close handshake: {e}"),
    }
    wait_connections(server.shared(), 0);
    stop(server);
}

#[test]
fn subprotocol_is_negotiated_from_the_clients_offer() {
    let server = start(|c| c.protocols = vec!["chat".into()]);
    let addr = server.local_addr();

    // Raw, byte-exact: the offer "foo, chat" selects "chat".
    let req = upgrade_request(addr, "/echo", "Sec-WebSocket-Protocol: foo, chat\r\n");
    let (_c, r) = Raw::request(addr, req.as_bytes());
    assert_eq!(r.status, 101, "{}", r.head);
    assert_eq!(
        r.header("sec-websocket-protocol"),
        Some("chat"),
        "{}",
        r.head
    );
    assert_eq!(r.header_count("sec-websocket-protocol"), 1);

    // Offer split over two header lines.
    let req = upgrade_request(
        addr,
        "/echo",
        "Sec-WebSocket-Protocol: foo\r\nSec-WebSocket-Protocol: chat\r\n",
    );
    let (_c, r) = Raw::request(addr, req.as_bytes());
    assert_eq!(
        r.header("sec-websocket-protocol"),
        Some("chat"),
        "{}",
        r.head
    );

    // Nothing offered: no header. Nothing acceptable offered: no header.
    for extra in ["", "Sec-WebSocket-Protocol: foo, bar\r\n"] {
        let (_c, r) = Raw::request(addr, upgrade_request(addr, "/echo", extra).as_bytes());
        assert_eq!(r.status, 101, "{}", r.head);
        assert_eq!(r.header("sec-websocket-protocol"), None, "{}", r.head);
    }

    // tungstenite (it checks the selection against its offer; it splits the
    // offer on "," without trimming, hence no space here).
    let (mut ws, resp) = ws_connect_with(addr, "/echo", &[("Sec-WebSocket-Protocol", "foo,chat")])
        .expect("tungstenite accepts the negotiated subprotocol");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("chat")
    );
    assert_echo(&mut ws, Message::Text("with chat".into()));
    // tungstenite fails the handshake if a subprotocol comes back unasked.
    let (mut ws2, resp) = ws_connect_with(addr, "/echo", &[]).expect("no subprotocol offered");
    assert!(resp.headers().get("sec-websocket-protocol").is_none());
    assert_echo(&mut ws2, Message::Text("without".into()));
    stop(server);
}

#[test]
fn origin_hook_accepts_its_origin_and_refuses_others_with_403() {
    let server = start(|c| {
        c.origin_check = Some(Arc::new(|o: Option<&[u8]>| {
            o == Some(&b"https://ok.example"[..])
        }))
    });
    let addr = server.local_addr();

    let (mut ws, _) = ws_connect_with(addr, "/echo", &[("Origin", "https://ok.example")])
        .expect("allowed origin");
    assert_echo(&mut ws, Message::Text("from ok.example".into()));

    for origin in [Some("https://evil.example"), None] {
        let extra: Vec<(&'static str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
        match ws_connect_with(addr, "/echo", &extra).map_err(|e| *e) {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 403, "origin {origin:?}")
            }
            Ok(_) => panic!("origin {origin:?} was accepted"),
            Err(e) => panic!("origin {origin:?}: unexpected error {e}"),
        }
        // Raw: the 403 arrives whole and the connection is closed.
        let extra_line = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
        let mut c = Raw::connect(addr);
        c.send(upgrade_request(addr, "/echo", &extra_line).as_bytes());
        let (r, _) = c.read_error_response();
        assert_eq!(r.status, 403, "{}", r.head);
    }
    assert_echo(&mut ws, Message::Text("still here".into()));
    stop(server);
}
