//! The counters behind `/metrics` and `/api/stats`.
//!
//! A worker counts in plain integers ([`Counters`], its totals since it
//! started): nothing shared is touched per message. Once per loop iteration
//! (before its flush, so that a client that got its echo or publication
//! finds it counted, and again after it) the worker copies what moved into
//! its own slot ([`WorkerGauges::counts`], relaxed atomics on cache lines of
//! its own) with [`Stats::store`]: plain stores, no read-modify-write, no
//! line another worker writes, nothing when idle. `/metrics` and
//! `/api/stats` sum the workers' slots when they are read ([`Stats::sum`]).
//! Each counter only grows, so a sum read while a worker stores is at
//! worst one iteration old for that worker, as any scrape is.
//! Gauges of one worker ([`WorkerGauges`]) are stored by that worker.

use std::sync::atomic::{AtomicU64, Ordering};

/// Publish-to-write latency buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Bucket of a duration in µs (the last one is +Inf).
fn bucket_of(us: u64) -> usize {
    let secs = us as f64 / 1e6;
    LATENCY_BUCKETS
        .iter()
        .position(|&b| secs <= b)
        .unwrap_or(LATENCY_BUCKETS.len())
}

/// A Prometheus histogram of durations, shared.
#[derive(Debug, Default)]
pub struct Histogram {
    pub counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    pub sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe_us(&self, us: u64) {
        self.counts[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Publish a worker's observations since it started (its own slot).
    fn store(&self, l: &Latency) {
        for (c, &n) in self.counts.iter().zip(&l.counts) {
            c.store(n, Ordering::Relaxed);
        }
        self.sum_us.store(l.sum_us, Ordering::Relaxed);
    }

    /// Add another slot's observations (a sum being made: not shared).
    fn add_from(&mut self, other: &Histogram) {
        for (c, o) in self.counts.iter_mut().zip(&other.counts) {
            *c.get_mut() += o.load(Ordering::Relaxed);
        }
        *self.sum_us.get_mut() += other.sum_us.load(Ordering::Relaxed);
    }
}

/// A worker's own histogram observations, not yet added to the totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    counts: [u64; LATENCY_BUCKETS.len() + 1],
    sum_us: u64,
}

impl Latency {
    pub fn observe_us(&mut self, us: u64) {
        self.counts[bucket_of(us)] += 1;
        self.sum_us += us;
    }
}

/// The counters, once as shared totals ([`Stats`]) and once as a worker's
/// plain counts ([`Counters`]), with the same field names.
macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// One worker's counts as its slot holds them (stored by that
        /// worker only), or the sum of every slot made at a scrape
        /// (`Shared::stats`): read by `/metrics`, `/api/stats` and tests.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
            pub publish_to_write: Histogram,
        }

        /// One worker's counts since it started: plain integers, counted
        /// on the hot path, copied into its slot once per iteration.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Counters {
            $($(#[$doc])* pub $name: u64,)*
            pub publish_to_write: Latency,
        }

        impl Stats {
            /// Publish a worker's counts into its slot (only its own thread
            /// calls this): plain stores, no read-modify-write.
            pub fn store(&self, c: &Counters) {
                $(self.$name.store(c.$name, Ordering::Relaxed);)*
                self.publish_to_write.store(&c.publish_to_write);
            }

            /// The sum of the workers' slots: what a scrape reports.
            pub fn sum<'a>(slots: impl IntoIterator<Item = &'a Stats>) -> Stats {
                let mut t = Stats::default();
                for s in slots {
                    $(*t.$name.get_mut() += s.$name.load(Ordering::Relaxed);)*
                    t.publish_to_write.add_from(&s.publish_to_write);
                }
                t
            }
        }
    };
}

counters! {
    accepted,
    closed,
    refused,
    messages_in,
    messages_out,
    bytes_in,
    bytes_out,
    protocol_errors,
    timeouts,
    deliveries,
    dropped,
    slow_consumer_closes,
    op_errors,
    http_requests,
    refused_per_ip,
    refused_handshake_rate,
    rate_limited,
    /// Subscribes refused (error 5) over `limits.channel_rate`.
    channel_rate_limited,
    /// TLS handshakes completed: full, and resumed (a ticket or session id).
    tls_handshakes_full,
    tls_handshakes_resumed,
    /// TLS connections that failed, by reason: plaintext HTTP on the TLS
    /// port, a protocol error (a fatal alert sent), a fatal alert from the
    /// peer, the handshake deadline, the peer's FIN before the handshake
    /// ended (a PROXY header refused: below).
    tls_failed_plain_http,
    tls_failed_protocol,
    tls_failed_peer_alert,
    tls_failed_timeout,
    tls_failed_eof,
    /// TLS connections refused before the ClientHello: a trusted proxy's
    /// PROXY header missing or bad (on a port with
    /// `admission.proxy_protocol`), or a PROXY header from a peer that is
    /// not a trusted proxy.
    tls_failed_proxy_header,
    tls_failed_proxy_untrusted,
}

impl Counters {
    /// Copy these counts into the worker's `slot` if they moved since
    /// `published` (what was last copied); false (and nothing touched) when
    /// nothing moved.
    pub fn publish(&self, slot: &Stats, published: &mut Counters) -> bool {
        if self == published {
            return false;
        }
        slot.store(self);
        *published = *self;
        true
    }
}

/// Per-worker gauges, and the worker's counters' slot. Aligned to two
/// cache lines (the adjacent-line prefetcher pairs them), so that one
/// worker's stores never share a line with another's.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerGauges {
    /// The worker's counts since it started, stored once per iteration when
    /// they moved; summed over the workers at a scrape.
    pub counts: Stats,
    pub connections: AtomicU64,
    /// Of them, TLS connections whose handshake finished.
    pub tls_connections: AtomicU64,
    pub subscriptions: AtomicU64,
    /// Longest loop iteration since the last scrape (µs): how late an event
    /// can be handled.
    pub loop_lag_max_us: AtomicU64,
    pub iterations: AtomicU64,
    /// permessage-deflate counters, copied from the worker's own (plain,
    /// unshared) counts once per loop iteration: no atomic per message.
    pub deflate: DeflateGauges,
    /// Fossil delta counters, the same way.
    pub delta: DeltaGauges,
}

/// permessage-deflate counts of one worker, since it started. What each
/// counts is in the HELP texts of `http::metrics::render`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeflateCounts {
    /// WebSocket connections that negotiated permessage-deflate.
    pub connections: u64,
    /// Messages received compressed (RSV1) and inflated.
    pub messages_in: u64,
    /// Their compressed payload bytes, and their bytes once inflated.
    pub in_wire_bytes: u64,
    pub in_payload_bytes: u64,
    /// Messages queued to clients compressed, once per delivery.
    pub messages_out: u64,
    /// Bytes given to the compressor, and what came out, once per
    /// compression (a shared publication frame counts once per worker).
    pub out_payload_bytes: u64,
    pub out_wire_bytes: u64,
}

/// [`DeflateCounts`] for scrapes: stored by its worker, read by `render`.
#[derive(Debug, Default)]
pub struct DeflateGauges {
    connections: AtomicU64,
    messages_in: AtomicU64,
    in_wire_bytes: AtomicU64,
    in_payload_bytes: AtomicU64,
    messages_out: AtomicU64,
    out_payload_bytes: AtomicU64,
    out_wire_bytes: AtomicU64,
}

impl DeflateGauges {
    /// Publish the worker's counts (only its own thread calls this).
    pub fn store(&self, c: &DeflateCounts) {
        let r = Ordering::Relaxed;
        self.connections.store(c.connections, r);
        self.messages_in.store(c.messages_in, r);
        self.in_wire_bytes.store(c.in_wire_bytes, r);
        self.in_payload_bytes.store(c.in_payload_bytes, r);
        self.messages_out.store(c.messages_out, r);
        self.out_payload_bytes.store(c.out_payload_bytes, r);
        self.out_wire_bytes.store(c.out_wire_bytes, r);
    }

    pub fn load(&self) -> DeflateCounts {
        let r = Ordering::Relaxed;
        DeflateCounts {
            connections: self.connections.load(r),
            messages_in: self.messages_in.load(r),
            in_wire_bytes: self.in_wire_bytes.load(r),
            in_payload_bytes: self.in_payload_bytes.load(r),
            messages_out: self.messages_out.load(r),
            out_payload_bytes: self.out_payload_bytes.load(r),
            out_wire_bytes: self.out_wire_bytes.load(r),
        }
    }
}

/// A worker's delta counts (issue 16) for scrapes: `delta::DeltaStats` and the
/// bytes of bases held, stored by its worker once per loop iteration when
/// they changed, summed over the workers by `render`.
#[derive(Debug, Default)]
pub struct DeltaGauges {
    /// `delta_deliveries`, `whole_deliveries`, `encoded`, `not_smaller`,
    /// bases not kept (`base_too_large + base_over_budget`), `bytes_saved`,
    /// `resets`, bytes held, channels with delta subscribers.
    v: [AtomicU64; 9],
}

impl DeltaGauges {
    /// Publish the worker's counts (only its own thread calls this).
    pub fn store(&self, values: [u64; 9]) {
        for (a, v) in self.v.iter().zip(values) {
            a.store(v, Ordering::Relaxed);
        }
    }

    pub fn load(&self) -> [u64; 9] {
        self.v.each_ref().map(|a| a.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_counts_are_summed_at_scrape_and_never_twice() {
        let slots = [WorkerGauges::default(), WorkerGauges::default()];
        let (mut a, mut b) = (Counters::default(), Counters::default());
        let (mut pa, mut pb) = (Counters::default(), Counters::default());
        assert!(!a.publish(&slots[0].counts, &mut pa), "nothing moved");
        a.messages_in += 3;
        a.bytes_out += 100;
        a.publish_to_write.observe_us(50);
        a.publish_to_write.observe_us(2_000_000);
        assert!(a.publish(&slots[0].counts, &mut pa));
        assert!(!a.publish(&slots[0].counts, &mut pa), "published once");
        a.messages_in += 1;
        b.messages_in += 10;
        b.closed += 1;
        b.publish_to_write.observe_us(50);
        // Not yet published: a scrape sees the last copies only.
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let t = Stats::sum(slots.iter().map(|w| &w.counts));
        assert_eq!(l(&t.messages_in), 3);
        assert!(a.publish(&slots[0].counts, &mut pa));
        assert!(b.publish(&slots[1].counts, &mut pb));
        // Published again and again, a slot holds totals: nothing doubles.
        assert!(!a.publish(&slots[0].counts, &mut pa));
        let t = Stats::sum(slots.iter().map(|w| &w.counts));
        assert_eq!(l(&t.messages_in), 14);
        assert_eq!(l(&t.bytes_out), 100);
        assert_eq!(l(&t.closed), 1);
        assert_eq!(l(&t.accepted), 0);
        assert_eq!(t.publish_to_write.count(), 3);
        assert_eq!(l(&t.publish_to_write.sum_us), 2_000_100);
        assert_eq!(
            l(&slots[1].counts.messages_in),
            10,
            "each worker its own slot"
        );
    }

    #[test]
    fn worker_slots_do_not_share_cache_lines() {
        assert_eq!(std::mem::align_of::<WorkerGauges>(), 128);
        let slots = [WorkerGauges::default(), WorkerGauges::default()];
        let a = &slots[0].counts as *const Stats as usize;
        let b = &slots[1].counts as *const Stats as usize;
        assert!(b - a >= std::mem::size_of::<Stats>() && (b - a).is_multiple_of(128));
    }
}
