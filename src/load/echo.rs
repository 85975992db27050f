//! `echo`: N connections, each with one message of S bytes in flight. Every
//! echo is checked against what was sent, its latency (send to receive)
//! recorded, and the next message sent at once.
//!
//! Phases: open the connections in waves; [`Observer::ready`]; send on
//! every connection; a warm-up (not measured), then the measured window;
//! stop sending and wait (up to the close linger) for the echoes still in
//! flight; close every connection with a close handshake.

use std::io;
use std::time::{Duration, Instant};

use super::client::{ClientConfig, Ctx, End, Fleet, Handler, Waves};
use super::report::{EchoStats, Latency};
use super::Observer;

/// What `echo` does.
#[derive(Debug, Clone)]
pub struct EchoConfig {
    pub client: ClientConfig,
    pub conns: u64,
    /// Message size in bytes.
    pub size: usize,
    /// Text messages (ASCII) or binary ones.
    pub text: bool,
    /// The measured window, after the warm-up.
    pub duration: Duration,
    pub warmup: Duration,
    pub waves: Waves,
}

/// The per-connection state: when the message in flight was sent.
type Pending = Option<Instant>;

struct Echo {
    payload: Vec<u8>,
    text: bool,
    sending: bool,
    window_start: Instant,
    window_end: Instant,
    sent: u64,
    echoed: u64,
    /// Sent, not yet echoed, on live connections.
    outstanding: u64,
    /// Sent, never echoed, on connections that ended.
    unanswered: u64,
    mismatched: u64,
    unexpected: u64,
    window_echoed: u64,
    latency: Latency,
}

impl Echo {
    fn send(&mut self, ctx: &mut Ctx<'_, Pending>) {
        if ctx.send(self.text, &self.payload) {
            *ctx.user = Some(Instant::now());
            self.sent += 1;
            self.outstanding += 1;
        }
    }
}

impl Handler<Pending> for Echo {
    fn on_message(&mut self, ctx: &mut Ctx<'_, Pending>, text: bool, data: &[u8]) {
        let Some(t0) = ctx.user.take() else {
            self.unexpected += 1;
            return;
        };
        let now = ctx.now;
        self.echoed += 1;
        self.outstanding -= 1;
        if text != self.text || data != self.payload {
            self.mismatched += 1;
        }
        if now >= self.window_start && now < self.window_end {
            self.window_echoed += 1;
            self.latency.record(now.saturating_duration_since(t0));
        }
        if self.sending && now < self.window_end {
            self.send(ctx);
        }
    }

    fn on_end(&mut self, _id: usize, user: Pending, _end: &End) {
        if user.is_some() {
            self.outstanding -= 1;
            self.unanswered += 1;
        }
    }
}

/// The message sent: ASCII letters (valid as text and as binary).
fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Run `echo`; bounded by the open phase, warm-up + duration, and the drain
/// and close lingers.
pub fn run(cfg: &EchoConfig, obs: &mut dyn Observer) -> io::Result<EchoStats> {
    let mut fleet: Fleet<Pending> = Fleet::new(cfg.client.clone())?;
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let mut h = Echo {
        payload: payload(cfg.size),
        text: cfg.text,
        sending: false,
        window_start: far,
        window_end: far,
        sent: 0,
        echoed: 0,
        outstanding: 0,
        unanswered: 0,
        mismatched: 0,
        unexpected: 0,
        window_echoed: 0,
        latency: Latency::default(),
    };
    fleet.open_many(cfg.conns, cfg.waves, &mut h, obs, || None)?;
    obs.ready();

    let start = Instant::now();
    h.window_start = start + cfg.warmup;
    h.window_end = h.window_start + cfg.duration;
    h.sending = true;
    for id in fleet.open_ids() {
        fleet.act(id, &mut h, |h, ctx| h.send(ctx));
    }
    while Instant::now() < h.window_end && fleet.open_count() > 0 {
        let left = h.window_end.saturating_duration_since(Instant::now());
        fleet.poll(&mut h, left)?;
    }
    h.sending = false;
    // Wait for the echoes in flight.
    let drain_end = Instant::now() + cfg.client.close_linger;
    while h.outstanding > 0 && Instant::now() < drain_end && fleet.open_count() > 0 {
        fleet.poll(&mut h, drain_end.saturating_duration_since(Instant::now()))?;
    }
    fleet.close_all(1000, &mut h);
    fleet.drain(&mut h, Instant::now() + cfg.client.close_linger)?;
    // Whatever was still outstanding is now counted in `unanswered`.
    debug_assert_eq!(h.outstanding, 0);

    Ok(EchoStats {
        open: fleet.stats().clone(),
        size: cfg.size,
        text: cfg.text,
        sent: h.sent,
        echoed: h.echoed,
        unanswered: h.unanswered,
        mismatched: h.mismatched,
        unexpected: h.unexpected,
        window_secs: cfg.duration.as_secs_f64(),
        window_echoed: h.window_echoed,
        latency: h.latency,
    })
}
