//! The workload deltas are measured on: a dashboard of 200 numeric metrics
//! in one JSON object (`{"svc00.cpu":12.34,"svc00.mem":5120.07,…}`, about
//! 3.7 KB), of which 3 or 4 change per tick. Deterministic for a seed, so
//! that benches, tests and the load generator agree on the bytes.

/// Metric kinds; ten per service, twenty services.
const KINDS: [&str; 10] = [
    "cpu", "mem", "rps", "p50", "p99", "errors", "conns", "queue", "disk", "net",
];

/// Metrics in the object.
pub const METRICS: usize = 200;

/// The dashboard's state: each metric in hundredths.
#[derive(Clone, Debug)]
pub struct Dashboard {
    cents: Vec<u64>,
    rng: u64,
}

impl Dashboard {
    pub fn new(seed: u64) -> Dashboard {
        let mut d = Dashboard {
            cents: Vec::with_capacity(METRICS),
            rng: seed | 1,
        };
        for _ in 0..METRICS {
            let scale = 10u64.pow((d.next() % 5) as u32);
            let v = d.next() % (scale * 100);
            d.cents.push(v);
        }
        d
    }

    /// xorshift64*.
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// One tick: 3 or 4 metrics change (each by up to ±10 %, plus a little).
    pub fn tick(&mut self) {
        let n = 3 + self.next() % 2;
        for _ in 0..n {
            let i = (self.next() % METRICS as u64) as usize;
            let v = self.cents[i];
            let step = v / 10 + 1 + self.next() % 50;
            self.cents[i] = if self.next().is_multiple_of(2) {
                v + step
            } else {
                v.saturating_sub(step)
            };
        }
    }

    /// The dashboard as compact JSON.
    pub fn json(&self) -> String {
        let mut s = String::with_capacity(METRICS * 20);
        s.push('{');
        for (i, v) in self.cents.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&format!(
                "\"svc{:02}.{}\":{}.{:02}",
                i / 10,
                KINDS[i % 10],
                v / 100,
                v % 100
            ));
        }
        s.push('}');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_hundred_metrics_three_or_four_change_per_tick() {
        let mut d = Dashboard::new(1);
        let before: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&d.json()).unwrap();
        assert_eq!(before.len(), METRICS);
        let len = d.json().len();
        assert!((3000..4500).contains(&len), "{len}");
        let mut changed_total = 0;
        let mut prev = before;
        for _ in 0..100 {
            d.tick();
            let now: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&d.json()).unwrap();
            let changed = now.iter().filter(|(k, v)| prev[*k] != **v).count();
            assert!(changed <= 4, "{changed}");
            changed_total += changed;
            prev = now;
        }
        // A pick may repeat a metric, or a step cancel at zero: a little under 3.5.
        assert!((300..=350).contains(&changed_total), "{changed_total}");
        assert_eq!(Dashboard::new(1).json(), Dashboard::new(1).json());
    }
}
