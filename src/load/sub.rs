//! `sub`: fan-out under load. N subscribers spread over C channels, a few
//! publishers on the backend API, and the publish-to-receive latency taken
//! from a timestamp carried in every publication.
//!
//! ```text
//!   publisher threads (one keep-alive HTTP/1.1 connection each)
//!     POST /api/publish [{"channel":"bench:7","data":{"t":<ns since epoch>,"pad":"…"}},…]
//!        │
//!        ▼ gateway: one frame per publication, queued to every subscriber, corked
//!   subscribers (a [`Fleet`] per process; subscriber i takes channel i % C)
//!     offset checked per connection (gaps, duplicates), latency = now − t
//! ```
//!
//! Subscriber `i` (counted over all processes) opens `/ws` and subscribes to
//! `<prefix>:<i % C>` with the subscribe op as soon as it is open (the fleet
//! connects every socket to one URL, so the channel cannot go in the URL);
//! the reply's offset is where its count starts. Publishing starts only once
//! every subscription is confirmed (or refused, or timed out).
//!
//! Every process reads the same clock (`SystemTime`, CLOCK_REALTIME, one box),
//! so the latency is measured across processes without any exchange. The
//! receive time is the kernel's arrival stamp of the bytes (`SO_TIMESTAMPNS`,
//! [`super::net::recv_stamped`]), not the moment the subscriber process
//! reads them: a load generator sharing a core with the gateway (or with
//! other work) reads late, and that backlog is not the gateway's latency
//! (`--read-time` measures at the read instead, as before; `wss://`
//! always does). The
//! measured window is set in wall-clock time by the publisher, from
//! `warmup` to `warmup + duration` after publishing starts: publications
//! stamped inside it count for the rates and the latency histogram; all of
//! them count for the gap, duplicate and expected-versus-received checks.
//!
//! The processes share a small [`Board`] (atomics in one process, a file of
//! u64 slots under `--procs`, named by [`BOARD_ENV`]): the window, each
//! process's progress (publications received by its live subscribers, and
//! how many are live), and at the end the publications accepted per channel,
//! from which each process knows what its subscribers were owed and when
//! everything has arrived. The progress also paces the publishers at
//! saturation (`rate` 0: each publisher sends its next request as soon as
//! the last is answered): publishing waits while subscribers are more than
//! `max_lag` publications behind on average, so that "as fast as allowed"
//! never means filling the gateway's out queues until it closes the
//! subscribers as slow consumers.
//!
//! With `server_pid`, a meter thread samples the gateway's CPU time
//! (utime + stime of `/proc/PID/stat`) and its delivery count
//! (`GET /api/stats`) at the start and end of the window: µs of server CPU
//! per delivery, and deliveries per second per core, the figure that
//! matters when the load generator saturates its core before the gateway.
//! It also sums the gateway threads' time runnable but waiting for a CPU
//! (`schedstat`), and each subscriber loop reports its own: on a shared box
//! these say how much other work held the run back. See `docs/fanout.md`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::client::{ClientConfig, Ctx, End, Fleet, Handler, Waves};
use super::net::share;
use super::report::{PublishStats, ServerUsage, SubStats};
use super::{procs, Observer};
use crate::delta::dashboard::Dashboard;

/// The environment variable that tells child processes where the board is.
pub const BOARD_ENV: &str = "WSGATE_LOAD_BOARD";
/// The request id of the subscribe op.
const SUBSCRIBE_ID: u64 = 1;
/// How often a subscriber process publishes its progress on the board.
const BOARD_EVERY: Duration = Duration::from_millis(5);
/// How often a publisher waiting for the subscribers looks again.
const LAG_CHECK: Duration = Duration::from_micros(250);
/// Bytes of `{"t":<19 digits>,"pad":""}`: the smallest `data`.
pub const DATA_OVERHEAD: usize = 34;
/// Time allowed to an API request (connect, answer).
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// A keep-alive connection idle this long is replaced before use: the
/// gateway closes idle ones after its handshake timeout (10 s by default),
/// and a request written into a closing connection may be lost.
const HTTP_IDLE: Duration = Duration::from_secs(3);

/// What `sub` does. One configuration serves every process: subscriber
/// processes use the first part, the publishing process `publish` too.
#[derive(Debug, Clone)]
pub struct SubConfig {
    /// The gateway's `/ws` URL; the API is on the same address.
    pub client: ClientConfig,
    /// Subscribers over all processes.
    pub total_conns: u64,
    /// This process's subscribers: `conns` of them, global indexes from
    /// `first` (subscriber `i` takes channel `i % channels`).
    pub first: u64,
    pub conns: u64,
    pub channels: u64,
    /// Channels are named `<prefix>:<index>`.
    pub prefix: String,
    /// Subscribe with `"delta":"fossil"`.
    pub delta: bool,
    pub waves: Waves,
    /// Publishing before the measured window, and the window.
    pub warmup: Duration,
    pub duration: Duration,
    /// Once publishing has ended, how long to wait for deliveries still owed.
    pub drain: Duration,
    pub publish: PublishConfig,
}

/// How publications are made.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    /// Keep-alive HTTP connections, each with one request in flight (a
    /// thread each).
    pub publishers: usize,
    /// Publications per second in all; 0: as fast as allowed.
    pub rate: f64,
    /// Publications per `POST /api/publish` (a JSON array).
    pub batch: usize,
    /// Bytes of each publication's `data` (at least [`DATA_OVERHEAD`]).
    pub size: usize,
    /// `data` is `{"t":…,"dash":<the 200-metric dashboard, ticked per
    /// publication>}` instead (`size` ignored).
    pub dashboard: bool,
    /// Publishing waits while subscribers are more than this many
    /// publications behind on average (0: never waits).
    pub max_lag: u64,
    /// Stop after this many publications (`None`: publish until the window
    /// ends).
    pub limit: Option<u64>,
    /// Sent as `X-API-Key` when set.
    pub api_key: Option<String>,
    /// The gateway's process id: its CPU time is sampled over the window.
    pub server_pid: Option<u32>,
}

impl SubConfig {
    /// The part of this run that child `index` of `procs` takes: its
    /// subscribers (contiguous global indexes) and its source addresses.
    pub fn for_child(&self, index: usize, procs: usize) -> SubConfig {
        let mut c = self.clone();
        c.first = (0..index).map(|i| share(self.total_conns, i, procs)).sum();
        c.conns = share(self.total_conns, index, procs);
        c.client.src_ips = super::net::share_ips(&self.client.src_ips, index, procs);
        let n = procs.max(1);
        c.waves = Waves {
            inflight: (self.waves.inflight / n).max(1),
            rate: self.waves.rate.map(|r| r / n as f64),
        };
        c
    }
}

/// Nanoseconds since the UNIX epoch (CLOCK_REALTIME, shared by every
/// process on the box).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Subscribers of channel `c` when `total` are spread `i % channels`.
pub fn subscribers_of(total: u64, channels: u64, c: u64) -> u64 {
    let channels = channels.max(1);
    total / channels + u64::from(c < total % channels)
}

/// The name of channel `c`.
pub fn channel_name(prefix: &str, c: u64) -> String {
    format!("{prefix}:{c}")
}

// ------------------------------------------------------------------ board --

/// Publications accepted per channel: in all, and stamped inside the window.
pub type ChannelCounts = (Vec<u64>, Vec<u64>);

/// Nanoseconds on a CPU, and runnable but waiting for one (`schedstat`).
type Sched = (u64, u64);

/// Slots of the board, in u64s.
const WINDOW_START: usize = 0;
const WINDOW_END: usize = 1;
const DONE: usize = 2;
const HEAD: usize = 3;

/// What the processes of one run share: the window, every subscriber
/// process's progress, and the publications accepted per channel.
///
/// Layout (u64 slots): window start and end (ns since the epoch), done flag,
/// then per process (received by live subscribers, live subscribers), then
/// per channel the publications accepted, then per channel those stamped in
/// the window. A value is written with one 8-byte `pwrite` (or an atomic
/// store) and read the same way; the per-channel counts are written before
/// the done flag.
#[derive(Clone, Debug)]
pub struct Board {
    store: Store,
    procs: usize,
    channels: usize,
}

#[derive(Clone, Debug)]
enum Store {
    Memory(Arc<Vec<AtomicU64>>),
    File(Arc<File>),
}

impl Board {
    fn slots(procs: usize, channels: usize) -> usize {
        HEAD + 2 * procs + 2 * channels
    }

    /// A board for one process (atomics).
    pub fn memory(procs: usize, channels: usize) -> Board {
        let n = Board::slots(procs, channels);
        Board {
            store: Store::Memory(Arc::new((0..n).map(|_| AtomicU64::new(0)).collect())),
            procs,
            channels,
        }
    }

    /// Create the board file (it must not exist yet), all zeros.
    pub fn create(path: &Path, procs: usize, channels: usize) -> io::Result<Board> {
        let f = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        f.set_len(8 * Board::slots(procs, channels) as u64)?;
        Ok(Board {
            store: Store::File(Arc::new(f)),
            procs,
            channels,
        })
    }

    /// Open a board file made by [`Board::create`] with the same shape.
    pub fn open(path: &Path, procs: usize, channels: usize) -> io::Result<Board> {
        let f = File::options().read(true).write(true).open(path)?;
        let want = 8 * Board::slots(procs, channels) as u64;
        let len = f.metadata()?.len();
        if len != want {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "board {path:?} has {len} bytes, not {want}: different --procs or --channels?"
                ),
            ));
        }
        Ok(Board {
            store: Store::File(Arc::new(f)),
            procs,
            channels,
        })
    }

    fn get_many(&self, at: usize, n: usize) -> io::Result<Vec<u64>> {
        match &self.store {
            Store::Memory(v) => Ok(v[at..at + n]
                .iter()
                .map(|a| a.load(Ordering::Acquire))
                .collect()),
            Store::File(f) => {
                let mut buf = vec![0u8; 8 * n];
                f.read_exact_at(&mut buf, 8 * at as u64)?;
                Ok(buf
                    .chunks_exact(8)
                    .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or_default()))
                    .collect())
            }
        }
    }

    fn set_many(&self, at: usize, vals: &[u64]) -> io::Result<()> {
        match &self.store {
            Store::Memory(v) => {
                for (a, x) in v[at..at + vals.len()].iter().zip(vals) {
                    a.store(*x, Ordering::Release);
                }
                Ok(())
            }
            Store::File(f) => {
                let buf: Vec<u8> = vals.iter().flat_map(|x| x.to_ne_bytes()).collect();
                f.write_all_at(&buf, 8 * at as u64)
            }
        }
    }

    /// The measured window, in ns since the epoch (zeros until set).
    pub fn window(&self) -> io::Result<(u64, u64)> {
        let v = self.get_many(WINDOW_START, 2)?;
        Ok((v[0], v[1]))
    }

    pub fn set_window(&self, start: u64, end: u64) -> io::Result<()> {
        debug_assert_eq!(WINDOW_END, WINDOW_START + 1);
        self.set_many(WINDOW_START, &[start, end])
    }

    /// Process `slot`'s progress: publications received by its live
    /// subscribers, and how many subscribers are live.
    pub fn set_progress(&self, slot: usize, received: u64, live: u64) -> io::Result<()> {
        debug_assert!(slot < self.procs);
        self.set_many(HEAD + 2 * slot, &[received, live])
    }

    /// Progress summed over processes: (received, live).
    pub fn progress(&self) -> io::Result<(u64, u64)> {
        let v = self.get_many(HEAD, 2 * self.procs)?;
        Ok(v.chunks_exact(2)
            .fold((0, 0), |(r, l), c| (r + c[0], l + c[1])))
    }

    /// Publishing is over: publications accepted per channel, in all and
    /// inside the window.
    pub fn finish(&self, published: &[u64], in_window: &[u64]) -> io::Result<()> {
        let at = HEAD + 2 * self.procs;
        self.set_many(at, published)?;
        self.set_many(at + self.channels, in_window)?;
        self.set_many(DONE, &[1])
    }

    /// What [`Board::finish`] wrote, once it has.
    pub fn finished(&self) -> io::Result<Option<ChannelCounts>> {
        if self.get_many(DONE, 1)?[0] == 0 {
            return Ok(None);
        }
        let at = HEAD + 2 * self.procs;
        let all = self.get_many(at, 2 * self.channels)?;
        let (a, b) = all.split_at(self.channels);
        Ok(Some((a.to_vec(), b.to_vec())))
    }
}

// ------------------------------------------------------------ subscribers --

/// A subscriber connection's state.
#[derive(Debug)]
pub struct Sub {
    channel: u32,
    state: SubState,
    /// The offset of the last publication seen (or the subscribe reply's).
    last: u64,
    /// Publications received since subscribed.
    got: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubState {
    /// Open, subscribe op sent (or not open yet).
    Waiting,
    Live,
    Refused,
    /// A slow-consumer drop notice unsubscribed it.
    Dropped,
}

struct Subscribers {
    prefix: String,
    /// Subscribe with `"delta":"fossil"`.
    delta: bool,
    /// Channel names, as they appear in publications.
    names: Vec<Box<[u8]>>,
    window: (u64, u64),
    /// The run is closing the connections: ends are not disconnects.
    closing: bool,
    /// Subscribe ops sent and not yet answered.
    waiting: u64,
    subscribed_per_channel: Vec<u64>,
    live_per_channel: Vec<u64>,
    live: u64,
    /// Publications received by the live subscribers.
    live_got: u64,
    s: SubStats,
}

impl Subscribers {
    fn new(cfg: &SubConfig) -> Subscribers {
        let c = cfg.channels.max(1);
        Subscribers {
            prefix: cfg.prefix.clone(),
            delta: cfg.delta,
            names: (0..c)
                .map(|i| channel_name(&cfg.prefix, i).into_bytes().into_boxed_slice())
                .collect(),
            window: (0, 0),
            closing: false,
            waiting: 0,
            subscribed_per_channel: vec![0; c as usize],
            live_per_channel: vec![0; c as usize],
            live: 0,
            live_got: 0,
            s: SubStats {
                channels: c,
                ..SubStats::default()
            },
        }
    }

    fn leave(&mut self, u: &Sub) {
        self.live -= 1;
        self.live_got -= u.got;
        self.live_per_channel[u.channel as usize] -= 1;
    }

    /// A publication stamped `t` (publish time), which reached the
    /// subscriber at `at` (both ns since the epoch).
    fn publication(&mut self, u: &mut Sub, offset: u64, t: Option<u64>, at: u64) {
        let s = &mut self.s;
        if offset <= u.last {
            s.duplicates += 1;
            return;
        }
        if offset > u.last + 1 {
            s.gaps += 1;
            s.missing += offset - u.last - 1;
        }
        u.last = offset;
        u.got += 1;
        self.live_got += 1;
        s.received += 1;
        if let Some(t) = t {
            if t >= self.window.0 && t < self.window.1 {
                s.window_received += 1;
                s.latency.record(Duration::from_nanos(at.saturating_sub(t)));
            }
        }
    }

    /// Anything but a well-formed publication: the subscribe reply, a drop
    /// notice, or a publication in another shape.
    fn other(&mut self, u: &mut Sub, data: &[u8], at: u64) {
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            self.s.unexpected += 1;
            return;
        };
        if u.state == SubState::Waiting && v["id"].as_u64() == Some(SUBSCRIBE_ID) {
            self.waiting -= 1;
            if v["ok"] == Value::Bool(true) {
                u.state = SubState::Live;
                u.last = v["offset"].as_u64().unwrap_or(0);
                self.s.subscribed += 1;
                self.live += 1;
                self.live_per_channel[u.channel as usize] += 1;
                self.subscribed_per_channel[u.channel as usize] += 1;
            } else {
                log::warn!("subscribe refused: {v}");
                u.state = SubState::Refused;
                self.s.refused += 1;
            }
            return;
        }
        if v.get("dropped").is_some() {
            self.s.drop_notices += 1;
            if u.state == SubState::Live {
                self.leave(u);
                u.state = SubState::Dropped;
            }
            return;
        }
        let mine =
            v["channel"].as_str().map(str::as_bytes) == Some(&*self.names[u.channel as usize]);
        match v["offset"].as_u64() {
            Some(offset) if mine && u.state == SubState::Live => {
                self.publication(u, offset, v["data"]["t"].as_u64(), at);
            }
            _ => self.s.unexpected += 1,
        }
    }
}

impl Handler<Sub> for Subscribers {
    fn on_open(&mut self, ctx: &mut Ctx<'_, Sub>, _handshake: Duration) {
        let delta = if self.delta {
            r#","delta":"fossil""#
        } else {
            ""
        };
        let op = format!(
            r#"{{"id":{SUBSCRIBE_ID},"op":"subscribe","channel":"{}:{}"{delta}}}"#,
            self.prefix, ctx.user.channel
        );
        if ctx.send(true, op.as_bytes()) {
            self.waiting += 1;
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, Sub>, text: bool, data: &[u8]) {
        if !text {
            self.s.unexpected += 1;
            return;
        }
        let at = ctx.arrived_ns.unwrap_or_else(now_ns);
        let u = &mut *ctx.user;
        if u.state == SubState::Live {
            if let Some(p) = scan_publication(data) {
                if p.channel == &*self.names[u.channel as usize] {
                    self.publication(u, p.offset, p.t, at);
                } else {
                    self.s.unexpected += 1;
                }
                return;
            }
        }
        self.other(u, data, at);
    }

    fn on_close(&mut self, _ctx: &mut Ctx<'_, Sub>, code: Option<u16>, _reason: &str) {
        if let Some(code) = code {
            if !self.closing {
                *self.s.close_codes.entry(code).or_default() += 1;
            }
        }
    }

    fn on_end(&mut self, _id: usize, u: Sub, _end: &End) {
        match u.state {
            SubState::Waiting => self.waiting = self.waiting.saturating_sub(1),
            SubState::Live => {
                self.leave(&u);
                if !self.closing {
                    self.s.disconnects += 1;
                }
            }
            SubState::Refused | SubState::Dropped => {}
        }
    }
}

/// A publication as the gateway writes it.
#[derive(Debug, PartialEq, Eq)]
struct Publication<'a> {
    channel: &'a [u8],
    offset: u64,
    /// `data.t`, when `data` starts with it.
    t: Option<u64>,
}

/// Read `{"channel":"…","offset":N,"data":{"t":T,…}…}` without a JSON parser
/// (the subscribers' core is the bottleneck of a fan-out run). Channel
/// names never need escaping. `None` for anything else: the caller then
/// parses it properly.
fn scan_publication(b: &[u8]) -> Option<Publication<'_>> {
    let rest = b.strip_prefix(br#"{"channel":""#)?;
    let q = rest.iter().position(|&c| c == b'"')?;
    let channel = &rest[..q];
    let rest = rest[q..].strip_prefix(br#"","offset":"#)?;
    let (offset, rest) = digits(rest)?;
    let rest = rest.strip_prefix(br#","data":"#)?;
    let t = rest
        .strip_prefix(br#"{"t":"#)
        .and_then(digits)
        .map(|(t, _)| t);
    Some(Publication { channel, offset, t })
}

/// A decimal u64 at the start of `b`, and what follows it.
fn digits(b: &[u8]) -> Option<(u64, &[u8])> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    let mut v = 0u64;
    for &c in &b[..n] {
        v = v * 10 + u64::from(c - b'0');
    }
    Some((v, &b[n..]))
}

/// The subscriber side of a run, in this process (`slot` on the board):
/// open and subscribe, report ready, count deliveries until the publisher
/// is done and everything owed has arrived (or `drain` passed), close.
/// Bounded by the open phase, the handshake timeout, the window and the
/// drain (plus 10 s should the publisher never say it is done).
pub fn run_subscribers(
    cfg: &SubConfig,
    board: &Board,
    slot: usize,
    obs: &mut dyn Observer,
) -> io::Result<SubStats> {
    let channels = cfg.channels.max(1);
    let mut fleet: Fleet<Sub> = Fleet::new(cfg.client.clone())?;
    let mut h = Subscribers::new(cfg);
    let mut next = cfg.first;
    fleet.open_many(cfg.conns, cfg.waves, &mut h, obs, || {
        let channel = (next % channels) as u32;
        next += 1;
        Sub {
            channel,
            state: SubState::Waiting,
            last: 0,
            got: 0,
        }
    })?;
    let deadline = Instant::now() + cfg.client.handshake_timeout;
    while h.waiting > 0 && Instant::now() < deadline {
        fleet.poll(&mut h, deadline.saturating_duration_since(Instant::now()))?;
    }
    if h.waiting > 0 {
        log::warn!("{} subscribe replies still missing", h.waiting);
    }
    board.set_progress(slot, 0, h.live)?;
    obs.ready();

    // The publisher sets the window before the go-ahead; wait a little in
    // case a process got here first.
    let wait_until = Instant::now() + Duration::from_secs(5);
    let mut window = board.window()?;
    while window.1 == 0 && Instant::now() < wait_until {
        fleet.poll(&mut h, Duration::from_millis(5))?;
        window = board.window()?;
    }
    h.window = window;
    let to_end = Duration::from_nanos(window.1.saturating_sub(now_ns()));
    let give_up = Instant::now() + to_end + cfg.drain + Duration::from_secs(10);

    let mut last_board = Instant::now();
    // This loop's scheduler figures at the window's start and end.
    let mut sched: (Option<Sched>, Option<Sched>) = (None, None);
    let mut finished: Option<ChannelCounts> = None;
    let mut finished_at = give_up;
    loop {
        fleet.poll(&mut h, BOARD_EVERY)?;
        let now = Instant::now();
        if now >= give_up {
            log::warn!("the publisher never said it was done");
            break;
        }
        if now.duration_since(last_board) < BOARD_EVERY {
            continue;
        }
        last_board = now;
        let wall = now_ns();
        if sched.0.is_none() && wall >= window.0 {
            sched.0 = Some(thread_schedstat());
        }
        if sched.1.is_none() && wall >= window.1 {
            sched.1 = Some(thread_schedstat());
        }
        board.set_progress(slot, h.live_got, h.live)?;
        if finished.is_none() {
            finished = board.finished()?;
            finished_at = now;
        }
        if let Some((published, _)) = &finished {
            let owed: u64 = h
                .live_per_channel
                .iter()
                .zip(published)
                .map(|(n, p)| n * p)
                .sum();
            if h.live_got >= owed || now.duration_since(finished_at) >= cfg.drain {
                break;
            }
        }
    }
    board.set_progress(slot, h.live_got, h.live)?;
    h.closing = true;
    fleet.close_all(1000, &mut h);
    fleet.drain(&mut h, Instant::now() + cfg.client.close_linger)?;

    let (published, in_window) = match finished {
        Some(f) => f,
        None => board
            .finished()?
            .unwrap_or_else(|| (vec![0; channels as usize], vec![0; channels as usize])),
    };
    let dot = |counts: &[u64]| -> u64 {
        h.subscribed_per_channel
            .iter()
            .zip(counts)
            .map(|(n, p)| n * p)
            .sum()
    };
    let mut s = std::mem::take(&mut h.s);
    if let (Some(a), Some(b)) = sched {
        s.load_cpu_secs = b.0.saturating_sub(a.0) as f64 / 1e9;
        s.load_wait_secs = b.1.saturating_sub(a.1) as f64 / 1e9;
    }
    s.expected = dot(&published);
    s.window_expected = dot(&in_window);
    s.window_secs = cfg.duration.as_secs_f64();
    s.open = fleet.stats().clone();
    Ok(s)
}

// -------------------------------------------------------------- publisher --

/// The publisher's connection: plain, or TLS for a `wss://` gateway (its
/// API is on the same port), with rustls's blocking stream.
enum HttpSock {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for HttpSock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            HttpSock::Plain(s) => s.read(buf),
            HttpSock::Tls(s) => s.read(buf),
        }
    }
}

impl Write for HttpSock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            HttpSock::Plain(s) => s.write(buf),
            HttpSock::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            HttpSock::Plain(s) => s.flush(),
            HttpSock::Tls(s) => s.flush(),
        }
    }
}

/// A blocking HTTP/1.1 client on one keep-alive connection: one request at
/// a time, `Content-Length` bodies both ways.
struct Http {
    addr: SocketAddr,
    host: String,
    /// For a `wss://` gateway: the TLS configuration and server name.
    tls: Option<(Arc<rustls::ClientConfig>, String)>,
    api_key: Option<String>,
    sock: Option<HttpSock>,
    /// When the connection last finished a request.
    used: Instant,
    req: Vec<u8>,
    buf: Vec<u8>,
}

impl Http {
    fn new(
        target: &super::Target,
        tls: Option<Arc<rustls::ClientConfig>>,
        api_key: Option<String>,
    ) -> Http {
        Http {
            addr: target.addr,
            host: target.host.clone(),
            tls: tls.map(|c| (c, target.server_name.clone())),
            api_key,
            sock: None,
            used: Instant::now(),
            req: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// `GET path`, tried a second time on a new connection if the first
    /// attempt fails (it changes nothing on the server).
    fn get(&mut self, path: &str) -> io::Result<(u16, Vec<u8>)> {
        self.request("GET", path, b"")
            .or_else(|_| self.request("GET", path, b""))
    }

    /// Send one request and read its answer: (status, body). On any error
    /// the connection is dropped (the next request opens a new one); a
    /// request that failed is not retried, since it may have been applied.
    fn request(&mut self, method: &str, path: &str, body: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        if self.used.elapsed() > HTTP_IDLE {
            self.sock = None;
        }
        if self.sock.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, HTTP_TIMEOUT)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(HTTP_TIMEOUT))?;
            s.set_write_timeout(Some(HTTP_TIMEOUT))?;
            self.sock = Some(match &self.tls {
                None => HttpSock::Plain(s),
                Some((cfg, name)) => {
                    let name = rustls::pki_types::ServerName::try_from(name.clone())
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                    let conn = rustls::ClientConnection::new(cfg.clone(), name)
                        .map_err(io::Error::other)?;
                    HttpSock::Tls(Box::new(rustls::StreamOwned::new(conn, s)))
                }
            });
        }
        self.req.clear();
        let _ = write!(
            self.req,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        if let Some(k) = &self.api_key {
            let _ = write!(self.req, "X-API-Key: {k}\r\n");
        }
        self.req.extend_from_slice(b"\r\n");
        self.req.extend_from_slice(body);
        let sock = self.sock.as_mut().expect("connected above");
        let result = sock
            .write_all(&self.req)
            .and_then(|()| read_response(sock, &mut self.buf));
        self.used = Instant::now();
        match result {
            Ok((status, body, close)) => {
                if close {
                    self.sock = None;
                }
                Ok((status, body))
            }
            Err(e) => {
                self.sock = None;
                Err(e)
            }
        }
    }
}

/// Read one response: (status, body, the server closes the connection).
fn read_response<R: Read>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<(u16, Vec<u8>, bool)> {
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let parsed = resp
            .parse(buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("response: {e}")))?;
        if let httparse::Status::Complete(head) = parsed {
            let status = resp.code.unwrap_or(0);
            let mut len = 0usize;
            let mut close = false;
            for h in resp.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    len = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .ok_or_else(|| {
                            io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length")
                        })?;
                } else if h.name.eq_ignore_ascii_case("connection") {
                    close = h.value.eq_ignore_ascii_case(b"close");
                }
            }
            while buf.len() < head + len {
                let n = r.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[head..head + len].to_vec();
            return Ok((status, body, close));
        }
        let n = r.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The body of one `POST /api/publish`: publications `first..first+n`,
/// publication `k` on channel `k % channels`, all stamped `t`.
fn batch_body(
    out: &mut Vec<u8>,
    names: &[String],
    (first, n): (u64, u64),
    t: u64,
    pad: &str,
    mut dash: Option<&mut Dashboard>,
) {
    out.clear();
    out.push(b'[');
    for k in first..first + n {
        if k > first {
            out.push(b',');
        }
        let name = &names[(k % names.len() as u64) as usize];
        let _ = match dash.as_deref_mut() {
            Some(d) => {
                d.tick();
                write!(
                    out,
                    r#"{{"channel":"{name}","data":{{"t":{t},"dash":{}}}}}"#,
                    d.json()
                )
            }
            None => write!(
                out,
                r#"{{"channel":"{name}","data":{{"t":{t},"pad":"{pad}"}}}}"#
            ),
        };
    }
    out.push(b']');
}

/// What one publisher thread counted.
struct Counted {
    published: Vec<u64>,
    in_window: Vec<u64>,
    stats: PublishStats,
}

/// State the publisher threads share.
struct PubShared {
    /// The next publication's number.
    seq: AtomicU64,
    /// Deliveries owed for the publications accepted so far, counted with
    /// the planned subscribers per channel (for the lag).
    owed: AtomicU64,
}

/// Everything a publisher thread needs, cloned into it.
#[derive(Clone)]
struct PubJob {
    cfg: SubConfig,
    board: Board,
    names: Arc<Vec<String>>,
    planned: Arc<Vec<u64>>,
    shared: Arc<PubShared>,
    window: (u64, u64),
    start: Instant,
    end: Instant,
}

impl PubJob {
    /// Are the subscribers more than `max_lag` publications behind on
    /// average? (With several channels the average is over all, which the
    /// round-robin spread keeps close to every channel's.)
    fn lagging(&self) -> bool {
        let max = self.cfg.publish.max_lag;
        if max == 0 {
            return false;
        }
        let Ok((got, live)) = self.board.progress() else {
            return false;
        };
        if live == 0 {
            return false;
        }
        let total = self.cfg.total_conns.max(1) as f64;
        let sent = self.shared.owed.load(Ordering::Relaxed) as f64 / total;
        sent - got as f64 / live as f64 > max as f64
    }

    fn run(&self, index: usize) -> Counted {
        let p = &self.cfg.publish;
        let channels = self.names.len();
        let mut c = Counted {
            published: vec![0; channels],
            in_window: vec![0; channels],
            stats: PublishStats::default(),
        };
        let t = &self.cfg.client.target;
        let mut http = Http::new(t, self.cfg.client.tls.clone(), p.api_key.clone());
        let batch = p.batch.max(1) as u64;
        let pad = "x".repeat(p.size.saturating_sub(DATA_OVERHEAD));
        let mut dash = p.dashboard.then(|| Dashboard::new(index as u64 + 1));
        let threads = p.publishers.max(1);
        // Paced: thread `index` sends its k-th request at
        // start + (k + index/threads) * interval.
        let interval =
            (p.rate > 0.0).then(|| Duration::from_secs_f64(batch as f64 * threads as f64 / p.rate));
        let mut body = Vec::new();
        let mut k = 0u64;
        loop {
            let now = Instant::now();
            if now >= self.end {
                break;
            }
            if let Some(iv) = interval {
                let due = self.start + iv.mul_f64(k as f64 + index as f64 / threads as f64);
                if due > now {
                    thread::sleep((due - now).min(self.end - now));
                    continue;
                }
            }
            if self.lagging() {
                let w0 = Instant::now();
                while self.lagging() && Instant::now() < self.end {
                    thread::sleep(LAG_CHECK);
                }
                c.stats.lag_wait_secs += w0.elapsed().as_secs_f64();
                if Instant::now() >= self.end {
                    break;
                }
            }
            let first = self.shared.seq.fetch_add(batch, Ordering::Relaxed);
            let n = match p.limit {
                Some(limit) if first >= limit => break,
                Some(limit) => batch.min(limit - first),
                None => batch,
            };
            let stamp = now_ns();
            batch_body(
                &mut body,
                &self.names,
                (first, n),
                stamp,
                &pad,
                dash.as_mut(),
            );
            k += 1;
            match http.request("POST", "/api/publish", &body) {
                Ok((200, answer)) => {
                    c.stats.requests += 1;
                    let items: Vec<Value> = serde_json::from_slice(&answer).unwrap_or_default();
                    let in_window = stamp >= self.window.0 && stamp < self.window.1;
                    let mut owed = 0;
                    for i in 0..n {
                        let ok = items
                            .get(i as usize)
                            .is_some_and(|v| v.get("offset").is_some());
                        if !ok {
                            c.stats.rejected += 1;
                            continue;
                        }
                        let ch = ((first + i) % channels as u64) as usize;
                        c.published[ch] += 1;
                        c.stats.published += 1;
                        owed += self.planned[ch];
                        if in_window {
                            c.in_window[ch] += 1;
                            c.stats.window_published += 1;
                        }
                    }
                    self.shared.owed.fetch_add(owed, Ordering::Relaxed);
                }
                Ok((status, answer)) => {
                    c.stats.failed_requests += 1;
                    c.stats.rejected += n;
                    let why = String::from_utf8_lossy(&answer[..answer.len().min(120)]);
                    *c.stats
                        .errors
                        .entry(format!("HTTP {status}: {why}"))
                        .or_default() += 1;
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    c.stats.failed_requests += 1;
                    *c.stats.errors.entry(format!("request: {e}")).or_default() += 1;
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
        c
    }
}

/// Read `/proc/PID/stat`: utime + stime in clock ticks.
fn proc_ticks(pid: u32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_ticks(&s)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/PID/stat"))
}

/// utime (field 14) + stime (field 15) of a `/proc/PID/stat` line; the
/// command name (field 2) may hold spaces, so count from its closing ')'.
fn parse_stat_ticks(s: &str) -> Option<u64> {
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf takes a constant and reads a system setting; no memory
    // is shared.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (time on a CPU, time runnable but waiting for one), in ns, from a
/// `schedstat` file: "run_ns wait_ns timeslices".
fn parse_schedstat(s: &str) -> Option<Sched> {
    let mut f = s.split_whitespace();
    let run = f.next()?.parse().ok()?;
    let wait = f.next()?.parse().ok()?;
    Some((run, wait))
}

/// The same, summed over the threads of process `pid` (threads that ended
/// are not counted; the gateway's do not end while it serves).
fn process_schedstat(pid: u32) -> io::Result<Sched> {
    let mut sum = (0, 0);
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = t?.path().join("schedstat");
        // A thread may end between the listing and the read.
        if let Some((r, w)) = std::fs::read_to_string(path)
            .ok()
            .as_deref()
            .and_then(parse_schedstat)
        {
            sum.0 += r;
            sum.1 += w;
        }
    }
    Ok(sum)
}

/// This thread's (run, wait) ns; zeros where schedstat is missing.
fn thread_schedstat() -> Sched {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .as_deref()
        .and_then(parse_schedstat)
        .unwrap_or((0, 0))
}

/// One sample of the gateway: when, CPU seconds, deliveries, ns waiting
/// for a CPU.
fn sample_server(http: &mut Http, pid: u32) -> io::Result<(Instant, f64, u64, u64)> {
    let (status, body) = http.get("/api/stats")?;
    if status != 200 {
        return Err(io::Error::other(format!("/api/stats: HTTP {status}")));
    }
    let v: Value = serde_json::from_slice(&body).map_err(io::Error::other)?;
    let deliveries = v["deliveries"].as_u64().unwrap_or(0);
    let cpu = proc_ticks(pid)? as f64 / clock_ticks_per_sec();
    let wait = process_schedstat(pid).map_or(0, |(_, w)| w);
    Ok((Instant::now(), cpu, deliveries, wait))
}

/// Sample the gateway at the window's start and end.
fn meter(job: &PubJob, pid: u32) -> io::Result<ServerUsage> {
    let t = &job.cfg.client.target;
    let mut http = Http::new(
        t,
        job.cfg.client.tls.clone(),
        job.cfg.publish.api_key.clone(),
    );
    let start = job.end - job.cfg.duration;
    // Once ahead, so that the first sample finds the process and the API
    // and costs no connection setup.
    sample_server(&mut http, pid)?;
    thread::sleep(start.saturating_duration_since(Instant::now()));
    let a = sample_server(&mut http, pid)?;
    log::debug!("first sample {:?} after the window's start", a.0 - start);
    thread::sleep(job.end.saturating_duration_since(Instant::now()));
    let b = sample_server(&mut http, pid)?;
    Ok(ServerUsage {
        pid,
        secs: b.0.duration_since(a.0).as_secs_f64(),
        cpu_secs: (b.1 - a.1).max(0.0),
        deliveries: b.2.saturating_sub(a.2),
        wait_secs: b.3.saturating_sub(a.3) as f64 / 1e9,
    })
}

/// Set the window on the board, starting now: publishing for `warmup`,
/// then the measured `duration`.
fn start_window(cfg: &SubConfig, board: &Board) -> io::Result<(Instant, u64, u64)> {
    let start = Instant::now();
    let ws = now_ns() + cfg.warmup.as_nanos() as u64;
    let we = ws + cfg.duration.as_nanos() as u64;
    board.set_window(ws, we)?;
    Ok((start, ws, we))
}

/// The publishing side: `publishers` threads until the window ends (or the
/// limit is reached), the meter thread with `server_pid`; then the counts
/// per channel go on the board. Bounded by the window plus one request.
fn run_publisher(
    cfg: &SubConfig,
    board: &Board,
    start: Instant,
    window: (u64, u64),
) -> PublishStats {
    let channels = cfg.channels.max(1);
    let to_end = Duration::from_nanos(window.1.saturating_sub(now_ns()));
    let job = PubJob {
        cfg: cfg.clone(),
        board: board.clone(),
        names: Arc::new(
            (0..channels)
                .map(|c| channel_name(&cfg.prefix, c))
                .collect(),
        ),
        planned: Arc::new(
            (0..channels)
                .map(|c| subscribers_of(cfg.total_conns, channels, c))
                .collect(),
        ),
        shared: Arc::new(PubShared {
            seq: AtomicU64::new(0),
            owed: AtomicU64::new(0),
        }),
        window,
        start,
        end: Instant::now() + to_end,
    };
    let p = &cfg.publish;
    let meter = p.server_pid.map(|pid| {
        let job = job.clone();
        thread::spawn(move || meter(&job, pid))
    });
    let threads: Vec<JoinHandle<Counted>> = (0..p.publishers.max(1))
        .map(|i| {
            let job = job.clone();
            thread::spawn(move || job.run(i))
        })
        .collect();
    let mut published = vec![0; channels as usize];
    let mut in_window = vec![0; channels as usize];
    let mut stats = PublishStats {
        publishers: p.publishers.max(1) as u64,
        batch: p.batch.max(1) as u64,
        size: p.size.max(DATA_OVERHEAD) as u64,
        rate: p.rate,
        max_lag: p.max_lag,
        ..PublishStats::default()
    };
    for t in threads {
        match t.join() {
            Ok(c) => {
                for (a, b) in published.iter_mut().zip(&c.published) {
                    *a += b;
                }
                for (a, b) in in_window.iter_mut().zip(&c.in_window) {
                    *a += b;
                }
                stats.merge(c.stats);
            }
            Err(_) => {
                *stats
                    .errors
                    .entry("publisher thread panicked".into())
                    .or_default() += 1;
            }
        }
    }
    if let Err(e) = board.finish(&published, &in_window) {
        log::error!("cannot write the board: {e}");
    }
    if let Some(m) = meter {
        match m.join() {
            Ok(Ok(u)) => stats.server = Some(u),
            Ok(Err(e)) => log::warn!("server CPU not measured: {e}"),
            Err(_) => log::warn!("server CPU not measured: meter thread panicked"),
        }
    }
    stats
}

// ------------------------------------------------------------- the runs --

/// An observer that starts the publisher when the subscribers are ready
/// (in the publishing process), after passing the news on.
struct Starter<'a> {
    cfg: SubConfig,
    board: Board,
    inner: &'a mut dyn Observer,
    publisher: Option<JoinHandle<PublishStats>>,
    error: Option<io::Error>,
}

impl<'a> Starter<'a> {
    fn new(cfg: &SubConfig, board: &Board, inner: &'a mut dyn Observer) -> Starter<'a> {
        Starter {
            cfg: cfg.clone(),
            board: board.clone(),
            inner,
            publisher: None,
            error: None,
        }
    }

    /// Wait for the publisher (bounded by the window) and take its counts.
    fn join(self) -> io::Result<PublishStats> {
        if let Some(e) = self.error {
            return Err(e);
        }
        match self.publisher {
            Some(h) => h.join().map_err(|_| io::Error::other("publisher panicked")),
            None => Ok(PublishStats::default()),
        }
    }
}

impl Observer for Starter<'_> {
    fn opening(&mut self, opened: u64, failed: u64, total: u64) {
        self.inner.opening(opened, failed, total);
    }

    fn ready(&mut self) {
        self.inner.ready();
        if self.publisher.is_some() || self.error.is_some() {
            return;
        }
        match start_window(&self.cfg, &self.board) {
            Ok((start, ws, we)) => {
                let (cfg, board) = (self.cfg.clone(), self.board.clone());
                self.publisher = Some(thread::spawn(move || {
                    run_publisher(&cfg, &board, start, (ws, we))
                }));
            }
            Err(e) => self.error = Some(e),
        }
    }
}

/// Run `sub` in this process: the subscribers on this thread, the
/// publishers on their own. Bounded as [`run_subscribers`] is.
pub fn run(cfg: &SubConfig, obs: &mut dyn Observer) -> io::Result<SubStats> {
    let board = Board::memory(1, cfg.channels.max(1) as usize);
    let mut starter = Starter::new(cfg, &board, obs);
    let subs = run_subscribers(cfg, &board, 0, &mut starter);
    let publish = starter.join()?;
    let mut s = subs?;
    s.publish = publish;
    Ok(s)
}

/// Run `sub` over `procs` child processes (this executable, re-run with
/// the child flags; see [`procs`]), publishing from this one. The board is
/// a file in the temporary directory, named to the children by
/// [`BOARD_ENV`], removed at the end.
pub fn run_parent(
    cfg: &SubConfig,
    procs: usize,
    obs: &mut dyn Observer,
) -> Result<SubStats, String> {
    let channels = cfg.channels.max(1) as usize;
    let path: PathBuf = std::env::temp_dir().join(format!(
        "wsgate-load-sub-{}-{}.board",
        std::process::id(),
        now_ns()
    ));
    let board = Board::create(&path, procs, channels)
        .map_err(|e| format!("cannot create the board {path:?}: {e}"))?;
    // Inherited by the children spawned below (no other thread runs yet).
    std::env::set_var(BOARD_ENV, &path);
    let shares: Vec<u64> = (0..procs)
        .map(|i| share(cfg.total_conns, i, procs))
        .collect();
    let mut starter = Starter::new(cfg, &board, obs);
    let merged = procs::run_children::<SubStats>(procs, &shares, &mut starter);
    let publish = starter.join();
    let _ = std::fs::remove_file(&path);
    let mut s = merged?;
    s.publish = publish.map_err(|e| e.to_string())?;
    s.channels = channels as u64;
    Ok(s)
}

/// A child's part of a `--procs` run: its subscribers, on the board that
/// [`BOARD_ENV`] names. `cfg` is already [`SubConfig::for_child`]'s.
pub fn run_child(
    cfg: &SubConfig,
    index: usize,
    procs: usize,
    obs: &mut dyn Observer,
) -> io::Result<SubStats> {
    let path = std::env::var_os(BOARD_ENV).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{BOARD_ENV} is not set (sub children are started by --procs)"),
        )
    })?;
    let board = Board::open(Path::new(&path), procs, cfg.channels.max(1) as usize)?;
    run_subscribers(cfg, &board, index, obs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_publications_as_the_gateway_writes_them() {
        let p = scan_publication(
            br#"{"channel":"bench:7","offset":42,"data":{"t":1700000000123456789,"pad":"xx"}}"#,
        );
        assert_eq!(
            p,
            Some(Publication {
                channel: b"bench:7",
                offset: 42,
                t: Some(1_700_000_000_123_456_789),
            })
        );
        // Other data: the offset still counts, no timestamp.
        let p = scan_publication(br#"{"channel":"a","offset":1,"data":[1,2]}"#).unwrap();
        assert_eq!((p.offset, p.t), (1, None));
        // Replies, notices, other shapes: left to the JSON parser.
        for other in [
            &br#"{"id":1,"ok":true,"channel":"a","epoch":"x","offset":0}"#[..],
            br#"{"channel":"a","dropped":{"reason":"slow consumer","offset":4}}"#,
            br#"{"channel":"a","offset":,"data":1}"#,
            br#"{"channel":"a","offset":99999999999999999999,"data":1}"#,
            b"",
        ] {
            assert_eq!(
                scan_publication(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn gaps_and_duplicates_per_connection() {
        let cfg_client =
            ClientConfig::new(super::super::Target::parse("ws://127.0.0.1:1/ws").unwrap());
        let cfg = SubConfig {
            client: cfg_client,
            total_conns: 1,
            first: 0,
            conns: 1,
            channels: 1,
            prefix: "b".into(),
            delta: false,
            waves: Waves::default(),
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            drain: Duration::ZERO,
            publish: PublishConfig {
                publishers: 1,
                rate: 0.0,
                batch: 1,
                size: 0,
                dashboard: false,
                max_lag: 0,
                limit: None,
                api_key: None,
                server_pid: None,
            },
        };
        let mut h = Subscribers::new(&cfg);
        let mut u = Sub {
            channel: 0,
            state: SubState::Waiting,
            last: 0,
            got: 0,
        };
        h.waiting = 1;
        h.other(
            &mut u,
            br#"{"id":1,"ok":true,"channel":"b:0","epoch":"e","offset":10}"#,
            0,
        );
        assert_eq!((u.state, u.last, h.live), (SubState::Live, 10, 1));
        for off in [11, 12, 12, 15, 14, 16] {
            h.publication(&mut u, off, None, 0);
        }
        assert_eq!(
            (h.s.received, h.s.duplicates, h.s.gaps, h.s.missing),
            (4, 2, 1, 2)
        );
        assert_eq!((u.got, h.live_got), (4, 4));
        h.other(
            &mut u,
            br#"{"channel":"b:0","dropped":{"reason":"slow consumer","offset":16}}"#,
            0,
        );
        assert_eq!(
            (u.state, h.live, h.live_got, h.s.drop_notices),
            (SubState::Dropped, 0, 0, 1)
        );
    }

    #[test]
    fn boards_in_memory_and_in_a_file_agree() {
        let path = std::env::temp_dir().join(format!("wsgate-sub-test-{}.board", now_ns()));
        let file = Board::create(&path, 2, 3).unwrap();
        let other = Board::open(&path, 2, 3).unwrap();
        assert!(Board::open(&path, 3, 3).is_err());
        for b in [Board::memory(2, 3), file] {
            assert_eq!(b.window().unwrap(), (0, 0));
            assert!(b.finished().unwrap().is_none());
            b.set_window(5, 9).unwrap();
            b.set_progress(0, 100, 4).unwrap();
            b.set_progress(1, 20, 1).unwrap();
            assert_eq!(b.progress().unwrap(), (120, 5));
            b.finish(&[1, 2, 3], &[0, 1, 2]).unwrap();
            assert_eq!(b.finished().unwrap(), Some((vec![1, 2, 3], vec![0, 1, 2])));
            assert_eq!(b.window().unwrap(), (5, 9));
        }
        // Another handle on the same file sees what was written.
        assert_eq!(other.progress().unwrap(), (120, 5));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn channels_spread_and_bodies() {
        assert_eq!(
            (0..3).map(|c| subscribers_of(10, 3, c)).collect::<Vec<_>>(),
            [4, 3, 3]
        );
        assert_eq!(subscribers_of(15_000, 1, 0), 15_000);
        let names: Vec<String> = (0..2).map(|c| channel_name("b", c)).collect();
        let mut out = Vec::new();
        batch_body(
            &mut out,
            &names,
            (3, 2),
            1_700_000_000_000_000_000,
            "xy",
            None,
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v[0]["channel"], "b:1");
        assert_eq!(v[1]["channel"], "b:0");
        assert_eq!(v[1]["data"]["t"].as_u64(), Some(1_700_000_000_000_000_000));
        let data = serde_json::to_string(&v[0]["data"]).unwrap();
        assert_eq!(data.len(), DATA_OVERHEAD + 2);
    }

    #[test]
    fn stat_lines() {
        let line =
            "1234 (wsgate worker) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1 1 1";
        assert_eq!(parse_stat_ticks(line), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert!(proc_ticks(std::process::id()).is_ok());
        assert_eq!(
            parse_schedstat("2849041749 6100852467 830\n"),
            Some((2849041749, 6100852467))
        );
        assert_eq!(parse_schedstat(""), None);
        let (run, _) = process_schedstat(std::process::id()).unwrap();
        assert!(run > 0);
    }

    #[test]
    fn http_responses() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n[1,2,3]";
        let mut buf = Vec::new();
        let (status, body, close) = read_response(&mut &raw[..], &mut buf).unwrap();
        assert_eq!(
            (status, body.as_slice(), close),
            (200, &b"[1,2,3]"[..], false)
        );
        let raw =
            b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}";
        let (status, _, close) = read_response(&mut &raw[..], &mut buf).unwrap();
        assert_eq!((status, close), (503, true));
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n[1]";
        assert!(read_response(&mut &short[..], &mut buf).is_err());
    }
}
