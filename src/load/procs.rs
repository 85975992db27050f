//! `--procs N`: spread one run over N child processes, so that it can hold
//! more sockets than one process may open (20,000 files per process here).
//!
//! The parent re-executes its own binary N times with the same arguments
//! plus `--child-index i --child-of N`. Each child takes its share of the
//! connections and of the source addresses and speaks JSON lines on stdout:
//!
//! ```text
//! {"t":"opening","opened":…,"failed":…,"total":…}   progress, repeated
//! {"t":"ready"}                                       then waits for "go" on stdin
//! {"t":"result","result":{…}}                         raw results, histograms included
//! ```
//!
//! The parent shows the summed progress, releases every child at once when
//! all are ready (so that the measured phases overlap), then merges the
//! results ([`Merge`]): counts add up and histograms merge exactly. A child
//! that dies without a result counts its connections as failed. Children's
//! stderr goes straight through.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::report::Merge;
use super::Observer;

/// The hidden flags that make a process a child.
pub const CHILD_INDEX: &str = "--child-index";
pub const CHILD_OF: &str = "--child-of";

/// One line a child writes on stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ChildLine<R> {
    Opening {
        opened: u64,
        failed: u64,
        total: u64,
    },
    Ready,
    Result {
        result: R,
    },
}

/// The child's side: progress and readiness as JSON lines on stdout; the
/// go-ahead read from stdin.
pub struct ChildObserver {
    last: Option<Instant>,
}

impl ChildObserver {
    pub fn new() -> ChildObserver {
        ChildObserver { last: None }
    }
}

impl Default for ChildObserver {
    fn default() -> Self {
        Self::new()
    }
}

fn emit<R: Serialize>(line: &ChildLine<R>) {
    // The parent may be gone: nothing useful to do about a failed write.
    if let Ok(text) = serde_json::to_string(line) {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
}

impl Observer for ChildObserver {
    fn opening(&mut self, opened: u64, failed: u64, total: u64) {
        let done = opened + failed >= total;
        if !done
            && self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        emit::<()>(&ChildLine::Opening {
            opened,
            failed,
            total,
        });
    }

    fn ready(&mut self) {
        emit::<()>(&ChildLine::Ready);
        // Wait for "go" (or EOF: no parent, or the parent died).
        let mut line = String::new();
        let _ = io::stdin().lock().read_line(&mut line);
    }
}

/// The child's last line: its raw results.
pub fn emit_result<R: Serialize>(result: R) {
    emit(&ChildLine::Result { result });
}

/// Run `procs` children of this executable with this process's arguments
/// plus the child flags; `shares[i]` is child i's number of connections
/// (counted as failed if it dies without a result). Returns the merged
/// results.
pub fn run_children<R>(procs: usize, shares: &[u64], obs: &mut dyn Observer) -> Result<R, String>
where
    R: DeserializeOwned + Merge + Default + Send + 'static,
{
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let total: u64 = shares.iter().sum();
    let (tx, rx) = mpsc::channel::<(usize, Option<ChildLine<R>>)>();
    let mut children = Vec::new();
    let mut stdins = Vec::new();
    for i in 0..procs {
        let spawned = Command::new(&exe)
            .args(&args)
            .arg(CHILD_INDEX)
            .arg(i.to_string())
            .arg(CHILD_OF)
            .arg(procs.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                log::error!("cannot start child {i}: {e}");
                let _ = tx.send((i, None));
                children.push(None);
                stdins.push(None);
                continue;
            }
        };
        stdins.push(child.stdin.take());
        let stdout = child.stdout.take();
        children.push(Some(child));
        let tx = tx.clone();
        std::thread::spawn(move || {
            if let Some(out) = stdout {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    match serde_json::from_str::<ChildLine<R>>(&line) {
                        Ok(msg) => {
                            if tx.send((i, Some(msg))).is_err() {
                                return;
                            }
                        }
                        // Not one of ours: pass it on.
                        Err(_) => println!("{line}"),
                    }
                }
            }
            let _ = tx.send((i, None));
        });
    }
    drop(tx);

    let mut progress = vec![(0u64, 0u64); procs];
    let mut ready = vec![false; procs];
    let mut results: Vec<Option<R>> = (0..procs).map(|_| None).collect();
    let mut released = false;
    for (i, msg) in rx {
        match msg {
            Some(ChildLine::Opening { opened, failed, .. }) => {
                progress[i] = (opened, failed);
                let (o, f) = progress
                    .iter()
                    .fold((0, 0), |(a, b), (o, f)| (a + o, b + f));
                obs.opening(o, f, total);
            }
            Some(ChildLine::Ready) => ready[i] = true,
            Some(ChildLine::Result { result }) => results[i] = Some(result),
            None => ready[i] = true, // ended (or never started)
        }
        if !released && ready.iter().all(|r| *r) {
            released = true;
            obs.ready();
            for stdin in stdins.iter_mut() {
                if let Some(mut s) = stdin.take() {
                    // A child that already exited: nothing to release.
                    let _ = writeln!(s, "go");
                }
            }
        }
    }

    let mut merged = R::default();
    for (i, (child, result)) in children.into_iter().zip(results).enumerate() {
        let status = child.map(|mut c| c.wait());
        match (result, status) {
            (Some(r), _) => merged.merge(r),
            (None, Some(Ok(st))) => merged.child_failed(
                shares[i],
                &format!("child process {i} gave no result ({st})"),
            ),
            (None, Some(Err(e))) => {
                merged.child_failed(shares[i], &format!("child process {i}: {e}"))
            }
            (None, None) => {
                merged.child_failed(shares[i], &format!("child process {i} did not start"))
            }
        }
    }
    Ok(merged)
}
