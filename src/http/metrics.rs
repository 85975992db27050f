//! The counters' rendering in the Prometheus text format for
//! `GET /metrics` (the counters themselves: [`crate::base::counters`]).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::base::counters::{
    Counters, DeflateCounts, DeflateGauges, Histogram, Latency, Stats, WorkerGauges,
    LATENCY_BUCKETS,
};

/// A histogram of durations in the Prometheus text format.
fn render_histogram(h: &Histogram, out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cum = 0;
    for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
        cum += h.counts[i].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
    }
    cum += h.counts[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
    let sum = h.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
    let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cum}");
}

/// The backend proxies' counters (issue 15): calls, decisions taken,
/// failures by kind, and the latency of each call (submission to outcome,
/// queueing included), per hook.
pub fn render_proxy(out: &mut String, stats: &crate::hooks::client::StatsByLabel) {
    use crate::hooks::client::LATENCY_BUCKETS_US;
    use crate::hooks::proxy::Hook;
    let _ = writeln!(
        out,
        "# HELP wsgate_proxy_calls_total backend proxy calls (refused at once included)
         # TYPE wsgate_proxy_calls_total counter"
    );
    for h in Hook::ALL {
        let _ = writeln!(
            out,
            "wsgate_proxy_calls_total{{hook=\"{}\"}} {}",
            h.name(),
            stats[h.label()].calls
        );
    }
    let _ = writeln!(
        out,
        "# HELP wsgate_proxy_answers_total backend proxy calls the backend decided
         # TYPE wsgate_proxy_answers_total counter"
    );
    for h in Hook::ALL {
        let _ = writeln!(
            out,
            "wsgate_proxy_answers_total{{hook=\"{}\"}} {}",
            h.name(),
            stats[h.label()].ok
        );
    }
    let _ = writeln!(
        out,
        "# HELP wsgate_proxy_failures_total backend proxy calls the backend could not decide, by kind
         # TYPE wsgate_proxy_failures_total counter"
    );
    for h in Hook::ALL {
        let f = &stats[h.label()].failures;
        for (kind, n) in [
            ("overloaded", f.overloaded),
            ("connect", f.connect),
            ("timeout", f.timeout),
            ("status", f.status),
            ("too_big", f.too_big),
            ("bad_answer", f.bad_answer),
            ("io", f.io),
            ("stopped", f.stopped),
        ] {
            let _ = writeln!(
                out,
                "wsgate_proxy_failures_total{{hook=\"{}\",kind=\"{kind}\"}} {n}",
                h.name()
            );
        }
    }
    let name = "wsgate_proxy_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} backend proxy call latency, from the op to its outcome
# TYPE {name} histogram"
    );
    for h in Hook::ALL {
        let l = &stats[h.label()].latency;
        let hook = h.name();
        let mut cum = 0;
        for (i, b) in LATENCY_BUCKETS_US.iter().enumerate() {
            cum += l.buckets[i];
            let le = *b as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{hook=\"{hook}\",le=\"{le}\"}} {cum}");
        }
        cum += l.buckets[LATENCY_BUCKETS_US.len()];
        let _ = writeln!(out, "{name}_bucket{{hook=\"{hook}\",le=\"+Inf\"}} {cum}");
        let sum = l.sum_us as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_sum{{hook=\"{hook}\"}} {sum}\n{name}_count{{hook=\"{hook}\"}} {cum}"
        );
    }
}

/// TLS handshakes by kind and failures by reason (issue 14).
fn render_tls(out: &mut String, stats: &Stats) {
    let name = "wsgate_tls_handshakes_total";
    let _ = writeln!(
        out,
        "# HELP {name} TLS handshakes completed, full or resumed (ticket, session id)\n# TYPE {name} counter"
    );
    for (kind, v) in [
        ("full", &stats.tls_handshakes_full),
        ("resumed", &stats.tls_handshakes_resumed),
    ] {
        let _ = writeln!(
            out,
            "{name}{{kind=\"{kind}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    let name = "wsgate_tls_failures_total";
    let _ = writeln!(
        out,
        "# HELP {name} TLS connections that failed, by reason\n# TYPE {name} counter"
    );
    for (reason, v) in [
        ("plain_http", &stats.tls_failed_plain_http),
        ("protocol", &stats.tls_failed_protocol),
        ("peer_alert", &stats.tls_failed_peer_alert),
        ("handshake_timeout", &stats.tls_failed_timeout),
        ("eof_in_handshake", &stats.tls_failed_eof),
        ("proxy_header", &stats.tls_failed_proxy_header),
        ("proxy_untrusted", &stats.tls_failed_proxy_untrusted),
    ] {
        let _ = writeln!(
            out,
            "{name}{{reason=\"{reason}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
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
    render_tls(&mut out, stats);
    type Gauge = (&'static str, &'static str, fn(&WorkerGauges) -> u64);
    let gauges: [Gauge; 3] = [
        ("wsgate_connections", "open connections", |w| {
            w.connections.load(Ordering::Relaxed)
        }),
        (
            "wsgate_tls_connections",
            "open TLS connections whose handshake finished",
            |w| w.tls_connections.load(Ordering::Relaxed),
        ),
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
    render_histogram(
        &stats.publish_to_write,
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

/// `GET /api/stats`: the totals, the broker's figures, and per worker its
/// connections and subscriptions.
pub fn stats_json(
    connections: usize,
    stats: &Stats,
    workers: &[WorkerGauges],
    broker: &crate::broker::BrokerStats,
    webhooks: serde_json::Value,
) -> serde_json::Value {
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let per_worker: Vec<_> = workers
        .iter()
        .map(|w| {
            serde_json::json!({
                "connections": l(&w.connections),
                "subscriptions": l(&w.subscriptions),
            })
        })
        .collect();
    serde_json::json!({
        "connections": connections,
        "subscriptions": workers.iter().map(|w| l(&w.subscriptions)).sum::<u64>(),
        "messages_in": l(&stats.messages_in),
        "messages_out": l(&stats.messages_out),
        "bytes_in": l(&stats.bytes_in),
        "bytes_out": l(&stats.bytes_out),
        "deliveries": l(&stats.deliveries),
        "dropped": l(&stats.dropped),
        "slow_consumer_closes": l(&stats.slow_consumer_closes),
        "broker": broker,
        "webhooks": webhooks,
        "workers": per_worker,
    })
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
        render_histogram(&h, &mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.0001\"} 1\n"));
        assert!(s.contains("x_bucket{le=\"0.0025\"} 2\n"));
        assert!(s.contains("x_bucket{le=\"2.5\"} 2\n"));
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"));
        assert!(s.contains("x_count 3\n"));
        assert_eq!(h.count(), 3);
    }
}
