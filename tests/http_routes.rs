//! The HTTP side of the server besides `/echo`'s upgrade: `/healthz`, the
//! connection limit (503), and frames pipelined behind the upgrade request.

mod support;

use support::*;

#[test]
fn healthz_answers_200_ok_and_closes_on_connection_close() {
    let server = start(|_| {});
    let addr = server.local_addr();
    for target in ["/healthz", "/healthz?probe=1"] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let mut c = Raw::connect(addr);
        c.send(req.as_bytes());
        let (r, body) = c.read_error_response();
        assert_eq!(r.status, 200, "{}", r.head);
        // "ok", or a JSON status object saying so.
        let body = String::from_utf8_lossy(&body);
        let body: String = body.split_whitespace().collect();
        assert!(
            body == "ok" || body.contains(r#""status":"ok""#),
            "healthz body: {body:?}"
        );
    }
    wait_connections(server.shared(), 0);
    assert_eq!(stats(server.shared()).protocol_errors, 0);
    stop(server);
}

#[test]
fn healthz_twice_on_one_keep_alive_connection() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut c = Raw::connect(addr);
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    for i in 0..2 {
        c.send(req.as_bytes());
        let r = c.read_response();
        assert_eq!(r.status, 200, "request {i}: {}", r.head);
        if r.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            // A server may close after each response; then the first one
            // is all there is.
            let (body, _) = c.expect_tcp_closed(TIMEOUT);
            assert!(!body.is_empty());
            break;
        }
        let len: usize = r
            .header("content-length")
            .expect("keep-alive response has a Content-Length")
            .trim()
            .parse()
            .unwrap();
        let body = c.read_exact_pending(len);
        assert!(!body.is_empty(), "request {i}");
    }
    stop(server);
}

#[test]
fn upgrade_request_and_first_frames_in_one_write() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut bytes = upgrade_request(addr, "/echo", "").into_bytes();
    bytes.extend(frame(true, 0, OP_TEXT, b"right behind the request"));
    bytes.extend(frame(true, 0, OP_PING, b"p"));
    // And half of a third frame, completed later (spilled meanwhile).
    let third = frame(true, 0, OP_BINARY, &[5; 300]);
    bytes.extend_from_slice(&third[..100]);
    let mut c = Raw::connect(addr);
    c.send(&bytes);
    let r = c.read_response();
    assert_eq!(r.status, 101, "{}", r.head);
    let f = c.read_frame(TIMEOUT);
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OP_TEXT, &b"right behind the request"[..])
    );
    let f = c.read_frame(TIMEOUT);
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_PONG, &b"p"[..]));
    c.send(&third[100..]);
    let f = c.read_frame(TIMEOUT);
    assert_eq!((f.opcode, f.payload), (OP_BINARY, vec![5; 300]));
    c.send_close(1000, b"");
    c.assert_closed_with(1000);
    stop(server);
}

#[test]
fn http_1_0_upgrade_gets_400() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let req = upgrade_request(addr, "/echo", "").replacen("HTTP/1.1", "HTTP/1.0", 1);
    let mut c = Raw::connect(addr);
    c.send(req.as_bytes());
    let (r, _) = c.read_error_response();
    assert_eq!(r.status, 400, "{}", r.head);
    stop(server);
}

#[test]
fn connection_limit_answers_503_and_frees_the_slot_afterwards() {
    let server = start(|c| c.max_connections = 1);
    let addr = server.local_addr();
    let mut first = Raw::upgrade(addr, "/echo");
    wait_connections(server.shared(), 1);

    let mut second = Raw::connect(addr);
    second.send(upgrade_request(addr, "/echo", "").as_bytes());
    let (r, _) = second.read_error_response();
    assert_eq!(r.status, 503, "{}", r.head);
    drop(second);
    wait_connections(server.shared(), 1);
    assert!(stats(server.shared()).refused >= 1);

    // The first one is unaffected; once it is gone a new one gets in.
    first.send(&frame(true, 0, OP_TEXT, b"first"));
    let f = first.read_frame(TIMEOUT);
    assert_eq!(f.payload, b"first");
    first.send_close(1000, b"");
    first.assert_closed_with(1000);
    drop(first);
    wait_connections(server.shared(), 0);
    let mut third = Raw::upgrade(addr, "/echo");
    third.send_close(1000, b"");
    third.assert_closed_with(1000);
    stop(server);
}
