//! The test backend (`tests/backend/app.py`) as a child process: its hook
//! port and control port free ones, killed when dropped; and a client of
//! its control API (switch a hook's behaviour, read what it received,
//! count its connections), kill and restart on the same ports.
//!
//! Declare it with `#[path = "backend_util/mod.rs"] mod backend_util;`.
//! `python3` must be on PATH (standard library only).

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The secret the backend checks webhook signatures with.
pub const SECRET: &str = "test-secret-0123456789";
/// Generous: CI boxes are busy.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Poll `cond` every 20 ms until it holds, or panic after `within`.
pub fn wait_for(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < end, "timed out after {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Backend {
    pub port: u16,
    pub control_port: u16,
    child: Option<Child>,
    control: ureq::Agent,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Backend {
    pub fn start() -> Backend {
        let mut b = Backend {
            port: free_port(),
            control_port: free_port(),
            child: None,
            control: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .into(),
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/backend/app.py");
        let end = Instant::now() + DEADLINE;
        // A restart may find the port still held for a moment by the old
        // process: try again until the deadline.
        loop {
            let mut child = Command::new("python3")
                .args([
                    script,
                    "--port",
                    &self.port.to_string(),
                    "--control-port",
                    &self.control_port.to_string(),
                    "--secret",
                    SECRET,
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start python3 {script}: {e}"));
            let mut line = String::new();
            let stdout = child.stdout.take().expect("piped stdout");
            let _ = BufReader::new(stdout).read_line(&mut line);
            if line.trim() == "ready" {
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < end,
                "the test backend did not start on ports {} and {}",
                self.port,
                self.control_port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The URL of a hook (`connect`, `refresh`, `subscribe`, `publish`,
    /// `rpc`, `webhook`).
    pub fn url(&self, hook: &str) -> String {
        format!("http://127.0.0.1:{}/{hook}", self.port)
    }

    fn control_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.control_port)
    }

    /// Give `hook` this behaviour (see app.py: `{"mode": …, "count": n}`).
    pub fn set(&self, hook: &str, behaviour: Value) {
        let mut b = behaviour;
        b["hook"] = json!(hook);
        let r = self
            .control
            .post(self.control_url("/set"))
            .send(b.to_string())
            .expect("control /set");
        assert_eq!(r.status(), 200, "control /set {b}");
    }

    pub fn reset(&self) {
        self.control
            .post(self.control_url("/reset"))
            .send("{}")
            .expect("control /reset");
    }

    fn get(&self, path: &str) -> Value {
        let mut r = self
            .control
            .get(self.control_url(path))
            .call()
            .expect("control GET");
        serde_json::from_slice(&r.body_mut().read_to_vec().expect("control body"))
            .expect("control JSON")
    }

    /// What `hook` received, in order: `[{"conn","headers","body",…}]`.
    pub fn log(&self, hook: &str) -> Vec<Value> {
        match self.get(&format!("/log?hook={hook}")) {
            Value::Array(v) => v,
            v => panic!("log: {v}"),
        }
    }

    /// `{"connections", "requests", "in_flight", "max_in_flight"}`.
    pub fn stats(&self) -> Value {
        self.get("/stats")
    }

    /// Connections accepted on the hook port since the start (or restart).
    pub fn connections(&self) -> u64 {
        self.stats()["connections"].as_u64().expect("connections")
    }

    /// SIGKILL: every connection drops; the port refuses until restarted.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill, then start again on the same ports (records and behaviours
    /// start empty).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}
