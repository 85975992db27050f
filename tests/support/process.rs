//! The `wsgate` binary as a child process: on a free port, with the given
//! flags, its log in a file, killed when dropped (also when the test
//! panics; the log is then kept and its path printed).
//!
//! Declare it with `#[path = "support/process.rs"] mod process;`.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Wsgate {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Wsgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("gateway log kept at {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

impl Wsgate {
    /// Start the binary with `--listen 127.0.0.1:PORT` and `args`, with
    /// `env` set (the CI's own WSGATE_* settings removed), and wait until
    /// it listens. `name` goes into the log file's name.
    pub fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> Wsgate {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log =
            std::env::temp_dir().join(format!("wsgate-{name}-{}-{port}.log", std::process::id()));
        let child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .args(["--listen", &addr.to_string()])
            .args(args)
            .env_remove("WSGATE_API_KEY")
            .env_remove("WSGATE_COMPRESSION")
            .env_remove("WSGATE_COMPRESSION_MIN_SIZE")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("gateway log file"))
            .spawn()
            .expect("wsgate starts");
        let mut gw = Wsgate { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            if let Some(status) = gw.exited() {
                panic!("wsgate exited ({status}):\n{}", gw.log_text());
            }
            assert!(Instant::now() < deadline, "wsgate did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        gw
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waitpid")
    }

    /// Send it a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid, which it stays until we
        // reap it in `drop`.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, sig) }, 0);
    }

    /// What it has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
    pub fn status_kib(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/PID/status");
        s.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
    }
}
