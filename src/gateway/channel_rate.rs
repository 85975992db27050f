//! Subscribes per second per connection (`limits.channel_rate`): every
//! subscribe may create a channel on the node, so a connection that
//! subscribes to new names and leaves them as fast as it can is refused
//! (error 5) past the rate. Bursts of `max_channels_per_connection`, so
//! that a client subscribes to all its channels at once when it connects.

use crate::base::counters::Counters;
use crate::base::{Bucket, OpError};

/// A connection's subscribe rate: no state until its first subscribe.
/// 16 bytes in every session: the bucket's two fields side by side with
/// the flags (a [`Bucket`] beside them took 24, 6 of them padding; an
/// `Option<Bucket>` beside the flag took 32).
#[derive(Debug, Default)]
pub struct ChannelRate {
    /// The bucket's tokens and when it was last taken from
    /// ([`Bucket::parts`]).
    tokens: f32,
    last_ms: u64,
    /// The bucket was filled at the first subscribe.
    started: bool,
    /// Refused once already (logged once per connection).
    logged: bool,
}

impl ChannelRate {
    /// One subscribe at `now_ms` for connection `client`: `rate` per
    /// second (0: no limit), bursts of `burst`; refused past it (counted,
    /// logged the first time).
    pub fn take(
        &mut self,
        rate: u32,
        burst: usize,
        now_ms: u64,
        counts: &mut Counters,
        client: &str,
    ) -> Result<(), OpError> {
        if rate == 0 {
            return Ok(());
        }
        let burst = (burst as u32).max(rate.saturating_mul(2));
        let mut bucket = if self.started {
            Bucket::from_parts(self.tokens, self.last_ms)
        } else {
            self.started = true;
            Bucket::full(burst, now_ms)
        };
        let ok = bucket.take(now_ms, rate, burst);
        (self.tokens, self.last_ms) = bucket.parts();
        if ok {
            return Ok(());
        }
        counts.channel_rate_limited += 1;
        if !self.logged {
            self.logged = true;
            log::info!(
                "client {client}: subscribing faster than limits.channel_rate = {rate}/s: \
                 refused (error 5; wsgate_channel_rate_limited_total counts each)"
            );
        }
        Err(OpError::ChannelRate(rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_bytes() {
        assert_eq!(std::mem::size_of::<ChannelRate>(), 16);
    }

    #[test]
    fn a_burst_then_the_rate() {
        let mut counts = Counters::default();
        let mut r = ChannelRate::default();
        let mut ok = |r: &mut ChannelRate, now| r.take(10, 128, now, &mut counts, "c").is_ok();
        assert!((0..128).all(|_| ok(&mut r, 0)), "the burst");
        assert!(!ok(&mut r, 0));
        assert!(ok(&mut r, 100), "a tenth of a second later: one more");
        assert!(!ok(&mut r, 100));
        assert_eq!(
            r.take(10, 128, 100, &mut counts, "c"),
            Err(OpError::ChannelRate(10))
        );
        assert_eq!(counts.channel_rate_limited, 3);
        let mut off = ChannelRate::default();
        assert!((0..10_000).all(|_| off.take(0, 128, 0, &mut counts, "c").is_ok()));
    }
}
