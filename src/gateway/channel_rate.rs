//! Subscribes per second per connection (`limits.channel_rate`): every
//! subscribe may create a channel on the node, so a connection that
//! subscribes to new names and leaves them as fast as it can is refused
//! (error 5) past the rate. Bursts of `max_channels_per_connection`, so
//! that a client subscribes to all its channels at once when it connects.

use crate::base::counters::Counters;
use crate::base::{Bucket, OpError};

/// A connection's subscribe rate: no state until its first subscribe.
/// 8 bytes in every session (issue 13 part 4: the session on one channel
/// fits malloc's 80-byte chunk): the bucket's tokens, and one word with
/// the time of its last take and the two flags. The time is kept in
/// 4-ms units modulo 2^30 (49.7 days): a take measures the time since the
/// last one modulo that, so a bucket untouched for a multiple of 49.7
/// days refills as if less time had passed (at worst a subscribe refused
/// with error 5 within the refill time of the burst). The last take is
/// rounded up to the unit: a refill is short by at most 4 ms' worth of
/// tokens, never long (rounded down, takes repeated within one unit each
/// refilled up to 4 ms' worth: a loop of refused subscribes minted more).
#[derive(Debug, Default)]
pub struct ChannelRate {
    tokens: f32,
    /// `STARTED` (the bucket was filled at the first subscribe), `LOGGED`
    /// (refused once already: logged once per connection), and the time
    /// of the last take above them ([`ChannelRate::stamp`]).
    word: u32,
}

const STARTED: u32 = 1;
const LOGGED: u32 = 2;
const TIME_SHIFT: u32 = 2;
/// The clock's unit in the word, in ms.
const UNIT_MS: u64 = 4;

impl ChannelRate {
    /// `now_ms` in the word's units (rounded up), wrapped, with the flags
    /// clear.
    fn stamp(now_ms: u64) -> u32 {
        (now_ms.div_ceil(UNIT_MS) as u32) << TIME_SHIFT
    }

    /// The last take on the worker's clock, as the bucket wants it.
    fn last_ms(&self, now_ms: u64) -> u64 {
        let since = Self::stamp(now_ms).wrapping_sub(self.word & !(STARTED | LOGGED));
        let units = u64::from(since >> TIME_SHIFT);
        now_ms.div_ceil(UNIT_MS).saturating_sub(units) * UNIT_MS
    }

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
        let mut bucket = if self.word & STARTED != 0 {
            Bucket::from_parts(self.tokens, self.last_ms(now_ms))
        } else {
            Bucket::full(burst, now_ms)
        };
        let ok = bucket.take(now_ms, rate, burst);
        let (tokens, last) = bucket.parts();
        self.tokens = tokens;
        self.word = Self::stamp(last) | STARTED | (self.word & LOGGED);
        if ok {
            return Ok(());
        }
        counts.channel_rate_limited += 1;
        if self.word & LOGGED == 0 {
            self.word |= LOGGED;
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
    fn eight_bytes() {
        assert_eq!(std::mem::size_of::<ChannelRate>(), 8);
    }

    /// The packed clock gives back the last take (to its 4-ms unit), also
    /// across the word's wrap, and the flags do not disturb it.
    #[test]
    fn the_packed_clock_survives_its_wrap_and_the_flags() {
        let wrap = UNIT_MS << 30;
        for last in [0, 5, 1_000_003, wrap - 4, wrap + 8, 3 * wrap + 123_456] {
            for flags in [STARTED, STARTED | LOGGED] {
                let r = ChannelRate {
                    tokens: 0.0,
                    word: ChannelRate::stamp(last) | flags,
                };
                for later in [0, 4, 999, 60_000] {
                    let now = last + later;
                    assert_eq!(
                        r.last_ms(now),
                        last.div_ceil(UNIT_MS) * UNIT_MS,
                        "last {last}, now {now}"
                    );
                }
            }
        }
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
        // Refused takes within one clock unit mint nothing.
        let mut c2 = Counters::default();
        let mut refused = |now| (0..10_000).all(|_| r.take(10, 128, now, &mut c2, "c").is_err());
        assert!(refused(101) && refused(102) && refused(103));
        let mut off = ChannelRate::default();
        assert!((0..10_000).all(|_| off.take(0, 128, 0, &mut counts, "c").is_ok()));
    }
}
