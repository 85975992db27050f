//! The per-connection timers on the real clock: ping interval, pong timeout,
//! idle timeout, close linger, handshake deadline. Timeouts are short and the
//! assertion windows generous: lower bounds check that nothing fires before
//! its deadline, upper bounds only that it fires at all.

mod support;

use std::time::{Duration, Instant};

use support::*;
use wsgate::proto::Timeouts;
use wsgate::server::Server;

/// Every timer off; tests turn on the ones they look at.
const OFF: Timeouts = Timeouts {
    handshake_ms: 0,
    ping_interval_ms: 0,
    pong_timeout_ms: 0,
    idle_timeout_ms: 0,
    close_linger_ms: 0,
};

fn start_with(t: Timeouts) -> Server {
    start(|c| c.timeouts = t)
}

#[test]
fn server_pings_after_the_ping_interval() {
    let server = start_with(Timeouts {
        ping_interval_ms: 300,
        pong_timeout_ms: 10_000,
        ..OFF
    });
    let t0 = Instant::now();
    let mut c = Raw::upgrade(server.local_addr(), "/echo");
    let ping = c.read_frame(Duration::from_secs(5));
    let elapsed = t0.elapsed();
    assert_eq!(
        (ping.fin, ping.rsv, ping.opcode),
        (true, 0, OP_PING),
        "{ping:?}"
    );
    assert!(ping.payload.len() <= 125);
    assert!(
        elapsed >= Duration::from_millis(250),
        "pinged after {elapsed:?}, before the 300 ms interval"
    );
    c.send_close(1000, b"");
    c.assert_closed_with(1000);
    stop(server);
}

#[test]
fn client_that_answers_pings_stays_connected() {
    // A pong timeout of 1 s leaves room for a slow turn of this thread; a
    // server that ignored the pongs would drop us after 1.3 s, well inside
    // the 3 s we stay.
    let server = start_with(Timeouts {
        ping_interval_ms: 300,
        pong_timeout_ms: 1000,
        ..OFF
    });
    let mut c = Raw::upgrade(server.local_addr(), "/echo");
    let t0 = Instant::now();
    let mut pings = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        match c.try_read_frame(Duration::from_millis(100)) {
            Ok(f) => {
                assert_eq!(f.opcode, OP_PING, "unexpected frame {f:?}");
                pings += 1;
                c.send(&frame(true, 0, OP_PONG, &f.payload));
            }
            Err(End::Timeout) => {}
            Err(end) => panic!(
                "dropped after {:?} and {pings} pings: {end:?}",
                t0.elapsed()
            ),
        }
    }
    assert!(
        pings >= 2,
        "only {pings} pings in 3 s with a 300 ms interval"
    );
    // Still open and echoing (pings may interleave).
    c.send(&frame(true, 0, OP_TEXT, b"still here"));
    let echo = loop {
        let f = c.read_frame(TIMEOUT);
        if f.opcode == OP_PING {
            c.send(&frame(true, 0, OP_PONG, &f.payload));
            continue;
        }
        break f;
    };
    assert_eq!(
        (echo.opcode, echo.payload.as_slice()),
        (OP_TEXT, &b"still here"[..])
    );
    assert_eq!(stats(server.shared()).timeouts, 0);
    c.send_close(1000, b"");
    c.assert_closed_with(1000);
    stop(server);
}

#[test]
fn client_that_never_answers_pings_is_dropped_after_the_pong_timeout() {
    let server = start_with(Timeouts {
        ping_interval_ms: 300,
        pong_timeout_ms: 300,
        ..OFF
    });
    let t0 = Instant::now();
    let mut c = Raw::upgrade(server.local_addr(), "/echo");
    let ping = c.read_frame(Duration::from_secs(3));
    assert_eq!(ping.opcode, OP_PING);
    let (rest, end) = c.expect_tcp_closed(Duration::from_secs(3));
    let elapsed = t0.elapsed();
    assert!(
        rest.is_empty() || rest[0] & 0x0F == OP_CLOSE,
        "only a close frame may follow the ping: {rest:02x?}"
    );
    assert!(
        elapsed >= Duration::from_millis(500),
        "dropped after {elapsed:?}, before ping (300 ms) + pong timeout (300 ms) ({end:?})"
    );
    wait_connections(server.shared(), 0);
    assert_eq!(stats(server.shared()).timeouts, 1);
    stop(server);
}

#[test]
fn idle_connection_gets_close_1001_then_tcp_closed_after_the_linger() {
    let server = start_with(Timeouts {
        idle_timeout_ms: 500,
        close_linger_ms: 1000,
        ..OFF
    });
    let t0 = Instant::now();
    let mut c = Raw::upgrade(server.local_addr(), "/echo");
    let close = c.read_frame(Duration::from_secs(5));
    let closed_at = t0.elapsed();
    assert_eq!(close.opcode, OP_CLOSE, "{close:?}");
    assert_eq!(close.close_code(), Some(1001));
    assert_eq!(close.close_reason(), b"idle timeout");
    assert!(
        closed_at >= Duration::from_millis(450),
        "idle close after {closed_at:?}, before the 500 ms idle timeout"
    );
    // We never answer: the server drops us once the linger has passed.
    let (rest, end) = c.expect_tcp_closed(Duration::from_secs(5));
    assert!(rest.is_empty(), "bytes after the close frame: {rest:02x?}");
    // Measured from before the connect (when we read the close frame
    // depends on how soon this thread ran): idle 500 ms + linger 1000 ms.
    let dropped_at = t0.elapsed();
    assert!(
        dropped_at >= Duration::from_millis(1400),
        "TCP closed {dropped_at:?} after connecting, before idle (500 ms) + linger (1000 ms) ({end:?})"
    );
    wait_connections(server.shared(), 0);
    stop(server);
}

/// After the close handshake the server closes TCP first (RFC 6455 §7.1.1),
/// without waiting for the client's FIN or the (long) close linger.
#[test]
fn idle_close_answered_by_the_client_ends_with_the_server_closing_tcp() {
    let server = start_with(Timeouts {
        idle_timeout_ms: 500,
        close_linger_ms: 10_000,
        ..OFF
    });
    let mut c = Raw::upgrade(server.local_addr(), "/echo");
    let close = c.read_frame(Duration::from_secs(5));
    assert_eq!((close.opcode, close.close_code()), (OP_CLOSE, Some(1001)));
    c.send_close(1001, b"");
    let t0 = Instant::now();
    // Well under the 10 s linger: the handshake is over, nothing to wait for.
    let (rest, _) = c.expect_tcp_closed(Duration::from_secs(5));
    assert!(
        rest.is_empty(),
        "bytes after the close handshake: {rest:02x?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    stop(server);
}

#[test]
fn activity_resets_the_idle_timeout() {
    // Messages every 150 ms keep a 1 s idle timeout from firing, with room
    // for a slow loop turn on a busy machine.
    let server = start_with(Timeouts {
        idle_timeout_ms: 1000,
        close_linger_ms: 1000,
        ..OFF
    });
    let mut c = Raw::upgrade(server.local_addr(), "/echo");
    let t0 = Instant::now();
    let mut i = 0u32;
    while t0.elapsed() < Duration::from_secs(2) {
        let msg = format!("tick {i}");
        c.send(&frame(true, 0, OP_TEXT, msg.as_bytes()));
        let echo = c.read_frame(TIMEOUT);
        assert_eq!(
            (echo.opcode, echo.payload.as_slice()),
            (OP_TEXT, msg.as_bytes()),
            "after {:?}",
            t0.elapsed()
        );
        i += 1;
        std::thread::sleep(Duration::from_millis(150));
    }
    // Then silence: the idle close comes.
    c.assert_closed_with(1001);
    stop(server);
}

#[test]
fn handshake_deadline_drops_a_client_that_never_completes_its_request() {
    let server = start_with(Timeouts {
        handshake_ms: 1000,
        ..OFF
    });
    let addr = server.local_addr();
    for partial in [&b""[..], b"GET /echo HTTP/1.1\r\nHost: x\r\n"] {
        let t0 = Instant::now();
        let mut c = Raw::connect(addr);
        c.send(partial);
        let (rest, end) = c.expect_tcp_closed(Duration::from_secs(5));
        let elapsed = t0.elapsed();
        assert!(rest.is_empty(), "the server answered: {rest:02x?}");
        assert!(
            elapsed >= Duration::from_millis(900),
            "dropped after {elapsed:?}, before the 1000 ms deadline ({end:?})"
        );
    }
    wait_connections(server.shared(), 0);
    assert_eq!(stats(server.shared()).timeouts, 2);
    stop(server);
}

#[test]
fn handshake_deadline_does_not_apply_after_the_upgrade() {
    let server = start_with(Timeouts {
        handshake_ms: 300,
        ..OFF
    });
    let mut c = Raw::upgrade(server.local_addr(), "/echo");
    match c.try_read_frame(Duration::from_millis(1500)) {
        Err(End::Timeout) => {}
        other => panic!("upgraded connection disturbed: {other:?}"),
    }
    c.send(&frame(true, 0, OP_BINARY, b"late"));
    let echo = c.read_frame(TIMEOUT);
    assert_eq!(
        (echo.opcode, echo.payload.as_slice()),
        (OP_BINARY, &b"late"[..])
    );
    assert_eq!(stats(server.shared()).timeouts, 0);
    c.send_close(1000, b"");
    c.assert_closed_with(1000);
    stop(server);
}
