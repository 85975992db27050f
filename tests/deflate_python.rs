//! permessage-deflate against an independent peer: Python's `websockets`
//! (which offers permessage-deflate by default, as browsers do), driven by
//! `tests/python/deflate_client.py`, with the server in each mode.
//!
//! The interpreter comes from `$WSGATE_PYTHON` (set by `scripts/test.sh`),
//! else `.venv/bin/python` in the crate root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use wsgate::proto::deflate::{Config, Mode};
use wsgate::server::{Server, ServerConfig};

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("WSGATE_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python for the peer test: set WSGATE_PYTHON or run scripts/test.sh (it creates {})",
        venv.display()
    );
    venv
}

fn run(mode: Mode) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/deflate_client.py");
    let server = Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        compression: Config {
            mode,
            ..Config::default()
        },
        ..ServerConfig::default()
    })
    .expect("server starts");
    let url = format!("ws://{}/echo", server.local_addr());
    let mut child = Command::new(python())
        .arg(&script)
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the Python peer (scripts/test.sh sets it up)");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("deflate_client.py still running after 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "{mode:?}: deflate_client.py failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    eprintln!("{mode:?}:\n{stdout}");
    let st = &server.shared().stats();
    let (bytes_in, bytes_out) = (
        st.bytes_in.load(Ordering::Relaxed),
        st.bytes_out.load(Ordering::Relaxed),
    );
    let msgs = st.messages_out.load(Ordering::Relaxed);
    // Four connections of 27 messages, about 3.2 MB each way per connection
    // uncompressed.
    assert_eq!(msgs, 4 * 27, "{mode:?}");
    assert!(
        bytes_out < 2_000_000 && bytes_in < 2_000_000,
        "{mode:?}: compressed both ways? {bytes_in} bytes in, {bytes_out} out"
    );
    assert_eq!(st.protocol_errors.load(Ordering::Relaxed), 0);
    server.stop().expect("workers end cleanly");
}

#[test]
fn python_websockets_with_compression_shared_mode() {
    run(Mode::Shared);
}

#[test]
fn python_websockets_with_compression_dedicated_mode() {
    run(Mode::Dedicated);
}
