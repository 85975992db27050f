//! The load generator's library: the client role of [`crate::proto`] driven
//! over mio, and the modes of the `wsgate-load` binary.
//!
//! One process (or thread) runs one mio event loop over many non-blocking
//! client sockets; no async runtime. The binary stays thin: it parses flags,
//! picks a mode, and either runs it here or spreads it over child processes
//! ([`procs`]).
//!
//! Reading order: [`net`] (URLs, source addresses, the raw `connect`),
//! [`client`] (one connection's state machine, connecting → handshaking →
//! open → closing, and [`client::Fleet`], the event loop over many of them),
//! then the modes [`echo`], [`hold`], [`churn`], [`autobahn`], [`sub`]
//! (fan-out: subscribers, publishers on the backend API), and finally
//! [`report`] (results, merging, printing) and [`procs`] (child processes).
//!
//! Crates used here, and why (each is widely used and maintained):
//! - `hdrhistogram`: latency percentiles with bounded relative error, and a
//!   standard serialized form (V2) so that the histograms of child processes
//!   merge exactly (averaging percentiles would be wrong).
//! - `indicatif`: the progress bar while connections open (stderr only).
//! - `serde` + `serde_json`: `--json` output, and the one-line results that
//!   child processes hand to their parent.
//! - `base64` (already a dependency): carries the serialized histograms in
//!   JSON.
//!
//! Randomness (handshake keys, mask seeds) comes from a small generator
//! seeded with 16 bytes of `/dev/urandom`; no `rand` crate is needed.

pub mod autobahn;
pub mod churn;
pub mod client;
pub mod echo;
pub mod hold;
pub mod net;
pub mod procs;
pub mod report;
pub mod sub;

use std::time::Duration;

pub use client::{ClientConfig, End};
pub use net::Target;

/// Parse a duration: "250ms", "10s", "1.5s", "2m", or a plain number of
/// seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (try \"10s\" or \"500ms\")"))?;
    let secs = v * mult;
    if !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parse a permessage-deflate mode: "off", "shared" or "dedicated".
pub fn parse_deflate_mode(s: &str) -> Result<crate::proto::deflate::Mode, String> {
    use crate::proto::deflate::Mode;
    match s.trim().to_ascii_lowercase().as_str() {
        "off" | "none" => Ok(Mode::Off),
        "shared" => Ok(Mode::Shared),
        "dedicated" => Ok(Mode::Dedicated),
        _ => Err(format!(
            "not a deflate mode: {s:?} (off, shared or dedicated)"
        )),
    }
}

/// What a mode tells the outside world while it runs: how far the opening
/// of connections has got, and when it is ready to start the measured part
/// (child processes wait there for their siblings).
pub trait Observer {
    /// Connections opened and failed so far, out of `total`.
    fn opening(&mut self, _opened: u64, _failed: u64, _total: u64) {}
    /// The opening phase is over; returns when the run may go on.
    fn ready(&mut self) {}
}

/// An observer that does nothing (library users, tests).
pub struct Quiet;

impl Observer for Quiet {}

/// A small, fast generator (SplitMix64) for handshake keys and mask seeds.
/// Seeded from the OS, it is unpredictable enough for a load generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seed from 16 bytes of `/dev/urandom`; falls back on the clock and the
    /// process id if that cannot be read (never panics).
    pub fn from_os() -> Rng {
        use std::io::Read;
        let mut seed = [0u8; 16];
        let ok = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .is_ok();
        let mut s = if ok {
            let a = u64::from_le_bytes(seed[..8].try_into().unwrap_or_default());
            let b = u64::from_le_bytes(seed[8..].try_into().unwrap_or_default());
            a ^ b.rotate_left(32)
        } else {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            t ^ ((std::process::id() as u64) << 32)
        };
        if s == 0 {
            s = 0x9E37_79B9_7F4A_7C15;
        }
        Rng(s)
    }

    /// A generator with a fixed seed (tests).
    pub fn with_seed(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = |s| parse_duration(s).map(|d| d.as_millis());
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("10s"), Ok(10_000));
        assert_eq!(ms("1.5s"), Ok(1_500));
        assert_eq!(ms("2m"), Ok(120_000));
        assert_eq!(ms("3"), Ok(3_000));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn deflate_modes() {
        use crate::proto::deflate::Mode;
        assert_eq!(parse_deflate_mode("off"), Ok(Mode::Off));
        assert_eq!(parse_deflate_mode("Shared"), Ok(Mode::Shared));
        assert_eq!(parse_deflate_mode("dedicated"), Ok(Mode::Dedicated));
        assert!(parse_deflate_mode("fast").is_err());
    }

    #[test]
    fn rng_fills_and_differs() {
        let mut r = Rng::with_seed(1);
        let mut a = [0u8; 16];
        let mut b = [0u8; 16];
        r.fill(&mut a);
        r.fill(&mut b);
        assert_ne!(a, b);
        assert_ne!(Rng::from_os().next_u64(), Rng::from_os().next_u64());
    }
}
