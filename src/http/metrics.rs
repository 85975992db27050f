//! Counters and histograms the workers update with relaxed atomics, and
//! their rendering in the Prometheus text format for `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::delta::DeltaStats;

/// Publish-to-write latency buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A Prometheus histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe_us(&self, us: u64) {
        let secs = us as f64 / 1e6;
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.counts[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cum}");
    }
}

/// Per-worker gauges.
#[derive(Debug, Default)]
pub struct WorkerGauges {
    pub connections: AtomicU64,
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
/// counts is in the HELP texts of [`render`].
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

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub closed: AtomicU64,
    pub refused: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub deliveries: AtomicU64,
    pub dropped: AtomicU64,
    pub slow_consumer_closes: AtomicU64,
    pub op_errors: AtomicU64,
    pub http_requests: AtomicU64,
    pub refused_per_ip: AtomicU64,
    pub refused_handshake_rate: AtomicU64,
    pub rate_limited: AtomicU64,
    /// Subscribes refused (error 5) over `limits.channel_rate`.
    pub channel_rate_limited: AtomicU64,
    pub publish_to_write: Histogram,
}

/// Render everything in the Prometheus text format.
pub fn render(
    stats: &Stats,
    workers: &[WorkerGauges],
    broker: &crate::broker::BrokerStats,
) -> String {
    let mut out = String::with_capacity(4096);
    let counters: [(&str, &str, &AtomicU64); 18] = [
        (
            "wsgate_connections_accepted_total",
            "TCP connections accepted",
            &stats.accepted,
        ),
        (
            "wsgate_connections_closed_total",
            "connections closed",
            &stats.closed,
        ),
        (
            "wsgate_connections_refused_total",
            "connections refused (limits, descriptors)",
            &stats.refused,
        ),
        (
            "wsgate_messages_in_total",
            "WebSocket messages received",
            &stats.messages_in,
        ),
        (
            "wsgate_messages_out_total",
            "messages queued to clients (replies, echoes, deliveries)",
            &stats.messages_out,
        ),
        (
            "wsgate_bytes_in_total",
            "bytes read from sockets",
            &stats.bytes_in,
        ),
        (
            "wsgate_bytes_out_total",
            "bytes written to sockets",
            &stats.bytes_out,
        ),
        (
            "wsgate_protocol_errors_total",
            "connections failed for a protocol violation",
            &stats.protocol_errors,
        ),
        (
            "wsgate_timeouts_total",
            "connections dropped by a timer (handshake, pong, linger)",
            &stats.timeouts,
        ),
        (
            "wsgate_deliveries_total",
            "publication frames queued to subscribers",
            &stats.deliveries,
        ),
        (
            "wsgate_dropped_total",
            "deliveries dropped for a full out queue (drop policy)",
            &stats.dropped,
        ),
        (
            "wsgate_slow_consumer_closes_total",
            "connections closed with 4001 for a full out queue",
            &stats.slow_consumer_closes,
        ),
        (
            "wsgate_op_errors_total",
            "client ops answered with an error",
            &stats.op_errors,
        ),
        (
            "wsgate_http_requests_total",
            "plain HTTP requests served",
            &stats.http_requests,
        ),
        (
            "wsgate_refused_per_ip_total",
            "connections refused (429) over the per-IP limit",
            &stats.refused_per_ip,
        ),
        (
            "wsgate_refused_handshake_rate_total",
            "handshakes refused (503) over the handshake rate",
            &stats.refused_handshake_rate,
        ),
        (
            "wsgate_rate_limited_total",
            "connections closed (1008) over the message rate",
            &stats.rate_limited,
        ),
        (
            "wsgate_channel_rate_limited_total",
            "subscribes refused (error 5) over limits.channel_rate",
            &stats.channel_rate_limited,
        ),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            v.load(Ordering::Relaxed)
        );
    }
    type Gauge = (&'static str, &'static str, fn(&WorkerGauges) -> u64);
    let gauges: [Gauge; 2] = [
        ("wsgate_connections", "open connections", |w| {
            w.connections.load(Ordering::Relaxed)
        }),
        ("wsgate_subscriptions", "channel subscriptions", |w| {
            w.subscriptions.load(Ordering::Relaxed)
        }),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (i, w) in workers.iter().enumerate() {
            let _ = writeln!(out, "{name}{{worker=\"{i}\"}} {}", get(w));
        }
    }
    let name = "wsgate_loop_lag_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} longest event-loop iteration since the last scrape\n# TYPE {name} gauge"
    );
    for (i, w) in workers.iter().enumerate() {
        let us = w.loop_lag_max_us.swap(0, Ordering::Relaxed);
        let _ = writeln!(out, "{name}{{worker=\"{i}\"}} {}", us as f64 / 1e6);
    }
    render_deflate(&mut out, workers);
    render_delta(&mut out, workers);
    stats.publish_to_write.render(
        &mut out,
        "wsgate_publish_to_write_seconds",
        "time from a publication to the write of its frames on a worker",
    );
    render_channel_bounds(&mut out, broker);
    let _ = writeln!(
        out,
        "# HELP wsgate_channels channels the broker holds\n# TYPE wsgate_channels gauge\nwsgate_channels {}\n\
         # HELP wsgate_publications_total publications accepted by the broker\n# TYPE wsgate_publications_total counter\n\
         wsgate_publications_total {}\n\
         # HELP wsgate_broker_healthy 1 when the broker is reachable\n# TYPE wsgate_broker_healthy gauge\n\
         wsgate_broker_healthy{{kind=\"{}\"}} {}",
        broker.channels,
        broker.publications,
        broker.kind,
        broker.healthy as u8
    );
    out
}

/// What bounds the broker's channels and history (SECURITY.md: channel
/// churn, history budget).
fn render_channel_bounds(out: &mut String, b: &crate::broker::BrokerStats) {
    let _ = writeln!(
        out,
        "# HELP wsgate_channels_idle idle channels whose position is kept for recovery\n\
         # TYPE wsgate_channels_idle gauge\nwsgate_channels_idle {}\n\
         # HELP wsgate_history_bytes frame bytes of history held on this node\n\
         # TYPE wsgate_history_bytes gauge\nwsgate_history_bytes {}\n\
         # HELP wsgate_history_memory_bytes limits.history_memory\n\
         # TYPE wsgate_history_memory_bytes gauge\nwsgate_history_memory_bytes {}\n\
         # HELP wsgate_history_evictions_total publications dropped from history before their age (limits.history_memory full)\n\
         # TYPE wsgate_history_evictions_total counter\nwsgate_history_evictions_total {}\n\
         # HELP wsgate_idle_channel_evictions_total idle channel positions forgotten early (over limits.max_channels)\n\
         # TYPE wsgate_idle_channel_evictions_total counter\nwsgate_idle_channel_evictions_total {}\n\
         # HELP wsgate_channel_limit_refusals_total subscribes and publishes refused (error 10) at limits.max_channels\n\
         # TYPE wsgate_channel_limit_refusals_total counter\nwsgate_channel_limit_refusals_total {}",
        b.idle_channels,
        b.history_bytes,
        b.history_limit,
        b.history_evictions,
        b.idle_evictions,
        b.channel_limit_refusals,
    );
}

/// A worker's delta counts (issue 16) for scrapes: [`DeltaStats`] and the
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
    fn values(s: &DeltaStats, held: usize, channels: usize) -> [u64; 9] {
        [
            s.delta_deliveries,
            s.whole_deliveries,
            s.encoded,
            s.not_smaller,
            s.base_too_large + s.base_over_budget,
            s.bytes_saved,
            s.resets,
            held as u64,
            channels as u64,
        ]
    }

    /// Publish the worker's counts (only its own thread calls this).
    pub fn store(&self, s: &DeltaStats, held: usize, channels: usize) {
        for (a, v) in self.v.iter().zip(Self::values(s, held, channels)) {
            a.store(v, Ordering::Relaxed);
        }
    }

    fn load(&self) -> [u64; 9] {
        self.v.each_ref().map(|a| a.load(Ordering::Relaxed))
    }
}

/// The delta counters and gauges, summed over the workers.
fn render_delta(out: &mut String, workers: &[WorkerGauges]) {
    let mut t = [0u64; 9];
    for w in workers {
        for (t, v) in t.iter_mut().zip(w.delta.load()) {
            *t += v;
        }
    }
    let _ = writeln!(
        out,
        "# HELP wsgate_delta_deliveries_total publications queued to subscribers that asked for Fossil deltas; \
         form=\"delta\": as a delta, form=\"whole\": whole (the first after subscribing or recovering, \
         after a missed one or a resync, or when the delta was not smaller)\n\
         # TYPE wsgate_delta_deliveries_total counter\n\
         wsgate_delta_deliveries_total{{form=\"delta\"}} {}\n\
         wsgate_delta_deliveries_total{{form=\"whole\"}} {}\n\
         # HELP wsgate_delta_encoded_total deltas computed (at most one per publication per worker)\n\
         # TYPE wsgate_delta_encoded_total counter\nwsgate_delta_encoded_total {}\n\
         # HELP wsgate_delta_not_smaller_total deltas computed and not sent: not smaller than the whole publication\n\
         # TYPE wsgate_delta_not_smaller_total counter\nwsgate_delta_not_smaller_total {}\n\
         # HELP wsgate_delta_bases_not_kept_total publications not kept as a delta base (over the size or memory bound): the next goes whole\n\
         # TYPE wsgate_delta_bases_not_kept_total counter\nwsgate_delta_bases_not_kept_total {}\n\
         # HELP wsgate_delta_bytes_saved_total per delta delivery, the whole frame's bytes less the delta frame's (before compression)\n\
         # TYPE wsgate_delta_bytes_saved_total counter\nwsgate_delta_bytes_saved_total {}\n\
         # HELP wsgate_delta_resets_total resync events that made a channel's next publication whole\n\
         # TYPE wsgate_delta_resets_total counter\nwsgate_delta_resets_total {}\n\
         # HELP wsgate_delta_base_bytes bytes of previous publications kept as delta bases\n\
         # TYPE wsgate_delta_base_bytes gauge\nwsgate_delta_base_bytes {}\n\
         # HELP wsgate_delta_channels channels with delta subscribers, counted per worker\n\
         # TYPE wsgate_delta_channels gauge\nwsgate_delta_channels {}",
        t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8],
    );
}

/// The permessage-deflate counters, summed over the workers.
fn render_deflate(out: &mut String, workers: &[WorkerGauges]) {
    let mut t = DeflateCounts::default();
    for w in workers {
        let c = w.deflate.load();
        t.connections += c.connections;
        t.messages_in += c.messages_in;
        t.in_wire_bytes += c.in_wire_bytes;
        t.in_payload_bytes += c.in_payload_bytes;
        t.messages_out += c.messages_out;
        t.out_payload_bytes += c.out_payload_bytes;
        t.out_wire_bytes += c.out_wire_bytes;
    }
    let _ = writeln!(
        out,
        "# HELP wsgate_deflate_connections_total WebSocket connections that negotiated permessage-deflate\n\
         # TYPE wsgate_deflate_connections_total counter\n\
         wsgate_deflate_connections_total {}\n\
         # HELP wsgate_deflate_messages_total messages sent or received compressed (RSV1 set); \
         in: received and inflated; out: queued to a client, once per delivery \
         (a publication compressed once per worker counts once per subscriber it is queued to); \
         messages below compression.min_size or that deflate does not shrink go plain and are not counted\n\
         # TYPE wsgate_deflate_messages_total counter\n\
         wsgate_deflate_messages_total{{direction=\"in\"}} {}\n\
         wsgate_deflate_messages_total{{direction=\"out\"}} {}\n\
         # HELP wsgate_deflate_bytes_total bytes of compressed messages; \
         stage=\"payload\": the message uncompressed, stage=\"wire\": its compressed payload (frame headers excluded); \
         in: per message received, out: per compression (a publication compressed once per worker counts once, \
         whatever its subscribers), so payload/wire is the compression ratio\n\
         # TYPE wsgate_deflate_bytes_total counter\n\
         wsgate_deflate_bytes_total{{direction=\"in\",stage=\"payload\"}} {}\n\
         wsgate_deflate_bytes_total{{direction=\"in\",stage=\"wire\"}} {}\n\
         wsgate_deflate_bytes_total{{direction=\"out\",stage=\"payload\"}} {}\n\
         wsgate_deflate_bytes_total{{direction=\"out\",stage=\"wire\"}} {}",
        t.connections,
        t.messages_in,
        t.messages_out,
        t.in_payload_bytes,
        t.in_wire_bytes,
        t.out_payload_bytes,
        t.out_wire_bytes,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deflate_counters_are_summed_over_workers() {
        let workers = [WorkerGauges::default(), WorkerGauges::default()];
        workers[0].deflate.store(&DeflateCounts {
            connections: 1,
            messages_in: 2,
            in_wire_bytes: 30,
            in_payload_bytes: 100,
            messages_out: 3,
            out_payload_bytes: 1000,
            out_wire_bytes: 300,
        });
        workers[1].deflate.store(&DeflateCounts {
            connections: 4,
            messages_out: 5,
            out_payload_bytes: 10,
            out_wire_bytes: 7,
            ..DeflateCounts::default()
        });
        let mut s = String::new();
        render_deflate(&mut s, &workers);
        for line in [
            "wsgate_deflate_connections_total 5\n",
            "wsgate_deflate_messages_total{direction=\"in\"} 2\n",
            "wsgate_deflate_messages_total{direction=\"out\"} 8\n",
            "wsgate_deflate_bytes_total{direction=\"in\",stage=\"payload\"} 100\n",
            "wsgate_deflate_bytes_total{direction=\"in\",stage=\"wire\"} 30\n",
            "wsgate_deflate_bytes_total{direction=\"out\",stage=\"payload\"} 1010\n",
            "wsgate_deflate_bytes_total{direction=\"out\",stage=\"wire\"} 307\n",
        ] {
            assert!(s.contains(line), "{line:?} not in\n{s}");
        }
        // One HELP and one TYPE per family, HELP on one line.
        assert_eq!(s.matches("# TYPE ").count(), 3);
        assert!(s.lines().all(|l| !l.is_empty()));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe_us(50); // 0.05 ms
        h.observe_us(2_000); // 2 ms
        h.observe_us(10_000_000); // 10 s
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.0001\"} 1\n"));
        assert!(s.contains("x_bucket{le=\"0.0025\"} 2\n"));
        assert!(s.contains("x_bucket{le=\"2.5\"} 2\n"));
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"));
        assert!(s.contains("x_count 3\n"));
        assert_eq!(h.count(), 3);
    }
}
