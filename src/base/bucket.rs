//! A token bucket: the handshake rate of a worker, the message rate and the
//! subscribe rate of a connection.

/// A token bucket: `rate` per second, up to `burst` at once.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bucket {
    tokens: f32,
    last_ms: u64,
}

impl Bucket {
    pub fn full(burst: u32, now_ms: u64) -> Bucket {
        Bucket {
            tokens: burst as f32,
            last_ms: now_ms,
        }
    }

    /// A bucket from what [`Bucket::parts`] gave (a holder that packs
    /// them beside other fields).
    pub fn from_parts(tokens: f32, last_ms: u64) -> Bucket {
        Bucket { tokens, last_ms }
    }

    /// Its tokens and the time of its last take.
    pub fn parts(self) -> (f32, u64) {
        (self.tokens, self.last_ms)
    }

    /// Take one token; false when empty.
    pub fn take(&mut self, now_ms: u64, rate: u32, burst: u32) -> bool {
        let dt = now_ms.saturating_sub(self.last_ms) as f32 / 1000.0;
        self.last_ms = now_ms;
        self.tokens = (self.tokens + dt * rate as f32).min(burst as f32);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_its_rate() {
        let mut b = Bucket::full(2, 0);
        assert!(b.take(0, 10, 2) && b.take(0, 10, 2));
        assert!(!b.take(0, 10, 2));
        assert!(!b.take(50, 10, 2), "half a token after 50 ms at 10/s");
        assert!(b.take(100, 10, 2));
    }
}
