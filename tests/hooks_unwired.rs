//! Until sessions ask the refresh proxy (issue 15 part 2b), the binary
//! refuses to start with it configured, naming it, rather than run as if
//! it were not there (a session the backend would end would live on). `--print-config` still shows them.

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("WSGATE_WEBHOOK_SECRET")
        .output()
        .expect("wsgate runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn configured_hooks_are_refused_by_name() {
    // The connect, subscribe, publish and rpc proxies are wired
    // (tests/hooks_sessions.rs); refresh is not yet.
    let (code, _, err) = run(&[
        "--connect-proxy",
        "http://127.0.0.1:9/c",
        "--refresh-proxy",
        "http://127.0.0.1:9/r",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("proxy.refresh") && err.contains("not wired"),
        "{err}"
    );
    let (code, _, err) = run(&[
        "--connect-proxy",
        "http://127.0.0.1:9/c",
        "--refresh-proxy",
        "http://127.0.0.1:9/r",
        "--webhook-url",
        "http://127.0.0.1:9/w",
        "--webhook-secret",
        "0123456789abcdef",
        "--webhook-events",
        "channel_occupied,user_offline",
        "-c",
        "/dev/null",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("proxy.refresh configured")
            && !err.contains("proxy.connect")
            && !err.contains("webhooks.url"),
        "webhooks are wired, not refused: {err}"
    );
}

#[test]
fn invalid_hook_settings_are_configuration_errors_and_print_config_shows_hooks() {
    let (code, _, err) = run(&["--webhook-url", "http://127.0.0.1:9/w"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("secret"), "{err}");
    let (code, _, err) = run(&["--webhook-events", "channel_exploded"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not an event"), "{err}");
    let (code, _, err) = run(&["--refresh-proxy", "http://127.0.0.1:9/r"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("needs proxy.connect"), "{err}");
    let (code, out, err) = run(&["--rpc-proxy", "http://127.0.0.1:9/rpc", "--print-config"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("[proxy]") && out.contains("rpc = \"http://127.0.0.1:9/rpc\""),
        "{out}"
    );
}
