//! Results of a run: what each mode counts, how the results of child
//! processes merge (counts add up, histograms merge bucket by bucket), and
//! how they are shown (human text, or one JSON object for scripts).
//!
//! Latency histograms travel between processes in HdrHistogram's V2 format,
//! base64-encoded inside the JSON line; the parent adds them together, so the
//! merged percentiles are those of all samples, not averages of percentiles.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Results that add up across child processes.
pub trait Merge {
    /// Add another process's results to these.
    fn merge(&mut self, other: Self);
    /// A child process died without results: its `conns` connections count
    /// as failed.
    fn child_failed(&mut self, conns: u64, why: &str);
}

/// A latency histogram in microseconds (1 µs to 10 min, 3 significant
/// digits), serialized as base64 of HdrHistogram's V2 format.
#[derive(Debug, Clone)]
pub struct Latency(pub Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency(Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"))
    }
}

impl Latency {
    /// Record one sample.
    pub fn record(&mut self, d: std::time::Duration) {
        self.0.saturating_record((d.as_micros() as u64).max(1));
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// Add another histogram's samples (an error only if bounds differ,
    /// which they never do here; then the samples are re-recorded).
    pub fn merge(&mut self, other: &Latency) {
        if self.0.add(&other.0).is_err() {
            for v in other.0.iter_recorded() {
                let _ = self.0.record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// Percentiles in microseconds, as JSON.
    pub fn summary(&self) -> Value {
        let h = &self.0;
        if h.is_empty() {
            return json!({ "count": 0 });
        }
        json!({
            "count": h.len(),
            "p50": h.value_at_quantile(0.50),
            "p90": h.value_at_quantile(0.90),
            "p99": h.value_at_quantile(0.99),
            "p99_9": h.value_at_quantile(0.999),
            "max": h.max(),
            "mean": (h.mean() * 10.0).round() / 10.0,
        })
    }

    /// "p50 123 µs, p90 …" for humans.
    pub fn human(&self) -> String {
        let h = &self.0;
        if h.is_empty() {
            return "no samples".to_string();
        }
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}, {} samples)",
            us(h.value_at_quantile(0.50)),
            us(h.value_at_quantile(0.90)),
            us(h.value_at_quantile(0.99)),
            us(h.value_at_quantile(0.999)),
            us(h.max()),
            us(h.mean().round() as u64),
            h.len()
        )
    }
}

/// Microseconds, shown as µs below 10 ms and as ms above.
fn us(v: u64) -> String {
    if v < 10_000 {
        format!("{v} µs")
    } else {
        format!("{:.1} ms", v as f64 / 1000.0)
    }
}

impl Serialize for Latency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = Vec::new();
        V2Serializer::new()
            .serialize(&self.0, &mut buf)
            .map_err(|e| serde::ser::Error::custom(format!("histogram: {e:?}")))?;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(buf))
    }
}

impl<'de> Deserialize<'de> for Latency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut &bytes[..])
            .map_err(|e| serde::de::Error::custom(format!("histogram: {e:?}")))?;
        Ok(Latency(h))
    }
}

/// How opening connections went, and connections lost after opening.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpenStats {
    /// Connections asked for.
    pub requested: u64,
    /// Upgraded (101 received and checked).
    pub opened: u64,
    /// Connect or handshake failed (or timed out).
    pub failed: u64,
    /// Why, with counts.
    pub failures: BTreeMap<String, u64>,
    /// Opened, then ended without a close handshake (EOF, reset, protocol
    /// error, no close reply).
    pub lost: u64,
    /// Why, with counts.
    pub losses: BTreeMap<String, u64>,
    /// Connection attempts whose request offered permessage-deflate.
    #[serde(default)]
    pub deflate_offered: u64,
    /// Connections that opened with permessage-deflate agreed (0 when the
    /// server declined every offer).
    #[serde(default)]
    pub deflate_negotiated: u64,
    /// Bytes on the wire, and what compression did.
    #[serde(default)]
    pub wire: WireStats,
}

/// Bytes through the sockets of a fleet, and its compressed messages: with
/// permessage-deflate on, the wire carries fewer bytes than the messages.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct WireStats {
    /// Bytes read from and written to the sockets (handshakes included).
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Messages sent compressed (RSV1), their bytes before and after
    /// deflate.
    pub deflated_msgs: u64,
    pub deflate_in_bytes: u64,
    pub deflate_out_bytes: u64,
    /// Messages received compressed, and their bytes once inflated.
    pub inflated_msgs: u64,
    pub inflated_bytes: u64,
}

impl WireStats {
    fn merge(&mut self, o: WireStats) {
        self.bytes_read += o.bytes_read;
        self.bytes_written += o.bytes_written;
        self.deflated_msgs += o.deflated_msgs;
        self.deflate_in_bytes += o.deflate_in_bytes;
        self.deflate_out_bytes += o.deflate_out_bytes;
        self.inflated_msgs += o.inflated_msgs;
        self.inflated_bytes += o.inflated_bytes;
    }
}

impl OpenStats {
    pub fn merge(&mut self, o: OpenStats) {
        self.requested += o.requested;
        self.opened += o.opened;
        self.failed += o.failed;
        self.lost += o.lost;
        add_map(&mut self.failures, o.failures);
        add_map(&mut self.losses, o.losses);
        self.deflate_offered += o.deflate_offered;
        self.deflate_negotiated += o.deflate_negotiated;
        self.wire.merge(o.wire);
    }

    fn child_failed(&mut self, conns: u64, why: &str) {
        self.requested += conns;
        self.failed += conns;
        *self.failures.entry(why.to_string()).or_default() += conns;
    }

    fn human(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "connections: {} requested, {} opened, {} failed, {} lost after opening",
            self.requested, self.opened, self.failed, self.lost
        );
        for (why, n) in &self.failures {
            let _ = writeln!(out, "  failed {n:>7}  {why}");
        }
        for (why, n) in &self.losses {
            let _ = writeln!(out, "  lost   {n:>7}  {why}");
        }
        if self.deflate_offered > 0 || self.deflate_negotiated > 0 {
            let w = &self.wire;
            let _ = writeln!(
                out,
                "permessage-deflate: offered on {}, agreed on {} of {} opened; \
                 {} messages sent compressed ({} B -> {} B), {} received compressed ({} B inflated)",
                self.deflate_offered,
                self.deflate_negotiated,
                self.opened,
                w.deflated_msgs,
                w.deflate_in_bytes,
                w.deflate_out_bytes,
                w.inflated_msgs,
                w.inflated_bytes
            );
            let _ = writeln!(
                out,
                "wire: {} B read, {} B written (handshakes included)",
                w.bytes_read, w.bytes_written
            );
        }
    }

    fn json(&self) -> Value {
        json!({
            "requested": self.requested,
            "opened": self.opened,
            "failed": self.failed,
            "failures": self.failures,
            "lost": self.lost,
            "losses": self.losses,
            "deflate_offered": self.deflate_offered,
            "deflate_negotiated": self.deflate_negotiated,
            "wire": self.wire,
        })
    }
}

fn add_map<K: Ord>(into: &mut BTreeMap<K, u64>, from: BTreeMap<K, u64>) {
    for (k, v) in from {
        *into.entry(k).or_default() += v;
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn rate(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        (count as f64 / secs * 10.0).round() / 10.0
    } else {
        0.0
    }
}

/// Results of `echo`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EchoStats {
    pub open: OpenStats,
    /// Message size and type.
    pub size: usize,
    pub text: bool,
    /// Messages sent and echoes received over the whole run (warm-up
    /// included).
    pub sent: u64,
    pub echoed: u64,
    /// Messages sent whose echo never came (connection lost, or still in
    /// flight when the drain after the run gave up).
    pub unanswered: u64,
    /// Echoes that differ from what was sent.
    pub mismatched: u64,
    /// Messages received while none was outstanding.
    pub unexpected: u64,
    /// The measured window (after warm-up) and the echoes received in it.
    pub window_secs: f64,
    pub window_echoed: u64,
    /// Send-to-echo latency of the echoes received in the window.
    pub latency: Latency,
}

impl EchoStats {
    /// Echoes per second over the measured window. Every process measures
    /// a window of the same length, so the sum of counts over it is right.
    pub fn msgs_per_sec(&self) -> f64 {
        rate(self.window_echoed, self.window_secs)
    }

    /// Errors users should see: lost connections, bad or stray echoes.
    pub fn errors(&self) -> u64 {
        self.open.lost + self.mismatched + self.unexpected
    }

    /// Did anything work?
    pub fn succeeded(&self) -> bool {
        self.echoed > 0
    }

    pub fn human(&self) -> String {
        let mut s = String::new();
        let kind = if self.text { "text" } else { "binary" };
        let _ = writeln!(
            s,
            "echo: {} B {kind} messages, one in flight per connection",
            self.size
        );
        self.open.human(&mut s);
        let _ = writeln!(
            s,
            "messages: {} sent, {} echoed, {} unanswered, {} mismatched, {} unexpected",
            self.sent, self.echoed, self.unanswered, self.mismatched, self.unexpected
        );
        let _ = writeln!(
            s,
            "window: {:.1} s, {} echoes, {} msgs/s",
            self.window_secs,
            self.window_echoed,
            self.msgs_per_sec()
        );
        let _ = writeln!(s, "latency: {}", self.latency.human());
        s
    }

    pub fn json(&self) -> Value {
        json!({
            "mode": "echo",
            "connections": self.open.json(),
            "size": self.size,
            "text": self.text,
            "sent": self.sent,
            "echoed": self.echoed,
            "unanswered": self.unanswered,
            "mismatched": self.mismatched,
            "unexpected": self.unexpected,
            "window_secs": round3(self.window_secs),
            "window_echoed": self.window_echoed,
            "msgs_per_sec": self.msgs_per_sec(),
            "latency_us": self.latency.summary(),
        })
    }
}

impl Merge for EchoStats {
    fn merge(&mut self, o: EchoStats) {
        self.open.merge(o.open);
        self.size = self.size.max(o.size);
        self.text |= o.text;
        self.sent += o.sent;
        self.echoed += o.echoed;
        self.unanswered += o.unanswered;
        self.mismatched += o.mismatched;
        self.unexpected += o.unexpected;
        self.window_secs = self.window_secs.max(o.window_secs);
        self.window_echoed += o.window_echoed;
        self.latency.merge(&o.latency);
    }

    fn child_failed(&mut self, conns: u64, why: &str) {
        self.open.child_failed(conns, why);
    }
}

/// Results of `hold`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HoldStats {
    pub open: OpenStats,
    /// How long the connections were held once open.
    pub hold_secs: f64,
    /// Connections still open when the hold ended.
    pub still_open: u64,
    /// Pings from the server, each answered with a pong.
    pub pings_answered: u64,
    /// Close frames the server started (not replies to ours).
    pub closes_received: u64,
    /// The message each connection sent once open (0: none), how many
    /// went out, and how many came back as sent.
    #[serde(default)]
    pub hello_size: usize,
    #[serde(default)]
    pub hellos_sent: u64,
    #[serde(default)]
    pub hellos_echoed: u64,
}

impl HoldStats {
    pub fn succeeded(&self) -> bool {
        self.open.opened > 0
    }

    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "hold: {:.1} s", self.hold_secs);
        self.open.human(&mut s);
        let _ = writeln!(
            s,
            "at the end: {} still open; {} pings answered, {} closes received from the server",
            self.still_open, self.pings_answered, self.closes_received
        );
        if self.hello_size > 0 {
            let _ = writeln!(
                s,
                "hello: {} B text, {} sent, {} echoed",
                self.hello_size, self.hellos_sent, self.hellos_echoed
            );
        }
        s
    }

    pub fn json(&self) -> Value {
        json!({
            "mode": "hold",
            "connections": self.open.json(),
            "hold_secs": round3(self.hold_secs),
            "still_open": self.still_open,
            "pings_answered": self.pings_answered,
            "closes_received": self.closes_received,
            "hello_size": self.hello_size,
            "hellos_sent": self.hellos_sent,
            "hellos_echoed": self.hellos_echoed,
        })
    }
}

impl Merge for HoldStats {
    fn merge(&mut self, o: HoldStats) {
        self.open.merge(o.open);
        self.hold_secs = self.hold_secs.max(o.hold_secs);
        self.still_open += o.still_open;
        self.pings_answered += o.pings_answered;
        self.closes_received += o.closes_received;
        self.hello_size = self.hello_size.max(o.hello_size);
        self.hellos_sent += o.hellos_sent;
        self.hellos_echoed += o.hellos_echoed;
    }

    fn child_failed(&mut self, conns: u64, why: &str) {
        self.open.child_failed(conns, why);
    }
}

/// Results of `churn`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChurnStats {
    /// `open.requested` is the number of attempts; `open.opened` the upgrades.
    pub open: OpenStats,
    /// Connections in progress at once.
    pub concurrency: u64,
    pub duration_secs: f64,
    /// Connections whose close handshake completed.
    pub closed_clean: u64,
    /// Connect start to checked 101.
    pub handshake: Latency,
}

impl ChurnStats {
    pub fn upgrades_per_sec(&self) -> f64 {
        rate(self.open.opened, self.duration_secs)
    }

    pub fn succeeded(&self) -> bool {
        self.open.opened > 0
    }

    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "churn: {} concurrent, {:.1} s (connect, upgrade, close)",
            self.concurrency, self.duration_secs
        );
        self.open.human(&mut s);
        let _ = writeln!(
            s,
            "upgrades: {} ({} /s), {} closed cleanly",
            self.open.opened,
            self.upgrades_per_sec(),
            self.closed_clean
        );
        let _ = writeln!(s, "handshake latency: {}", self.handshake.human());
        s
    }

    pub fn json(&self) -> Value {
        json!({
            "mode": "churn",
            "connections": self.open.json(),
            "concurrency": self.concurrency,
            "duration_secs": round3(self.duration_secs),
            "upgrades": self.open.opened,
            "upgrades_per_sec": self.upgrades_per_sec(),
            "failures": self.open.failed,
            "closed_clean": self.closed_clean,
            "handshake_us": self.handshake.summary(),
        })
    }
}

impl Merge for ChurnStats {
    fn merge(&mut self, o: ChurnStats) {
        self.open.merge(o.open);
        self.concurrency += o.concurrency;
        self.duration_secs = self.duration_secs.max(o.duration_secs);
        self.closed_clean += o.closed_clean;
        self.handshake.merge(&o.handshake);
    }

    fn child_failed(&mut self, conns: u64, why: &str) {
        self.open.child_failed(conns, why);
    }
}

/// What the gateway process spent in the measured window of `sub`: CPU
/// time (utime + stime from `/proc/PID/stat`) and the deliveries it counted
/// (`/api/stats`), both sampled at the window's start and end.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerUsage {
    pub pid: u32,
    /// Wall time between the two samples.
    pub secs: f64,
    /// CPU time of the process (all threads) between the samples.
    pub cpu_secs: f64,
    /// Deliveries the gateway counted between the samples.
    pub deliveries: u64,
    /// Time its threads were runnable but waiting for a CPU (the second
    /// field of `/proc/PID/task/*/schedstat`): how much other processes on
    /// its core held it back.
    #[serde(default)]
    pub wait_secs: f64,
}

impl ServerUsage {
    /// Microseconds of server CPU per delivery.
    pub fn us_per_delivery(&self) -> f64 {
        if self.deliveries == 0 {
            return 0.0;
        }
        round3(self.cpu_secs * 1e6 / self.deliveries as f64)
    }

    /// Deliveries per second of server CPU: deliveries per second per core
    /// if that core did nothing else.
    pub fn per_core_sec(&self) -> f64 {
        rate(self.deliveries, self.cpu_secs)
    }

    /// The share of one core the process used.
    pub fn utilization(&self) -> f64 {
        if self.secs > 0.0 {
            round3(self.cpu_secs / self.secs)
        } else {
            0.0
        }
    }
}

/// The publishing side of `sub` (only the process that publishes fills it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PublishStats {
    /// Keep-alive HTTP connections, each with one request in flight.
    pub publishers: u64,
    /// Publications per request.
    pub batch: u64,
    /// Bytes of each publication's `data`.
    pub size: u64,
    /// Target publications per second (0: as fast as allowed).
    pub rate: f64,
    /// The most publications a subscriber may be behind on average before
    /// publishing waits (0: no limit).
    pub max_lag: u64,
    /// `POST /api/publish` requests answered 200, and those that failed.
    pub requests: u64,
    pub failed_requests: u64,
    /// Publications accepted (an offset came back), and refused.
    pub published: u64,
    pub rejected: u64,
    /// Accepted publications stamped inside the measured window.
    pub window_published: u64,
    /// Time the publishers waited for the subscribers (max lag), summed.
    pub lag_wait_secs: f64,
    /// Why requests failed, with counts.
    pub errors: BTreeMap<String, u64>,
    /// The gateway's CPU and deliveries over the window (`--server-pid`).
    pub server: Option<ServerUsage>,
}

impl PublishStats {
    pub fn merge(&mut self, o: PublishStats) {
        self.publishers += o.publishers;
        self.batch = self.batch.max(o.batch);
        self.size = self.size.max(o.size);
        self.rate += o.rate;
        self.max_lag = self.max_lag.max(o.max_lag);
        self.requests += o.requests;
        self.failed_requests += o.failed_requests;
        self.published += o.published;
        self.rejected += o.rejected;
        self.window_published += o.window_published;
        self.lag_wait_secs += o.lag_wait_secs;
        add_map(&mut self.errors, o.errors);
        if self.server.is_none() {
            self.server = o.server;
        }
    }
}

/// Results of `sub`: subscribers' counts (added up over processes) and the
/// publisher's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubStats {
    pub open: OpenStats,
    /// Channels the subscribers are spread over.
    pub channels: u64,
    /// Subscriptions confirmed, and refused.
    pub subscribed: u64,
    pub refused: u64,
    /// Publications received (duplicates not counted), and those owed:
    /// for every confirmed subscriber, the publications accepted on its
    /// channel.
    pub received: u64,
    pub expected: u64,
    /// The same, for publications stamped inside the measured window.
    pub window_received: u64,
    pub window_expected: u64,
    /// Offset jumps (per connection), and the publications they skipped.
    pub gaps: u64,
    pub missing: u64,
    /// Publications received again (offset not above the last one).
    pub duplicates: u64,
    /// Messages that are neither a publication of the connection's channel
    /// nor a reply it expects.
    pub unexpected: u64,
    /// Slow-consumer drop notices (policy `drop`).
    pub drop_notices: u64,
    /// Subscribed connections that ended before the run closed them.
    pub disconnects: u64,
    /// Close codes the server sent (4001: slow consumer), with counts.
    pub close_codes: BTreeMap<u16, u64>,
    /// CPU time of the subscriber loops over the window, and the time they
    /// were runnable but waiting for a CPU (`/proc/thread-self/schedstat`),
    /// summed over processes.
    #[serde(default)]
    pub load_cpu_secs: f64,
    #[serde(default)]
    pub load_wait_secs: f64,
    /// The measured window.
    pub window_secs: f64,
    /// Publish (timestamp in the payload) to receive, for publications
    /// stamped inside the window.
    pub latency: Latency,
    pub publish: PublishStats,
}

impl SubStats {
    /// Deliveries received per second over the window.
    pub fn deliveries_per_sec(&self) -> f64 {
        rate(self.window_received, self.window_secs)
    }

    /// Publications accepted per second over the window.
    pub fn publications_per_sec(&self) -> f64 {
        rate(self.publish.window_published, self.window_secs)
    }

    /// Anything a correct run must not have: gaps, duplicates, stray
    /// messages, refused subscriptions, disconnects, lost connections.
    pub fn errors(&self) -> u64 {
        self.gaps + self.duplicates + self.unexpected + self.refused + self.disconnects
    }

    pub fn succeeded(&self) -> bool {
        self.received > 0
    }

    pub fn human(&self) -> String {
        let mut s = String::new();
        let p = &self.publish;
        let pace = if p.rate > 0.0 {
            format!("paced at {} publications/s", p.rate)
        } else {
            "as fast as allowed".to_string()
        };
        let _ = writeln!(
            s,
            "sub: {} subscribers on {} channel(s); {} B publications, {} per request over {} connection(s), {pace} (max lag {})",
            self.open.requested, self.channels, p.size, p.batch, p.publishers, p.max_lag
        );
        self.open.human(&mut s);
        let _ = writeln!(
            s,
            "subscriptions: {} confirmed, {} refused",
            self.subscribed, self.refused
        );
        let _ = writeln!(
            s,
            "publications: {} accepted, {} refused, {} requests ({} failed)",
            p.published, p.rejected, p.requests, p.failed_requests
        );
        for (why, n) in &p.errors {
            let _ = writeln!(s, "  failed {n:>7}  {why}");
        }
        let _ = writeln!(
            s,
            "deliveries: {} received of {} expected; gaps {} ({} missing), duplicates {}, unexpected {}, drop notices {}, disconnects {}",
            self.received,
            self.expected,
            self.gaps,
            self.missing,
            self.duplicates,
            self.unexpected,
            self.drop_notices,
            self.disconnects
        );
        for (code, n) in &self.close_codes {
            let _ = writeln!(s, "  closed by the server with {code}: {n}");
        }
        let _ = writeln!(
            s,
            "window: {:.1} s, {} publications ({} /s), {} of {} deliveries ({} /s)",
            self.window_secs,
            p.window_published,
            self.publications_per_sec(),
            self.window_received,
            self.window_expected,
            self.deliveries_per_sec()
        );
        let _ = writeln!(s, "latency (publish to receive): {}", self.latency.human());
        if p.lag_wait_secs > 0.0 {
            let _ = writeln!(
                s,
                "publishers waited {:.2} s in all for subscribers to catch up",
                p.lag_wait_secs
            );
        }
        if let Some(u) = &p.server {
            let _ = writeln!(
                s,
                "server (pid {}): {:.2} s CPU in {:.2} s ({:.0} % of a core), {} deliveries: {} µs per delivery, {} deliveries/s per core",
                u.pid,
                u.cpu_secs,
                u.secs,
                u.utilization() * 100.0,
                u.deliveries,
                u.us_per_delivery(),
                u.per_core_sec()
            );
            let _ = writeln!(
                s,
                "  runnable but waiting for a CPU: {:.2} s (other processes on its core)",
                u.wait_secs
            );
        }
        if self.load_cpu_secs > 0.0 || self.load_wait_secs > 0.0 {
            let _ = writeln!(
                s,
                "subscriber loops over the window: {:.2} s CPU, {:.2} s runnable but waiting for a CPU",
                self.load_cpu_secs, self.load_wait_secs
            );
        }
        s
    }

    pub fn json(&self) -> Value {
        let p = &self.publish;
        let server = p.server.as_ref().map(|u| {
            json!({
                "pid": u.pid,
                "secs": round3(u.secs),
                "cpu_secs": round3(u.cpu_secs),
                "utilization": u.utilization(),
                "deliveries": u.deliveries,
                "us_per_delivery": u.us_per_delivery(),
                "deliveries_per_core_sec": u.per_core_sec(),
                "wait_secs": round3(u.wait_secs),
            })
        });
        json!({
            "mode": "sub",
            "connections": self.open.json(),
            "channels": self.channels,
            "subscribed": self.subscribed,
            "refused": self.refused,
            "publish": {
                "publishers": p.publishers,
                "batch": p.batch,
                "size": p.size,
                "rate": p.rate,
                "max_lag": p.max_lag,
                "requests": p.requests,
                "failed_requests": p.failed_requests,
                "errors": p.errors,
                "published": p.published,
                "rejected": p.rejected,
                "window_published": p.window_published,
                "lag_wait_secs": round3(p.lag_wait_secs),
            },
            "received": self.received,
            "expected": self.expected,
            "window_secs": round3(self.window_secs),
            "window_received": self.window_received,
            "window_expected": self.window_expected,
            "publications_per_sec": self.publications_per_sec(),
            "deliveries_per_sec": self.deliveries_per_sec(),
            "gaps": self.gaps,
            "missing": self.missing,
            "duplicates": self.duplicates,
            "unexpected": self.unexpected,
            "drop_notices": self.drop_notices,
            "disconnects": self.disconnects,
            "close_codes": self.close_codes,
            "load_cpu_secs": round3(self.load_cpu_secs),
            "load_wait_secs": round3(self.load_wait_secs),
            "latency_us": self.latency.summary(),
            "server": server,
        })
    }
}

impl Merge for SubStats {
    fn merge(&mut self, o: SubStats) {
        self.open.merge(o.open);
        self.channels = self.channels.max(o.channels);
        self.subscribed += o.subscribed;
        self.refused += o.refused;
        self.received += o.received;
        self.expected += o.expected;
        self.window_received += o.window_received;
        self.window_expected += o.window_expected;
        self.gaps += o.gaps;
        self.missing += o.missing;
        self.duplicates += o.duplicates;
        self.unexpected += o.unexpected;
        self.drop_notices += o.drop_notices;
        self.disconnects += o.disconnects;
        add_map(&mut self.close_codes, o.close_codes);
        self.load_cpu_secs += o.load_cpu_secs;
        self.load_wait_secs += o.load_wait_secs;
        self.window_secs = self.window_secs.max(o.window_secs);
        self.latency.merge(&o.latency);
        self.publish.merge(o.publish);
    }

    fn child_failed(&mut self, conns: u64, why: &str) {
        self.open.child_failed(conns, why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn merged_histograms_give_the_percentiles_of_all_samples() {
        // Child A: 900 fast samples; child B: 100 slow ones. Averaging the
        // children's p99 would give ~5 ms; the true p99 of all is 10 ms.
        let mut a = EchoStats::default();
        let mut b = EchoStats::default();
        for _ in 0..900 {
            a.latency.record(Duration::from_micros(100));
        }
        for _ in 0..100 {
            b.latency.record(Duration::from_micros(10_000));
        }
        a.window_echoed = 900;
        b.window_echoed = 100;
        a.window_secs = 2.0;
        b.window_secs = 2.0;
        let a: EchoStats = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        let b: EchoStats = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        let mut m = a;
        m.merge(b);
        let h = &m.latency.0;
        assert_eq!(h.len(), 1000);
        assert_eq!(h.value_at_quantile(0.5), 100);
        assert!((9_990..=10_010).contains(&h.value_at_quantile(0.99)));
        assert_eq!(m.msgs_per_sec(), 500.0);
    }

    #[test]
    fn open_stats_add_up() {
        let mut a = OpenStats {
            requested: 3,
            opened: 2,
            failed: 1,
            ..Default::default()
        };
        a.failures.insert("connect: refused".into(), 1);
        a.deflate_negotiated = 2;
        a.wire.inflated_msgs = 10;
        let mut b = a.clone();
        b.child_failed(5, "child process failed");
        // An older child's line without the deflate fields still parses.
        let old = r#"{"requested":1,"opened":1,"failed":0,"failures":{},"lost":0,"losses":{}}"#;
        let old: OpenStats = serde_json::from_str(old).unwrap();
        a.merge(old);
        a.merge(b);
        assert_eq!((a.requested, a.opened, a.failed), (12, 5, 7));
        assert_eq!((a.deflate_negotiated, a.wire.inflated_msgs), (4, 20));
        assert_eq!(a.failures["connect: refused"], 2);
        assert_eq!(a.failures["child process failed"], 5);
    }
}
