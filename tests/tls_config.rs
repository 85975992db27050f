//! The binary's TLS settings: `--tls-cert`, `--tls-key`, `--listen-plain`
//! and `[tls]` are read and checked, and the certificates are loaded (a
//! broken one is refused with the file named). The binary serving wss://
//! with them: tests/tls_serve.rs.

use std::process::{Command, Output};

use wsgate::config::Config;

#[path = "support/certs.rs"]
mod certs;
use certs::TestCa;

fn wsgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(args)
        .env_remove("WSGATE_API_KEY")
        .env_remove("RUST_LOG")
        .output()
        .expect("run the wsgate binary")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn tls_flags_show_in_the_printed_config() {
    let ca = TestCa::new("flags");
    let leaf = ca.leaf("server", &["localhost"]);
    let (cert, key) = (leaf.cert.to_str().unwrap(), leaf.key.to_str().unwrap());
    let out = wsgate(&[
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        "--listen-plain",
        "127.0.0.1:9",
        "--print-config",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let cfg = Config::from_toml(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(cfg.tls.cert, leaf.cert);
    assert_eq!(cfg.tls.key, leaf.key);
    assert_eq!(cfg.listen_plain, Some("127.0.0.1:9".parse().unwrap()));
}

#[test]
fn bad_tls_settings_are_refused_with_the_reason() {
    let ca = TestCa::new("refuse");
    let leaf = ca.leaf("server", &["localhost"]);
    let other = ca.leaf("other", &["localhost"]);
    let (cert, key) = (leaf.cert.to_str().unwrap(), leaf.key.to_str().unwrap());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        // A certificate without its key, and the other way round.
        (vec!["--tls-cert", cert], "--tls-key"),
        (vec!["--tls-key", key], "--tls-cert"),
        // A plain listener beside no TLS.
        (vec!["--listen-plain", "127.0.0.1:9"], "listen_plain"),
        // A key that is not the certificate's.
        (
            vec!["--tls-cert", cert, "--tls-key", other.key.to_str().unwrap()],
            "server.pem",
        ),
        // A file that is not there.
        (
            vec!["--tls-cert", "/nonexistent/cert.pem", "--tls-key", key],
            "/nonexistent/cert.pem",
        ),
    ];
    for (args, why) in cases {
        let out = wsgate(&[&args[..], &["--listen", "127.0.0.1:0"]].concat());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(why), "{args:?}: {}", text(&out));
        assert!(!text(&out).contains("listening on"), "{args:?}");
    }
}
