//! Abuse at scale, with legitimate clients working alongside and losing
//! nothing (SECURITY.md, "Abuse tests").
//!
//! The single-connection versions live in tests/bad_input.rs,
//! tests/admission.rs and tests/limits_max_connections.rs; here thousands of
//! abusive sockets hit a `wsgate` process at once:
//!
//! 1. 15,000 half-open handshakes (a partial request, nothing at all, or a
//!    header trickled byte by byte) are all cut at the handshake deadline;
//! 2. a connection flood past `max_connections` gets 503, and once it goes
//!    away new connections are accepted again;
//! 3. a ping flood (some flooders never read their pongs) is throttled by
//!    backpressure, memory stays bounded, and every ping is answered;
//! 4. oversized frames and messages get close 1009;
//! 5. invalid UTF-8 (whole or split across fragments) gets close 1007;
//! 6. random bytes, before or after the handshake, get 400 / 1002 / 1007 /
//!    1009 (exactly as the protocol core predicts for those bytes) or are
//!    dropped by the timers; nothing hangs and the gateway stays up;
//! 7. a channel churn (new names subscribed and left as fast as possible)
//!    is refused past `limits.channel_rate`, leaves positions only (at most
//!    `limits.max_channels`), and memory stays bounded;
//! 8. replays of big history by clients that never read are paced by each
//!    one's out queue (long-poll, SSE, WebSocket): memory stays bounded;
//! 9. a history flood stays within `limits.history_memory`.
//!
//! During each, "bystanders" keep working: a long-lived /echo client and one
//! that reconnects again and again exchange numbered messages and must get
//! every one back in order; a /ws subscriber must receive every publication
//! made through `POST /api/publish` meanwhile, with contiguous offsets.
//!
//! The gateway runs as a separate process (the binary, on a free port, killed
//! by a guard even when a test panics): one process holding both ends of
//! 15,000 connections would need 30,000 descriptors. The abusive sockets are
//! non-blocking, driven by one mio loop ([`Swarm`]), and bound to source
//! addresses 127.0.0.2… so that ephemeral ports and TIME_WAIT entries of one
//! run do not collide with the next. The scenarios are serialised (a static
//! mutex) so that their descriptors do not add up.
//!
//! Nothing asserts on speed: every deadline is generous and only bounds an
//! outcome that must happen. The figures (RSS, timings) are printed; run
//! with `--nocapture` to see them.

#[path = "support/gateway.rs"]
mod gateway_support;
#[path = "support/process.rs"]
mod process;

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream as StdTcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::json;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

use gateway_support::{parse_response, Client, HttpResponse, NoMessage};
use process::Wsgate;

// ------------------------------------------------------------ constants --

/// How long a legitimate client waits for anything before it calls it lost.
const LEGIT_WAIT: Duration = Duration::from_secs(30);
/// Echoes and publications the bystanders must get while an attack runs
/// (the attack is kept up until they have, within [`LEGIT_WAIT`]).
const PROGRESS: u64 = 5;
/// Source addresses 127.0.0.2 ..= 127.0.0.(1 + SRC_IPS) for abusive sockets.
const SRC_IPS: usize = 32;
/// Connects in flight at once (the rest wait their turn).
const MAX_CONNECTING: usize = 512;
/// The channel the bystander publisher and subscriber use.
const CHANNEL: &str = "abuse-feed";
/// A valid `Sec-WebSocket-Key` (RFC 6455 §1.3's example).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

// ------------------------------------------------------------ serialise --

/// The scenarios run one at a time: each opens thousands of descriptors and
/// the process may hold 20,000.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    wsgate::server::sys::raise_nofile_limit().expect("raise the open-file limit");
    g
}

// --------------------------------------------------------------- gateway --

/// A `wsgate` process on a free port; killed when dropped (also when the
/// test panics).
struct Gateway {
    p: Wsgate,
    addr: SocketAddr,
    /// A kept-alive connection for `/metrics` (a full gateway answers new
    /// connections 503).
    admin: Option<KeepAlive>,
}

impl Gateway {
    /// Start the binary with two workers and `args` (after `--listen` and
    /// `--workers`); wait until `/healthz` answers.
    fn start(name: &str, args: &[&str]) -> Gateway {
        let mut all = vec!["--workers", "2"];
        all.extend_from_slice(args);
        let p = Wsgate::start(&format!("abuse-{name}"), &all, &[("RUST_LOG", "error")]);
        let mut gw = Gateway {
            addr: p.addr,
            p,
            admin: None,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            gw.assert_alive();
            if matches!(http_once(gw.addr, "GET", "/healthz", b""), Ok(r) if r.status == 200) {
                break;
            }
            assert!(Instant::now() < deadline, "wsgate did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        gw
    }

    /// The process is still running and logged no panic.
    fn assert_alive(&mut self) {
        let log = self.p.log_text();
        if let Some(status) = self.p.exited() {
            panic!("the gateway exited ({status}); its log:\n{log}");
        }
        assert!(!log.contains("panicked"), "the gateway panicked:\n{log}");
    }

    fn rss_mib(&self) -> f64 {
        self.p.status_kib("VmRSS") as f64 / 1024.0
    }

    /// Peak RSS since the process started.
    fn peak_rss_mib(&self) -> f64 {
        self.p.status_kib("VmHWM") as f64 / 1024.0
    }

    /// Keep one connection open for `/metrics` from now on.
    fn keep_admin(&mut self) {
        self.admin = Some(KeepAlive::new(self.addr));
    }

    /// `GET /metrics`, summed over labels.
    fn metrics(&mut self) -> Metrics {
        let r = match self.admin.as_mut() {
            Some(a) => a.request("GET", "/metrics", b""),
            None => http_once(self.addr, "GET", "/metrics", b""),
        }
        .expect("GET /metrics");
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        let mut m = HashMap::new();
        for line in r.text().lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = name.split('{').next().unwrap_or(name).to_string();
            if let Ok(v) = value.parse::<f64>() {
                *m.entry(name).or_insert(0.0) += v;
            }
        }
        Metrics(m)
    }

    /// Wait until the gateway holds at most `n` connections.
    fn wait_connections_at_most(&mut self, n: u64, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let c = self.metrics().get("wsgate_connections");
            if c <= n {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway still holds {c} connections (want at most {n}) after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

struct Metrics(HashMap<String, f64>);

impl Metrics {
    fn get(&self, name: &str) -> u64 {
        *self
            .0
            .get(name)
            .unwrap_or_else(|| panic!("no metric {name} in /metrics")) as u64
    }
}

// ------------------------------------------------------------------ HTTP --

/// One request on a fresh connection (`Connection: close`), read to EOF.
/// Errors instead of panicking (the caller decides).
fn http_once(
    addr: SocketAddr,
    method: &str,
    target: &str,
    body: &[u8],
) -> io::Result<HttpResponse> {
    let mut sock = StdTcpStream::connect(addr)?;
    sock.set_read_timeout(Some(LEGIT_WAIT))?;
    sock.set_write_timeout(Some(LEGIT_WAIT))?;
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: wsgate.test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(req.as_bytes())?;
    sock.write_all(body)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match sock.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && !buf.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    parse_response(&buf, true).map(|(r, _)| r).ok_or_else(|| {
        io::Error::other(format!(
            "incomplete response {:?}",
            String::from_utf8_lossy(&buf)
        ))
    })
}

/// A kept-alive HTTP connection (reconnects once if the gateway closed it).
struct KeepAlive {
    addr: SocketAddr,
    sock: Option<StdTcpStream>,
    buf: Vec<u8>,
    /// Connections opened (for the accounting of timeouts).
    opened: u64,
}

impl KeepAlive {
    fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive {
            addr,
            sock: None,
            buf: Vec::new(),
            opened: 0,
        }
    }

    fn request(&mut self, method: &str, target: &str, body: &[u8]) -> io::Result<HttpResponse> {
        match self.try_request(method, target, body) {
            Ok(r) => Ok(r),
            Err(_) => {
                self.sock = None;
                self.try_request(method, target, body)
            }
        }
    }

    fn try_request(&mut self, method: &str, target: &str, body: &[u8]) -> io::Result<HttpResponse> {
        if self.sock.is_none() {
            let s = StdTcpStream::connect(self.addr)?;
            s.set_read_timeout(Some(LEGIT_WAIT))?;
            s.set_write_timeout(Some(LEGIT_WAIT))?;
            self.sock = Some(s);
            self.buf.clear();
            self.opened += 1;
        }
        let sock = self.sock.as_mut().expect("connected above");
        let req = format!(
            "{method} {target} HTTP/1.1\r\nHost: wsgate.test\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        sock.write_all(&bytes)?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some((r, used)) = parse_response(&self.buf, false) {
                self.buf.drain(..used);
                return Ok(r);
            }
            match sock.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

// ------------------------------------------------------------ bystanders --

/// How the bystanders reach the gateway.
#[derive(Clone, Copy)]
struct BystanderOpts {
    /// Run the client that opens a new /echo connection every few messages
    /// (off while the gateway is meant to be full).
    fresh_echo: bool,
    /// Publish on one kept-alive connection instead of a new one each time.
    keep_alive_publish: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct EchoStats {
    messages: u64,
    connections: u64,
    max_rtt: Duration,
}

/// What the publisher published ((offset, n) each) and the connections
/// it used.
type Published = (Vec<(u64, u64)>, u64);

/// Legitimate clients running alongside an attack, in threads.
struct Bystanders {
    stop: Arc<AtomicBool>,
    /// Echoes received and publications delivered so far (live).
    echoes: Arc<AtomicU64>,
    delivered: Arc<AtomicU64>,
    echo_long: Option<JoinHandle<EchoStats>>,
    echo_fresh: Option<JoinHandle<EchoStats>>,
    publisher: Option<JoinHandle<Published>>,
    subscriber: Option<JoinHandle<Vec<(u64, u64)>>>,
}

/// What the bystanders did; every check passed.
struct BystanderReport {
    echo_long: EchoStats,
    echo_fresh: EchoStats,
    publications: usize,
    /// TCP connections the bystanders opened (for the timeout accounting).
    connections: u64,
}

impl std::fmt::Display for BystanderReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (l, fr) = (&self.echo_long, &self.echo_fresh);
        write!(
            f,
            "{} echoes on one connection (slowest {:.0?}), {} on {} fresh connections (slowest \
             {:.0?}), {} publications all received in order",
            l.messages, l.max_rtt, fr.messages, fr.connections, fr.max_rtt, self.publications
        )
    }
}

impl Drop for Bystanders {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn panic_message(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

fn join<T>(name: &str, h: Option<JoinHandle<T>>) -> T {
    h.expect("joined once")
        .join()
        .unwrap_or_else(|e| panic!("bystander {name} failed: {}", panic_message(e)))
}

impl Bystanders {
    /// Start them; returns once the subscriber is subscribed and the
    /// long-lived echo client is connected.
    fn start(addr: SocketAddr, opts: BystanderOpts) -> Bystanders {
        let stop = Arc::new(AtomicBool::new(false));
        let echoes = Arc::new(AtomicU64::new(0));
        let delivered = Arc::new(AtomicU64::new(0));
        let last_published = Arc::new(AtomicU64::new(u64::MAX));

        let (ready_tx, ready_rx) = mpsc::channel();
        let subscriber = {
            let stop = stop.clone();
            let last = last_published.clone();
            let ready = ready_tx.clone();
            let delivered = delivered.clone();
            std::thread::Builder::new()
                .name("bystander-subscriber".into())
                .spawn(move || subscriber(addr, stop, last, ready, delivered))
                .unwrap()
        };
        let echo_long = {
            let stop = stop.clone();
            let ready = ready_tx.clone();
            let echoes = echoes.clone();
            std::thread::Builder::new()
                .name("bystander-echo-long".into())
                .spawn(move || echo_client(addr, stop, "long", u64::MAX, Some(ready), echoes))
                .unwrap()
        };
        for _ in 0..2 {
            ready_rx
                .recv_timeout(LEGIT_WAIT)
                .expect("bystanders connected and subscribed");
        }
        let publisher = {
            let stop = stop.clone();
            let keep = opts.keep_alive_publish;
            std::thread::Builder::new()
                .name("bystander-publisher".into())
                .spawn(move || publisher(addr, stop, last_published, keep))
                .unwrap()
        };
        let echo_fresh = opts.fresh_echo.then(|| {
            let stop = stop.clone();
            let echoes = echoes.clone();
            std::thread::Builder::new()
                .name("bystander-echo-fresh".into())
                .spawn(move || echo_client(addr, stop, "fresh", 5, None, echoes))
                .unwrap()
        });
        Bystanders {
            stop,
            echoes,
            delivered,
            echo_long: Some(echo_long),
            echo_fresh,
            publisher: Some(publisher),
            subscriber: Some(subscriber),
        }
    }

    /// (echoes received, publications delivered) so far.
    fn progress(&self) -> (u64, u64) {
        (
            self.echoes.load(Ordering::Acquire),
            self.delivered.load(Ordering::Acquire),
        )
    }

    /// Have the bystanders got at least `n` more echoes and `n` more
    /// publications since `mark` (from [`Bystanders::progress`])?
    /// Panics if a bystander failed meanwhile.
    fn progressed(&self, mark: (u64, u64), n: u64) -> bool {
        for (name, ended) in [
            (
                "echo-long",
                self.echo_long.as_ref().map(|h| h.is_finished()),
            ),
            (
                "echo-fresh",
                self.echo_fresh.as_ref().map(|h| h.is_finished()),
            ),
            (
                "publisher",
                self.publisher.as_ref().map(|h| h.is_finished()),
            ),
            (
                "subscriber",
                self.subscriber.as_ref().map(|h| h.is_finished()),
            ),
        ] {
            // Running bystanders only end by failing.
            assert!(
                ended != Some(true),
                "bystander {name} failed (its panic message is above)"
            );
        }
        let (e, d) = self.progress();
        e >= mark.0 + n && d >= mark.1 + n
    }

    /// Panic now if a bystander already failed.
    fn check(&mut self) {
        fn ended<T>(name: &str, h: &mut Option<JoinHandle<T>>) {
            if h.as_ref().is_some_and(|h| h.is_finished()) {
                // A bystander only ends early by failing: joining it panics
                // with its message.
                join(name, h.take());
                panic!("bystander {name} ended early");
            }
        }
        ended("echo-long", &mut self.echo_long);
        ended("echo-fresh", &mut self.echo_fresh);
        ended("publisher", &mut self.publisher);
        ended("subscriber", &mut self.subscriber);
    }

    /// Stop them and check that nothing was lost.
    fn finish(mut self) -> BystanderReport {
        self.check();
        self.stop.store(true, Ordering::Release);
        let echo_long = join("echo-long", self.echo_long.take());
        let echo_fresh = self
            .echo_fresh
            .take()
            .map(|h| join("echo-fresh", Some(h)))
            .unwrap_or_default();
        let (published, publish_conns) = join("publisher", self.publisher.take());
        let received = join("subscriber", self.subscriber.take());
        assert!(!published.is_empty(), "the publisher published nothing");
        // Offsets contiguous, and exactly what was published, in order.
        for w in published.windows(2) {
            assert_eq!(w[1].0, w[0].0 + 1, "publish offsets not contiguous: {w:?}");
        }
        if received != published {
            let missing: Vec<_> = published.iter().filter(|p| !received.contains(p)).collect();
            panic!(
                "the subscriber lost publications: {} published, {} received; missing {:?}; \
                 first received {:?}, last {:?}",
                published.len(),
                received.len(),
                &missing[..missing.len().min(20)],
                received.first(),
                received.last()
            );
        }
        BystanderReport {
            echo_long,
            echo_fresh,
            publications: published.len(),
            connections: echo_long.connections + echo_fresh.connections + publish_conns + 1,
        }
    }
}

/// A tungstenite /echo client (blocking, with read timeouts).
fn ws_echo_connect(addr: SocketAddr) -> tungstenite::WebSocket<StdTcpStream> {
    let req = format!("ws://{addr}/echo").into_client_request().unwrap();
    let sock = StdTcpStream::connect(addr).expect("bystander connect");
    sock.set_read_timeout(Some(LEGIT_WAIT)).unwrap();
    sock.set_write_timeout(Some(LEGIT_WAIT)).unwrap();
    sock.set_nodelay(true).unwrap();
    match tungstenite::client::client(req, sock) {
        Ok((ws, _)) => ws,
        Err(e) => panic!("bystander /echo handshake failed: {e:?}"),
    }
}

/// Send numbered messages on /echo, each answered before the next, in
/// order; a new connection every `per_conn` messages.
fn echo_client(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    tag: &str,
    per_conn: u64,
    ready: Option<mpsc::Sender<()>>,
    progress: Arc<AtomicU64>,
) -> EchoStats {
    let mut st = EchoStats::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        let mut ws = ws_echo_connect(addr);
        st.connections += 1;
        if let Some(r) = &ready {
            let _ = r.send(());
        }
        for _ in 0..per_conn {
            if stop.load(Ordering::Acquire) {
                break;
            }
            let msg = format!("{tag} #{n} {}", "x".repeat((n % 64) as usize));
            let t0 = Instant::now();
            ws.send(Message::Text(msg.clone()))
                .unwrap_or_else(|e| panic!("{tag}: send #{n}: {e}"));
            loop {
                match ws.read() {
                    Ok(Message::Text(t)) => {
                        assert_eq!(t, msg, "{tag}: echo #{n} differs (lost or out of order)");
                        break;
                    }
                    Ok(Message::Ping(_) | Message::Pong(_)) => {}
                    Ok(other) => panic!("{tag}: unexpected {other:?} instead of echo #{n}"),
                    Err(e) => panic!("{tag}: no echo for #{n} within {LEGIT_WAIT:?}: {e}"),
                }
            }
            st.max_rtt = st.max_rtt.max(t0.elapsed());
            n += 1;
            st.messages += 1;
            progress.fetch_add(1, Ordering::AcqRel);
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = ws.close(None);
        while ws.read().is_ok() {}
    }
    st
}

/// Publish `{"n": i}` to [`CHANNEL`] every 20 ms; returns (offset, n) of
/// each and the connections used. Stores the last offset in `last` when
/// done.
fn publisher(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    last: Arc<AtomicU64>,
    keep_alive: bool,
) -> (Vec<(u64, u64)>, u64) {
    let mut out = Vec::new();
    let mut ka = KeepAlive::new(addr);
    let mut conns = 0;
    let mut n = 0u64;
    // At least one publication, even if stopped at once.
    while n == 0 || !stop.load(Ordering::Acquire) {
        let body = serde_json::to_vec(&json!({ "channel": CHANNEL, "data": { "n": n } })).unwrap();
        let r = if keep_alive {
            ka.request("POST", "/api/publish", &body)
        } else {
            conns += 1;
            http_once(addr, "POST", "/api/publish", &body)
        }
        .unwrap_or_else(|e| panic!("publish #{n}: {e}"));
        assert_eq!(r.status, 200, "publish #{n}: {}", r.text());
        let off = r.json()["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("publish #{n}: no offset in {}", r.text()));
        out.push((off, n));
        n += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    last.store(out.last().expect("one at least").0, Ordering::Release);
    (out, conns + ka.opened)
}

/// Subscribe to [`CHANNEL`] on /ws and record every publication until the
/// publisher's last one has arrived.
fn subscriber(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    last: Arc<AtomicU64>,
    ready: mpsc::Sender<()>,
    progress: Arc<AtomicU64>,
) -> Vec<(u64, u64)> {
    let mut c = Client::connect(addr, "/ws");
    c.subscribe(CHANNEL);
    let _ = ready.send(());
    let mut got: Vec<(u64, u64)> = Vec::new();
    let mut waiting_since: Option<Instant> = None;
    loop {
        let target = last.load(Ordering::Acquire);
        if target != u64::MAX && got.last().is_some_and(|&(o, _)| o >= target) {
            break;
        }
        match c.try_next(Duration::from_millis(200)) {
            Ok(m)
                if m.get("id").is_none() && m["channel"] == CHANNEL && m.get("data").is_some() =>
            {
                let off = m["offset"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no offset: {m}"));
                let n = m["data"]["n"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no n: {m}"));
                got.push((off, n));
                progress.fetch_add(1, Ordering::AcqRel);
            }
            Ok(_) => {}
            Err(NoMessage::Timeout) => {}
            Err(NoMessage::Closed(code)) => panic!("the subscriber was closed ({code:?})"),
        }
        if stop.load(Ordering::Acquire) {
            let since = *waiting_since.get_or_insert_with(Instant::now);
            assert!(
                since.elapsed() < LEGIT_WAIT,
                "subscriber: publications up to offset {target} not all received within \
                 {LEGIT_WAIT:?} (last received {:?})",
                got.last()
            );
        }
    }
    c.close();
    got
}

// ----------------------------------------------------------------- swarm --

/// What one abusive socket does.
#[derive(Clone, Default)]
struct Plan {
    /// A label for reports and per-kind checks.
    kind: &'static str,
    /// Sent as soon as the connection is up (all of it, as fast as the
    /// socket takes it).
    send: Arc<Vec<u8>>,
    /// Then these bytes, one every so often (slowloris).
    trickle: Option<(Arc<Vec<u8>>, Duration)>,
    /// Then ping frames with this payload size (8..=125 bytes, a sequence
    /// number first), as fast as the socket takes them, while the swarm
    /// floods.
    ping_flood: Option<usize>,
    /// Read what the server sends; a peer that does not read never learns
    /// that it was closed.
    read: bool,
    /// SO_RCVBUF before connecting.
    rcvbuf: Option<usize>,
    /// Flooders: bytes read per turn of the swarm's loop (default 1 MiB); a
    /// small one makes a reader slower than its own flood.
    read_budget: Option<usize>,
    /// What the server must do, for the checks after the run.
    expect: Expect,
}

/// What the server must do with a socket's bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Expect {
    /// Nothing checked by the swarm.
    #[default]
    Any,
    /// An HTTP response with this status, then EOF.
    Http(u16),
    /// Nothing at all, then EOF or reset (a timer dropped it).
    Silence,
    /// 101, then a close frame with this code, then EOF.
    Close(u16),
    /// 101, then the server's answer to the peer's close frame (this code
    /// echoed, or an empty close), then EOF.
    CloseEcho(Option<u16>),
    /// 101, then no close frame: a timer drops it (ping, pong timeout).
    DroppedAfterUpgrade,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndKind {
    Eof,
    Reset,
    Error(io::ErrorKind),
}

/// What the server sent to one socket, parsed as it arrives.
#[derive(Default)]
struct Rx {
    buf: Vec<u8>,
    bytes: u64,
    status: Option<u16>,
    head: String,
    body: u64,
    data_frames: u64,
    /// The first data frames (opcode, payload), for checks.
    data: Vec<(u8, Vec<u8>)>,
    pings: u64,
    pongs: u64,
    /// Pongs must carry the sequence numbers of our ping flood, in order.
    check_pongs: bool,
    next_pong: u64,
    close: Option<Vec<u8>>,
    after_close: u64,
    error: Option<String>,
}

impl Rx {
    fn feed(&mut self, bytes: &[u8]) {
        self.bytes += bytes.len() as u64;
        if self.close.is_some() {
            self.after_close += bytes.len() as u64;
            return;
        }
        if self.status.is_some_and(|s| s != 101) {
            self.body += bytes.len() as u64;
            return;
        }
        self.buf.extend_from_slice(bytes);
        if self.status.is_none() {
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                if self.buf.len() > 64 * 1024 {
                    self.error = Some("no end of response head in 64 KiB".into());
                }
                return;
            };
            let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            let status = head
                .strip_prefix("HTTP/1.1 ")
                .and_then(|r| r.get(..3))
                .and_then(|s| s.parse().ok());
            let Some(status) = status else {
                self.error = Some(format!("not an HTTP/1.1 response: {head:?}"));
                self.status = Some(0);
                return;
            };
            self.status = Some(status);
            self.head = head;
            self.buf.drain(..end + 4);
            if status != 101 {
                self.body += self.buf.len() as u64;
                self.buf.clear();
                return;
            }
        }
        self.parse_frames();
    }

    fn parse_frames(&mut self) {
        let mut pos = 0;
        loop {
            // The ping flood's pongs, quickly (debug builds are slow).
            while self.check_pongs
                && self.buf.len() - pos >= 2 + 125
                && self.buf[pos] == 0x80 | OP_PONG
                && self.buf[pos + 1] == 125
            {
                let seq = u64::from_be_bytes(self.buf[pos + 2..pos + 10].try_into().unwrap());
                if seq != self.next_pong && self.error.is_none() {
                    self.error = Some(format!(
                        "pong for ping #{seq}, expected #{}",
                        self.next_pong
                    ));
                }
                self.next_pong = seq + 1;
                self.pongs += 1;
                pos += 2 + 125;
            }
            let p = &self.buf[pos..];
            if p.len() < 2 {
                break;
            }
            if p[1] & 0x80 != 0 {
                self.error = Some(format!("server frame masked: {:02x?}", &p[..2]));
                pos = self.buf.len();
                break;
            }
            let (len, hl) = match p[1] & 0x7F {
                126 if p.len() < 4 => break,
                126 => (u16::from_be_bytes([p[2], p[3]]) as usize, 4),
                127 if p.len() < 10 => break,
                127 => (
                    u64::from_be_bytes(p[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            if p.len() < hl + len {
                break;
            }
            let (b0, payload) = (p[0], &p[hl..hl + len]);
            let opcode = b0 & 0x0F;
            match opcode {
                OP_PONG => {
                    if self.check_pongs && payload.len() >= 8 {
                        let seq = u64::from_be_bytes(payload[..8].try_into().unwrap());
                        if seq != self.next_pong && self.error.is_none() {
                            self.error = Some(format!(
                                "pong for ping #{seq}, expected #{}",
                                self.next_pong
                            ));
                        }
                        self.next_pong = seq + 1;
                    }
                    self.pongs += 1;
                }
                OP_PING => self.pings += 1,
                OP_CLOSE => {
                    if payload.len() > 125 || b0 & 0x80 == 0 {
                        self.error = Some("invalid close frame from the server".into());
                    }
                    self.close = Some(payload.to_vec());
                    pos += hl + len;
                    self.after_close += (self.buf.len() - pos) as u64;
                    pos = self.buf.len();
                    break;
                }
                _ => {
                    self.data_frames += 1;
                    if self.data.len() < 16 {
                        self.data.push((opcode, payload.to_vec()));
                    }
                }
            }
            pos += hl + len;
        }
        self.buf.drain(..pos);
    }

    fn close_code(&self) -> Option<u16> {
        self.close
            .as_ref()
            .and_then(|p| (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]])))
    }
}

struct Peer {
    plan: Plan,
    sock: Option<TcpStream>,
    connected_at: Option<Instant>,
    sent: usize,
    trickled: usize,
    next_trickle: Option<Instant>,
    flood: Vec<u8>,
    flood_pos: usize,
    /// Ping frames generated (all are written before the flood counts as
    /// done).
    pings: u64,
    /// The socket may take more bytes (no WouldBlock since the last write).
    writable: bool,
    /// The socket may have more to read.
    readable: bool,
    bytes_out: u64,
    /// When a write last took bytes.
    last_write: Option<Instant>,
    write_error: Option<io::ErrorKind>,
    reading: bool,
    rx: Rx,
    end: Option<(Instant, EndKind)>,
}

impl Peer {
    fn lifetime(&self) -> Option<Duration> {
        Some(self.end?.0.duration_since(self.connected_at?))
    }

    fn flood_done(&self) -> bool {
        self.flood_pos == self.flood.len()
    }

    fn describe(&self) -> String {
        format!(
            "kind {} connected {} sent {}/{} out {} rx {} bytes (status {:?}, {} data frames, \
             close {:?}, {} after close, error {:?}) end {:?} write error {:?}",
            self.plan.kind,
            self.connected_at.is_some(),
            self.sent,
            self.plan.send.len(),
            self.bytes_out,
            self.rx.bytes,
            self.rx.status,
            self.rx.data_frames,
            self.rx.close_code(),
            self.rx.after_close,
            self.rx.error,
            self.end.map(|e| e.1),
            self.write_error,
        )
    }
}

/// Thousands of non-blocking client sockets driven by one mio loop.
struct Swarm {
    poll: Poll,
    events: Events,
    addr: SocketAddr,
    peers: Vec<Peer>,
    next_open: usize,
    connecting: usize,
    open: usize,
    peak_open: usize,
    flooding: bool,
    trickling: Vec<usize>,
    flooders: Vec<usize>,
    scratch: Vec<u8>,
    started: Instant,
    all_connected_at: Option<Instant>,
}

impl Swarm {
    fn new(addr: SocketAddr, plans: Vec<Plan>) -> Swarm {
        let peers: Vec<Peer> = plans
            .into_iter()
            .map(|plan| Peer {
                rx: Rx {
                    check_pongs: plan.ping_flood.is_some(),
                    ..Rx::default()
                },
                reading: plan.read,
                plan,
                sock: None,
                connected_at: None,
                sent: 0,
                trickled: 0,
                next_trickle: None,
                flood: Vec::new(),
                flood_pos: 0,
                pings: 0,
                writable: false,
                readable: false,
                bytes_out: 0,
                last_write: None,
                write_error: None,
                end: None,
            })
            .collect();
        let trickling = (0..peers.len())
            .filter(|&i| peers[i].plan.trickle.is_some())
            .collect();
        let flooders = (0..peers.len())
            .filter(|&i| peers[i].plan.ping_flood.is_some())
            .collect();
        Swarm {
            poll: Poll::new().expect("poll"),
            events: Events::with_capacity(4096),
            addr,
            peers,
            next_open: 0,
            connecting: 0,
            open: 0,
            peak_open: 0,
            flooding: true,
            trickling,
            flooders,
            scratch: vec![0; 64 * 1024],
            started: Instant::now(),
            all_connected_at: None,
        }
    }

    fn len(&self) -> usize {
        self.peers.len()
    }

    fn ended(&self) -> usize {
        self.peers.iter().filter(|p| p.end.is_some()).count()
    }

    fn all_ended(&self) -> bool {
        self.ended() == self.peers.len()
    }

    fn all_connected(&self) -> bool {
        self.peers.iter().all(|p| p.connected_at.is_some())
    }

    fn summary(&self) -> String {
        let mut kinds: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
        for p in &self.peers {
            let e = kinds.entry(p.plan.kind).or_default();
            e.0 += 1;
            e.1 += p.connected_at.is_some() as usize;
            e.2 += p.end.is_some() as usize;
        }
        let mut s = format!(
            "{} peers, {} opened, {} open now (peak {}); per kind (total, connected, ended): \
             {kinds:?}",
            self.peers.len(),
            self.next_open,
            self.open,
            self.peak_open
        );
        if let Some(p) = self.peers.iter().find(|p| p.end.is_none()) {
            s.push_str(&format!("; first not ended: {}", p.describe()));
        }
        s
    }

    /// Open the next socket, bound to the next source address.
    fn open_next(&mut self) {
        let i = self.next_open;
        self.next_open += 1;
        let src = Ipv4Addr::new(127, 0, 0, 2 + (i % SRC_IPS) as u8);
        let mut sock = connect_from(src, self.addr, self.peers[i].plan.rcvbuf)
            .unwrap_or_else(|e| panic!("connect #{i} from {src}: {e}"));
        self.poll
            .registry()
            .register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)
            .expect("register");
        self.peers[i].sock = Some(sock);
        self.connecting += 1;
    }

    /// One turn of the loop: open more, handle events, trickle and flood.
    fn step(&mut self) {
        while self.connecting < MAX_CONNECTING && self.next_open < self.peers.len() {
            self.open_next();
        }
        let timeout = if self.trickling.is_empty() {
            Duration::from_millis(20)
        } else {
            Duration::from_millis(5)
        };
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            assert_eq!(e.kind(), io::ErrorKind::Interrupted, "poll: {e}");
        }
        let ready: Vec<(usize, bool, bool)> = self
            .events
            .iter()
            .map(|ev| {
                (
                    ev.token().0,
                    ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                    ev.is_writable() || ev.is_error(),
                )
            })
            .collect();
        for (i, r, w) in ready {
            if self.peers[i].sock.is_none() {
                continue;
            }
            if self.peers[i].connected_at.is_none() && !self.check_connected(i) {
                continue;
            }
            let p = &mut self.peers[i];
            p.readable |= r;
            p.writable |= w;
            self.pump(i);
            self.read(i);
        }
        // Slowloris: one more byte each, when due.
        let now = Instant::now();
        for k in 0..self.trickling.len() {
            let i = self.trickling[k];
            let p = &mut self.peers[i];
            let (Some(sock), Some((bytes, every))) = (p.sock.as_mut(), p.plan.trickle.clone())
            else {
                continue;
            };
            if p.connected_at.is_none() || p.sent < p.plan.send.len() || p.trickled >= bytes.len() {
                continue;
            }
            let due = *p.next_trickle.get_or_insert(now + every);
            if due > now {
                continue;
            }
            match sock.write(&bytes[p.trickled..p.trickled + 1]) {
                Ok(n) => {
                    p.trickled += n;
                    p.bytes_out += n as u64;
                    p.next_trickle = Some(now + every);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => p.write_error = Some(e.kind()),
            }
        }
        // Flooders and readers that stopped at their per-turn cap.
        for k in 0..self.flooders.len() {
            let i = self.flooders[k];
            self.pump(i);
            self.read(i);
        }
        if self.all_connected_at.is_none() && self.all_connected() {
            self.all_connected_at = Some(Instant::now());
        }
    }

    /// A connect finished (or failed). Returns whether it is connected.
    fn check_connected(&mut self, i: usize) -> bool {
        let now = Instant::now();
        let p = &mut self.peers[i];
        let sock = p.sock.as_mut().expect("open");
        let failed = match sock.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match sock.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return false,
                Err(e) => Some(e),
            },
        };
        self.connecting -= 1;
        match failed {
            Some(e) => {
                p.end = Some((now, EndKind::Error(e.kind())));
                p.sock = None;
                false
            }
            None => {
                p.connected_at = Some(now);
                p.writable = true;
                p.readable = true;
                self.open += 1;
                self.peak_open = self.peak_open.max(self.open);
                true
            }
        }
    }

    /// Write what is due: `send` until the socket pushes back, flood
    /// batches up to a cap per turn (flooders are revisited every turn).
    fn pump(&mut self, i: usize) {
        let flooding = self.flooding;
        let p = &mut self.peers[i];
        let Some(sock) = p.sock.as_mut() else {
            return;
        };
        if !p.writable || p.connected_at.is_none() || p.write_error.is_some() {
            return;
        }
        let mut budget = 256 * 1024usize;
        loop {
            let from_send = p.sent < p.plan.send.len();
            let buf: &[u8] = if from_send {
                &p.plan.send[p.sent..]
            } else if let Some(size) = p.plan.ping_flood {
                if p.flood_pos == p.flood.len() {
                    if !flooding || budget == 0 {
                        return;
                    }
                    ping_batch(&mut p.flood, &mut p.pings, size, 512);
                    p.flood_pos = 0;
                }
                &p.flood[p.flood_pos..]
            } else {
                return;
            };
            match sock.write(buf) {
                Ok(n) => {
                    if from_send {
                        p.sent += n;
                    } else {
                        p.flood_pos += n;
                        budget = budget.saturating_sub(n);
                    }
                    p.bytes_out += n as u64;
                    p.last_write = Some(Instant::now());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    p.writable = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    p.write_error = Some(e.kind());
                    if !p.reading && p.end.is_none() {
                        p.end = Some((Instant::now(), EndKind::Reset));
                    }
                    return;
                }
            }
        }
    }

    /// Read what is there, up to a cap per turn.
    fn read(&mut self, i: usize) {
        let p = &mut self.peers[i];
        let Some(sock) = p.sock.as_mut() else {
            return;
        };
        if !p.reading || !p.readable || p.connected_at.is_none() {
            return;
        }
        // Flooders are revisited every turn: they read a bounded amount per
        // turn so that one cannot starve the others.
        let mut budget = if p.plan.ping_flood.is_some() {
            p.plan.read_budget.unwrap_or(1 << 20)
        } else {
            usize::MAX
        };
        let end = loop {
            if budget == 0 {
                return;
            }
            match sock.read(&mut self.scratch) {
                Ok(0) => break EndKind::Eof,
                Ok(n) => {
                    p.rx.feed(&self.scratch[..n]);
                    budget = budget.saturating_sub(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    p.readable = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break EndKind::Reset,
                Err(e) => break EndKind::Error(e.kind()),
            }
        };
        if p.end.is_none() {
            p.end = Some((Instant::now(), end));
        }
        let mut sock = p.sock.take().expect("open");
        let _ = self.poll.registry().deregister(&mut sock);
        drop(sock); // our FIN (or RST) ends the server's linger
        self.open -= 1;
    }

    /// From now on, every peer reads (the non-readers catch up).
    fn start_reading(&mut self) {
        for i in 0..self.peers.len() {
            let p = &mut self.peers[i];
            p.reading = true;
            p.readable = true;
            self.read(i);
        }
    }

    fn run_until(&mut self, within: Duration, what: &str, mut done: impl FnMut(&Swarm) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            self.step();
            if done(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not done within {within:?}: {}",
                self.summary()
            );
        }
    }

    /// Check every peer against its plan's [`Expect`]; panics with the
    /// failures.
    fn check_expectations(&self) {
        let mut failures = Vec::new();
        for (i, p) in self.peers.iter().enumerate() {
            if let Err(why) = check_peer(p) {
                failures.push(format!("#{i}: {why}: {}", p.describe()));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} sockets did not get the expected outcome; first ones:\n{}",
            failures.len(),
            self.peers.len(),
            failures[..failures.len().min(10)].join("\n")
        );
    }

    /// Outcomes by kind: "status/close code/end" → count.
    fn outcomes(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for p in &self.peers {
            let close = match (&p.rx.close, p.rx.close_code()) {
                (None, _) => "-".to_string(),
                (Some(_), Some(c)) => c.to_string(),
                (Some(_), None) => "empty".to_string(),
            };
            let k = format!(
                "{} status {} close {close} end {:?}",
                p.plan.kind,
                p.rx.status.map_or("-".to_string(), |s| s.to_string()),
                p.end.map(|e| e.1)
            );
            *m.entry(k).or_insert(0) += 1;
        }
        m
    }
}

/// Run the same attack in waves (a new swarm each time, every socket
/// until it ends, checked with `check`) until the bystanders have been
/// served meanwhile. Returns (waves, sockets in all, the last swarm).
fn attack_in_waves(
    addr: SocketAddr,
    plans: &[Plan],
    by: &mut Bystanders,
    what: &str,
    mut check: impl FnMut(&Swarm),
) -> (usize, usize, Swarm) {
    let mark = by.progress();
    let deadline = Instant::now() + LEGIT_WAIT;
    let mut waves = 0;
    loop {
        let mut swarm = Swarm::new(addr, plans.to_vec());
        swarm.run_until(Duration::from_secs(60), what, |s| s.all_ended());
        swarm.check_expectations();
        check(&swarm);
        waves += 1;
        by.check();
        if by.progressed(mark, PROGRESS) {
            return (waves, waves * plans.len(), swarm);
        }
        assert!(
            Instant::now() < deadline,
            "the bystanders got {:?} (echoes, publications) more during {waves} waves in \
             {LEGIT_WAIT:?}",
            {
                let p = by.progress();
                (p.0 - mark.0, p.1 - mark.1)
            }
        );
    }
}

fn check_peer(p: &Peer) -> Result<(), String> {
    if let Some(e) = &p.rx.error {
        return Err(format!("bad server output: {e}"));
    }
    let ended = matches!(p.end, Some((_, EndKind::Eof | EndKind::Reset)));
    let need_end = |what: &str| {
        if ended {
            Ok(())
        } else {
            Err(format!("{what}, then the server must close TCP"))
        }
    };
    match p.plan.expect {
        Expect::Any => Ok(()),
        Expect::Http(s) => {
            if p.rx.status != Some(s) {
                return Err(format!("expected HTTP {s}"));
            }
            need_end("an HTTP error")
        }
        Expect::Silence => {
            if p.rx.bytes != 0 {
                return Err("expected nothing from the server".into());
            }
            need_end("silence")
        }
        Expect::Close(code) | Expect::CloseEcho(Some(code)) => {
            if p.rx.status != Some(101) {
                return Err("expected 101".into());
            }
            if p.rx.close_code() != Some(code) {
                return Err(format!("expected close {code}"));
            }
            if p.rx.after_close != 0 {
                return Err("bytes after the close frame".into());
            }
            need_end("a close frame")
        }
        Expect::CloseEcho(None) => {
            if p.rx.status != Some(101) || p.rx.close.as_deref() != Some(&[][..]) {
                return Err("expected 101 and an empty close frame".into());
            }
            need_end("a close frame")
        }
        Expect::DroppedAfterUpgrade => {
            if p.rx.status != Some(101) || p.rx.close.is_some() {
                return Err("expected 101 and no close frame".into());
            }
            need_end("101")
        }
    }
}

/// A non-blocking connect to `dst` from `src` (port chosen at connect time:
/// IP_BIND_ADDRESS_NO_PORT), with an optional receive buffer size.
fn connect_from(src: Ipv4Addr, dst: SocketAddr, rcvbuf: Option<usize>) -> io::Result<TcpStream> {
    let SocketAddr::V4(dst) = dst else {
        panic!("IPv4 only")
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let setopt = |fd: i32, level: i32, name: i32, v: libc::c_int| {
        // SAFETY: setsockopt on our socket with a pointer to a live c_int
        // and its exact size.
        let r = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: plain socket(2) with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns; closed on every error
    // path by the OwnedFd, then owned by the TcpStream.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    setopt(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
    if let Some(n) = rcvbuf {
        setopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, n as libc::c_int)?;
    }
    let local = sockaddr(src, 0);
    // SAFETY: a valid sockaddr_in of `len` bytes for our socket.
    if unsafe { libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let remote = sockaddr(*dst.ip(), dst.port());
    // SAFETY: as for bind.
    if unsafe { libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    let std_stream = StdTcpStream::from(owned);
    debug_assert_eq!(std_stream.as_raw_fd(), fd);
    std_stream.set_nodelay(true)?;
    Ok(TcpStream::from_std(std_stream))
}

// ---------------------------------------------------------------- frames --

/// An upgrade request for `path`.
fn upgrade(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: wsgate.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// A frame header as a client sends it (masked with `mask`), declaring
/// `len` payload bytes.
fn header(fin: bool, opcode: u8, len: u64, mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![(fin as u8) << 7 | opcode];
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= u16::MAX as u64 {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&len.to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f
}

/// A whole masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xFA, 0x21, 0x3D];
    let mut f = header(fin, opcode, payload.len() as u64, mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Ping frames with `size`-byte payloads (zero mask key: the payload goes
/// as it is), numbered from `*seq`: `buf` keeps its frames from one batch
/// to the next, only the numbers change.
fn ping_batch(buf: &mut Vec<u8>, seq: &mut u64, size: usize, count: usize) {
    assert!((8..=125).contains(&size));
    let frame_len = 6 + size;
    if buf.len() != count * frame_len {
        buf.clear();
        for _ in 0..count {
            buf.extend_from_slice(&[0x80 | OP_PING, 0x80 | size as u8, 0, 0, 0, 0]);
            buf.resize(buf.len() + size, b'p');
        }
    }
    for f in buf.chunks_exact_mut(frame_len) {
        f[6..14].copy_from_slice(&seq.to_be_bytes());
        *seq += 1;
    }
}

/// xorshift64*: reproducible "random" bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Between `min` and `min + spread - 1` random bytes.
    fn some_bytes(&mut self, min: usize, spread: usize) -> Vec<u8> {
        let n = min + self.below(spread);
        self.bytes(n)
    }
}

/// Alternate the routes: both speak the same frames.
fn route(i: usize) -> &'static str {
    if i.is_multiple_of(2) {
        "/echo"
    } else {
        "/ws"
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

// ------------------------------------------------------------- scenarios --

/// Scenario 1, 15,000 half-open handshakes: each is cut at the handshake
/// deadline, and `wsgate_timeouts_total` counts them; legitimate clients
/// connect and publish throughout.
#[test]
fn half_open_handshakes_are_cut_at_the_deadline() {
    let _serial = serial();
    const DEADLINE: Duration = Duration::from_secs(4);
    // Timer wheel ticks, accept queues and two busy cores: the cut may come
    // this much later than the deadline (it must come).
    const SLACK: Duration = Duration::from_secs(10);
    const PARTIAL: usize = 12_000;
    const SILENT: usize = 2_500;
    const TRICKLE: usize = 500;
    let t_start = Instant::now();
    let mut gw = Gateway::start("half-open", &["--handshake-timeout", "4s"]);
    let by = Bystanders::start(
        gw.addr,
        BystanderOpts {
            fresh_echo: true,
            keep_alive_publish: false,
        },
    );
    let m0 = gw.metrics();
    let rss0 = gw.rss_mib();
    let mark = by.progress();

    let partial = Arc::new(b"GET /ws HTTP/1.1\r\nHost: wsgate.test\r\n".to_vec());
    let slow_header = Arc::new(b"X-Slow: aaaaaaaaaaaaaaaaaaaa".to_vec());
    let mut plans = Vec::new();
    for i in 0..PARTIAL + SILENT + TRICKLE {
        // Interleaved, so that every kind is spread over the whole flood.
        let plan = match i % 30 {
            0 => Plan {
                kind: "trickle",
                send: partial.clone(),
                trickle: Some((slow_header.clone(), Duration::from_millis(500))),
                read: true,
                expect: Expect::Silence,
                ..Plan::default()
            },
            1..=5 => Plan {
                kind: "silent",
                read: true,
                expect: Expect::Silence,
                ..Plan::default()
            },
            _ => Plan {
                kind: "partial",
                send: partial.clone(),
                read: true,
                expect: Expect::Silence,
                ..Plan::default()
            },
        };
        plans.push(plan);
    }
    let mut swarm = Swarm::new(gw.addr, plans);
    let n = swarm.len();
    assert_eq!(n, 15_000);
    swarm.run_until(
        Duration::from_secs(90),
        "every half-open connection cut, and the bystanders served meanwhile",
        |s| s.all_ended() && by.progressed(mark, PROGRESS),
    );
    let flood_time = swarm.started.elapsed();
    let open_time = swarm
        .all_connected_at
        .map(|t| t.duration_since(swarm.started))
        .unwrap_or_default();
    gw.assert_alive();
    let peak = gw.peak_rss_mib();

    // Every one: nothing from the server, then EOF or reset, within the
    // deadline plus slack, and not before (most of) the deadline.
    swarm.check_expectations();
    let mut lifetimes: Vec<Duration> = swarm
        .peers
        .iter()
        .map(|p| p.lifetime().expect("connected and ended"))
        .collect();
    lifetimes.sort();
    let (min, max) = (lifetimes[0], lifetimes[n - 1]);
    assert!(
        max <= DEADLINE + SLACK,
        "a half-open connection lived {max:?} (deadline {DEADLINE:?} + {SLACK:?})"
    );
    assert!(
        min >= DEADLINE / 2,
        "a half-open connection was cut after {min:?}, long before the {DEADLINE:?} deadline"
    );
    let resets = swarm
        .peers
        .iter()
        .filter(|p| p.end.is_some_and(|e| e.1 == EndKind::Reset))
        .count();

    let report = by.finish();
    // The counter: every half-open connection was dropped by a timer. The
    // bystanders close cleanly; a slow one could at most add its own
    // connections (close linger).
    let m1 = gw.metrics();
    let timeouts = m1.get("wsgate_timeouts_total") - m0.get("wsgate_timeouts_total");
    assert!(
        timeouts >= n as u64 && timeouts <= n as u64 + report.connections,
        "wsgate_timeouts_total grew by {timeouts} for {n} half-open connections \
         (and {} bystander connections)",
        report.connections
    );
    let accepted =
        m1.get("wsgate_connections_accepted_total") - m0.get("wsgate_connections_accepted_total");
    assert!(accepted >= n as u64, "accepted {accepted} < {n}");
    // Nothing left behind but the scrape itself.
    gw.wait_connections_at_most(1, Duration::from_secs(10));
    gw.assert_alive();
    eprintln!(
        "half-open: {n} sockets ({PARTIAL} partial, {SILENT} silent, {TRICKLE} trickling), \
         all connected after {open_time:.2?}, peak {} open at once, all cut after \
         {flood_time:.2?}; \
         lifetime min {min:.2?} p50 {:.2?} p99 {:.2?} max {max:.2?} (deadline {DEADLINE:?}); \
         {resets} resets, the rest EOF; wsgate_timeouts_total +{timeouts}; gateway RSS \
         {rss0:.1} MiB before, {peak:.1} MiB peak, {:.1} MiB after; bystanders: {report}; \
         scenario {:.1?}",
        swarm.peak_open,
        percentile(&lifetimes, 0.5),
        percentile(&lifetimes, 0.99),
        gw.rss_mib(),
        t_start.elapsed()
    );
    // Memory: a partial head is held in a spill buffer until the deadline;
    // bounded by max_head (8 KiB) per connection.
    assert!(
        peak - rss0 <= n as f64 * 9.0 / 1024.0 + 64.0,
        "gateway RSS grew from {rss0:.1} to {peak:.1} MiB for {n} half-open connections"
    );
}

/// Scenario 2, a connection flood past `max_connections`: the excess get
/// 503, the connections already open keep working, and once the flood
/// leaves new connections are accepted again.
#[test]
fn a_connection_flood_past_the_limit_gets_503_and_recovers() {
    let _serial = serial();
    const LIMIT: u64 = 2_000;
    const FLOOD: usize = 3_000;
    let t_start = Instant::now();
    // Kept-alive connections (the publisher's, the metrics scrape) wait
    // between requests under the handshake deadline: make it long.
    let mut gw = Gateway::start(
        "flood",
        &["--max-connections", "2000", "--handshake-timeout", "60s"],
    );
    gw.keep_admin();
    let mut by = Bystanders::start(
        gw.addr,
        BystanderOpts {
            fresh_echo: false,
            keep_alive_publish: true,
        },
    );
    // A few more legitimate /echo clients, connected before the flood.
    let mut held: Vec<_> = (0..10).map(|_| ws_echo_connect(gw.addr)).collect();
    let echo_held = |held: &mut Vec<tungstenite::WebSocket<StdTcpStream>>, round: &str| {
        for (i, ws) in held.iter_mut().enumerate() {
            let msg = format!("held {i} {round}");
            ws.send(Message::Text(msg.clone()))
                .expect("held client send");
            loop {
                match ws.read().expect("held client echo") {
                    Message::Text(t) => {
                        assert_eq!(t, msg);
                        break;
                    }
                    Message::Ping(_) | Message::Pong(_) => {}
                    other => panic!("held client {i}: {other:?}"),
                }
            }
        }
    };
    echo_held(&mut held, "before");
    // Every bystander is connected (a publication and an echo went through)
    // before the connections are counted.
    let t = Instant::now();
    while by.progress().0 < 1 || by.progress().1 < 1 {
        assert!(t.elapsed() < Duration::from_secs(30), "bystanders idle");
        std::thread::sleep(Duration::from_millis(20));
    }
    let m0 = gw.metrics();
    let before = m0.get("wsgate_connections");
    assert!(before < 20, "{before} connections before the flood");

    // The flood: every socket sends an upgrade request and reads the answer.
    let plans = (0..FLOOD)
        .map(|i| Plan {
            kind: "flood",
            send: Arc::new(upgrade(route(i))),
            read: true,
            ..Plan::default()
        })
        .collect();
    let mut swarm = Swarm::new(gw.addr, plans);
    swarm.run_until(
        Duration::from_secs(60),
        "every flood socket answered (101) or refused (503 and closed)",
        |s| {
            s.peers
                .iter()
                .all(|p| p.rx.status == Some(101) || p.end.is_some())
        },
    );
    let mut statuses: BTreeMap<Option<u16>, usize> = BTreeMap::new();
    for p in &swarm.peers {
        *statuses.entry(p.rx.status).or_default() += 1;
        assert!(p.rx.error.is_none(), "{}", p.describe());
        if p.rx.status != Some(101) {
            // Refused: 503 with a body, then EOF; nothing else.
            assert_eq!(p.rx.status, Some(503), "{}", p.describe());
            assert!(p.rx.body > 0, "{}", p.describe());
            assert!(
                p.rx.head.to_ascii_lowercase().contains("connection: close"),
                "{}",
                p.rx.head
            );
            assert!(
                matches!(p.end, Some((_, EndKind::Eof | EndKind::Reset))),
                "{}",
                p.describe()
            );
        }
    }
    let accepted = statuses.get(&Some(101)).copied().unwrap_or(0) as u64;
    let refused = statuses.get(&Some(503)).copied().unwrap_or(0) as u64;
    assert_eq!(accepted + refused, FLOOD as u64, "{statuses:?}");
    // Exactly the free slots were given out: a refused connection never
    // takes a slot from a later one for long, and the limit is not passed.
    assert_eq!(
        accepted,
        LIMIT - before,
        "{before} connections before the flood, limit {LIMIT}: {statuses:?}"
    );

    // Full: the gateway holds exactly its limit and refuses a newcomer, while
    // the legitimate clients keep working.
    let mark = by.progress();
    swarm.run_until(
        LEGIT_WAIT,
        "the bystanders served while the gateway is full",
        |_| by.progressed(mark, PROGRESS),
    );
    let m_full = gw.metrics();
    assert_eq!(m_full.get("wsgate_connections"), LIMIT, "while full");
    let r = http_once(gw.addr, "GET", "/healthz", b"").expect("a newcomer is answered");
    assert_eq!(r.status, 503, "a newcomer while full: {}", r.text());
    echo_held(&mut held, "during");
    by.check();
    let m_refused = gw.metrics();
    assert_eq!(
        m_refused.get("wsgate_connections_refused_total")
            - m0.get("wsgate_connections_refused_total"),
        refused + 1,
        "wsgate_connections_refused_total counts the refused flood and the newcomer"
    );
    let peak = gw.peak_rss_mib();

    // The flood goes away; the gateway gives the slots back and accepts
    // new connections again.
    let t_leave = Instant::now();
    drop(swarm);
    gw.wait_connections_at_most(before, Duration::from_secs(30));
    let drained = t_leave.elapsed();
    let mut fresh: Vec<_> = (0..20).map(|_| ws_echo_connect(gw.addr)).collect();
    echo_held(&mut fresh, "fresh after the flood");
    echo_held(&mut held, "after");
    let r = http_once(gw.addr, "GET", "/healthz", b"").expect("healthz");
    assert_eq!(r.status, 200, "after the flood: {}", r.text());
    drop(fresh);
    drop(held);
    let report = by.finish();
    gw.assert_alive();
    eprintln!(
        "flood: limit {LIMIT}, {before} legitimate connections, {FLOOD} more: {accepted} got 101, \
         {refused} got 503; the gateway was back to {before} connections {drained:.2?} after the \
         flood left; gateway RSS peak {peak:.1} MiB, {:.1} MiB after; bystanders: {report}; \
         scenario {:.1?}",
        gw.rss_mib(),
        t_start.elapsed()
    );
}

/// A flooder in its own threads, as fast as a blocking socket goes: one
/// thread writes batches of pings (or unsolicited pongs), one reads and
/// counts what comes back. Returns (frames sent, bytes received).
fn fast_flooder(
    addr: SocketAddr,
    path: &str,
    opcode: u8,
    stop: Arc<AtomicBool>,
) -> JoinHandle<(u64, u64)> {
    let mut w = StdTcpStream::connect(addr).expect("fast flooder connects");
    w.set_write_timeout(Some(LEGIT_WAIT)).unwrap();
    w.write_all(&upgrade(path)).unwrap();
    let mut r = w.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut writer = Some(std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut seq = 0;
            let mut sent = 0u64;
            while !stop.load(Ordering::Acquire) {
                ping_batch(&mut buf, &mut seq, 125, 1024);
                for f in buf.chunks_exact_mut(131) {
                    f[0] = 0x80 | opcode;
                }
                w.write_all(&buf).expect("fast flooder write");
                sent = seq;
            }
            sent
        }));
        // Read until the writer is done and everything owed has come.
        r.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        let mut head = Some(Vec::new());
        let mut sent = None;
        let mut quiet_since = Instant::now();
        loop {
            if writer.as_ref().is_some_and(|w| w.is_finished()) {
                let w = writer.take().expect("checked");
                sent = Some(w.join().expect("fast flooder writer"));
                quiet_since = Instant::now();
            }
            // Done: every ping answered (or nothing more for 10 s), or, for
            // pongs that need no answer, nothing for 2 s.
            if let Some(n) = sent {
                let quiet = quiet_since.elapsed();
                let done = if opcode == OP_PING {
                    got >= n * 127 || quiet > Duration::from_secs(10)
                } else {
                    quiet > Duration::from_secs(2)
                };
                if done {
                    break;
                }
            }
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    // Frames only: the 101 response head is not counted.
                    match head.as_mut() {
                        Some(h) => {
                            h.extend_from_slice(&buf[..n]);
                            if let Some(end) = h.windows(4).position(|w| w == b"\r\n\r\n") {
                                assert!(h.starts_with(b"HTTP/1.1 101"), "fast flooder refused");
                                got += (h.len() - end - 4) as u64;
                                head = None;
                            }
                        }
                        None => got += n as u64,
                    }
                    quiet_since = Instant::now();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("fast flooder read: {e}"),
            }
        }
        (sent.expect("writer joined"), got)
    })
}

/// Scenario 3, a ping flood: 160 connections send pings as fast as they
/// can; some read their pongs, some read slower than they send, half never read; 4
/// more flood from threads of their own (2 pings, 2 unsolicited pongs that
/// need no answer). The documented policy (SECURITY.md: the out-queue read
/// pause; control frames are never dropped) is backpressure: once a
/// connection has 1 MiB queued the gateway stops reading it, so a
/// non-reader's writes stall, memory stays bounded per connection, nobody
/// is disconnected, and every ping is answered, in order, once its sender
/// reads. And a connection gets one read per turn of the worker's loop, so
/// flooders cannot starve the others (before that fix, the 4 fast flooders
/// alone left bystanders without an answer for 30 s).
#[test]
fn a_ping_flood_is_throttled_by_backpressure_and_every_ping_answered() {
    let _serial = serial();
    const FLOODERS: usize = 160;
    const FAST: usize = 4;
    let t_start = Instant::now();
    let mut gw = Gateway::start("ping-flood", &[]);
    let mut by = Bystanders::start(
        gw.addr,
        BystanderOpts {
            fresh_echo: true,
            keep_alive_publish: false,
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = gw.rss_mib();

    // The longest turn of a worker's loop while flooded (not asserted).
    let stop_scrape = Arc::new(AtomicBool::new(false));
    let scraper = {
        let stop = stop_scrape.clone();
        let addr = gw.addr;
        std::thread::spawn(move || {
            let mut max_lag = 0f64;
            while !stop.load(Ordering::Acquire) {
                if let Ok(r) = http_once(addr, "GET", "/metrics", b"") {
                    for l in r.text().lines() {
                        if let Some(v) = l.strip_prefix("wsgate_loop_lag_seconds{") {
                            let v = v.rsplit_once(' ').and_then(|(_, v)| v.parse().ok());
                            max_lag = max_lag.max(v.unwrap_or(0.0));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            max_lag
        })
    };

    // First the fast flooders alone: the bystanders must be served while
    // they flood (before the one-read-per-turn fix, they were not, for as
    // long as the flood lasted).
    let stop_fast = Arc::new(AtomicBool::new(false));
    let mark = by.progress();
    let fast: Vec<_> = (0..FAST)
        .map(|i| {
            let op = if i < FAST / 2 { OP_PING } else { OP_PONG };
            fast_flooder(gw.addr, route(i), op, stop_fast.clone())
        })
        .collect();
    let t_fast = Instant::now();
    let deadline = t_fast + LEGIT_WAIT;
    while !by.progressed(mark, PROGRESS) {
        by.check();
        assert!(
            Instant::now() < deadline,
            "the bystanders got {:?} (echoes, publications) more in {LEGIT_WAIT:?} while {FAST} \
             fast flooders flooded",
            {
                let p = by.progress();
                (p.0 - mark.0, p.1 - mark.1)
            }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let fast_alone = t_fast.elapsed();
    let plans = (0..FLOODERS)
        .map(|i| {
            let (kind, read, read_budget) = match i % 8 {
                0..=2 => ("reader", true, None),
                3 => ("slow reader", true, Some(128 * 1024)),
                _ => ("non-reader", false, None),
            };
            Plan {
                kind,
                send: Arc::new(upgrade(route(i / 8))),
                ping_flood: Some(125),
                read,
                read_budget,
                // A non-reader's own kernel buffer soaks up little.
                rcvbuf: (!read).then_some(16 * 1024),
                ..Plan::default()
            }
        })
        .collect();
    let mut swarm = Swarm::new(gw.addr, plans);
    // Flood until every non-reader's writes have stalled for a second: the
    // gateway stopped reading them. (A gateway that kept reading would keep
    // taking their pings, and this would not end.) And until the bystanders
    // were served meanwhile.
    let stall = Duration::from_secs(2);
    let mark = by.progress();
    swarm.run_until(
        Duration::from_secs(90),
        "every non-reader's writes stalled (the gateway stops reading them), and the \
         bystanders served meanwhile",
        |s| {
            by.progressed(mark, PROGRESS)
                && s.peers.iter().all(|p| {
                    // At least the 1 MiB of pongs that pauses its reads.
                    p.plan.read
                        || (p.bytes_out > 1 << 20
                            && p.last_write.is_some_and(|t| t.elapsed() >= stall))
                })
        },
    );
    let flood_time = swarm.started.elapsed();
    by.check();
    gw.assert_alive();
    let rss_stall = gw.rss_mib();
    for p in &swarm.peers {
        assert!(
            p.end.is_none(),
            "a flooder was disconnected: {}",
            p.describe()
        );
        assert!(p.rx.error.is_none(), "{}", p.describe());
    }
    let nr_sent: Vec<u64> = swarm
        .peers
        .iter()
        .filter(|p| !p.plan.read)
        .map(|p| p.bytes_out)
        .collect();

    // Stop flooding; everyone reads now. Every ping gets its pong, in order
    // (nothing dropped, nothing coalesced), and no one is closed.
    stop_fast.store(true, Ordering::Release);
    swarm.flooding = false;
    swarm.start_reading();
    swarm.run_until(
        Duration::from_secs(60),
        "every ping answered once the flooders read",
        |s| {
            s.peers
                .iter()
                .all(|p| p.flood_done() && p.rx.pongs == p.pings && p.rx.error.is_none())
                || s.peers
                    .iter()
                    .any(|p| p.rx.error.is_some() || p.end.is_some())
        },
    );
    let pings: u64 = swarm.peers.iter().map(|p| p.pings).sum();
    let sent: u64 = swarm.peers.iter().map(|p| p.bytes_out).sum();
    for p in &swarm.peers {
        assert!(p.rx.error.is_none(), "{}", p.describe());
        assert!(
            p.end.is_none(),
            "a flooder was disconnected: {}",
            p.describe()
        );
        assert_eq!(p.rx.close, None, "{}", p.describe());
        assert_eq!(p.rx.pongs, p.pings, "{}", p.describe());
    }
    let mut fast_frames = Vec::new();
    for (i, h) in fast.into_iter().enumerate() {
        let (frames, got) = h.join().expect("fast flooder");
        let want = if i < FAST / 2 { frames * 127 } else { 0 };
        assert_eq!(
            got, want,
            "fast flooder {i} sent {frames} frames: every ping answered, no pong answered"
        );
        fast_frames.push(frames);
    }
    by.check();
    stop_scrape.store(true, Ordering::Release);
    let max_lag = scraper.join().expect("scraper");
    let peak = gw.peak_rss_mib();
    drop(swarm);
    gw.wait_connections_at_most(10, Duration::from_secs(30));
    let rss_after = gw.rss_mib();
    let report = by.finish();
    gw.assert_alive();
    eprintln!(
        "ping flood: {FLOODERS} flooders (60 reading, 20 reading slowly, 80 never reading) sent \
         {pings} pings ({:.0} MiB), all answered in order; the non-readers stalled after \
         {:.1}..{:.1} MiB each, {flood_time:.1?} into the flood; {FAST} fast flooders sent \
         {fast_frames:?} frames (the bystanders were served {fast_alone:.1?} into their flood); \
         longest loop turn {max_lag:.3} s; gateway RSS {rss0:.1} MiB \
         before, {rss_stall:.1} MiB at the stall, peak {peak:.1} MiB, {rss_after:.1} MiB after; \
         bystanders {report}; scenario {:.1?}",
        mib(sent),
        mib(*nr_sent.iter().min().unwrap()),
        mib(*nr_sent.iter().max().unwrap()),
        t_start.elapsed()
    );
    // Bounded per connection: the 1 MiB read-pause mark, about twice that
    // held while it drains, plus a read's worth.
    let bound = (FLOODERS + FAST) as f64 * 3.0 + 64.0;
    assert!(
        peak - rss0 <= bound,
        "gateway RSS grew from {rss0:.1} to {peak:.1} MiB under a ping flood \
         (bound +{bound:.0} MiB)"
    );
}

/// Scenario 4, oversized frames from 500 sockets at once: a declared length
/// past `max_message` (with or without the payload behind it) and a
/// fragmented message that outgrows it each get close 1009; memory stays
/// bounded.
#[test]
fn oversized_frames_get_1009() {
    let _serial = serial();
    const MAX: u64 = 64 * 1024;
    let t_start = Instant::now();
    let mut gw = Gateway::start("oversized", &["--max-message", "65536"]);
    let mut by = Bystanders::start(
        gw.addr,
        BystanderOpts {
            fresh_echo: true,
            keep_alive_publish: false,
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = gw.rss_mib();
    let m0 = gw.metrics();
    let mask = [1, 2, 3, 4];
    // One copy of each byte string, shared by the sockets that send it.
    let mut kinds: Vec<(&'static str, Arc<Vec<u8>>)> = Vec::new();
    for r in ["/echo", "/ws"] {
        let up = upgrade(r);
        let with = |tail: Vec<u8>| {
            let mut v = up.clone();
            v.extend_from_slice(&tail);
            Arc::new(v)
        };
        // A 1 GiB binary frame, header only.
        let giant = with(header(true, OP_BINARY, 1 << 30, mask));
        // One byte over the limit, a little payload behind it.
        let mut just = header(true, OP_TEXT, MAX + 1, mask);
        just.extend_from_slice(b"abcdefgh");
        let just = with(just);
        // 1 MiB declared and sent.
        let big = with(frame(true, OP_BINARY, &vec![0x5A; 1 << 20]));
        // Five 16 KiB fragments: each fits, the message does not.
        let mut frag = frame(false, OP_BINARY, &[7; 16 * 1024]);
        for k in 1..5 {
            frag.extend(frame(k == 4, OP_CONT, &[7; 16 * 1024]));
        }
        let frag = with(frag);
        // Text fragments, 40 KiB each.
        let mut tfrag = frame(false, OP_TEXT, &[b'a'; 40 * 1024]);
        tfrag.extend(frame(true, OP_CONT, &[b'b'; 40 * 1024]));
        let tfrag = with(tfrag);
        kinds.push(("declared 1 GiB", giant));
        kinds.push(("declared max+1", just));
        kinds.push(("1 MiB sent", big));
        kinds.push(("fragments 5x16 KiB", frag));
        kinds.push(("text fragments 2x40 KiB", tfrag));
    }
    let plans: Vec<Plan> = (0..500)
        .map(|i| {
            let (kind, send) = &kinds[i % kinds.len()];
            Plan {
                kind,
                send: send.clone(),
                read: true,
                expect: Expect::Close(1009),
                ..Plan::default()
            }
        })
        .collect();
    let mut longest = Duration::ZERO;
    let (waves, n, swarm) = attack_in_waves(
        gw.addr,
        &plans,
        &mut by,
        "every oversized sender closed",
        |swarm| {
            for p in &swarm.peers {
                assert_eq!(
                    p.rx.data_frames,
                    0,
                    "no message may get through: {}",
                    p.describe()
                );
                longest = longest.max(p.lifetime().expect("ended"));
            }
        },
    );
    gw.assert_alive();
    let peak = gw.peak_rss_mib();
    let m1 = gw.metrics();
    let errors = m1.get("wsgate_protocol_errors_total") - m0.get("wsgate_protocol_errors_total");
    assert_eq!(errors, n as u64, "wsgate_protocol_errors_total");
    let report = by.finish();
    gw.assert_alive();
    eprintln!(
        "oversized: {n} sockets in {waves} waves of {}, all closed 1009 (longest {longest:.2?}); \
         last wave {:?}; gateway RSS \
         {rss0:.1} MiB before, peak {peak:.1} MiB, {:.1} MiB after; bystanders: {report}; \
         scenario {:.1?}",
        plans.len(),
        swarm.outcomes(),
        gw.rss_mib(),
        t_start.elapsed()
    );
    // Nothing is allocated for a declared length; a fragmented message
    // holds at most max_message plus one frame.
    let bound = plans.len() as f64 * 2.0 * mib(MAX) + 64.0;
    assert!(
        peak - rss0 <= bound,
        "gateway RSS grew from {rss0:.1} to {peak:.1} MiB (bound +{bound:.0} MiB)"
    );
}

/// Scenario 5, invalid UTF-8 from 600 sockets at once, whole or split
/// across fragments (and in a close reason): each gets close 1007. A valid
/// character split across fragments is not an error.
#[test]
fn invalid_utf8_gets_1007() {
    let _serial = serial();
    let t_start = Instant::now();
    let mut gw = Gateway::start("utf8", &[]);
    let mut by = Bystanders::start(
        gw.addr,
        BystanderOpts {
            fresh_echo: true,
            keep_alive_publish: false,
        },
    );
    let m0 = gw.metrics();
    let valid_split = {
        // "é€" split inside both characters, then a bad frame.
        let mut v = frame(false, OP_TEXT, b"ok \xC3");
        v.extend(frame(false, OP_CONT, b"\xA9 \xE2\x82"));
        v.extend(frame(true, OP_CONT, b"\xAC!"));
        v.extend(frame(true, OP_TEXT, b"then \xFF"));
        v
    };
    let cases: Vec<(&'static str, Vec<u8>)> = vec![
        (
            "0xFF in a text frame",
            frame(true, OP_TEXT, b"hello \xFF world"),
        ),
        ("overlong", frame(true, OP_TEXT, b"over \xC0\xAF long")),
        (
            "surrogate",
            frame(true, OP_TEXT, b"sur \xED\xA0\x80 rogate"),
        ),
        ("above U+10FFFF", frame(true, OP_TEXT, b"\xF4\x90\x80\x80")),
        ("bad continuation fragment", {
            let mut v = frame(false, OP_TEXT, b"valid start ");
            v.extend(frame(false, OP_CONT, b"more "));
            v.extend(frame(true, OP_CONT, b"bad \xFE"));
            v
        }),
        ("ends inside a character", {
            let mut v = frame(false, OP_TEXT, b"abc\xE2");
            v.extend(frame(true, OP_CONT, b"\x82"));
            v
        }),
        ("bad byte after a split character", {
            let mut v = frame(false, OP_TEXT, b"x\xE2");
            v.extend(frame(true, OP_CONT, b"\x82\x41"));
            v
        }),
        ("close reason", frame(true, OP_CLOSE, b"\x03\xE8bad \xFF")),
        ("valid split, then invalid", valid_split),
    ];
    let plans: Vec<Plan> = (0..600)
        .map(|i| {
            let (kind, bytes) = &cases[i % cases.len()];
            let mut send = upgrade(route(i / cases.len()));
            send.extend_from_slice(bytes);
            Plan {
                kind,
                send: Arc::new(send),
                read: true,
                expect: Expect::Close(1007),
                ..Plan::default()
            }
        })
        .collect();
    let (waves, n, _) = attack_in_waves(
        gw.addr,
        &plans,
        &mut by,
        "every invalid sender closed",
        |swarm| {
            for (i, p) in swarm.peers.iter().enumerate() {
                let echo = route(i / cases.len()) == "/echo";
                if p.plan.kind == "valid split, then invalid" {
                    // The valid message went through: echoed on /echo (an
                    // op error reply on /ws, whose ops are JSON).
                    assert_eq!(p.rx.data_frames, 1, "{}", p.describe());
                    if echo {
                        assert_eq!(p.rx.data[0], (OP_TEXT, "ok é €!".as_bytes().to_vec()));
                    }
                } else {
                    assert_eq!(p.rx.data_frames, 0, "{}", p.describe());
                }
            }
        },
    );
    gw.assert_alive();
    let m1 = gw.metrics();
    let errors = m1.get("wsgate_protocol_errors_total") - m0.get("wsgate_protocol_errors_total");
    assert_eq!(errors, n as u64, "wsgate_protocol_errors_total");
    let report = by.finish();
    gw.assert_alive();
    eprintln!(
        "utf-8: {n} sockets in {waves} waves of {} ({} cases), all closed 1007; bystanders: \
         {report}; scenario {:.1?}",
        plans.len(),
        cases.len(),
        t_start.elapsed()
    );
}

/// What the server does with `bytes` sent right after a valid upgrade,
/// predicted with the gateway's own sans-IO core (fed everything at once;
/// it gives the same answer for any split).
fn predict_frames(bytes: &[u8], max_message: usize) -> Expect {
    use wsgate::proto::{Conn, Event, Limits};
    let mut conn = Conn::server(0);
    conn.accept(0);
    let mut buf = bytes.to_vec();
    let mut out = Vec::new();
    let mut peer_close = None;
    let r = conn.decode(
        &mut buf,
        0,
        &Limits { max_message },
        &mut out,
        &mut |ev, _| {
            if let Event::Close { code, .. } = ev {
                peer_close = Some(code);
            }
        },
    );
    match (r, peer_close) {
        (Err(e), _) => Expect::Close(e.close_code().expect("a framing error has a close code")),
        (Ok(_), Some(code)) => Expect::CloseEcho(code),
        (Ok(_), None) => Expect::DroppedAfterUpgrade,
    }
}

/// What the server does with `bytes` sent instead of a request head.
fn predict_head(bytes: &[u8], max_head: usize) -> Expect {
    use wsgate::proto::handshake::{check_upgrade, Head};
    let status = |e: wsgate::proto::Error| Expect::Http(e.http_status().expect("a status"));
    match Head::parse(bytes, max_head) {
        Err(e) => status(e),
        Ok(None) => Expect::Silence,
        // A whole head: on a WebSocket route it must be a valid upgrade.
        Ok(Some(head)) => match (head.path(), check_upgrade(&head)) {
            ("/echo" | "/ws", Err(e)) => status(e),
            _ => Expect::Any,
        },
    }
}

/// Scenario 6, random bytes from 1,000 sockets at once, before or after a
/// valid handshake: each socket gets exactly what the protocol core
/// predicts for its bytes (400/431, close 1002/1007/1009, the echo of its
/// own close, or a timer's drop) and is closed within bounded time; the
/// gateway stays up.
#[test]
fn random_bytes_end_every_socket_and_the_gateway_stays_up() {
    let _serial = serial();
    const HANDSHAKE: Duration = Duration::from_secs(3);
    // ping interval + pong timeout: how long an incomplete frame can hold.
    // (A 5 s pong timeout: the bystanders answer pings only between their
    // own reads, and may be slow on a busy box.)
    const TIMERS: Duration = Duration::from_secs(7);
    const SLACK: Duration = Duration::from_secs(10);
    const MAX: usize = 64 * 1024;
    let t_start = Instant::now();
    let mut gw = Gateway::start(
        "random",
        &[
            "--handshake-timeout",
            "3s",
            "--ping-interval",
            "2s",
            "--pong-timeout",
            "5s",
            "--max-message",
            "65536",
        ],
    );
    let mut by = Bystanders::start(
        gw.addr,
        BystanderOpts {
            fresh_echo: true,
            keep_alive_publish: false,
        },
    );
    let m0 = gw.metrics();
    let seed = std::env::var("ABUSE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x05EE_D0FA_B05E_u64);
    let mut rng = Rng(seed | 1);
    let mut plans = Vec::new();
    for i in 0..1000 {
        let plan = if i % 2 == 0 {
            let bytes = match rng.below(3) {
                // Pure noise.
                0 => rng.some_bytes(1, 2048),
                // A request line, then noise.
                1 => {
                    let mut v = b"GET /echo HTTP/1.1\r\n".to_vec();
                    v.extend(rng.some_bytes(1, 512));
                    v
                }
                // A request line, then printable noise without an end.
                _ => {
                    let mut v = b"GET /ws HTTP/1.1\r\nHost: x\r\n".to_vec();
                    let n = 1 + rng.below(512);
                    v.extend((0..n).map(|_| b' ' + (rng.next() % 95) as u8));
                    v
                }
            };
            Plan {
                kind: "before the handshake",
                expect: predict_head(&bytes, 8192),
                send: Arc::new(bytes),
                read: true,
                ..Plan::default()
            }
        } else {
            let tail = match rng.below(3) {
                // Pure noise.
                0 => rng.some_bytes(1, 512),
                // A plausible masked data frame header, a random payload.
                1 => {
                    let len = rng.below(126);
                    let op = [OP_TEXT, OP_BINARY, OP_PING, OP_CLOSE][rng.below(4)];
                    let mut v = vec![0x80 | op, 0x80 | len as u8];
                    v.extend(rng.some_bytes(4 + len, 64));
                    v
                }
                // A 64-bit length: random, so too big or with its MSB set.
                _ => {
                    let mut v = vec![0x82, 0xFF];
                    v.extend(rng.some_bytes(8 + 4, 64));
                    v
                }
            };
            let mut send = upgrade(route(i / 2));
            send.extend_from_slice(&tail);
            Plan {
                kind: "after the handshake",
                expect: predict_frames(&tail, MAX),
                send: Arc::new(send),
                read: true,
                ..Plan::default()
            }
        };
        plans.push(plan);
    }
    let n = plans.len();
    let mut swarm = Swarm::new(gw.addr, plans);
    let mark = by.progress();
    swarm.run_until(
        HANDSHAKE + TIMERS + SLACK + Duration::from_secs(30),
        "every random socket closed, and the bystanders served meanwhile",
        |s| s.all_ended() && by.progressed(mark, PROGRESS),
    );
    by.check();
    gw.assert_alive();
    swarm.check_expectations();
    let mut longest = Duration::ZERO;
    for p in &swarm.peers {
        let life = p.lifetime().expect("connected and ended");
        longest = longest.max(life);
        let bound = match p.plan.expect {
            Expect::Silence => HANDSHAKE + SLACK,
            Expect::DroppedAfterUpgrade => TIMERS + SLACK,
            _ => SLACK,
        };
        assert!(
            life <= bound,
            "lived {life:?} (bound {bound:?}): {}",
            p.describe()
        );
    }
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for p in &swarm.peers {
        *expected.entry(format!("{:?}", p.plan.expect)).or_default() += 1;
    }
    // Still serving.
    let r = http_once(gw.addr, "GET", "/healthz", b"").expect("healthz");
    assert_eq!(r.status, 200);
    let report = by.finish();
    let m1 = gw.metrics();
    // The counters saw each socket as what it was: a violation, or a timer's
    // drop (the bystanders add at most their own connections).
    let count = |f: fn(&Expect) -> bool| swarm.peers.iter().filter(|p| f(&p.plan.expect)).count();
    let violations = count(|e| matches!(e, Expect::Http(_) | Expect::Close(_))) as u64;
    let unknown = count(|e| *e == Expect::Any) as u64;
    let timed_out = count(|e| matches!(e, Expect::Silence | Expect::DroppedAfterUpgrade)) as u64;
    let errors = m1.get("wsgate_protocol_errors_total") - m0.get("wsgate_protocol_errors_total");
    let timeouts = m1.get("wsgate_timeouts_total") - m0.get("wsgate_timeouts_total");
    assert!(
        (violations..=violations + unknown).contains(&errors),
        "wsgate_protocol_errors_total +{errors} for {violations} violations ({unknown} unknown)"
    );
    assert!(
        (timed_out..=timed_out + report.connections).contains(&timeouts),
        "wsgate_timeouts_total +{timeouts} for {timed_out} sockets left to the timers"
    );
    gw.assert_alive();
    eprintln!(
        "random: {n} sockets (seed {seed:#x}), every one closed as predicted, longest \
         {longest:.2?}; \
         outcomes {expected:?}; protocol errors +{errors}, timeouts +{timeouts}; bystanders: \
         {report}; scenario {:.1?}",
        t_start.elapsed()
    );
}

// ----------------------------------------------- memory and fairness --

/// A blocking connection from 127.0.0.x whose receive buffer is small
/// (set before the handshake): what the client does not read stays with
/// the gateway instead of in the kernel.
fn connect_small_rcvbuf(src: Ipv4Addr, dst: SocketAddr) -> StdTcpStream {
    use std::os::fd::IntoRawFd;
    let s = connect_from(src, dst, Some(4096)).expect("connect");
    // SAFETY: the descriptor was just released by the mio stream, so this
    // stream is its only owner.
    let s = unsafe { StdTcpStream::from_raw_fd(s.into_raw_fd()) };
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(LEGIT_WAIT)).unwrap();
    s.set_write_timeout(Some(LEGIT_WAIT)).unwrap();
    s
}

/// A /ws connection on `sock`: the upgrade sent and its 101 read.
fn ws_upgrade(sock: &mut StdTcpStream) {
    sock.write_all(&upgrade("/ws")).expect("upgrade");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(sock.read(&mut b).expect("101"), 1, "closed before the 101");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
}

/// A gateway with `args` (its metrics on a kept connection) and the
/// bystanders (fresh echo connections, kept-alive publishing); returns
/// them and the gateway's RSS once they are going.
fn start_with_bystanders(name: &str, args: &[&str]) -> (Gateway, Bystanders, f64) {
    let mut gw = Gateway::start(name, args);
    gw.keep_admin();
    let by = Bystanders::start(
        gw.addr,
        BystanderOpts {
            fresh_echo: true,
            keep_alive_publish: true,
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let rss0 = gw.rss_mib();
    (gw, by, rss0)
}

/// The gateway's peak RSS grew by at most `bound` MiB from `rss0`.
fn assert_growth(rss0: f64, peak: f64, bound: f64, under: &str) {
    assert!(
        peak - rss0 <= bound,
        "gateway RSS grew from {rss0:.1} to {peak:.1} MiB under {under} (bound +{bound:.0} MiB)"
    );
}

/// Keep the bystanders going until they progressed, with the attack on.
fn serve_bystanders_during(by: &mut Bystanders, what: &str) {
    let mark = by.progress();
    let deadline = Instant::now() + LEGIT_WAIT;
    while !by.progressed(mark, PROGRESS) {
        by.check();
        assert!(
            Instant::now() < deadline,
            "bystanders not served during {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Scenario 7 (issue 12, item 7), channel churn: 8 connections subscribe
/// to new channel names and leave them as fast as they can, pipelined
/// (2,000 ops per write). With the defaults, past `limits.channel_rate`
/// they get error 5 (counted); with the rate off, every channel left keeps
/// only its position, at most `limits.max_channels` of them. Either way
/// the gateway's memory stays bounded, no periodic walk over the channels
/// stalls the bystanders, and once the churn stops the live channels are
/// the bystanders' again.
#[test]
fn a_channel_churn_is_bounded_in_rate_records_and_memory() {
    let _serial = serial();
    const CONNS: usize = 8;
    const FOR: Duration = Duration::from_secs(8);
    for (label, args) in [
        ("defaults", vec!["--trim-memory", "1s"]),
        (
            "rate off",
            vec![
                "--trim-memory",
                "1s",
                "--channel-rate",
                "0",
                "--max-channels",
                "50000",
            ],
        ),
    ] {
        let t_start = Instant::now();
        let (mut gw, mut by, rss0) = start_with_bystanders("churn", &args);
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for c in 0..CONNS {
            let (stop, sent, addr) = (stop.clone(), sent.clone(), gw.addr);
            let src = Ipv4Addr::new(127, 0, 7, 2 + c as u8);
            threads.push(std::thread::spawn(move || {
                let mut w = connect_small_rcvbuf(src, addr);
                ws_upgrade(&mut w);
                // Replies are read and thrown away, so that the connection
                // is never paused for not reading.
                let mut r = w.try_clone().unwrap();
                let reader = std::thread::spawn(move || {
                    let mut b = vec![0u8; 1 << 16];
                    while matches!(r.read(&mut b), Ok(n) if n > 0) {}
                });
                let mut seq = 0u64;
                let end = Instant::now() + FOR;
                while Instant::now() < end && !stop.load(Ordering::Acquire) {
                    let mut batch = Vec::with_capacity(1000 * 120);
                    for _ in 0..1000 {
                        let ch = format!("churn-{c}-{seq}");
                        seq += 1;
                        for op in ["subscribe", "unsubscribe"] {
                            let op = format!(r#"{{"op":"{op}","channel":"{ch}"}}"#);
                            batch.extend(frame(true, OP_TEXT, op.as_bytes()));
                        }
                    }
                    if w.write_all(&batch).is_err() {
                        break;
                    }
                    sent.fetch_add(1000, Ordering::Relaxed);
                }
                let _ = w.shutdown(std::net::Shutdown::Both);
                let _ = reader.join();
            }));
        }
        serve_bystanders_during(&mut by, "the churn");
        let mut peak_lag = 0.0f64;
        let mut idle_peak = 0;
        while threads.iter().any(|t| !t.is_finished()) {
            let m = gw.metrics();
            idle_peak = idle_peak.max(m.get("wsgate_channels_idle"));
            let lag = m.0.get("wsgate_loop_lag_seconds").copied().unwrap_or(0.0);
            peak_lag = peak_lag.max(lag);
            std::thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, Ordering::Release);
        for t in threads {
            t.join().expect("churner");
        }
        let peak = gw.peak_rss_mib();
        let m = gw.metrics();
        let refused = m.get("wsgate_channel_rate_limited_total");
        idle_peak = idle_peak.max(m.get("wsgate_channels_idle"));
        // Gone: only the bystanders' channel is live again.
        let deadline = Instant::now() + LEGIT_WAIT;
        while gw.metrics().get("wsgate_channels") > 1 {
            assert!(Instant::now() < deadline, "churned channels still live");
            std::thread::sleep(Duration::from_millis(50));
        }
        let report = by.finish();
        gw.assert_alive();
        let sent = sent.load(Ordering::Relaxed);
        eprintln!(
            "churn ({label}): {sent} new channels subscribed and left over {CONNS} connections, \
             {refused} refused over the rate, at most {idle_peak} idle positions kept, longest \
             loop turn {peak_lag:.3} s; gateway RSS {rss0:.1} MiB before, peak {peak:.1} MiB, \
             {:.1} MiB after; bystanders: {report}; scenario {:.1?}",
            gw.rss_mib(),
            t_start.elapsed()
        );
        if label == "defaults" {
            assert!(refused > 0, "the channel rate refused nothing of {sent}");
        } else {
            assert_eq!(refused, 0);
            // max_channels, rounded up to a whole number per shard (64).
            assert!(idle_peak <= 50_000 + 64, "{idle_peak} idle positions");
            assert!(sent > 50_000, "the churn made only {sent} channels");
        }
        // Positions are about 100 bytes; full records were ~1 KB each
        // and stayed 5 minutes.
        assert_growth(rss0, peak, 96.0, "a channel churn");
    }
}

/// Scenario 8 (issue 12, item 8), replays of big history: 30 channels of
/// 3 MiB history; 4 long-polls, 4 SSE streams and 4 WebSocket connections
/// each ask to replay all of it from offset 0 and never read (4 KiB receive
/// buffers). Each is paced by its out queue: the gateway holds about the
/// cap for each (1 MiB), not the 90 MiB they asked for.
#[test]
fn replays_of_big_history_are_paced_by_the_out_queue() {
    let _serial = serial();
    const CHANNELS: usize = 30;
    const PER: usize = 100 * 1024;
    const EACH: usize = 30; // 3 MiB per channel
    let t_start = Instant::now();
    let (mut gw, mut by, _) = start_with_bystanders("replay", &["--trim-memory", "1s"]);
    let mut ka = KeepAlive::new(gw.addr);
    let pad = "h".repeat(PER - 64);
    let mut positions: Vec<(String, String, u64)> = Vec::new();
    for c in 0..CHANNELS {
        let ch = format!("replay-{c}");
        let mut epoch = String::new();
        for k in (0..EACH).step_by(8) {
            let items: Vec<serde_json::Value> = (k..(k + 8).min(EACH))
                .map(|n| json!({ "channel": ch, "data": { "n": n, "pad": pad } }))
                .collect();
            let body = serde_json::to_vec(&items).unwrap();
            let r = ka.request("POST", "/api/publish", &body).expect("publish");
            assert_eq!(r.status, 200, "{}", r.text());
            epoch = r.json()[0]["epoch"].as_str().unwrap().to_string();
        }
        positions.push((ch, epoch, 0));
    }
    let rss0 = gw.rss_mib();
    let names: Vec<String> = positions
        .iter()
        .map(|p| format!("channel={}", p.0))
        .collect();
    let names = names.join("&");
    let token = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&positions).unwrap())
    };
    let mut held = Vec::new();
    for i in 0..12u8 {
        let mut s = connect_small_rcvbuf(Ipv4Addr::new(127, 0, 8, 2 + i), gw.addr);
        match i % 3 {
            0 => write!(
                s,
                "GET /poll?{names}&cursor={token}&wait=30 HTTP/1.1\r\nHost: t\r\n\r\n"
            )
            .unwrap(),
            1 => write!(
                s,
                "GET /sse?{names} HTTP/1.1\r\nHost: t\r\nLast-Event-ID: {token}\r\n\r\n"
            )
            .unwrap(),
            _ => {
                ws_upgrade(&mut s);
                let mut ops = Vec::new();
                for (ch, e, _) in &positions {
                    let op = json!({ "op": "subscribe", "channel": ch,
                                     "since": { "epoch": e, "offset": 0 } });
                    ops.extend(frame(true, OP_TEXT, op.to_string().as_bytes()));
                }
                s.write_all(&ops).unwrap();
            }
        }
        held.push(s);
    }
    serve_bystanders_during(&mut by, "the replays");
    // Long enough for every replay to fill what it may.
    std::thread::sleep(Duration::from_secs(3));
    let peak = gw.peak_rss_mib();
    drop(held);
    let report = by.finish();
    gw.assert_alive();
    eprintln!(
        "replay: 12 clients (4 long-polls, 4 SSE, 4 WebSocket) asked to replay {CHANNELS} x 3 MiB \
         each and never read; gateway RSS {rss0:.1} MiB before (history held), peak {peak:.1} \
         MiB, {:.1} MiB after; bystanders: {report}; scenario {:.1?}",
        gw.rss_mib(),
        t_start.elapsed()
    );
    // About the cap (1 MiB) each, twice for copies on their way out, plus
    // slack; unpaced, it was 90 MiB each.
    assert_growth(rss0, peak, 12.0 * 2.0 + 48.0, "replays");
}

/// Scenario 9 (issue 12, item 9), a history flood: one publisher sends
/// 100 KiB publications to 200 channels (4 MiB of history each allowed)
/// as fast as the API answers, 320 MiB in all. The node keeps at most
/// `limits.history_memory` (64 MiB here): the oldest publications go first
/// (counted), the gateway's memory stays near the budget, bystanders are
/// served.
#[test]
fn a_history_flood_stays_within_the_history_budget() {
    let _serial = serial();
    const BUDGET: usize = 64 << 20;
    let t_start = Instant::now();
    let budget = BUDGET.to_string();
    let args = ["--history-memory", &budget, "--trim-memory", "1s"];
    let (mut gw, mut by, rss0) = start_with_bystanders("history", &args);
    let flood = {
        let addr = gw.addr;
        std::thread::spawn(move || {
            let mut ka = KeepAlive::new(addr);
            let pad = "p".repeat(100 * 1024 - 64);
            for n in (0..3200).step_by(8) {
                let items: Vec<serde_json::Value> = (n..n + 8)
                    .map(|k| json!({ "channel": format!("flood-{}", k % 200), "data": pad }))
                    .collect();
                let r = ka
                    .request("POST", "/api/publish", &serde_json::to_vec(&items).unwrap())
                    .expect("publish");
                assert_eq!(r.status, 200, "{}", r.text());
            }
        })
    };
    serve_bystanders_during(&mut by, "the history flood");
    let mut held_max = 0;
    while !flood.is_finished() {
        held_max = held_max.max(gw.metrics().get("wsgate_history_bytes"));
        std::thread::sleep(Duration::from_millis(100));
    }
    flood.join().expect("flood");
    let m = gw.metrics();
    held_max = held_max.max(m.get("wsgate_history_bytes"));
    let evicted = m.get("wsgate_history_evictions_total");
    let peak = gw.peak_rss_mib();
    let report = by.finish();
    gw.assert_alive();
    eprintln!(
        "history flood: 320 MiB into 200 channels; at most {:.1} MiB of history held, {evicted} \
         publications dropped for the budget; gateway RSS {rss0:.1} MiB before, peak {peak:.1} \
         MiB, {:.1} MiB after; bystanders: {report}; scenario {:.1?}",
        mib(held_max),
        gw.rss_mib(),
        t_start.elapsed()
    );
    // A publication is appended under its channel's lock and the budget
    // enforced right after: a scrape in between may see that one
    // publication (at most 100 KiB here) over the budget, never more.
    const ONE_PUBLICATION: u64 = 100 * 1024 + 256;
    assert!(
        held_max <= BUDGET as u64 + ONE_PUBLICATION,
        "{held_max} bytes of history held"
    );
    assert!(evicted > 0);
    assert_growth(
        rss0,
        peak,
        mib(BUDGET as u64) * 1.5 + 48.0,
        "a history flood",
    );
}
