//! What the live-handoff tests share: a gateway started with two workers,
//! a short drain and a pid file, waits on observable conditions, and the
//! successor killed when the test ends.
//!
//! Declare with `#[path = "support/handoff.rs"] mod handoff_util;` beside
//! `#[path = "support/process.rs"] mod process;`.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::process::Wsgate;
use wsgate::server::handoff::upgrade;

pub const DEADLINE: Duration = Duration::from_secs(30);

/// A file of this test process in the temporary directory.
pub fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("wsgate-ho-{}-{name}", std::process::id()))
}

/// The gateway with two workers, a pid file, a 1 s drain window and
/// `extra` flags; returned once the pid file names it.
pub fn start(name: &str, extra: &[&str]) -> (Wsgate, PathBuf) {
    start_with(name, "", extra)
}

/// As [`start`], with `config` added to the configuration file.
pub fn start_with(name: &str, config: &str, extra: &[&str]) -> (Wsgate, PathBuf) {
    let pid_file = temp(&format!("{name}.pid"));
    let _ = std::fs::remove_file(&pid_file);
    let cfg = temp(&format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!("[timeouts]\ndrain_window = \"1s\"\ndrain_timeout = \"10s\"\n{config}"),
    )
    .unwrap();
    let mut args = vec![
        "--workers",
        "2",
        "-c",
        cfg.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let gw = Wsgate::start(name, &args, &[]);
    wait_for("the pid file", || {
        upgrade::read_pid_file(&pid_file).ok() == Some(gw.pid())
    });
    (gw, pid_file)
}

pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The successor is not our child: kill it by pid when the test ends.
pub struct Successor(pub u32);

impl Drop for Successor {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid the pid file named.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// SIGUSR2 to `gw`; returns once the pid file names another process,
/// which is killed when the returned guard drops.
pub fn hand_over(gw: &Wsgate, pid_file: &std::path::Path) -> Successor {
    let old = gw.pid();
    gw.signal(libc::SIGUSR2);
    wait_for("the new process's pid", || {
        upgrade::read_pid_file(pid_file).is_ok_and(|p| p != old)
    });
    Successor(upgrade::read_pid_file(pid_file).unwrap())
}
