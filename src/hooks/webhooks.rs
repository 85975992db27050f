//! Webhooks: events the gateway POSTs to the application (a channel became
//! occupied or vacated, a member joined or left, a client disconnected or
//! published, a user came online or went offline), batched, signed and
//! retried, on a thread of their own.
//!
//! ```text
//! workers, broker ──emit(Event)──▶ bounded queue ──▶ webhook thread
//!   (never blocks: full → dropped,   (queue_size)      batch: up to batch_max events,
//!    counted, logged)                                  batch_delay after the first
//!                                                      POST {"time_ms","events":[…]}
//!                                                      X-Wsgate-Signature: hex HMAC-SHA256
//!                                                      not 2xx → the same bytes again after
//!                                                      a backoff (exponential, full jitter)
//! ```
//!
//! - **At least once**: a batch is sent again, byte for byte, until the
//!   backend answers 2xx, while the process runs ([`Webhooks::stop`] keeps
//!   trying for a grace period, then counts what is left as lost). Each
//!   event has an `id` unique across restarts (a random prefix per
//!   process, then a sequence number), so the backend drops repeats.
//! - **In order**: one batch at a time; events of a later batch are sent
//!   only after every earlier one was accepted.
//! - **Bounded**: at most `queue_size` events wait (plus the batch in
//!   flight); beyond, [`Webhooks::emit`] drops the new event, counts it and
//!   logs (at most one line a second).
//! - **Signed**: `X-Wsgate-Signature` is the lowercase hex HMAC-SHA256 of
//!   the body under `webhooks.secret` (like Pusher's `X-Pusher-Signature`).
//!   The body carries the batch's `time_ms`, so a backend can also refuse
//!   old replays.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::value::RawValue;
use sha2::Sha256;

use super::client::{agent, post, Failure, FailureCounts, Histogram, LogLimiter};
pub use super::config::EventKind;
use super::config::WebhooksConfig;
use super::proxy::Json;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "X-Wsgate-Signature";
/// Most bytes of a webhook answer read (and ignored).
const MAX_ANSWER: u64 = 64 << 10;

/// One event, as given to [`Webhooks::emit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub channel: Option<String>,
    pub user: Option<String>,
    pub client: Option<String>,
    /// `client_event`: what the client published.
    pub data: Option<Json>,
    /// `client_disconnected`: the close code.
    pub code: Option<u16>,
    /// `client_disconnected`: the close frame's reason, when it had one.
    pub reason: Option<String>,
}

impl Event {
    fn new(kind: EventKind) -> Event {
        Event {
            kind,
            channel: None,
            user: None,
            client: None,
            data: None,
            code: None,
            reason: None,
        }
    }

    /// `channel_occupied` or `channel_vacated`.
    pub fn channel(kind: EventKind, channel: &str) -> Event {
        Event {
            channel: Some(channel.into()),
            ..Event::new(kind)
        }
    }

    /// `member_added` or `member_removed`.
    pub fn member(kind: EventKind, channel: &str, client: &str, user: Option<&str>) -> Event {
        Event {
            channel: Some(channel.into()),
            client: Some(client.into()),
            user: user.map(Into::into),
            ..Event::new(kind)
        }
    }

    /// `client_disconnected`, with the close code sent (or seen) and its
    /// reason (`""`: none).
    pub fn disconnected(client: &str, user: Option<&str>, code: u16, reason: &str) -> Event {
        Event {
            client: Some(client.into()),
            user: user.map(Into::into),
            code: Some(code),
            reason: (!reason.is_empty()).then(|| reason.into()),
            ..Event::new(EventKind::ClientDisconnected)
        }
    }

    /// `client_event`: a client's publication.
    pub fn client_event(channel: &str, client: &str, user: Option<&str>, data: Json) -> Event {
        Event {
            channel: Some(channel.into()),
            client: Some(client.into()),
            user: user.map(Into::into),
            data: Some(data),
            ..Event::new(EventKind::ClientEvent)
        }
    }

    /// `user_online` or `user_offline`.
    pub fn user(kind: EventKind, user: &str) -> Event {
        Event {
            user: Some(user.into()),
            ..Event::new(kind)
        }
    }
}

/// An event as sent.
#[derive(Serialize)]
struct Wire<'a> {
    id: String,
    name: &'static str,
    time_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[derive(Serialize)]
struct Batch<'a> {
    time_ms: u64,
    events: Vec<Wire<'a>>,
}

/// The counters, read with [`Webhooks::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Events queued.
    pub emitted: u64,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    /// Events the backend accepted.
    pub delivered: u64,
    /// Batches the backend accepted.
    pub batches: u64,
    /// POSTs made (retries included).
    pub attempts: u64,
    /// POSTs that failed, by kind.
    pub failures: FailureCounts,
    /// Events given up at [`Webhooks::stop`].
    pub lost: u64,
    /// Events waiting now.
    pub queued: u64,
    /// Duration of each accepted POST.
    pub latency: Histogram,
}

/// The signature of `body` under `key`: lowercase hex HMAC-SHA256.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length (RFC 2104): this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(tag.len() * 2);
    for b in tag {
        hex.push(char::from(b"0123456789abcdef"[(b >> 4) as usize]));
        hex.push(char::from(b"0123456789abcdef"[(b & 15) as usize]));
    }
    hex
}

/// Delays for retries: exponential caps from `min` to `max`, each delay
/// random below its cap ("full jitter").
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            attempt: 0,
            rng: random_u64() | 1,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The cap of the next delay (doubling from `min`, at most `max`).
    pub fn cap(&self) -> Duration {
        self.min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max)
    }

    pub fn next_delay(&mut self) -> Duration {
        let cap = self.cap();
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        cap.mul_f64((r >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// 64 random bits (the standard library's per-process hash keys, from the
/// OS, mixed with the clock).
fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Queued {
    event: Event,
    seq: u64,
    time_ms: u64,
}

struct Queue {
    events: VecDeque<Queued>,
    seq: u64,
    /// Set by [`Webhooks::stop`]: deliver what is queued until then.
    stop_at: Option<Instant>,
}

struct Settings {
    url: String,
    key: Vec<u8>,
    timeout: Duration,
    batch_max: usize,
    batch_delay: Duration,
    queue_size: usize,
    retry_min: Duration,
    retry_max: Duration,
}

struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
    enabled: Vec<EventKind>,
    settings: Settings,
    /// Ids are `<prefix>-<seq>`: the prefix is random per process.
    prefix: String,
    stats: Mutex<WebhookStats>,
    log: LogLimiter,
    drops_logged: Mutex<Option<Instant>>,
}

/// The webhook sender of a node. `emit` may be called from any thread.
pub struct Webhooks {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Webhooks {
    /// Start the sender thread (`cfg.url` must be set and `cfg` valid).
    pub fn start(cfg: &WebhooksConfig) -> Result<Webhooks, String> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                events: VecDeque::new(),
                seq: 0,
                stop_at: None,
            }),
            changed: Condvar::new(),
            enabled: cfg.events.clone(),
            settings: Settings {
                url: cfg.url.clone(),
                key: cfg.key()?,
                timeout: Duration::from_millis(cfg.timeout.0),
                batch_max: cfg.batch_max.max(1),
                batch_delay: Duration::from_millis(cfg.batch_delay.0),
                queue_size: cfg.queue_size,
                retry_min: Duration::from_millis(cfg.retry_min.0.max(1)),
                retry_max: Duration::from_millis(cfg.retry_max.0.max(1)),
            },
            prefix: format!("{:016x}", random_u64()),
            stats: Mutex::new(WebhookStats::default()),
            log: LogLimiter::new("webhook POST failed (will retry)"),
            drops_logged: Mutex::new(None),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("wsgate-webhooks".into())
            .spawn(move || run(&s))
            .map_err(|e| format!("cannot start the webhook thread: {e}"))?;
        Ok(Webhooks {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Is this kind of event sent? (Check before building an event.)
    pub fn wants(&self, kind: EventKind) -> bool {
        self.shared.enabled.contains(&kind)
    }

    /// Queue an event; never blocks. `false` when it is not sent: a kind
    /// not configured, the queue full (counted in `dropped`, logged), or
    /// the sender stopping.
    pub fn emit(&self, event: Event) -> bool {
        if !self.wants(event.kind) {
            return false;
        }
        let s = &self.shared;
        let wake = {
            let mut q = lock(&s.queue);
            if q.stop_at.is_some() {
                return false;
            }
            if q.events.len() >= s.settings.queue_size {
                drop(q);
                lock(&s.stats).dropped += 1;
                let mut last = lock(&s.drops_logged);
                if last.is_none_or(|t| t.elapsed() >= LogLimiter::EVERY) {
                    *last = Some(Instant::now());
                    log::error!(
                        "webhook queue full ({} events): dropping events (see dropped in the webhook counters)",
                        s.settings.queue_size
                    );
                }
                return false;
            }
            q.seq += 1;
            let seq = q.seq;
            q.events.push_back(Queued {
                event,
                seq,
                time_ms: now_ms(),
            });
            q.events.len() == 1
        };
        lock(&s.stats).emitted += 1;
        if wake {
            s.changed.notify_all();
        }
        true
    }

    pub fn stats(&self) -> WebhookStats {
        let mut st = lock(&self.shared.stats).clone();
        st.queued = lock(&self.shared.queue).events.len() as u64;
        st
    }

    /// Stop taking events; keep delivering those queued for up to `grace`
    /// (retries included), then count the rest as lost and join the thread.
    pub fn stop(&self, grace: Duration) {
        {
            let mut q = lock(&self.shared.queue);
            if q.stop_at.is_none() {
                q.stop_at = Some(Instant::now() + grace);
            }
        }
        self.shared.changed.notify_all();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sender thread.
fn run(s: &Shared) {
    let agent = agent(1);
    let mut backoff = Backoff::new(s.settings.retry_min, s.settings.retry_max);
    while let Some(batch) = next_batch(s) {
        let body = encode(s, &batch);
        let sig = sign(&s.settings.key, &body);
        let headers = [(SIGNATURE_HEADER.to_owned(), sig)];
        loop {
            let t0 = Instant::now();
            let r = post(
                &agent,
                &s.settings.url,
                &headers,
                &body,
                s.settings.timeout,
                MAX_ANSWER,
            )
            .and_then(|(status, _)| match status {
                200..=299 => Ok(()),
                s => Err(Failure::Status(s)),
            });
            let mut st = lock(&s.stats);
            st.attempts += 1;
            match r {
                Ok(()) => {
                    st.delivered += batch.len() as u64;
                    st.batches += 1;
                    st.latency.record(t0.elapsed());
                    backoff.reset();
                    break;
                }
                Err(f) => {
                    st.failures.count(&f);
                    drop(st);
                    s.log.failure(&f);
                    let delay = backoff.next_delay();
                    if !wait_unless_stopped(s, delay) {
                        give_up(s, batch.len());
                        return;
                    }
                }
            }
        }
    }
}

/// Sleep `delay` (or less, when the stop deadline comes first); `false`
/// when the stop deadline has passed.
fn wait_unless_stopped(s: &Shared, delay: Duration) -> bool {
    let end = Instant::now() + delay;
    let mut q = lock(&s.queue);
    loop {
        let now = Instant::now();
        if q.stop_at.is_some_and(|t| now >= t) {
            return false;
        }
        let until = match q.stop_at {
            Some(t) => end.min(t),
            None => end,
        };
        if now >= until {
            return q.stop_at.is_none_or(|t| now < t);
        }
        q = s
            .changed
            .wait_timeout(q, until - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Count the batch in flight and everything queued as lost.
fn give_up(s: &Shared, in_flight: usize) {
    let left = {
        let mut q = lock(&s.queue);
        let n = q.events.len();
        q.events.clear();
        n
    };
    let lost = (left + in_flight) as u64;
    lock(&s.stats).lost += lost;
    if lost > 0 {
        log::error!("webhooks stopping: {lost} events not delivered");
    }
}

/// The next batch: wait for an event, then up to `batch_delay` for more
/// (not while stopping), and take up to `batch_max`. `None`: stopped with
/// nothing left, or the stop deadline passed (the rest counted lost).
fn next_batch(s: &Shared) -> Option<Vec<Queued>> {
    let mut q = lock(&s.queue);
    loop {
        if let Some(t) = q.stop_at {
            if q.events.is_empty() {
                return None;
            }
            if Instant::now() >= t {
                drop(q);
                give_up(s, 0);
                return None;
            }
            break;
        }
        if !q.events.is_empty() {
            let end = Instant::now() + s.settings.batch_delay;
            while q.events.len() < s.settings.batch_max && q.stop_at.is_none() {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                q = s
                    .changed
                    .wait_timeout(q, end - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            break;
        }
        q = s.changed.wait(q).unwrap_or_else(|e| e.into_inner());
    }
    let n = q.events.len().min(s.settings.batch_max);
    Some(q.events.drain(..n).collect())
}

fn encode(s: &Shared, batch: &[Queued]) -> Vec<u8> {
    let events = batch
        .iter()
        .map(|q| Wire {
            id: format!("{}-{}", s.prefix, q.seq),
            name: q.event.kind.name(),
            time_ms: q.time_ms,
            channel: q.event.channel.as_deref(),
            user_id: q.event.user.as_deref(),
            client_id: q.event.client.as_deref(),
            data: q.event.data.as_ref().map(|j| &*j.0),
            code: q.event.code,
            reason: q.event.reason.as_deref(),
        })
        .collect();
    // Strings, numbers and raw JSON: serializing cannot fail.
    serde_json::to_vec(&Batch {
        time_ms: now_ms(),
        events,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231, test case 2.
    #[test]
    fn signature_is_hex_hmac_sha256() {
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_full_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let mut caps = Vec::new();
        for _ in 0..6 {
            let cap = b.cap();
            let d = b.next_delay();
            assert!(d <= cap, "{d:?} <= {cap:?}");
            caps.push(cap.as_millis());
        }
        assert_eq!(caps, [100, 200, 400, 800, 1000, 1000]);
        // Jitter: not the same delay every time.
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let ds: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert!(ds.iter().any(|d| *d != ds[0]), "{ds:?}");
        b.reset();
        assert_eq!(b.cap(), Duration::from_secs(1));
    }

    #[test]
    fn events_encode_with_ids_and_only_their_fields() {
        let cfg = WebhooksConfig {
            url: "http://127.0.0.1:9/".into(),
            secret: "0123456789abcdef".into(),
            events: vec![EventKind::ChannelOccupied, EventKind::ClientEvent],
            ..WebhooksConfig::default()
        };
        let w = Webhooks::start(&cfg).unwrap();
        assert!(
            !w.emit(Event::user(EventKind::UserOnline, "ann")),
            "not configured"
        );
        let batch = [
            Queued {
                event: Event::channel(EventKind::ChannelOccupied, "chat"),
                seq: 7,
                time_ms: 1,
            },
            Queued {
                event: Event::client_event(
                    "chat",
                    "c1",
                    Some("ann"),
                    Json::parse(r#"{"t":"hi"}"#).unwrap(),
                ),
                seq: 8,
                time_ms: 2,
            },
        ];
        let v: serde_json::Value = serde_json::from_slice(&encode(&w.shared, &batch)).unwrap();
        let p = &w.shared.prefix;
        assert_eq!(
            v["events"],
            serde_json::json!([
                {"id": format!("{p}-7"), "name": "channel_occupied", "time_ms": 1, "channel": "chat"},
                {"id": format!("{p}-8"), "name": "client_event", "time_ms": 2, "channel": "chat",
                 "user_id": "ann", "client_id": "c1", "data": {"t": "hi"}},
            ])
        );
        assert!(v["time_ms"].as_u64().unwrap() > 1_600_000_000_000);
        w.stop(Duration::ZERO);
        assert!(
            !w.emit(Event::channel(EventKind::ChannelOccupied, "x")),
            "stopped"
        );
    }
}
