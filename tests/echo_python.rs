//! `/echo` against a second independent client: Python's `websockets`
//! library, driven by `tests/python/echo_client.py`.
//!
//! The interpreter comes from `$WSGATE_PYTHON` (set by `scripts/test.sh`),
//! else `.venv/bin/python` in the crate root. Without either the test fails:
//! a peer-client check that silently passes proves nothing.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Taken as given (a path, or a command name found on PATH); a failure to
    // start it is reported when it is spawned.
    if let Some(p) = std::env::var_os("WSGATE_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = root.join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python interpreter for the peer-client test: WSGATE_PYTHON is not set and {} \
         does not exist; run scripts/test.sh (it creates the venv with `websockets` and \
         sets WSGATE_PYTHON)",
        venv.display()
    );
    venv
}

#[test]
fn python_websockets_client_gets_every_message_back_and_closes_cleanly() {
    let python = python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/echo_client.py");
    assert!(script.exists(), "{} is missing", script.display());

    let server = start(|_| {});
    let url = format!("ws://{}/echo", server.local_addr());
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; run scripts/test.sh (it creates the venv and sets \
                 WSGATE_PYTHON)",
                python.display()
            )
        });

    // The script has its own 10 s timeouts; this is a backstop.
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("echo_client.py still running after 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "echo_client.py failed ({}):\nstdout: {stdout}\nstderr: {stderr}\n(if `websockets` \
         is missing, run scripts/test.sh)",
        out.status
    );
    assert_eq!(stdout.trim(), "ok", "stderr: {stderr}");

    let s = stats(server.shared());
    assert_eq!(s.messages_in, 8, "7 text messages and 1 binary: {s:?}");
    assert_eq!(s.messages_out, 8, "{s:?}");
    assert_eq!(s.protocol_errors, 0, "{s:?}");
    wait_connections(server.shared(), 0);
    stop(server);
}
