//! The operator's side of a handoff: SIGUSR2 in the running process,
//! `wsgate --upgrade` from a shell, and the pid file that says which
//! process serves.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{info, warn};

use super::Gate;
use crate::server::Handle;

/// SIGUSR2: hand over to a new process running `binary` (this one's
/// arguments), unless one handoff is already under way. Runs the handoff
/// on a thread of its own, so that the signal thread can refuse a second
/// SIGUSR2 (and still take SIGTERM) meanwhile.
pub fn on_sigusr2(handle: &Handle, gate: &std::sync::Arc<Gate>, binary: &io::Result<PathBuf>) {
    if let Err(e) = gate.enter() {
        warn!("SIGUSR2: handoff {e}");
        return;
    }
    let binary = match binary {
        Ok(b) => b.clone(),
        Err(e) => {
            warn!("SIGUSR2: handoff failed: no binary to start ({e}); still serving");
            gate.reopen();
            return;
        }
    };
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let (handle, gate) = (handle.clone(), gate.clone());
    info!("SIGUSR2: handing over to a new {}", binary.display());
    let spawned = std::thread::Builder::new()
        .name("wsgate-handoff".into())
        .spawn(move || match handle.hand_over(&binary, &args) {
            // `hand_over` said so before the drain began.
            Ok(_) => {}
            Err(e) => {
                warn!("handoff failed: {e}; still serving");
                gate.reopen();
            }
        });
    if let Err(e) = spawned {
        warn!("SIGUSR2: cannot start the handoff thread ({e}); still serving");
    }
}

/// Write this process's pid to `path` (through a temporary file and a
/// rename, so that a reader never sees half of it).
pub fn write_pid_file(path: &Path) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(&tmp, path)
}

/// The pid a pid file names.
pub fn read_pid_file(path: &Path) -> io::Result<u32> {
    std::fs::read_to_string(path)?
        .trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not a pid"))
}

/// Remove the pid file if it still names this process.
pub fn remove_pid_file(path: &Path) {
    if read_pid_file(path).ok() == Some(std::process::id()) {
        let _ = std::fs::remove_file(path);
    }
}

/// How long `wsgate --upgrade` waits for the new process.
const UPGRADE_WAIT: Duration = Duration::from_secs(90);

/// `wsgate --upgrade`: signal the process the pid file names, then wait
/// until the file names another process that is alive. Returns its pid;
/// an error if the old one still serves at the end (its log says why).
pub fn request(path: &Path) -> Result<u32, String> {
    let old = read_pid_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !alive(old) {
        return Err(format!(
            "pid {old} (from {}) is not running",
            path.display()
        ));
    }
    // SAFETY: kill(2) with a pid and a signal number; no memory involved.
    if unsafe { libc::kill(old as libc::pid_t, libc::SIGUSR2) } < 0 {
        return Err(format!("signal pid {old}: {}", io::Error::last_os_error()));
    }
    let until = Instant::now() + UPGRADE_WAIT;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
        match read_pid_file(path) {
            Ok(pid) if pid != old && alive(pid) => return Ok(pid),
            _ => {}
        }
        if !alive(old) {
            return Err(format!(
                "pid {old} exited and no successor wrote {}",
                path.display()
            ));
        }
    }
    Err(format!(
        "no new process within {UPGRADE_WAIT:?}; pid {old} still serves (see its log)"
    ))
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}
