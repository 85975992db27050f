//! The backend client: HTTP/1.1 POSTs of JSON to the application, on
//! threads of their own beside the worker loops (as the Redis threads are),
//! never on a loop.
//!
//! ```text
//! worker ──submit(Job)──▶ bounded queue ──▶ N client threads (one ureq Agent each,
//!   ▲   (never blocks:      (jobs, bytes)      its keep-alive connections reused)
//!   │    full: Err at once)                      │ POST, one timeout for the whole call,
//!   │                                            │ the answer body capped
//!   └──────────── sink(Done { ctx, result }) ◀───┘ decode on this thread
//! ```
//!
//! - **Concurrency**: `concurrency` threads, so at most that many calls are
//!   in flight per node, and at most that many keep-alive connections are
//!   held to the backend.
//! - **Bounded queue**: at most `queue_size` jobs and `queue_bytes` of
//!   requests (bodies and headers) wait; beyond, [`BackendClient::submit`] gives the job
//!   back at once ([`Failure::Overloaded`]) so the caller answers on its
//!   own loop, without a round trip.
//! - **Deadline**: a job must be answered within `timeout` of its
//!   submission, queueing included: a job that waited past it is failed
//!   ([`Failure::Timeout`]) without being sent; a call gets what is left.
//! - **Outcomes**: every job submitted reaches the sink exactly once: its
//!   decoded answer or a [`Failure`] (connection refused, timeout, an HTTP
//!   status the decoder does not take, a body over `max_answer`, an answer
//!   the decoder refuses, a broken connection, the client stopping).
//! - **Counters**: each thread keeps plain [`ClientStats`] (calls, failures
//!   by kind, a latency histogram) per label; [`BackendClient::stats`] sums
//!   them when read.
//!
//! Why ureq: a blocking client needs no runtime on these threads; its
//! Agent pools keep-alive connections and probes a pooled one before reuse
//! (a backend that restarted has closed it: the call opens a new one
//! instead of failing), `timeout_global` bounds a call end to end (DNS,
//! connect, send, answer, body) and a body limit bounds memory, with
//! rustls for `https://` backends. A hand-written client would repeat all
//! of that; the calls run on their own threads, off the hot path, so
//! nothing measured asks for one.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most labels (kinds of call) a client counts separately.
pub const MAX_LABELS: usize = 8;

/// Why a call produced no usable answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The queue was full (`queue_size` jobs or `queue_bytes`): not sent.
    Overloaded,
    /// The backend could not be reached: connection refused, no route,
    /// name not resolved. Not sent.
    Connect(String),
    /// No complete answer within the timeout (queueing included).
    Timeout,
    /// The backend answered with an HTTP status the decoder does not take
    /// (5xx, an unexpected 4xx, a redirect).
    Status(u16),
    /// The answer body was over `max_answer` bytes.
    TooBig(u64),
    /// The answer was not what the protocol expects (not JSON, wrong
    /// shape, a value out of range).
    BadAnswer(String),
    /// The connection broke during the call (reset, closed early, a
    /// malformed HTTP answer).
    Io(String),
    /// The client is stopping: the job was not sent.
    Stopped,
}

impl Failure {
    /// A short name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Overloaded => "overloaded",
            Failure::Connect(_) => "connect",
            Failure::Timeout => "timeout",
            Failure::Status(_) => "status",
            Failure::TooBig(_) => "too_big",
            Failure::BadAnswer(_) => "bad_answer",
            Failure::Io(_) => "io",
            Failure::Stopped => "stopped",
        }
    }

    /// Could the backend have acted on the request? `false` when it was
    /// certainly not sent (queue full, not reachable, stopping).
    pub fn maybe_received(&self) -> bool {
        !matches!(
            self,
            Failure::Overloaded | Failure::Connect(_) | Failure::Stopped
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Overloaded => f.write_str("too many backend calls waiting"),
            Failure::Connect(e) => write!(f, "backend unreachable: {e}"),
            Failure::Timeout => f.write_str("backend did not answer in time"),
            Failure::Status(s) => write!(f, "backend answered HTTP {s}"),
            Failure::TooBig(n) => write!(f, "backend answer over {n} bytes"),
            Failure::BadAnswer(e) => write!(f, "bad backend answer: {e}"),
            Failure::Io(e) => write!(f, "backend connection failed: {e}"),
            Failure::Stopped => f.write_str("backend client stopping"),
        }
    }
}

/// Turns an HTTP answer into what the caller wants, on the client thread.
/// `status` is the HTTP status, `body` at most `max_answer` bytes.
pub type Decode<D> = fn(status: u16, body: &[u8]) -> Result<D, Failure>;

/// One call to make.
pub struct Job<C, D> {
    /// `http://host:port/path` or `https://…`.
    pub url: Arc<str>,
    /// Extra request headers (forwarded and static ones); `Content-Type:
    /// application/json` is always sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Which counters the call goes to (below [`MAX_LABELS`]).
    pub label: usize,
    pub decode: Decode<D>,
    /// The caller's: handed back with the outcome.
    pub ctx: C,
}

impl<C, D> Job<C, D> {
    /// What it holds in the queue: its body and headers.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

impl<C: fmt::Debug, D> fmt::Debug for Job<C, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("url", &self.url)
            .field("body_len", &self.body.len())
            .field("label", &self.label)
            .field("ctx", &self.ctx)
            .finish()
    }
}

/// A job's outcome, handed to the sink.
#[derive(Debug)]
pub struct Done<C, D> {
    pub ctx: C,
    pub result: Result<D, Failure>,
    /// From submission to outcome.
    pub latency: Duration,
}

/// The client's limits.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Threads, hence calls in flight and keep-alive connections.
    pub concurrency: usize,
    /// From submission to a complete answer.
    pub timeout: Duration,
    /// Most jobs waiting for a thread.
    pub queue_size: usize,
    /// Most bytes of requests (bodies and headers) waiting.
    pub queue_bytes: usize,
    /// Largest answer body read.
    pub max_answer: u64,
    /// Thread names start with this.
    pub name: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            concurrency: 16,
            timeout: Duration::from_secs(1),
            queue_size: 4096,
            queue_bytes: 64 << 20,
            max_answer: 1 << 20,
            name: "wsgate-hooks".into(),
        }
    }
}

/// Upper bounds of the latency histogram's buckets, in microseconds (the
/// last bucket, beyond them, is `+Inf`).
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Counts of calls by how long they took, Prometheus-style (each bucket
/// counts the calls at or below its bound and above the previous one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    pub buckets: [u64; LATENCY_BUCKETS_US.len() + 1],
    pub count: u64,
    pub sum_us: u64,
}

impl Histogram {
    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    fn add(&mut self, o: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *a += b;
        }
        self.count += o.count;
        self.sum_us = self.sum_us.saturating_add(o.sum_us);
    }

    /// The upper bound (µs) of the bucket holding quantile `q` (0..=1);
    /// `None` when empty or beyond the last bound.
    pub fn quantile_bound_us(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let want = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return LATENCY_BUCKETS_US.get(i).copied();
            }
        }
        None
    }
}

/// Failures counted by kind ([`Failure::kind`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailureCounts {
    pub overloaded: u64,
    pub connect: u64,
    pub timeout: u64,
    pub status: u64,
    pub too_big: u64,
    pub bad_answer: u64,
    pub io: u64,
    pub stopped: u64,
}

impl FailureCounts {
    pub fn count(&mut self, f: &Failure) {
        let c = match f {
            Failure::Overloaded => &mut self.overloaded,
            Failure::Connect(_) => &mut self.connect,
            Failure::Timeout => &mut self.timeout,
            Failure::Status(_) => &mut self.status,
            Failure::TooBig(_) => &mut self.too_big,
            Failure::BadAnswer(_) => &mut self.bad_answer,
            Failure::Io(_) => &mut self.io,
            Failure::Stopped => &mut self.stopped,
        };
        *c += 1;
    }

    pub fn total(&self) -> u64 {
        self.overloaded
            + self.connect
            + self.timeout
            + self.status
            + self.too_big
            + self.bad_answer
            + self.io
            + self.stopped
    }

    fn add(&mut self, o: &FailureCounts) {
        self.overloaded += o.overloaded;
        self.connect += o.connect;
        self.timeout += o.timeout;
        self.status += o.status;
        self.too_big += o.too_big;
        self.bad_answer += o.bad_answer;
        self.io += o.io;
        self.stopped += o.stopped;
    }
}

/// One label's counters: plain numbers, kept by each thread and summed
/// when read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Jobs submitted (refused ones included).
    pub calls: u64,
    /// Jobs whose answer the decoder took.
    pub ok: u64,
    pub failures: FailureCounts,
    /// Submission to outcome, of every job that reached a thread.
    pub latency: Histogram,
}

impl ClientStats {
    pub fn add(&mut self, o: &ClientStats) {
        self.calls += o.calls;
        self.ok += o.ok;
        self.failures.add(&o.failures);
        self.latency.add(&o.latency);
    }
}

/// Every label's counters.
pub type StatsByLabel = [ClientStats; MAX_LABELS];

struct Queued<C, D> {
    job: Job<C, D>,
    submitted: Instant,
    deadline: Instant,
}

struct State<C, D> {
    jobs: VecDeque<Queued<C, D>>,
    bytes: usize,
    stopping: bool,
}

struct Shared<C, D> {
    state: Mutex<State<C, D>>,
    ready: Condvar,
    settings: Settings,
    sink: Box<dyn Fn(Done<C, D>) + Send + Sync>,
    /// One slot per thread, plus one for refusals at submit.
    stats: Vec<Mutex<StatsByLabel>>,
    log: LogLimiter,
}

/// A pool of threads calling one backend (any URL), with a bounded queue.
pub struct BackendClient<C: Send + 'static, D: Send + 'static> {
    shared: Arc<Shared<C, D>>,
    threads: Vec<JoinHandle<()>>,
}

impl<C: Send + 'static, D: Send + 'static> BackendClient<C, D> {
    /// Start `settings.concurrency` threads; every outcome goes to `sink`,
    /// called on a client thread (it must not block for long: push to a
    /// queue and wake its owner).
    pub fn start(
        settings: Settings,
        sink: impl Fn(Done<C, D>) + Send + Sync + 'static,
    ) -> std::io::Result<BackendClient<C, D>> {
        let n = settings.concurrency.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                bytes: 0,
                stopping: false,
            }),
            ready: Condvar::new(),
            stats: (0..=n).map(|_| Mutex::new(Default::default())).collect(),
            settings,
            sink: Box::new(sink),
            log: LogLimiter::default(),
        });
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let s = shared.clone();
            let name = format!("{}-{i}", s.settings.name);
            match std::thread::Builder::new()
                .name(name)
                .spawn(move || run(&s, i))
            {
                Ok(t) => threads.push(t),
                Err(e) => {
                    let mut c = BackendClient { shared, threads };
                    c.stop();
                    return Err(e);
                }
            }
        }
        Ok(BackendClient { shared, threads })
    }

    /// Queue a call; never blocks. A full queue (or a stopping client)
    /// gives the job back with the reason, counted, so that the caller
    /// answers it at once.
    #[allow(clippy::result_large_err)]
    pub fn submit(&self, job: Job<C, D>) -> Result<(), (Job<C, D>, Failure)> {
        let label = job.label.min(MAX_LABELS - 1);
        let s = &self.shared;
        let failure = {
            let mut st = lock(&s.state);
            if st.stopping {
                Failure::Stopped
            } else if st.jobs.len() >= s.settings.queue_size
                || st.bytes + job.size() > s.settings.queue_bytes
            {
                Failure::Overloaded
            } else {
                let now = Instant::now();
                st.bytes += job.size();
                st.jobs.push_back(Queued {
                    job,
                    submitted: now,
                    deadline: now + s.settings.timeout,
                });
                drop(st);
                s.ready.notify_one();
                return Ok(());
            }
        };
        {
            let mut st = lock(&s.stats[s.stats.len() - 1]);
            st[label].calls += 1;
            st[label].failures.count(&failure);
        }
        s.log.failure(&failure);
        Err((job, failure))
    }

    /// Every label's counters, summed over the threads.
    pub fn stats(&self) -> StatsByLabel {
        let mut sum: StatsByLabel = Default::default();
        for slot in &self.shared.stats {
            let st = lock(slot);
            for (a, b) in sum.iter_mut().zip(st.iter()) {
                a.add(b);
            }
        }
        sum
    }

    /// Jobs waiting for a thread.
    pub fn queued(&self) -> usize {
        lock(&self.shared.state).jobs.len()
    }

    /// Stop taking jobs, fail those still queued ([`Failure::Stopped`]),
    /// let the calls in flight finish (each within its timeout) and join
    /// the threads.
    pub fn stop(&mut self) {
        lock(&self.shared.state).stopping = true;
        self.shared.ready.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl<C: Send + 'static, D: Send + 'static> Drop for BackendClient<C, D> {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A client thread: take a job, call, decode, hand the outcome over.
fn run<C, D>(s: &Shared<C, D>, slot: usize) {
    let agent = agent(1);
    loop {
        let q = {
            let mut st = lock(&s.state);
            loop {
                if let Some(q) = st.jobs.pop_front() {
                    st.bytes -= q.job.size();
                    break Some(q);
                }
                if st.stopping {
                    break None;
                }
                st = s.ready.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        };
        let Some(Queued {
            job,
            submitted,
            deadline,
        }) = q
        else {
            break;
        };
        let Job {
            url,
            headers,
            body,
            label,
            decode,
            ctx,
        } = job;
        let stopping = lock(&s.state).stopping;
        let result = if stopping {
            Err(Failure::Stopped)
        } else {
            match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => {
                    post(&agent, &url, &headers, &body, left, s.settings.max_answer)
                        .and_then(|(status, bytes)| decode(status, &bytes))
                }
                _ => Err(Failure::Timeout),
            }
        };
        let latency = submitted.elapsed();
        {
            let mut st = lock(&s.stats[slot]);
            let c = &mut st[label.min(MAX_LABELS - 1)];
            c.calls += 1;
            match &result {
                Ok(_) => c.ok += 1,
                Err(f) => c.failures.count(f),
            }
            c.latency.record(latency);
        }
        if let Err(f) = &result {
            s.log.failure(f);
        }
        (s.sink)(Done {
            ctx,
            result,
            latency,
        });
    }
}

/// An agent for a thread that makes one call at a time: keep-alive
/// connections pooled (`idle` per host), HTTP statuses handed to the
/// decoder rather than turned into errors, no redirects (a backend that
/// redirects is misconfigured; following one would send the body
/// elsewhere).
/// Addresses come from [`super::resolve::Resolver`] (no thread per call).
pub fn agent(idle: usize) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_idle_connections(idle.max(1))
        .max_idle_connections_per_host(idle.max(1))
        .max_idle_age(Duration::from_secs(60))
        .user_agent(concat!("wsgate/", env!("CARGO_PKG_VERSION")))
        .build();
    ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::default(),
        super::resolve::Resolver::default(),
    )
}

/// POST `body` as JSON to `url` within `timeout` (the whole call), reading
/// at most `max_answer` bytes of the answer. Any HTTP status is returned
/// with its body.
pub fn post(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeout: Duration,
    max_answer: u64,
) -> Result<(u16, Vec<u8>), Failure> {
    let mut req = agent.post(url).header("Content-Type", "application/json");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let mut resp = req
        .config()
        .timeout_global(Some(timeout))
        .build()
        .send(body)
        .map_err(failure)?;
    let status = resp.status().as_u16();
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(max_answer)
        .read_to_vec()
        .map_err(failure)?;
    Ok((status, bytes))
}

/// What a ureq error means for the caller.
fn failure(e: ureq::Error) -> Failure {
    use std::io::ErrorKind;
    match e {
        ureq::Error::Timeout(_) => Failure::Timeout,
        ureq::Error::BodyExceedsLimit(n) => Failure::TooBig(n),
        ureq::Error::StatusCode(s) => Failure::Status(s),
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => {
            Failure::Connect(e.to_string())
        }
        ureq::Error::Io(io) => match io.kind() {
            ErrorKind::ConnectionRefused
            | ErrorKind::NotFound
            | ErrorKind::AddrNotAvailable
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkUnreachable => Failure::Connect(io.to_string()),
            ErrorKind::TimedOut | ErrorKind::WouldBlock => Failure::Timeout,
            _ => Failure::Io(io.to_string()),
        },
        other => Failure::Io(other.to_string()),
    }
}

/// Log failures without flooding: the first of each kind at once, then at
/// most one line per kind per [`LogLimiter::EVERY`], with the count since.
pub struct LogLimiter {
    what: &'static str,
    state: Mutex<Vec<(&'static str, Option<Instant>, u64)>>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new("backend call failed")
    }
}

impl LogLimiter {
    pub const EVERY: Duration = Duration::from_secs(1);

    /// Lines start with `what`.
    pub fn new(what: &'static str) -> LogLimiter {
        LogLimiter {
            what,
            state: Mutex::new(Vec::new()),
        }
    }

    pub fn failure(&self, f: &Failure) {
        let kind = f.kind();
        let now = Instant::now();
        let suppressed = {
            let mut st = lock(&self.state);
            let i = match st.iter().position(|e| e.0 == kind) {
                Some(i) => i,
                None => {
                    st.push((kind, None, 0));
                    st.len() - 1
                }
            };
            let e = &mut st[i];
            match e.1 {
                Some(t) if now.duration_since(t) < Self::EVERY => {
                    e.2 += 1;
                    return;
                }
                _ => {
                    e.1 = Some(now);
                    std::mem::take(&mut e.2)
                }
            }
        };
        let what = self.what;
        if suppressed > 0 {
            log::warn!("{what}: {f} ({suppressed} more {kind} failures since the last line)");
        } else {
            log::warn!("{what}: {f}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_quantiles() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile_bound_us(0.5), None);
        for ms in [1, 1, 1, 3, 40] {
            h.record(Duration::from_millis(ms));
        }
        assert_eq!(h.count, 5);
        assert_eq!(h.buckets[1], 3, "1 ms is at or below the 1 ms bound");
        assert_eq!(h.buckets[3], 1, "3 ms: the 5 ms bucket");
        assert_eq!(h.buckets[6], 1, "40 ms: the 50 ms bucket");
        assert_eq!(h.quantile_bound_us(0.5), Some(1_000));
        assert_eq!(h.quantile_bound_us(0.99), Some(50_000));
        h.record(Duration::from_secs(60));
        assert_eq!(h.buckets[LATENCY_BUCKETS_US.len()], 1, "beyond: +Inf");
        assert_eq!(h.quantile_bound_us(1.0), None);
    }

    #[test]
    fn failures_say_whether_the_backend_may_have_acted() {
        assert!(!Failure::Overloaded.maybe_received());
        assert!(!Failure::Connect("refused".into()).maybe_received());
        assert!(Failure::Timeout.maybe_received());
        assert!(Failure::Status(500).maybe_received());
        let mut c = FailureCounts::default();
        for f in [Failure::Timeout, Failure::Timeout, Failure::TooBig(9)] {
            c.count(&f);
        }
        assert_eq!((c.timeout, c.too_big, c.total()), (2, 1, 3));
    }

    /// Nothing listens: the job fails with `Connect`, reaches the sink once,
    /// and is counted under its label; a full queue refuses at once.
    #[test]
    fn refused_connection_and_full_queue() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        let settings = Settings {
            concurrency: 1,
            queue_size: 1,
            ..Settings::default()
        };
        let client = BackendClient::start(settings, move |d: Done<u32, ()>| {
            let _ = lock(&tx).send((d.ctx, d.result));
        })
        .unwrap();
        let job = |ctx| Job {
            url: format!("http://127.0.0.1:{port}/x").into(),
            headers: vec![],
            body: b"{}".to_vec(),
            label: 2,
            decode: |_, _| Ok(()),
            ctx,
        };
        client.submit(job(1)).unwrap();
        let (ctx, r) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(ctx, 1);
        assert!(matches!(r, Err(Failure::Connect(_))), "{r:?}");
        let st = client.stats();
        assert_eq!((st[2].calls, st[2].failures.connect), (1, 1));
        // Fill the queue faster than one thread can drain it: some job is
        // refused at once, with its context given back.
        let mut refused = None;
        for i in 0..1000 {
            if let Err((j, f)) = client.submit(job(100 + i)) {
                refused = Some((j.ctx, f));
                break;
            }
        }
        let (ctx, f) = refused.expect("a one-job queue refuses when full");
        assert!(ctx >= 100);
        assert_eq!(f, Failure::Overloaded);
        assert!(client.stats()[2].failures.overloaded >= 1);
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_headers_included() {
        let settings = Settings {
            concurrency: 1,
            queue_bytes: 100,
            ..Settings::default()
        };
        let client = BackendClient::start(settings, |_: Done<(), ()>| {}).unwrap();
        let job = |body: usize, header: usize| Job {
            url: "http://127.0.0.1:9/x".into(),
            headers: vec![("X-A".into(), "v".repeat(header))],
            body: vec![b' '; body],
            label: 0,
            decode: |_, _| Ok(()),
            ctx: (),
        };
        assert_eq!(job(60, 37).size(), 100);
        let (_, f) = client.submit(job(60, 38)).expect_err("101 bytes");
        assert_eq!(f, Failure::Overloaded);
        let (_, f) = client.submit(job(10, 100)).expect_err("headers count");
        assert_eq!(f, Failure::Overloaded);
    }
}
