//! The load generator's modes, run through the library API against an
//! in-process server: echo, hold and churn, briefly and with a few
//! connections. The assertions are on the counts a user sees, never on speed.

use std::time::Duration;

use wsgate::load::churn::{self, ChurnConfig};
use wsgate::load::client::{ClientConfig, Waves};
use wsgate::load::echo::{self, EchoConfig};
use wsgate::load::hold::{self, HoldConfig};
use wsgate::load::{Quiet, Target};
use wsgate::server::{Server, ServerConfig};

fn server() -> Server {
    Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        ..Default::default()
    })
    .expect("server starts")
}

fn client(server: &Server, path: &str) -> ClientConfig {
    let url = format!("ws://{}{path}", server.local_addr());
    ClientConfig::new(Target::parse(&url).expect("valid URL"))
}

#[test]
fn echo_counts_every_message_once() {
    let srv = server();
    for text in [true, false] {
        let cfg = EchoConfig {
            client: client(&srv, "/echo"),
            conns: 8,
            size: 300,
            text,
            // A window of 1.4 s: some echo lands in it even on a busy box.
            duration: Duration::from_millis(1500),
            warmup: Duration::from_millis(100),
            waves: Waves::default(),
        };
        let s = echo::run(&cfg, &mut Quiet).expect("echo runs");
        assert_eq!((s.open.requested, s.open.opened, s.open.failed), (8, 8, 0));
        assert!(s.echoed > 0, "{s:?}");
        assert_eq!(s.echoed, s.sent - s.unanswered, "{s:?}");
        assert_eq!(s.errors(), 0, "{s:?}");
        assert!(s.window_echoed > 0 && s.window_echoed <= s.echoed);
        assert_eq!(s.latency.count(), s.window_echoed);
    }
    srv.stop().unwrap();
}

#[test]
fn hold_keeps_every_connection_open() {
    let srv = server();
    let cfg = HoldConfig {
        client: client(&srv, "/echo"),
        conns: 40,
        hold: Duration::from_millis(300),
        // Small waves, to exercise them.
        waves: Waves {
            inflight: 7,
            rate: None,
        },
        hello_size: 0,
    };
    let s = hold::run(&cfg, &mut Quiet).expect("hold runs");
    assert_eq!(
        (s.open.opened, s.open.failed, s.open.lost),
        (40, 0, 0),
        "{s:?}"
    );
    assert_eq!(s.still_open, 40);
    assert_eq!(s.closes_received, 0);
    srv.stop().unwrap();
}

#[test]
fn hold_answers_pings() {
    let srv = Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        timeouts: wsgate::proto::Timeouts {
            ping_interval_ms: 100,
            pong_timeout_ms: 2_000,
            ..Default::default()
        },
        ..Default::default()
    })
    .expect("server starts");
    let cfg = HoldConfig {
        client: client(&srv, "/echo"),
        conns: 3,
        hold: Duration::from_millis(600),
        waves: Waves::default(),
        hello_size: 0,
    };
    let s = hold::run(&cfg, &mut Quiet).expect("hold runs");
    assert_eq!((s.open.opened, s.still_open), (3, 3), "{s:?}");
    assert!(s.pings_answered >= 3, "{s:?}");
    srv.stop().unwrap();
}

#[test]
fn churn_upgrades_and_closes_cleanly() {
    let srv = server();
    let cfg = ChurnConfig {
        client: client(&srv, "/echo"),
        concurrency: 4,
        duration: Duration::from_millis(400),
    };
    let s = churn::run(&cfg, &mut Quiet).expect("churn runs");
    assert!(s.open.opened > 0, "{s:?}");
    assert_eq!((s.open.failed, s.open.lost), (0, 0), "{s:?}");
    assert_eq!(s.closed_clean, s.open.opened, "{s:?}");
    assert_eq!(s.handshake.count(), s.open.opened);
    srv.stop().unwrap();
}

#[test]
fn failures_are_counted_not_fatal() {
    let srv = server();
    // A refused handshake (no route) and a refused connection.
    let cfg = HoldConfig {
        client: client(&srv, "/nowhere"),
        conns: 3,
        hold: Duration::from_millis(10),
        waves: Waves::default(),
        hello_size: 0,
    };
    let s = hold::run(&cfg, &mut Quiet).expect("hold runs");
    assert_eq!((s.open.opened, s.open.failed), (0, 3), "{s:?}");
    assert_eq!(
        s.open.failures.get("handshake: HTTP/1.1 404 Not Found"),
        Some(&3)
    );
    let addr = srv.local_addr();
    srv.stop().unwrap();
    let cfg = EchoConfig {
        client: client_to(addr),
        conns: 2,
        size: 20,
        text: true,
        duration: Duration::from_millis(10),
        warmup: Duration::ZERO,
        waves: Waves::default(),
    };
    let s = echo::run(&cfg, &mut Quiet).expect("echo runs");
    assert_eq!((s.open.opened, s.open.failed, s.echoed), (0, 2, 0), "{s:?}");
    assert!(!s.succeeded());
}

fn client_to(addr: std::net::SocketAddr) -> ClientConfig {
    ClientConfig::new(Target::parse(&format!("ws://{addr}/echo")).unwrap())
}
