//! Running out, part one: `max_connections`. Beyond the limit a new
//! connection is answered `503` and closed at once, whether or not it has
//! sent its request yet; the limit counts connections across workers; the
//! refused ones never take a slot; the connections already open are not
//! disturbed; and once some leave, new ones are accepted again (and the limit
//! still holds after that).
//!
//! tests/http_routes.rs covers the single-slot case (`max_connections = 1`);
//! this file covers several slots over two workers, silent clients, and the
//! recovery. No timing is asserted beyond "within the usual deadline".

mod support;

use std::time::Duration;

use support::*;

/// A connection over the limit: the answer is `HTTP/1.1 503` and TCP closes.
fn assert_refused(addr: std::net::SocketAddr, send_request: bool) {
    let mut c = Raw::connect(addr);
    if send_request {
        c.send(upgrade_request(addr, "/echo", "").as_bytes());
    }
    let (r, _body) = c.read_error_response();
    assert_eq!(r.status, 503, "{}", r.head);
    assert!(r.head.starts_with("HTTP/1.1 503"), "{}", r.head);
}

fn echo_once(c: &mut Raw, text: &[u8]) {
    c.send(&frame(true, 0, OP_TEXT, text));
    let f = c.read_frame(TIMEOUT);
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_TEXT, text));
}

#[test]
fn over_the_limit_gets_503_and_recovers_when_connections_leave() {
    const LIMIT: usize = 4;
    let server = start(|c| {
        c.max_connections = LIMIT;
        c.workers = 2; // the limit is the process's, not a worker's
    });
    let addr = server.local_addr();
    let shared = server.shared();

    let mut open: Vec<Raw> = (0..LIMIT).map(|_| Raw::upgrade(addr, "/echo")).collect();
    wait_connections(shared, LIMIT);

    // Three over the limit: two send their upgrade request, one says
    // nothing (the 503 does not wait for a request).
    assert_refused(addr, true);
    assert_refused(addr, false);
    assert_refused(addr, true);
    // Refused connections give their slot back as soon as they are closed.
    wait_connections(shared, LIMIT);
    assert_eq!(stats(shared).refused, 3);

    // The open ones are unaffected.
    for (i, c) in open.iter_mut().enumerate() {
        echo_once(c, format!("still here {i}").as_bytes());
    }

    // Two leave (clean close handshake); two new ones get in.
    for mut c in open.drain(..2) {
        c.send_close(1000, b"");
        c.assert_closed_with(1000);
    }
    wait_connections(shared, LIMIT - 2);
    open.push(Raw::upgrade(addr, "/echo"));
    open.push(Raw::upgrade(addr, "/echo"));
    wait_connections(shared, LIMIT);
    for c in open.iter_mut() {
        echo_once(c, b"after recovery");
    }

    // Full again: the limit still holds after the recovery.
    assert_refused(addr, true);
    wait_connections(shared, LIMIT);
    assert_eq!(stats(shared).refused, 4);

    for mut c in open {
        c.send_close(1000, b"");
        c.assert_closed_with(1000);
    }
    wait_connections(shared, 0);
    stop(server);
}

#[test]
fn a_burst_over_the_limit_is_refused_without_touching_the_open_ones() {
    const LIMIT: usize = 2;
    let server = start(|c| c.max_connections = LIMIT);
    let addr = server.local_addr();
    let shared = server.shared();
    let mut open: Vec<Raw> = (0..LIMIT).map(|_| Raw::upgrade(addr, "/echo")).collect();
    wait_connections(shared, LIMIT);

    // Twenty at once, none read until all are connected.
    let mut burst: Vec<Raw> = (0..20).map(|_| Raw::connect(addr)).collect();
    for c in burst.iter_mut() {
        // The server may already have answered and closed: ignore EPIPE.
        let _ = c.try_send(upgrade_request(addr, "/echo", "").as_bytes());
    }
    for mut c in burst {
        let r = c.read_response();
        assert_eq!(r.status, 503, "{}", r.head);
        c.expect_tcp_closed(Duration::from_secs(5));
    }
    wait_connections(shared, LIMIT);
    assert_eq!(stats(shared).refused, 20);
    for c in open.iter_mut() {
        echo_once(c, b"undisturbed");
    }
    for mut c in open {
        c.send_close(1000, b"");
        c.assert_closed_with(1000);
    }
    stop(server);
}
