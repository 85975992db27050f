//! wsgate-load's permessage-deflate (`--deflate`) against an in-process
//! gateway in each compression mode: the offer is agreed when the server
//! has compression on and declined when it is off (the connections work
//! either way), every echo comes back as sent, and the messages really
//! went compressed on the wire, both ways: the client's socket byte counts
//! and the server's are far below the payload bytes when deflate was
//! agreed, and at least the payload when it was not.

mod support;

use std::process::Command;
use std::time::Duration;

use wsgate::load::client::{ClientConfig, Waves};
use wsgate::load::echo::{self, EchoConfig};
use wsgate::load::hold::{self, HoldConfig};
use wsgate::load::report::EchoStats;
use wsgate::load::{Quiet, Target};
use wsgate::proto::deflate::{self, Mode};
use wsgate::server::Server;

/// Bytes per echo message: ASCII letters in a cycle, which deflate shrinks
/// to a few percent (the client's 256-byte `min_size` is passed).
const SIZE: usize = 1000;

fn server(mode: Mode) -> Server {
    support::start(|c| {
        c.compression = deflate::Config {
            mode,
            ..deflate::Config::default()
        }
    })
}

fn client(srv: &Server, path: &str, mode: Mode) -> ClientConfig {
    let url = format!("ws://{}{path}", srv.local_addr());
    let mut c = ClientConfig::new(Target::parse(&url).unwrap());
    c.deflate = deflate::Config {
        mode,
        ..deflate::Config::default()
    };
    c
}

/// One short echo run; its stats and the server's counters over it.
fn echo_run(srv: &Server, mode: Mode) -> (EchoStats, support::Stats) {
    let before = support::stats(srv.shared());
    let cfg = EchoConfig {
        client: client(srv, "/echo", mode),
        conns: 4,
        size: SIZE,
        text: true,
        duration: Duration::from_millis(300),
        warmup: Duration::from_millis(50),
        waves: Waves::default(),
    };
    let s = echo::run(&cfg, &mut Quiet).expect("echo runs");
    let after = support::stats(srv.shared());
    let server = support::Stats {
        messages_in: after.messages_in - before.messages_in,
        bytes_in: after.bytes_in - before.bytes_in,
        bytes_out: after.bytes_out - before.bytes_out,
        ..after
    };
    (s, server)
}

/// Every connection opened, every message was echoed as sent.
fn assert_all_echoed(s: &EchoStats) {
    assert_eq!(
        (s.open.opened, s.open.failed, s.open.lost),
        (4, 0, 0),
        "{s:?}"
    );
    assert!(s.echoed >= 4, "{s:?}");
    assert_eq!(s.errors(), 0, "{s:?}");
    assert_eq!((s.sent, s.unanswered), (s.echoed, 0), "{s:?}");
}

/// The run agreed on deflate on every connection and the payloads went
/// compressed both ways.
fn assert_compressed(s: &EchoStats, server: &support::Stats) {
    let o = &s.open;
    assert_eq!((o.deflate_offered, o.deflate_negotiated), (4, 4), "{s:?}");
    let w = &o.wire;
    // Every message we sent went with RSV1, every echo came with it.
    assert_eq!(w.deflated_msgs, s.sent, "{w:?}");
    assert_eq!(w.inflated_msgs, s.echoed, "{w:?}");
    assert_eq!(w.inflated_bytes, s.echoed * SIZE as u64, "{w:?}");
    assert!(w.deflate_out_bytes * 5 < w.deflate_in_bytes, "{w:?}");
    // On the wire, handshakes and close frames included: the server's
    // echoes (our reads) and our messages (the server's reads) are a
    // fraction of the payload bytes.
    let payload = s.echoed * SIZE as u64;
    assert!(w.bytes_read * 4 < payload, "{w:?} for {payload} B echoed");
    assert!(w.bytes_written * 4 < s.sent * SIZE as u64, "{w:?}");
    assert_eq!(server.messages_in, s.sent, "{server:?}");
    assert!(server.bytes_in * 4 < s.sent * SIZE as u64, "{server:?}");
    assert!(server.bytes_out * 4 < payload, "{server:?}");
}

/// Deflate was not used: no RSV1 either way, the full payload on the wire.
fn assert_plain(s: &EchoStats, server: &support::Stats, offered: bool) {
    let o = &s.open;
    assert_eq!(o.deflate_offered, if offered { 4 } else { 0 }, "{s:?}");
    assert_eq!(o.deflate_negotiated, 0, "{s:?}");
    let w = &o.wire;
    assert_eq!((w.deflated_msgs, w.inflated_msgs), (0, 0), "{w:?}");
    assert!(w.bytes_read >= s.echoed * SIZE as u64, "{w:?}");
    assert!(w.bytes_written >= s.sent * SIZE as u64, "{w:?}");
    assert!(server.bytes_in >= s.sent * SIZE as u64, "{server:?}");
}

#[test]
fn shared_server_agrees_with_every_client_mode() {
    let srv = server(Mode::Shared);
    for mode in [Mode::Shared, Mode::Dedicated] {
        let (s, server) = echo_run(&srv, mode);
        assert_all_echoed(&s);
        assert_compressed(&s, &server);
    }
    // Without --deflate nothing changes: no offer, plain frames.
    let (s, server) = echo_run(&srv, Mode::Off);
    assert_all_echoed(&s);
    assert_plain(&s, &server, false);
    support::stop(srv);
}

#[test]
fn dedicated_server_agrees_with_every_client_mode() {
    let srv = server(Mode::Dedicated);
    for mode in [Mode::Dedicated, Mode::Shared] {
        let (s, server) = echo_run(&srv, mode);
        assert_all_echoed(&s);
        assert_compressed(&s, &server);
    }
    support::stop(srv);
}

#[test]
fn off_server_declines_and_connections_still_work() {
    let srv = server(Mode::Off);
    for mode in [Mode::Shared, Mode::Dedicated] {
        let (s, server) = echo_run(&srv, mode);
        assert_all_echoed(&s);
        assert_plain(&s, &server, true);
    }
    support::stop(srv);
}

#[test]
fn hold_hello_is_echoed_compressed() {
    for (server_mode, agreed) in [(Mode::Dedicated, 3), (Mode::Off, 0)] {
        let srv = server(server_mode);
        let cfg = HoldConfig {
            client: client(&srv, "/echo", Mode::Dedicated),
            conns: 3,
            hold: Duration::from_millis(300),
            waves: Waves::default(),
            hello_size: 1024,
        };
        let s = hold::run(&cfg, &mut Quiet).expect("hold runs");
        assert_eq!((s.open.opened, s.still_open), (3, 3), "{s:?}");
        assert_eq!((s.hellos_sent, s.hellos_echoed), (3, 3), "{s:?}");
        assert_eq!(s.open.deflate_negotiated, agreed, "{s:?}");
        assert_eq!(s.open.wire.deflated_msgs, agreed, "{s:?}");
        assert_eq!(s.open.wire.inflated_msgs, agreed, "{s:?}");
        support::stop(srv);
    }
}

/// The flags, through the binary: `--deflate` and `--json`'s counts.
#[test]
fn binary_takes_deflate_flags() {
    let srv = server(Mode::Shared);
    let url = format!("ws://{}/echo", srv.local_addr());
    let run = |args: &[&str]| -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_wsgate-load"))
            .args(args)
            .args(["--url", &url, "--conns", "2", "--json"])
            .output()
            .expect("wsgate-load runs");
        assert!(out.status.success(), "{args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).expect("one JSON object")
    };
    let v = run(&[
        "echo",
        "--size",
        "600",
        "--duration",
        "200ms",
        "--warmup",
        "0s",
        "--deflate",
        "shared",
    ]);
    let c = &v["connections"];
    assert_eq!(c["deflate_negotiated"], 2, "{v}");
    assert_eq!(c["wire"]["inflated_msgs"], v["echoed"], "{v}");
    assert_eq!(v["mismatched"], 0, "{v}");
    let v = run(&[
        "hold",
        "--hold",
        "200ms",
        "--hello-size",
        "1024",
        "--deflate",
        "dedicated",
        "--deflate-min-size",
        "2048",
    ]);
    let c = &v["connections"];
    assert_eq!(c["deflate_negotiated"], 2, "{v}");
    assert_eq!(v["hellos_echoed"], 2, "{v}");
    // The hello is below --deflate-min-size: sent plain, echoed compressed.
    assert_eq!(c["wire"]["deflated_msgs"], 0, "{v}");
    assert_eq!(c["wire"]["inflated_msgs"], 2, "{v}");
    // Default: no offer at all.
    let v = run(&["hold", "--hold", "100ms"]);
    assert_eq!(v["connections"]["deflate_offered"], 0, "{v}");
    assert_eq!(v["hellos_sent"], 0, "{v}");
    support::stop(srv);
}
