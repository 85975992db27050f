//! `churn`: connect, upgrade, close, as fast as allowed, with C connections
//! in progress at once, for a set time. Measures upgrades per second and
//! the handshake latency (connect start to a checked 101).
//!
//! Each connection starts the close handshake as soon as it is upgraded and
//! ends when the server has answered it and closed TCP (the server closes
//! first, so TIME_WAIT stays on its side).

use std::io;
use std::time::{Duration, Instant};

use super::client::{ClientConfig, Ctx, End, Fleet, Handler};
use super::report::{ChurnStats, Latency};
use super::Observer;

/// What `churn` does.
#[derive(Debug, Clone)]
pub struct ChurnConfig {
    pub client: ClientConfig,
    /// Connections in progress at once.
    pub concurrency: u64,
    pub duration: Duration,
}

#[derive(Default)]
struct Churn {
    handshake: Latency,
    closed_clean: u64,
}

impl Handler<()> for Churn {
    fn on_open(&mut self, ctx: &mut Ctx<'_, ()>, handshake: Duration) {
        self.handshake.record(handshake);
        ctx.close(1000);
    }

    fn on_end(&mut self, _id: usize, _user: (), end: &End) {
        if let End::Closed { .. } = end {
            self.closed_clean += 1;
        }
    }
}

/// Run `churn`; bounded by the duration plus the handshake timeout and the
/// close linger for the connections in progress at the end.
pub fn run(cfg: &ChurnConfig, obs: &mut dyn Observer) -> io::Result<ChurnStats> {
    let mut fleet: Fleet<()> = Fleet::new(cfg.client.clone())?;
    let mut h = Churn::default();
    obs.ready();
    let start = Instant::now();
    let end = start + cfg.duration;
    let c = cfg.concurrency.max(1) as usize;
    while Instant::now() < end {
        // One attempt per free slot; an attempt that fails at once is not
        // retried before the next poll, so failing fast cannot spin.
        for _ in fleet.len()..c {
            fleet.connect((), &mut h);
        }
        fleet.poll(&mut h, end.saturating_duration_since(Instant::now()))?;
    }
    let duration_secs = start.elapsed().as_secs_f64();
    // Let the connections in progress finish; none is started any more.
    let drain = cfg.client.handshake_timeout.min(Duration::from_secs(2)) + cfg.client.close_linger;
    fleet.drain(&mut h, Instant::now() + drain)?;

    Ok(ChurnStats {
        open: fleet.stats().clone(),
        concurrency: c as u64,
        duration_secs,
        closed_clean: h.closed_clean,
        handshake: h.handshake,
    })
}
