//! What the workers of a process share: the stop and drain flags, the
//! connection count (for `max_connections`), the counters' totals, each
//! worker's gauges, and the per-IP connection counts.

use std::sync::atomic::{AtomicBool, AtomicUsize};

use super::admission::PerIp;
use crate::base::counters::{Stats, WorkerGauges};

/// State shared by the workers: the stop flag, the connection count (for
/// `max_connections`), the counters and per-worker gauges.
#[derive(Debug, Default)]
pub struct Shared {
    pub stop: AtomicBool,
    /// Set by `Server::drain`: workers close their listener and tell
    /// their connections to leave, then end.
    pub draining: AtomicBool,
    /// Set (before `draining`) when the listeners were handed to a new
    /// process: the drain then leaves the accept queues to it.
    pub handed_over: AtomicBool,
    pub connections: AtomicUsize,
    /// Per worker: its gauges and its counters' slot (`base::counters`).
    pub workers: Vec<WorkerGauges>,
    /// Connections per client IP (admission control).
    pub per_ip: PerIp,
}

impl Shared {
    /// The counters' totals: every worker's slot summed, now (a scrape).
    pub fn stats(&self) -> Stats {
        Stats::sum(self.workers.iter().map(|w| &w.counts))
    }
}
