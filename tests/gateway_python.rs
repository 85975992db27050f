//! The gateway protocol against an independent client: Python's
//! `websockets`, driven by `tests/python/gateway_client.py` (subscribe,
//! receive, disconnect, reconnect with `since`, recover).
//!
//! The interpreter comes from `$WSGATE_PYTHON`, else `.venv/bin/python` in
//! the crate root. Without either the test fails: a peer-client check that
//! silently passes proves nothing.

#[path = "support/gateway.rs"]
mod gateway_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use gateway_support::*;
use serde_json::{json, Value};

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("WSGATE_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python interpreter for the peer-client test: WSGATE_PYTHON is not set and {} \
         does not exist (create a venv with `websockets` there, or set WSGATE_PYTHON)",
        venv.display()
    );
    venv
}

/// The running script: its stdin, its stdout lines, its stderr (collected
/// in a thread). Killed if the test panics.
struct Script {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Script {
    fn spawn(python: &Path, script: &Path, args: &[&str]) -> Script {
        let mut child = Command::new(python)
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Script {
            child,
            stdin,
            lines,
            stderr: Some(stderr),
        }
    }

    /// Kill it (if still running) and return what it wrote to stderr.
    fn stderr(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default()
    }

    /// The next stdout line, which must start with `prefix`.
    fn expect_line(&mut self, prefix: &str) -> String {
        match self.lines.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.starts_with(prefix) => line,
            other => {
                let err = self.stderr();
                panic!("expected `{prefix}…` from gateway_client.py, got {other:?}\nstderr: {err}")
            }
        }
    }

    fn send_line(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to the script");
        self.stdin.flush().expect("flush");
    }

    /// Wait for it to end; it must succeed.
    fn finish(mut self) {
        let status = self.child.wait().expect("wait");
        let err = self.stderr();
        assert!(
            status.success(),
            "gateway_client.py failed ({status}): {err}"
        );
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn publish_range(addr: std::net::SocketAddr, channel: &str, range: std::ops::RangeInclusive<u64>) {
    let items: Vec<Value> = range
        .map(|n| json!({ "channel": channel, "data": { "n": n } }))
        .collect();
    for chunk in items.chunks(25) {
        api_batch(addr, chunk);
    }
}

#[test]
fn python_websockets_client_subscribes_disconnects_and_recovers() {
    let python = python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/gateway_client.py");
    assert!(script.exists(), "{} is missing", script.display());

    let server = start_gateway(|_| {});
    let addr = server.local_addr();
    let channel = "py:feed";
    let url = format!("ws://{addr}/ws");
    let mut py = Script::spawn(&python, &script, &[&url, channel]);

    let line = py.expect_line("subscribed ");
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(parts.len(), 3, "{line}");
    assert_eq!(parts[2], "0", "{line}");
    let epoch = parts[1].to_string();

    publish_range(addr, channel, 1..=100);
    py.expect_line("closed");

    publish_range(addr, channel, 101..=200);
    let page = http_get(addr, &format!("/api/history?channel={channel}&limit=1")).json();
    assert_eq!(page["epoch"], epoch.as_str(), "{page}");
    assert_eq!(page["offset"], 200, "{page}");
    py.send_line("published");

    py.expect_line("ok");
    py.finish();
    stop_gateway(server);
}

/// Issue 16: `websockets` subscribes with `"delta":"fossil"` next to a
/// bystander without, both with permessage-deflate, and applies the deltas
/// with a Fossil apply of its own (tests/python/delta_client.py): every
/// publication's data equals the bystander's, byte for byte. With
/// `compression.min_size` 0 the delta frames travel compressed too.
#[test]
fn python_websockets_client_applies_fossil_deltas_next_to_a_bystander() {
    use wsgate::config::{ChannelOverrides, DeltaMode};
    let python = python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/delta_client.py");
    let server = start_gateway(|c| {
        c.compression.min_size = 0;
        c.namespaces.insert(
            "dash".into(),
            ChannelOverrides {
                delta: Some(DeltaMode::Fossil),
                ..Default::default()
            },
        );
    });
    let addr = server.local_addr();
    let channel = "dash:py";
    let count = 60u64;
    let url = format!("ws://{addr}/ws");
    let mut py = Script::spawn(&python, &script, &[&url, channel, &count.to_string()]);
    py.expect_line("subscribed");
    // The dashboard, and a note that changes whole each time: the deltas
    // carry ~1 KB of repetitive inserts, which deflate shrinks.
    let mut dash = wsgate::delta::dashboard::Dashboard::new(7);
    for n in 0..count {
        dash.tick();
        let data: Value = serde_json::from_str(&dash.json()).unwrap();
        let note = format!("tick {n}, ").repeat(100);
        api_publish(addr, channel, json!({ "dash": data, "note": note }));
    }
    let line = py.expect_line("ok ");
    let n: Vec<u64> = line[3..]
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    // The first whole, every other a delta, and far fewer bytes.
    assert_eq!((n[0], n[1]), (count - 1, 1), "{line}");
    assert!(n[2] * 3 < n[3], "delta bytes {} vs whole {}", n[2], n[3]);
    py.finish();
    let m = http_get(addr, "/metrics").text();
    let metric = |name: &str| -> u64 {
        let l = m
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name}"));
        l.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(
        metric("wsgate_delta_deliveries_total{form=\"delta\"}"),
        count - 1
    );
    assert_eq!(metric("wsgate_delta_deliveries_total{form=\"whole\"}"), 1);
    assert_eq!(
        metric("wsgate_delta_encoded_total"),
        count - 1,
        "once per publication"
    );
    assert!(metric("wsgate_delta_bytes_saved_total") > 0);
    // Delta frames went compressed too: more compressed deliveries than the
    // bystander's `count` publications and the two replies.
    assert!(metric("wsgate_deflate_messages_total{direction=\"out\"}") >= 2 * count);
    stop_gateway(server);
}
