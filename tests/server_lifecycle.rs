//! `Server::start` and `Server::stop` themselves: with one and with several
//! workers, the server starts, serves, and its workers end cleanly.
//!
//! BUG (since commit 53ba274, still at 6a55f42; in every debug build, hence in every
//! integration test that starts a server): src/server/mod.rs,
//! `Server::start`, creates two `mio::Waker`s on the same `Poll`:
//!
//! ```text
//! wakers.push(mio::Waker::new(poll.registry(), worker::WAKER)?);
//! inbox_wakers.push(mio::Waker::new(poll.registry(), worker::WAKER)?);
//! ```
//!
//! mio allows one Waker per Poll and checks it under debug assertions:
//! `Server::start` panics with "Only a single `Waker` can be active per
//! `Poll` instance" (mio-1.x src/poll.rs). Release builds skip the check, but
//! two eventfds registered under one token are not what mio supports either.
//! One Waker per Poll, shared (e.g. `Arc<mio::Waker>`) by `Server::stop` and
//! the inbox, would do.

mod support;

use support::*;

fn start_serve_stop(workers: usize) {
    let server = std::panic::catch_unwind(|| start(|c| c.workers = workers)).unwrap_or_else(|_| {
        panic!(
            "BUG: Server::start panicked with {workers} worker(s) (see the panic message \
                 above; this file's header explains it)"
        )
    });
    let addr = server.local_addr();
    // More connections than workers, so that each worker likely gets one.
    let mut clients: Vec<Raw> = (0..4 * workers)
        .map(|_| Raw::upgrade(addr, "/echo"))
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let msg = format!("hello from {i}");
        c.send(&frame(true, 0, OP_TEXT, msg.as_bytes()));
        let f = c.read_frame(TIMEOUT);
        assert_eq!(f.payload, msg.as_bytes());
    }
    wait_connections(server.shared(), 4 * workers);
    // Stop with connections open: they are dropped, the workers end.
    stop(server);
    for mut c in clients {
        let (rest, _) = c.expect_tcp_closed(TIMEOUT);
        assert!(rest.is_empty() || rest[0] & 0x0F == OP_CLOSE);
    }
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after stop"
    );
}

#[test]
fn one_worker_starts_serves_and_stops() {
    start_serve_stop(1);
}

#[test]
fn two_workers_start_serve_and_stop() {
    start_serve_stop(2);
}
