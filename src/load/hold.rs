//! `hold`: open N connections, keep them open for T seconds answering the
//! server's pings, then close them. Counts what a capacity test needs: how
//! many opened, failed, were still open at the end, pings answered, and
//! close frames the server sent of its own accord.

use std::io;
use std::time::{Duration, Instant};

use super::client::{ClientConfig, Ctx, End, Fleet, Handler, Waves};
use super::report::HoldStats;
use super::Observer;

/// What `hold` does.
#[derive(Debug, Clone)]
pub struct HoldConfig {
    pub client: ClientConfig,
    pub conns: u64,
    /// How long to hold the connections once they are open.
    pub hold: Duration,
    pub waves: Waves,
}

#[derive(Default)]
struct Hold {
    pings: u64,
    closes: u64,
}

impl Handler<()> for Hold {
    fn on_ping(&mut self, _ctx: &mut Ctx<'_, ()>, _data: &[u8]) {
        // The protocol core has queued the pong already.
        self.pings += 1;
    }

    fn on_end(&mut self, _id: usize, _user: (), end: &End) {
        if let End::Closed { by_peer: true, .. } = end {
            self.closes += 1;
        }
    }
}

/// Run `hold`; bounded by the open phase, the hold and the close linger.
pub fn run(cfg: &HoldConfig, obs: &mut dyn Observer) -> io::Result<HoldStats> {
    let mut fleet: Fleet<()> = Fleet::new(cfg.client.clone())?;
    let mut h = Hold::default();
    fleet.open_many(cfg.conns, cfg.waves, &mut h, obs, || ())?;
    obs.ready();

    let start = Instant::now();
    let end = start + cfg.hold;
    while Instant::now() < end {
        fleet.poll(&mut h, end.saturating_duration_since(Instant::now()))?;
    }
    let hold_secs = start.elapsed().as_secs_f64();
    let still_open = fleet.open_count() as u64;
    let closes = h.closes;
    fleet.close_all(1000, &mut h);
    fleet.drain(&mut h, Instant::now() + cfg.client.close_linger)?;

    Ok(HoldStats {
        open: fleet.stats().clone(),
        hold_secs,
        still_open,
        pings_answered: h.pings,
        // Server-initiated closes during the hold (not those after it).
        closes_received: closes,
    })
}
