//! What a node knows of Redis's clock, so that a publish can carry a
//! deadline that Redis checks (the publish script refuses to run after it)
//! and the node can tell when that deadline has certainly passed.
//!
//! Why: a command the node wrote but got no answer for (Redis stopped, the
//! connection dropped) may still sit in Redis's input and run later, after
//! the node answered its client. With a deadline on Redis's own clock, once
//! it has passed the command can no longer take effect: an answer given
//! then is final — "published" if Redis said so, "refused" if it never got
//! the command or refused it, and otherwise "outcome unknown, and settled"
//! (`OpError::OutcomeUnknown`).
//!
//! `TIME` sent at `sent` and answered at `received` says that Redis's clock
//! read `redis_us` at some instant in between. Both clocks are assumed to run
//! at the same rate within [`DRIFT_PPM`] and Redis's not to be stepped back;
//! the node reads `TIME` again every [`REFRESH`].

use std::time::{Duration, Instant};

/// Read Redis's clock again this often.
pub const REFRESH: Duration = Duration::from_secs(10);
/// The rate difference allowed between the two clocks (NTP slews a clock by
/// at most 500 ppm).
pub const DRIFT_PPM: u32 = 2_000;
/// Added to every bound.
pub const MARGIN: Duration = Duration::from_millis(5);

/// One reading of Redis's `TIME`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedisClock {
    /// When the node sent `TIME`.
    pub sent: Instant,
    /// When the answer came.
    pub received: Instant,
    /// What it said, in µs since the Unix epoch.
    pub redis_us: u64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// How far the clocks may have moved apart over `over`, plus the margin.
fn drift(over: Duration) -> Duration {
    MARGIN + over / (1_000_000 / DRIFT_PPM)
}

impl RedisClock {
    /// A deadline (ms on Redis's clock) `timeout` after `now`, counted from
    /// the latest Redis's clock may read at `now`: a command sent now may
    /// wait in Redis's input `timeout` and still run.
    pub fn deadline_ms(&self, now: Instant, timeout: Duration) -> u64 {
        let since = now.saturating_duration_since(self.sent);
        let latest = self.redis_us + micros(since + drift(since)) + micros(timeout);
        latest.div_ceil(1000)
    }

    /// The first instant at which Redis's clock certainly reads past
    /// `deadline_ms` (the script compares whole ms: `now > deadline`).
    pub fn settled_at(&self, deadline_ms: u64) -> Instant {
        // At `received + d`, Redis's clock reads at least `redis_us + d`,
        // less the drift since `sent`.
        let past_us = (deadline_ms + 1) * 1000;
        let d = Duration::from_micros(past_us.saturating_sub(self.redis_us));
        let t = self.received + d;
        t + drift(t.saturating_duration_since(self.sent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Redis's clock in µs at instant `t`: `base_us` at `origin`, running
    /// `ppm` fast (negative: slow).
    fn redis_at(origin: Instant, base_us: u64, t: Instant, ppm: i64) -> u64 {
        let d = micros(t - origin) as i64;
        (base_us as i64 + d + d * ppm / 1_000_000) as u64
    }

    #[test]
    fn a_deadline_has_passed_on_redis_clock_once_settled() {
        let origin = Instant::now();
        let base = 1_700_000_000_000_000u64;
        for (rtt_ms, ppm, later_s) in [(0, 0, 0), (3, 0, 1), (40, 1_000, 9), (1, -1_000, 9)] {
            // TIME read at some instant within the round trip: the worst
            // cases are its two ends.
            for at_end in [false, true] {
                let sent = origin;
                let received = origin + Duration::from_millis(rtt_ms);
                let read_at = if at_end { received } else { sent };
                let c = RedisClock {
                    sent,
                    received,
                    redis_us: redis_at(origin, base, read_at, ppm),
                };
                let now = origin + Duration::from_secs(later_s);
                let timeout = Duration::from_secs(1);
                let d = c.deadline_ms(now, timeout);
                let case =
                    format!("rtt {rtt_ms} ms, {ppm} ppm, {later_s} s later, read at end: {at_end}");
                // A command sent now and run within `timeout` is accepted.
                assert!(
                    redis_at(origin, base, now + timeout, ppm) / 1000 <= d,
                    "{case}"
                );
                // From `settled_at` on, Redis refuses it.
                let s = c.settled_at(d);
                assert!(redis_at(origin, base, s, ppm) / 1000 > d, "{case}");
                // And that is not long after the timeout.
                assert!(
                    s - now < timeout + Duration::from_millis(2 * rtt_ms + 60),
                    "{case}"
                );
            }
        }
    }
}
