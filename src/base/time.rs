//! Durations in the configuration: [`Millis`], written with a unit.

use serde::{Deserialize, Serialize};

/// Parse "250ms", "10s", "2m", "1h" or a bare number of seconds into ms.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e3)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600e3)
    } else {
        (s, 1e3)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (use 250ms, 10s, 5m, 1h)"))?;
    let ms = v * mult;
    if !(0.0..=(u32::MAX / 2) as f64).contains(&ms) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(ms as u64)
}

/// Format ms the way [`parse_duration_ms`] reads it.
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        "0s".into()
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A duration in a config file: a string with a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Millis(pub u64);

impl Serialize for Millis {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration_ms(self.0))
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            N(u64),
        }
        match Raw::deserialize(d)? {
            Raw::S(s) => parse_duration_ms(&s)
                .map(Millis)
                .map_err(serde::de::Error::custom),
            Raw::N(n) => Ok(Millis(n * 1000)),
        }
    }
}
