//! wsgate-load over `wss://`: its client role on rustls (wsgate::tls's
//! session, unbuffered) against a small TLS echo server made of the same
//! session type on the server side (tests/support/tls_echo.rs), through
//! the library API and through the binary. Counts a user sees; no speed.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use wsgate::config::TlsConfig;
use wsgate::load::client::{ClientConfig, Waves};
use wsgate::load::echo::{self, EchoConfig};
use wsgate::load::hold::{self, HoldConfig};
use wsgate::load::{Quiet, Target};
use wsgate::tls::client::{client_config, ClientSettings, Trust};
use wsgate::tls::TlsServer;

#[path = "support/certs.rs"]
mod certs;
#[path = "support/tls_echo.rs"]
mod tls_echo;

struct Setup {
    ca: certs::TestCa,
    echo: tls_echo::TlsEcho,
}

fn setup(tag: &str) -> Setup {
    let ca = certs::TestCa::new(tag);
    let leaf = ca.leaf("server", &["localhost"]);
    let tls = TlsServer::new(&TlsConfig {
        cert: leaf.cert.clone(),
        key: leaf.key.clone(),
        certificates: Vec::new(),
    })
    .expect("server config");
    let echo = tls_echo::start(tls);
    Setup { ca, echo }
}

fn client(s: &Setup, trust: Trust, resume: bool) -> ClientConfig {
    let url = format!("wss://localhost:{}/echo", s.echo.addr.port());
    let mut cfg = ClientConfig::new(Target::parse(&url).expect("valid URL"));
    cfg.tls = Some(
        client_config(&ClientSettings {
            trust,
            resume,
            tls12_only: false,
        })
        .expect("client config"),
    );
    cfg
}

#[test]
fn echo_over_wss_counts_every_message_once() {
    let s = setup("load-echo");
    let cfg = EchoConfig {
        client: client(&s, Trust::CaFile(s.ca.ca_pem.clone()), false),
        conns: 6,
        size: 300,
        text: true,
        duration: Duration::from_millis(1500),
        warmup: Duration::from_millis(100),
        waves: Waves::default(),
    };
    let r = echo::run(&cfg, &mut Quiet).expect("echo runs");
    assert_eq!(
        (r.open.requested, r.open.opened, r.open.failed),
        (6, 6, 0),
        "{r:?}"
    );
    assert!(r.echoed > 0, "{r:?}");
    assert_eq!(r.echoed, r.sent - r.unanswered, "{r:?}");
    assert_eq!(r.errors(), 0, "{r:?}");
    // What the server saw: six full handshakes, the same echoes.
    let c = &s.echo.counts;
    assert_eq!(c.established.load(Ordering::Relaxed), 6);
    assert_eq!(c.resumed.load(Ordering::Relaxed), 0);
    assert!(c.echoed.load(Ordering::Relaxed) >= r.echoed);
    // The bytes on the wire are records, not the WebSocket bytes: TLS
    // adds a record header and tag to each message.
    assert!(r.open.wire.bytes_written > r.sent * 300);
}

#[test]
fn hold_over_wss_keeps_connections_and_resumes_when_asked() {
    let s = setup("load-hold");
    for resume in [false, true] {
        let cfg = HoldConfig {
            client: client(&s, Trust::CaFile(s.ca.ca_pem.clone()), resume),
            conns: 30,
            hold: Duration::from_millis(300),
            waves: Waves {
                inflight: 7,
                rate: None,
            },
            hello_size: 100,
        };
        let r = hold::run(&cfg, &mut Quiet).expect("hold runs");
        assert_eq!(
            (r.open.opened, r.open.failed, r.open.lost),
            (30, 0, 0),
            "{r:?}"
        );
        assert_eq!(r.still_open, 30);
        assert_eq!((r.hellos_sent, r.hellos_echoed), (30, 30), "{r:?}");
    }
    // With --tls-resume the fleet's connections resume after the first
    // full handshakes (one session cache per fleet).
    assert!(s.echo.counts.resumed.load(Ordering::Relaxed) > 0);
}

#[test]
fn an_untrusted_certificate_fails_every_handshake_unless_insecure() {
    let s = setup("load-trust");
    let other = certs::TestCa::new("load-other");
    let cfg = HoldConfig {
        client: client(&s, Trust::CaFile(other.ca_pem.clone()), false),
        conns: 5,
        hold: Duration::from_millis(100),
        waves: Waves::default(),
        hello_size: 0,
    };
    let r = hold::run(&cfg, &mut Quiet).expect("hold runs");
    assert_eq!((r.open.opened, r.open.failed), (0, 5), "{r:?}");
    let why: Vec<&String> = r.open.failures.keys().collect();
    assert!(
        why.len() == 1 && why[0].contains("UnknownIssuer"),
        "one reason, the certificate: {why:?}"
    );
    // The server sees the client's alert (unknown_ca), in its own time.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while s.echo.counts.tls_errors.load(Ordering::Relaxed) < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the server saw no alert"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let cfg = HoldConfig {
        client: client(&s, Trust::Insecure, false),
        ..cfg
    };
    let r = hold::run(&cfg, &mut Quiet).expect("hold runs");
    assert_eq!((r.open.opened, r.open.failed), (5, 0), "{r:?}");
}

#[test]
fn the_binary_speaks_wss_with_ca_and_refuses_tls_flags_on_ws() {
    let s = setup("load-bin");
    let url = format!("wss://localhost:{}/echo", s.echo.addr.port());
    let ca = s.ca.ca_pem.to_str().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate-load"))
        .args(["echo", "--url", &url, "--ca", &ca, "--conns", "3"])
        .args([
            "--duration",
            "1s",
            "--warmup",
            "100ms",
            "--json",
            "--procs",
            "2",
        ])
        .output()
        .expect("run wsgate-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(v["connections"]["opened"], 3, "{v}");
    assert!(v["echoed"].as_u64().unwrap() > 0, "{v}");
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate-load"))
        .args(["hold", "--url", "ws://127.0.0.1:9/echo", "--insecure"])
        .output()
        .expect("run wsgate-load");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("need a wss:// URL"));
}
