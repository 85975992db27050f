//! The hooks' configuration in the binary: every proxy and webhooks are
//! wired (the refresh proxy, the last refused until issue 15's part 2b was
//! done, included), so it starts and serves with all of them; invalid
//! settings are configuration errors (exit 2); `--print-config` shows them.

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
fn every_hook_is_wired_and_the_binary_starts_with_them() {
    // The refresh proxy was the last refused (exit 2); the binary serves
    // with every proxy and webhooks configured.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["--listen", &listen, "-c", "/dev/null"])
        .args(["--connect-proxy", "http://127.0.0.1:9/c"])
        .args(["--refresh-proxy", "http://127.0.0.1:9/r"])
        .args(["--subscribe-proxy", "http://127.0.0.1:9/s"])
        .args(["--publish-proxy", "http://127.0.0.1:9/p"])
        .args(["--rpc-proxy", "http://127.0.0.1:9/rpc"])
        .args(["--webhook-url", "http://127.0.0.1:9/w"])
        .args(["--webhook-secret", "0123456789abcdef"])
        .args(["--webhook-events", "channel_occupied,user_offline"])
        .env_remove("WSGATE_WEBHOOK_SECRET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("wsgate runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let healthy = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            panic!("wsgate exited ({status}) instead of serving: {err}");
        }
        if let Ok(mut s) = std::net::TcpStream::connect(&listen) {
            use std::io::{Read, Write};
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .ok();
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.1 200") {
                break true;
            }
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        healthy,
        "wsgate did not answer /healthz with every hook configured"
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
