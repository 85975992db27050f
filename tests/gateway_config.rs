//! The binary's configuration: `--print-config` shows the effective
//! configuration as TOML that reads back, flags override the file, and a
//! bad file is refused with exit status 2 and a message on stderr.

use std::path::PathBuf;
use std::process::{Command, Output};

use wsgate::config::{Config, Millis, SlowConsumer};

fn wsgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(args)
        .env_remove("WSGATE_API_KEY")
        .env_remove("RUST_LOG")
        .output()
        .expect("run the wsgate binary")
}

fn printed(args: &[&str]) -> Config {
    let out = wsgate(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wsgate {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Config::from_toml(&stdout)
        .unwrap_or_else(|e| panic!("printed config does not read back ({e}):\n{stdout}"))
}

/// A file in a directory of our own under the target dir.
fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gateway_config");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn print_config_without_a_file_shows_the_defaults() {
    assert_eq!(printed(&["--print-config"]), Config::default());
}

#[test]
fn flags_override_the_file_and_the_printed_config_reads_back() {
    let path = temp_file(
        "wsgate.toml",
        r#"
listen = "127.0.0.1:9100"
workers = 3
api_key = "from-file"

[limits]
max_queued_bytes = 65536
max_message = 4096
slow_consumer = "drop"

[timeouts]
ping_interval = "5s"
close_linger = "750ms"

[channels]
history_size = 10
join_leave = true

[namespaces.ticker]
deliver_latest = true
history_size = 1
"#,
    );
    let p = path.to_str().unwrap();

    // The file alone.
    let file = printed(&["-c", p, "--print-config"]);
    assert_eq!(file.listen, "127.0.0.1:9100".parse().unwrap());
    assert_eq!(file.workers, 3);
    assert_eq!(file.api_key, "from-file");
    assert_eq!(file.limits.max_queued_bytes, 65536);
    assert_eq!(file.limits.max_message, 4096);
    assert_eq!(file.limits.slow_consumer, SlowConsumer::Drop);
    assert_eq!(file.timeouts.ping_interval, Millis(5_000));
    assert_eq!(file.timeouts.close_linger, Millis(750));
    assert_eq!(file.channels.history_size, 10);
    assert!(file.channels.join_leave);
    let ns = &file.namespaces["ticker"];
    assert_eq!(ns.deliver_latest, Some(true));
    assert_eq!(ns.history_size, Some(1));
    assert_eq!(ns.presence, None);
    // Unset keys keep their defaults.
    let d = Config::default();
    assert_eq!(file.limits.max_body, d.limits.max_body);
    assert_eq!(file.timeouts.pong_timeout, d.timeouts.pong_timeout);
    assert_eq!(file.max_connections, d.max_connections);

    // Flags win over the file; what no flag touches stays as in the file.
    let both = printed(&[
        "-c",
        p,
        "--print-config",
        "--listen",
        "0.0.0.0:9200",
        "--workers",
        "5",
        "--max-queued-bytes",
        "8192",
        "--slow-consumer",
        "close",
        "--ping-interval",
        "250ms",
        "--api-key",
        "from-flag",
        "--no-echo",
    ]);
    assert_eq!(both.listen, "0.0.0.0:9200".parse().unwrap());
    assert_eq!(both.workers, 5);
    assert_eq!(both.limits.max_queued_bytes, 8192);
    assert_eq!(both.limits.slow_consumer, SlowConsumer::Close);
    assert_eq!(both.timeouts.ping_interval, Millis(250));
    assert_eq!(both.api_key, "from-flag");
    assert!(!both.echo);
    assert_eq!(both.limits.max_message, 4096);
    assert_eq!(both.timeouts.close_linger, Millis(750));
    assert_eq!(both.channels, file.channels);
    assert_eq!(both.namespaces, file.namespaces);

    // The printed text is a config file that gives the same again.
    let again = printed(&["-c", p, "--print-config", "--workers", "5"]);
    let reprinted = temp_file("reprinted.toml", &again.to_toml());
    let round = printed(&["-c", reprinted.to_str().unwrap(), "--print-config"]);
    assert_eq!(round, again);

    // The API key can come from the environment.
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["--print-config"])
        .env("WSGATE_API_KEY", "from-env")
        .output()
        .unwrap();
    assert!(out.status.success());
    let env_cfg = Config::from_toml(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(env_cfg.api_key, "from-env");
}

#[test]
fn an_unknown_key_or_a_bad_value_exits_with_status_2() {
    for (name, text, needle) in [
        ("unknown-top.toml", "lisen = \"127.0.0.1:1\"\n", "lisen"),
        (
            "unknown-nested.toml",
            "[limits]\nmax_queued = 10\n",
            "max_queued",
        ),
        (
            "unknown-ns.toml",
            "[namespaces.x]\ndeliver_lastest = true\n",
            "deliver_lastest",
        ),
        (
            "too-small.toml",
            "[limits]\nmax_queued_bytes = 100\n",
            "max_queued_bytes",
        ),
        (
            "bad-duration.toml",
            "[timeouts]\nhandshake = \"later\"\n",
            "later",
        ),
        ("bad-ns.toml", "[namespaces.\"a:b\"]\n", "a:b"),
    ] {
        let path = temp_file(name, text);
        let out = wsgate(&["-c", path.to_str().unwrap(), "--print-config"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(out.stdout.is_empty(), "{name}: nothing printed on stdout");
        assert!(
            stderr.contains(needle),
            "{name}: stderr names {needle:?}: {stderr}"
        );
    }

    // A flag that makes the configuration invalid.
    let out = wsgate(&["--print-config", "--max-queued-bytes", "100"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_queued_bytes"));

    // A file that does not exist.
    let out = wsgate(&["-c", "/nonexistent/wsgate.toml", "--print-config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/wsgate.toml"));
}
