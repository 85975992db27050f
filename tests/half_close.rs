//! A peer that half-closes (shutdown(SHUT_WR): "I have nothing more to
//! send") right after its last bytes still gets every answer those bytes
//! called for. A FIN ends the peer's sending, not its reading.
//!
//! BUG (these tests fail at commits 6a3bba6 through 6a55f42):
//! src/server/worker.rs, `Worker::on_readable`, the `Ok(0)` arm: on EOF the
//! connection is dropped at once with `drop_conn`, which clears its out
//! queue (`o.clear()`). Replies queued by the same read burst (the 200 of
//! /healthz, an HTTP error, an echo, the close reply) would only be written
//! by `flush_dirty` at the end of the loop iteration, so they are discarded:
//! the client sees EOF and no bytes. (EOF should end reading only: flush
//! what is queued, then close.)
//!
//! Repro by hand, against `wsgate --listen 127.0.0.1:8080`:
//!
//! ```text
//! python3 -c 'import socket; s = socket.create_connection(("127.0.0.1", 8080));
//! s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); s.shutdown(socket.SHUT_WR);
//! print(s.recv(4096))'
//! ```
//!
//! prints `b''` (without the `shutdown` it prints the 200 response).

mod support;

use support::*;

#[test]
fn healthz_request_then_half_close_still_gets_200() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let mut c = Raw::connect(addr);
    c.send_and_half_close(
        format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let (got, end) = c.expect_tcp_closed(TIMEOUT);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200 "),
        "BUG: response lost on half-close; got {text:?} then {end:?}"
    );
    assert!(text.contains("ok"), "{text:?}");
    stop(server);
}

#[test]
fn bad_request_then_half_close_still_gets_400() {
    let server = start(|_| {});
    let mut c = Raw::connect(server.local_addr());
    c.send_and_half_close(b"\x16\x03\x01\x00\xa5garbage\r\n\r\n");
    let (got, end) = c.expect_tcp_closed(TIMEOUT);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 400 "),
        "BUG: error response lost on half-close; got {text:?} then {end:?}"
    );
    stop(server);
}

#[test]
fn message_and_close_then_half_close_still_get_the_echo_and_the_close_reply() {
    let server = start(|_| {});
    let mut c = Raw::upgrade(server.local_addr(), "/echo");
    let mut bytes = frame(true, 0, OP_TEXT, b"last words");
    bytes.extend(frame(true, 0, OP_CLOSE, &close_payload(1000, b"done")));
    c.send_and_half_close(&bytes);
    let echo = match c.try_read_frame(TIMEOUT) {
        Ok(f) => f,
        Err(end) => panic!("BUG: echo and close reply lost on half-close: {end:?}"),
    };
    assert_eq!(
        (echo.opcode, echo.payload.as_slice()),
        (OP_TEXT, &b"last words"[..])
    );
    c.assert_closed_with(1000);
    stop(server);
}
