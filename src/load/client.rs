//! Client connections over mio: one connection's state machine, and
//! [`Fleet`], the event loop that drives many of them.
//!
//! ```text
//! connecting ──writable, connected──▶ handshaking ──101 checked──▶ open
//!     │                                   │                         │ close frame
//!     └── error / timeout ──▶ Failed ◀────┘                         ▼ (either side)
//!                                                                 closing ──EOF / linger──▶ Closed
//!                          open / closing ── EOF, reset, protocol error ──▶ Lost
//! ```
//!
//! The protocol is [`crate::proto`]'s client role: the handshake request
//! with a random key and the check of the server's `Sec-WebSocket-Accept`
//! ([`handshake::write_client_request`], [`handshake::parse_response`]),
//! then [`Conn`] for frames: masked sends, reassembly of fragments, UTF-8
//! checks, pong replies and the close handshake.
//!
//! A mode reacts to events through a [`Handler`]. From inside its callbacks
//! it may send on that connection through [`Ctx`]: `Conn::decode_with`
//! holds the connection while it calls back and hands out a [`Sender`], so
//! whole messages sent from there are compressed by it when
//! permessage-deflate was negotiated, and otherwise masked and queued by
//! [`Wire`], the connection's output, with its own mask keys (the RFC asks
//! for unpredictable keys, not for one generator).
//!
//! permessage-deflate (RFC 7692) is off unless [`ClientConfig::deflate`]
//! says otherwise: then the request carries [`deflate::client_offer`], the
//! server's answer is checked by [`deflate::accept_response`] (an extension
//! we did not offer, or parameters our offer does not allow, fail the
//! handshake), and the fleet's [`Engine`] compresses and inflates for every
//! connection, with a per-connection context only in `dedicated` mode.
//!
//! Reads go into one buffer of the fleet; only an incomplete response head
//! or frame is kept per connection, and the output buffer holds bytes only
//! while the kernel pushes back, so an idle connection holds little.
//!
//! `wss://` runs the same connection over [`crate::tls::Session`] (rustls's
//! unbuffered client): records read are decrypted in the fleet's buffer and
//! their plaintext goes on as above; what the connection queues is
//! encrypted when it is flushed. An idle TLS connection adds its session
//! (about 3 KB of keys and state) and no buffer.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::net::{self, Target};
use super::report::OpenStats;
use super::{Observer, Rng};
use crate::proto::deflate::{self, Engine};
use crate::proto::frame::{encode_header, OpCode, MAX_HEADER};
use crate::proto::handshake;
use crate::proto::mask::apply_mask;
use crate::proto::{Conn, Event, Limits, Output, Sender, State};
use crate::tls::{self, Session};

/// The fleet's read buffer.
const READ_BUF: usize = 64 * 1024;
/// How often deadlines are checked.
const SWEEP_EVERY: Duration = Duration::from_millis(50);
/// The longest wait in [`Fleet::poll`].
const MAX_WAIT: Duration = Duration::from_millis(100);

/// Settings shared by every connection of a fleet.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub target: Target,
    /// Source addresses, used round robin; empty: let the kernel choose.
    pub src_ips: Vec<IpAddr>,
    /// From the start of `connect` to a checked 101.
    pub handshake_timeout: Duration,
    /// After a close frame (ours or the peer's), how long to wait for the
    /// rest of the close handshake and the server's FIN.
    pub close_linger: Duration,
    /// Largest message accepted from the server (inflated, when
    /// compressed).
    pub limits: Limits,
    /// permessage-deflate: what we offer (`off`: nothing, and any extension
    /// in the answer fails the handshake), and how we compress once it is
    /// agreed (`min_size`, `window_bits`, `level`).
    pub deflate: deflate::Config,
    /// The TLS client configuration, for `wss://` targets.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Ask the kernel to stamp each arrival (`SO_TIMESTAMPNS`, plain
    /// `ws://` only): handlers see it as [`Ctx::arrived_ns`].
    pub rx_timestamps: bool,
}

impl ClientConfig {
    /// Defaults: 10 s handshake timeout, 2 s close linger, 16 MiB messages,
    /// no permessage-deflate.
    pub fn new(target: Target) -> ClientConfig {
        ClientConfig {
            target,
            src_ips: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            close_linger: Duration::from_secs(2),
            limits: Limits::default(),
            deflate: deflate::Config::off(),
            tls: None,
            rx_timestamps: false,
        }
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// It never opened: connect or handshake failed or timed out.
    Failed(String),
    /// The close handshake took place; `by_peer`: the server started it.
    Closed { code: Option<u16>, by_peer: bool },
    /// It opened, then ended without a close handshake.
    Lost(String),
    /// Cut off by the end of the run ([`Fleet::abort_all`]).
    Cancelled,
}

/// What a socket event reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ready {
    Writable,
    Readable,
    /// The peer's FIN, or an error (read to the end).
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    Handshaking,
    Open,
    /// A close frame went out or came in (or the connection failed): waiting
    /// for the server's FIN, at most until the deadline.
    Closing,
}

/// A connection's output: bytes waiting for the socket, and the mask keys
/// of data frames sent from handler callbacks.
#[derive(Debug, Default)]
pub struct Wire {
    buf: Vec<u8>,
    pos: usize,
    mask_seed: u32,
}

impl Output for Wire {
    fn put(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn queued(&self) -> usize {
        self.buf.len() - self.pos
    }
}

impl Wire {
    /// Queue one masked frame (RFC 6455 §5.3: "a client MUST mask all
    /// frames that it sends to the server", with a fresh key per frame).
    fn frame(&mut self, fin: bool, op: OpCode, data: &[u8]) {
        // xorshift32, seeded from the OS per connection.
        let mut x = self.mask_seed;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_seed = x;
        let key = x.to_ne_bytes();
        let mut h = [0u8; MAX_HEADER];
        let n = encode_header(&mut h, fin, 0, op, Some(key), data.len() as u64);
        self.buf.extend_from_slice(&h[..n]);
        let start = self.buf.len();
        self.buf.extend_from_slice(data);
        apply_mask(&mut self.buf[start..], key, 0);
    }
}

/// Where a handler's sends go: the connection's [`Sender`] over its
/// [`Wire`].
trait Tx {
    /// A whole message: compressed when permessage-deflate is on.
    fn message(&mut self, text: bool, data: &[u8]);
    /// One uncompressed frame (RSV1 clear), e.g. a fragment.
    fn frame(&mut self, fin: bool, op: OpCode, data: &[u8]);
    fn queued(&self) -> usize;
}

impl Tx for Sender<'_, Wire> {
    fn message(&mut self, text: bool, data: &[u8]) {
        if self.compressing() {
            self.send(text, data);
        } else {
            let op = if text { OpCode::Text } else { OpCode::Binary };
            self.out().frame(true, op, data);
        }
    }

    fn frame(&mut self, fin: bool, op: OpCode, data: &[u8]) {
        self.out().frame(fin, op, data);
    }

    fn queued(&self) -> usize {
        Output::queued(self)
    }
}

/// What a handler may do with the connection it is called for.
pub struct Ctx<'a, T> {
    /// The connection's id in the fleet.
    pub id: usize,
    /// When the bytes that caused this call were read.
    pub now: Instant,
    /// When the kernel received them (ns since the Unix epoch), with
    /// [`ClientConfig::rx_timestamps`]: the arrival, however late this
    /// process got to read them.
    pub arrived_ns: Option<u64>,
    /// The mode's per-connection state.
    pub user: &'a mut T,
    tx: &'a mut dyn Tx,
    open: bool,
    close: &'a mut Option<u16>,
}

impl<T> Ctx<'_, T> {
    /// Can messages be sent?
    pub fn is_open(&self) -> bool {
        self.open && self.close.is_none()
    }

    /// Send a whole message as one frame, compressed when
    /// permessage-deflate was negotiated (and the message is at least
    /// `min_size` bytes). Returns false (and sends nothing) unless the
    /// connection is open.
    pub fn send(&mut self, text: bool, data: &[u8]) -> bool {
        if !self.is_open() {
            return false;
        }
        self.tx.message(text, data);
        true
    }

    /// Send a message in fragments of at most `frag` bytes (§5.4), never
    /// compressed.
    pub fn send_fragmented(&mut self, text: bool, data: &[u8], frag: usize) -> bool {
        if !self.is_open() {
            return false;
        }
        let frag = frag.max(1);
        let mut op = if text { OpCode::Text } else { OpCode::Binary };
        let mut rest = data;
        loop {
            let n = rest.len().min(frag);
            let fin = n == rest.len();
            self.tx.frame(fin, op, &rest[..n]);
            if fin {
                return true;
            }
            rest = &rest[n..];
            op = OpCode::Continuation;
        }
    }

    /// Start the close handshake once this callback returns.
    pub fn close(&mut self, code: u16) {
        if self.open && self.close.is_none() {
            *self.close = Some(code);
        }
    }

    /// Bytes queued on this connection and not yet written.
    pub fn queued(&self) -> usize {
        self.tx.queued()
    }
}

/// A mode's reactions to connection events. Every method has a default that
/// does nothing, except that pings are answered by the protocol core anyway.
pub trait Handler<T> {
    /// The 101 was checked; `handshake` is the time since `connect` began.
    fn on_open(&mut self, _ctx: &mut Ctx<'_, T>, _handshake: Duration) {}
    /// A whole message (fragments reassembled; text is valid UTF-8).
    fn on_message(&mut self, _ctx: &mut Ctx<'_, T>, _text: bool, _data: &[u8]) {}
    /// A ping; the pong is already queued.
    fn on_ping(&mut self, _ctx: &mut Ctx<'_, T>, _data: &[u8]) {}
    /// The server's close frame; the reply, if one is due, is queued.
    fn on_close(&mut self, _ctx: &mut Ctx<'_, T>, _code: Option<u16>, _reason: &str) {}
    /// The connection is gone; its state is handed back.
    fn on_end(&mut self, _id: usize, _user: T, _end: &End) {}
}

/// A `wss://` connection's TLS: the session, an incomplete record read,
/// and records not yet written (both empty while idle).
struct TlsLink {
    session: Session<rustls::client::UnbufferedClientConnection>,
    spill: Vec<u8>,
    wire: Vec<u8>,
    sent: usize,
}

struct Client<T> {
    sock: TcpStream,
    /// `wss://`: the TLS under the WebSocket bytes.
    tls: Option<Box<TlsLink>>,
    phase: Phase,
    proto: Conn,
    /// The base64 handshake key, until the response is checked.
    key: String,
    /// An incomplete response head or frame.
    spill: Vec<u8>,
    out: Wire,
    started: Instant,
    /// Handshake deadline, or close-linger deadline while closing.
    deadline: Instant,
    /// The peer's close frame, once received (its code).
    peer_close: Option<Option<u16>>,
    we_closed: bool,
    /// Why the connection failed after opening, if it did.
    error: Option<String>,
    user: T,
}

/// What the connections of a fleet share while they are driven.
struct Io {
    /// The read buffer.
    rbuf: Vec<u8>,
    /// permessage-deflate: the compressors and the decompressor of every
    /// connection without context takeover, and scratch buffers.
    engine: Engine,
    /// Bytes read from and written to the sockets.
    read: u64,
    written: u64,
}

/// Many client connections on one mio `Poll`.
pub struct Fleet<T> {
    poll: Poll,
    events: Events,
    /// Tokens of the last poll, and what each is ready for.
    ready: Vec<(usize, Ready)>,
    clients: Slab<Client<T>>,
    io: Io,
    cfg: ClientConfig,
    rng: Rng,
    next_src: usize,
    epoch: Instant,
    last_sweep: Instant,
    /// Connections connecting or handshaking.
    pending: usize,
    /// Connections open (not yet closing).
    open: usize,
    stats: OpenStats,
}

impl<T> Fleet<T> {
    pub fn new(cfg: ClientConfig) -> io::Result<Fleet<T>> {
        let now = Instant::now();
        Ok(Fleet {
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            ready: Vec::new(),
            clients: Slab::new(),
            io: Io {
                rbuf: vec![0; READ_BUF],
                engine: Engine::new(cfg.deflate),
                read: 0,
                written: 0,
            },
            cfg,
            rng: Rng::from_os(),
            next_src: 0,
            epoch: now,
            last_sweep: now,
            pending: 0,
            open: 0,
            stats: OpenStats::default(),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Connections alive in any phase.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Connections still connecting or handshaking.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Connections open (upgraded, no close frame yet).
    pub fn open_count(&self) -> usize {
        self.open
    }

    /// Ids of the open connections.
    pub fn open_ids(&self) -> Vec<usize> {
        self.clients
            .iter()
            .filter(|(_, c)| c.phase == Phase::Open)
            .map(|(id, _)| id)
            .collect()
    }

    /// Attempts, upgrades, failures and losses so far.
    pub fn stats(&self) -> &OpenStats {
        &self.stats
    }

    /// Copy the byte and compression counters into the stats.
    fn sync_wire(&mut self) {
        let (io, w) = (&self.io, &mut self.stats.wire);
        let e = io.engine.stats;
        w.bytes_read = io.read;
        w.bytes_written = io.written;
        w.deflated_msgs = e.compressed;
        w.deflate_in_bytes = e.raw_bytes;
        w.deflate_out_bytes = e.deflated_bytes;
        w.inflated_msgs = e.inflated;
        w.inflated_bytes = e.inflated_bytes;
    }

    /// Milliseconds since the fleet began (the protocol core's clock).
    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Start one connection. A failure to even start it (no descriptor, no
    /// port) ends it at once through `h.on_end`. Returns its id if it started.
    pub fn connect<H: Handler<T>>(&mut self, user: T, h: &mut H) -> Option<usize> {
        self.stats.requested += 1;
        let src = if self.cfg.src_ips.is_empty() {
            None
        } else {
            let ip = self.cfg.src_ips[self.next_src % self.cfg.src_ips.len()];
            self.next_src = self.next_src.wrapping_add(1);
            Some(ip)
        };
        let id = self.clients.vacant_key();
        let tls = match (&self.cfg.tls, self.cfg.target.tls) {
            (_, false) => None,
            (None, true) => {
                let end = End::Failed("tls: wss:// without a TLS configuration".into());
                self.count_end(&end);
                h.on_end(id, user, &end);
                return None;
            }
            (Some(cfg), true) => {
                let mut wire = Vec::new();
                match tls::client::connect(cfg, &self.cfg.target.server_name, &mut wire) {
                    Ok(session) => Some(Box::new(TlsLink {
                        session,
                        spill: Vec::new(),
                        wire,
                        sent: 0,
                    })),
                    Err(e) => {
                        let end = End::Failed(format!("tls: {e}"));
                        self.count_end(&end);
                        h.on_end(id, user, &end);
                        return None;
                    }
                }
            }
        };
        let mut sock = match net::connect(
            self.cfg.target.addr,
            src,
            self.cfg.rx_timestamps && self.cfg.tls.is_none(),
        ) {
            Ok(s) => s,
            Err(e) => {
                let end = End::Failed(format!("connect: {e}"));
                self.count_end(&end);
                h.on_end(id, user, &end);
                return None;
            }
        };
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            let end = End::Failed(format!("register: {e}"));
            self.count_end(&end);
            h.on_end(id, user, &end);
            return None;
        }
        let mut key = [0u8; 16];
        self.rng.fill(&mut key);
        let mut out = Wire {
            buf: Vec::with_capacity(256),
            pos: 0,
            mask_seed: self.rng.next_u32() | 1,
        };
        let t = &self.cfg.target;
        let offer = deflate::client_offer(&self.cfg.deflate);
        if offer.is_some() {
            self.stats.deflate_offered += 1;
        }
        let key = handshake::write_client_request(
            &mut out.buf,
            &t.host,
            &t.path,
            &key,
            None,
            offer.as_deref(),
        );
        let now = Instant::now();
        let proto = Conn::client(self.ms(now), self.rng.next_u32());
        let c = Client {
            sock,
            tls,
            phase: Phase::Connecting,
            proto,
            key,
            spill: Vec::new(),
            out,
            started: now,
            deadline: now + self.cfg.handshake_timeout,
            peer_close: None,
            we_closed: false,
            error: None,
            user,
        };
        let got = self.clients.insert(c);
        debug_assert_eq!(got, id);
        self.pending += 1;
        Some(id)
    }

    /// Call `f` with a [`Ctx`] for connection `id` (to send, or to close),
    /// then write what it queued. Does nothing if `id` is not open.
    pub fn act<H: Handler<T>>(
        &mut self,
        id: usize,
        h: &mut H,
        f: impl FnOnce(&mut H, &mut Ctx<'_, T>),
    ) {
        let now = Instant::now();
        let now_ms = self.ms(now);
        let linger = self.cfg.close_linger;
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        if c.phase != Phase::Open {
            return;
        }
        let mut close = None;
        let mut tx = c.proto.sender(&mut c.out, &mut self.io.engine);
        let mut ctx = Ctx {
            id,
            now,
            arrived_ns: None,
            user: &mut c.user,
            tx: &mut tx,
            open: true,
            close: &mut close,
        };
        f(h, &mut ctx);
        if let Some(code) = close {
            c.proto.close(&mut c.out, now_ms, code, "");
            c.we_closed = true;
            c.phase = Phase::Closing;
            c.deadline = now + linger;
            self.open -= 1;
        }
        let end = flush(c, &mut self.io.written);
        self.sync_wire();
        if let Some(end) = end {
            self.end(id, end, h);
        }
    }

    /// Start the close handshake on every open connection.
    pub fn close_all<H: Handler<T>>(&mut self, code: u16, h: &mut H) {
        for id in self.open_ids() {
            self.act(id, h, |_, ctx| ctx.close(code));
        }
    }

    /// End every connection now: those not yet open, and open ones, end
    /// [`End::Cancelled`]; closing ones end as their close went so far.
    pub fn abort_all<H: Handler<T>>(&mut self, h: &mut H) {
        let ids: Vec<usize> = self.clients.iter().map(|(id, _)| id).collect();
        for id in ids {
            let end = match self.clients.get(id) {
                Some(c) if c.phase == Phase::Closing => closing_end(c, "close timeout"),
                Some(_) => End::Cancelled,
                None => continue,
            };
            self.end(id, end, h);
        }
    }

    /// Wait for events at most `timeout` (and at most 100 ms), handle them,
    /// and end the connections whose deadline passed.
    pub fn poll<H: Handler<T>>(&mut self, h: &mut H, timeout: Duration) -> io::Result<()> {
        if let Err(e) = self
            .poll
            .poll(&mut self.events, Some(timeout.min(MAX_WAIT)))
        {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let mut ready = std::mem::take(&mut self.ready);
        ready.extend(self.events.iter().map(|ev| {
            let ready = if ev.is_read_closed() || ev.is_error() {
                Ready::Closed
            } else if ev.is_readable() {
                Ready::Readable
            } else {
                Ready::Writable
            };
            (ev.token().0, ready)
        }));
        for &(id, r) in &ready {
            self.drive(id, r, h);
        }
        ready.clear();
        self.ready = ready;
        self.sync_wire();
        let now = Instant::now();
        // Open connections have no deadline: skip the scan when all are open.
        let has_deadlines = self.clients.len() > self.open;
        if has_deadlines && now.duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.last_sweep = now;
            self.sweep(now, h);
        }
        Ok(())
    }

    /// Poll until every connection has ended or `deadline` passed; then
    /// abort what is left. Bounded by `deadline`.
    pub fn drain<H: Handler<T>>(&mut self, h: &mut H, deadline: Instant) -> io::Result<()> {
        while !self.clients.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            self.poll(h, deadline - now)?;
        }
        self.abort_all(h);
        Ok(())
    }

    fn sweep<H: Handler<T>>(&mut self, now: Instant, h: &mut H) {
        let expired: Vec<(usize, End)> = self
            .clients
            .iter()
            .filter(|(_, c)| c.phase != Phase::Open && c.deadline <= now)
            .map(|(id, c)| {
                let end = match c.phase {
                    Phase::Connecting => End::Failed("connect: timeout".to_string()),
                    Phase::Handshaking => End::Failed("handshake: timeout".to_string()),
                    _ => closing_end(c, "close: no close reply in time"),
                };
                (id, end)
            })
            .collect();
        for (id, end) in expired {
            self.end(id, end, h);
        }
    }

    fn count_end(&mut self, end: &End) {
        let s = &mut self.stats;
        match end {
            End::Failed(why) => {
                s.failed += 1;
                *s.failures.entry(why.clone()).or_default() += 1;
            }
            End::Lost(why) => {
                s.lost += 1;
                *s.losses.entry(why.clone()).or_default() += 1;
            }
            End::Closed { .. } | End::Cancelled => {}
        }
    }

    fn end<H: Handler<T>>(&mut self, id: usize, end: End, h: &mut H) {
        let Some(c) = self.clients.try_remove(id) else {
            return;
        };
        match c.phase {
            Phase::Connecting | Phase::Handshaking => self.pending -= 1,
            Phase::Open => self.open -= 1,
            Phase::Closing => {}
        }
        // Closing the descriptor removes it from epoll.
        drop(c.sock);
        self.count_end(&end);
        h.on_end(id, c.user, &end);
    }

    /// Handle readiness of connection `id`.
    fn drive<H: Handler<T>>(&mut self, id: usize, ready: Ready, h: &mut H) {
        let epoch = self.epoch;
        let cfg = &self.cfg;
        let Some(c) = self.clients.get_mut(id) else {
            return; // ended earlier in this batch
        };
        let before = c.phase;
        if c.phase == Phase::Connecting {
            match connected(&c.sock) {
                Ok(true) => c.phase = Phase::Handshaking,
                Ok(false) => return, // spurious wake-up
                Err(e) => {
                    self.end(id, End::Failed(format!("connect: {e}")), h);
                    return;
                }
            }
        }
        let mut result = None;
        if ready != Ready::Writable {
            let to_eof = ready == Ready::Closed;
            result = read_all(c, id, &mut self.io, to_eof, cfg, epoch, h);
        }
        if result.is_none() {
            result = flush(c, &mut self.io.written);
        }
        let after = c.phase;
        let deflate = c.proto.deflate().is_on();
        if before != after {
            if matches!(before, Phase::Connecting | Phase::Handshaking)
                && !matches!(after, Phase::Connecting | Phase::Handshaking)
            {
                self.pending -= 1;
                self.stats.opened += 1;
                if deflate {
                    self.stats.deflate_negotiated += 1;
                }
                if after == Phase::Open {
                    self.open += 1;
                }
            } else if before == Phase::Open {
                self.open -= 1;
            }
        }
        if let Some(end) = result {
            // `end` settles the counters of the phase it ends in.
            self.end(id, end, h);
        }
    }
}

/// Has the non-blocking connect finished? `Ok(false)`: not yet (mio's
/// documented check: `take_error`, then `peer_addr`).
fn connected(sock: &TcpStream) -> io::Result<bool> {
    if let Some(e) = sock.take_error()? {
        return Err(e);
    }
    match sock.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
        Err(e) => Err(e),
    }
}

/// How a closing (or failed-after-open) connection ends.
fn closing_end<T>(c: &Client<T>, no_reply: &str) -> End {
    if let Some(e) = &c.error {
        return End::Lost(e.clone());
    }
    match c.peer_close {
        Some(code) => End::Closed {
            code,
            by_peer: !c.we_closed,
        },
        None => End::Lost(no_reply.to_string()),
    }
}

/// The end for an I/O error or EOF in the current phase.
fn io_end<T>(c: &Client<T>, what: &str) -> End {
    match c.phase {
        Phase::Connecting => End::Failed(format!("connect: {what}")),
        Phase::Handshaking => End::Failed(format!("handshake: {what}")),
        Phase::Open => End::Lost(what.to_string()),
        Phase::Closing => closing_end(c, &format!("close: {what} before the close reply")),
    }
}

/// Write what is queued, counting the bytes in `written`. `Some(end)` if
/// the connection must end.
fn flush<T>(c: &mut Client<T>, written: &mut u64) -> Option<End> {
    if c.phase == Phase::Connecting {
        return None;
    }
    let w = &mut c.out;
    let result = match c.tls.as_mut() {
        None => drain_to(&mut c.sock, &mut w.buf, &mut w.pos, written),
        Some(t) => {
            // wss://: once the TLS handshake is over, what the connection
            // queued becomes records, then the records are written.
            if t.session.is_open() && w.pos < w.buf.len() {
                let plain: &[u8] = &w.buf[w.pos..];
                if let Err(e) = t.session.encrypt(&mut t.spill, &[plain], &mut t.wire) {
                    let why = format!("tls: {e}");
                    return Some(io_end(c, &why));
                }
                release(&mut w.buf, &mut w.pos);
            }
            drain_to(&mut c.sock, &mut t.wire, &mut t.sent, written)
        }
    };
    match result {
        Ok(()) => None,
        Err(why) => Some(io_end(c, &why)),
    }
}

/// Write `buf[*pos..]` until it is all written (then empty `buf`, and
/// free it if it grew large) or the socket would block. `Err(why)` if the
/// connection must end.
fn drain_to(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
    pos: &mut usize,
    written: &mut u64,
) -> Result<(), String> {
    while *pos < buf.len() {
        match sock.write(&buf[*pos..]) {
            Ok(0) => return Err("write returned 0".into()),
            Ok(n) => {
                *pos += n;
                *written += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("write: {e}")),
        }
    }
    release(buf, pos);
    Ok(())
}

/// Empty an output buffer; free it if it grew past the read buffer's size.
fn release(buf: &mut Vec<u8>, pos: &mut usize) {
    buf.clear();
    *pos = 0;
    if buf.capacity() > READ_BUF {
        *buf = Vec::new();
    }
}

/// Read until the socket is drained, handling the bytes as they come.
///
/// A short read means the receive queue was empty at that moment, and any
/// later arrival raises a new edge-triggered event, so reading again only to
/// see `WouldBlock` would cost a system call per message. The exception is
/// an event that reported the peer's FIN (or an error): that edge is spent,
/// so such a socket is read until EOF or `WouldBlock` (`to_eof`).
fn read_all<T, H: Handler<T>>(
    c: &mut Client<T>,
    id: usize,
    io: &mut Io,
    to_eof: bool,
    cfg: &ClientConfig,
    epoch: Instant,
    h: &mut H,
) -> Option<End> {
    let Io {
        rbuf, engine, read, ..
    } = io;
    let stamped = cfg.rx_timestamps && c.tls.is_none();
    loop {
        let got = if stamped {
            net::recv_stamped(&c.sock, rbuf)
        } else {
            c.sock.read(rbuf).map(|n| (n, None))
        };
        match got {
            Ok((0, _)) => {
                // A server that closes TCP after its close frame: normal.
                let what = if c.phase == Phase::Handshaking {
                    "connection closed before the response".to_string()
                } else {
                    "connection closed without a close frame".to_string()
                };
                return Some(io_end(c, &what));
            }
            Ok((n, arrived_ns)) => {
                *read += n as u64;
                let end = if c.tls.is_some() {
                    on_records(c, id, &mut rbuf[..n], engine, cfg, epoch, h)
                } else {
                    on_bytes(c, id, &mut rbuf[..n], arrived_ns, engine, cfg, epoch, h)
                };
                if let Some(end) = end {
                    return Some(end);
                }
                if n < rbuf.len() && !to_eof {
                    return None;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Some(io_end(c, &format!("read: {e}"))),
        }
    }
}

/// Handle TLS records just read into `fresh`: decrypt them (in `fresh`,
/// or behind an incomplete record kept from before), hand the plaintext to
/// [`on_bytes`], keep what is left of an incomplete record.
fn on_records<T, H: Handler<T>>(
    c: &mut Client<T>,
    id: usize,
    fresh: &mut [u8],
    engine: &mut Engine,
    cfg: &ClientConfig,
    epoch: Instant,
    h: &mut H,
) -> Option<End> {
    let mut t = c.tls.take()?;
    let mut held = std::mem::take(&mut t.spill);
    let buf: &mut [u8] = if held.is_empty() {
        fresh
    } else {
        held.extend_from_slice(fresh);
        &mut held
    };
    let fed = t.session.feed(buf, &mut t.wire);
    let mut end = None;
    if fed.plaintext > 0 {
        end = on_bytes(
            c,
            id,
            &mut buf[..fed.plaintext],
            None,
            engine,
            cfg,
            epoch,
            h,
        );
    }
    if fed.error.is_none() && fed.consumed < buf.len() {
        t.spill = buf[fed.consumed..].to_vec();
    }
    if fed.error.is_some() {
        // The alert the failure calls for (RFC 8446 §6.2), once, before the
        // socket is closed; whatever the kernel does not take is dropped.
        let _ = c.sock.write(&t.wire[t.sent..]);
    }
    c.tls = Some(t);
    if end.is_none() {
        if let Some(e) = fed.error {
            end = Some(io_end(c, &format!("tls: {e}")));
        }
    }
    end
}

/// Handle bytes just read into `fresh`.
#[allow(clippy::too_many_arguments)]
fn on_bytes<T, H: Handler<T>>(
    c: &mut Client<T>,
    id: usize,
    fresh: &mut [u8],
    arrived_ns: Option<u64>,
    engine: &mut Engine,
    cfg: &ClientConfig,
    epoch: Instant,
    h: &mut H,
) -> Option<End> {
    let now = Instant::now();
    let now_ms = now.saturating_duration_since(epoch).as_millis() as u64;
    let from_spill = !c.spill.is_empty();
    if from_spill {
        c.spill.extend_from_slice(fresh);
    }
    let data: &mut [u8] = if from_spill { &mut c.spill } else { fresh };
    let mut consumed = 0;
    let mut close_req = None;
    if c.phase == Phase::Handshaking {
        match handshake::parse_response(data, &c.key) {
            Ok(None) => {}
            Err(_) => return Some(End::Failed(describe_response(data))),
            Ok(Some(resp)) => {
                // RFC 6455 §4.1: "If the response includes a
                // |Sec-WebSocket-Extensions| header field and this header
                // field indicates the use of an extension that was not
                // present in the client's handshake ..., the client MUST
                // _Fail the WebSocket Connection_"; RFC 7692 §7.1 adds the
                // checks of the parameters against our offer.
                let answer = resp.extensions.as_deref().map(str::as_bytes);
                match deflate::accept_response(answer, &cfg.deflate) {
                    Ok(Some(params)) => c.proto.set_deflate(&params, &cfg.deflate),
                    Ok(None) => {}
                    Err(_) => {
                        let value = resp.extensions.as_deref().unwrap_or_default();
                        return Some(End::Failed(refused_extensions(cfg, value)));
                    }
                }
                consumed = resp.len;
                c.phase = Phase::Open;
                c.key = String::new();
                let mut tx = c.proto.sender(&mut c.out, engine);
                let mut ctx = Ctx {
                    id,
                    now,
                    arrived_ns,
                    user: &mut c.user,
                    tx: &mut tx,
                    open: true,
                    close: &mut close_req,
                };
                h.on_open(&mut ctx, now.saturating_duration_since(c.started));
            }
        }
    }
    if let Some(code) = close_req.take() {
        c.proto.close(&mut c.out, now_ms, code, "");
        c.we_closed = true;
    }
    if c.phase != Phase::Handshaking && consumed < data.len() {
        let open = c.proto.is_open();
        let user = &mut c.user;
        let mut peer_close = None;
        let mut on_event = |ev: Event<'_>, tx: &mut Sender<'_, Wire>| {
            let mut ctx = Ctx {
                id,
                now,
                arrived_ns,
                user: &mut *user,
                tx,
                open,
                close: &mut close_req,
            };
            match ev {
                Event::Message { text, data } => h.on_message(&mut ctx, text, data),
                Event::Ping(p) => h.on_ping(&mut ctx, p),
                Event::Pong(_) => {}
                Event::Close { code, reason } => {
                    peer_close = Some(code);
                    ctx.open = false;
                    h.on_close(&mut ctx, code, reason);
                }
            }
        };
        match c.proto.decode_with(
            &mut data[consumed..],
            now_ms,
            &cfg.limits,
            engine,
            &mut c.out,
            &mut on_event,
        ) {
            Ok(used) => consumed += used,
            Err(e) => {
                // §7.1.7: fail the connection (close frame with the error's
                // code), then wait for the server to close TCP.
                c.proto.fail(&mut c.out, now_ms, e);
                if c.error.is_none() {
                    c.error = Some(format!("protocol error: {e}"));
                }
                consumed = data.len();
            }
        }
        if peer_close.is_some() {
            c.peer_close = peer_close;
        }
        if let Some(code) = close_req {
            c.proto.close(&mut c.out, now_ms, code, "");
            c.we_closed = true;
        }
    }
    // Keep only an incomplete head or frame.
    let keep = (!from_spill && consumed < data.len()).then(|| data[consumed..].to_vec());
    if let Some(rest) = keep {
        c.spill = rest;
    } else if from_spill {
        c.spill.drain(..consumed);
        if c.spill.is_empty() {
            c.spill = Vec::new();
        }
    }
    if c.phase == Phase::Open && c.proto.state() != State::Open {
        c.phase = Phase::Closing;
        c.deadline = now + cfg.close_linger;
    }
    None
}

/// The reason for a 101 whose `Sec-WebSocket-Extensions` we must refuse:
/// the same for every connection to the same server, so that failures add
/// up under one reason.
fn refused_extensions(cfg: &ClientConfig, value: &str) -> String {
    let unoffered = cfg.deflate.mode == deflate::Mode::Off
        || value.split(',').any(|e| {
            let name = e.split(';').next().unwrap_or_default().trim();
            !name.eq_ignore_ascii_case(deflate::TOKEN)
        });
    let what = if unoffered {
        "the server answered an extension we did not offer"
    } else {
        "the server's permessage-deflate answer does not fit our offer"
    };
    let shown: String = value.chars().take(80).collect();
    format!("handshake: {what}: Sec-WebSocket-Extensions: {shown}")
}

/// A short reason for a refused handshake: the status line, if any.
fn describe_response(data: &[u8]) -> String {
    let line = data
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or(&[]);
    let line = String::from_utf8_lossy(&line[..line.len().min(60)]).into_owned();
    if line.starts_with("HTTP/") {
        format!("handshake: {line}")
    } else {
        "handshake: not an HTTP response".to_string()
    }
}

/// How connections are opened: a bounded number of handshakes in flight
/// (so the server's accept backlog is not overrun), and optionally a rate.
#[derive(Debug, Clone, Copy)]
pub struct Waves {
    /// Connections connecting or handshaking at once.
    pub inflight: usize,
    /// New connection attempts per second (`None`: as fast as `inflight`
    /// allows).
    pub rate: Option<f64>,
}

impl Default for Waves {
    fn default() -> Self {
        Waves {
            inflight: 256,
            rate: None,
        }
    }
}

impl<T> Fleet<T> {
    /// Open `n` connections in waves and return once each has opened or
    /// failed (every attempt is bounded by the handshake timeout). `user`
    /// makes each connection's state; `obs` hears of the progress.
    pub fn open_many<H: Handler<T>>(
        &mut self,
        n: u64,
        waves: Waves,
        h: &mut H,
        obs: &mut dyn Observer,
        mut user: impl FnMut() -> T,
    ) -> io::Result<()> {
        let start = Instant::now();
        let (opened0, failed0) = (self.stats.opened, self.stats.failed);
        let inflight = waves.inflight.max(1);
        let rate = waves.rate.filter(|r| *r > 0.0);
        let mut started = 0u64;
        let mut last_report = start;
        loop {
            let elapsed = start.elapsed();
            // Attempts allowed so far by the rate (the first one at once).
            let allowed = rate.map_or(u64::MAX, |r| (elapsed.as_secs_f64() * r) as u64 + 1);
            while started < n && self.pending < inflight && started < allowed {
                self.connect(user(), h);
                started += 1;
            }
            if started >= n && self.pending == 0 {
                break;
            }
            let wait = match rate {
                Some(r) if started < n && started >= allowed && self.pending < inflight => {
                    Duration::from_secs_f64(started as f64 / r).saturating_sub(elapsed)
                }
                _ => MAX_WAIT,
            };
            self.poll(h, wait)?;
            if last_report.elapsed() >= Duration::from_millis(100) {
                last_report = Instant::now();
                obs.opening(self.stats.opened - opened0, self.stats.failed - failed0, n);
            }
        }
        obs.opening(self.stats.opened - opened0, self.stats.failed - failed0, n);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// A server that answers one upgrade with a valid 101 carrying
    /// `Sec-WebSocket-Extensions: answer`, then waits for the client to
    /// go. Sends back the request head it got.
    fn fake_server(answer: &'static str) -> (Target, mpsc::Receiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}/echo", l.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let key = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    let key = name.trim().eq_ignore_ascii_case("sec-websocket-key");
                    key.then(|| value.trim().to_string())
                })
                .unwrap_or_default();
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\
                 Sec-WebSocket-Extensions: {answer}\r\n\r\n",
                handshake::accept_key(key.as_bytes())
            );
            let _ = s.write_all(resp.as_bytes());
            let _ = tx.send(head);
            // Until the client closes (or the test ends).
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.read(&mut buf);
        });
        (Target::parse(&url).unwrap(), rx)
    }

    #[derive(Default)]
    struct Ends(Vec<End>);

    impl Handler<()> for Ends {
        fn on_end(&mut self, _id: usize, _user: (), end: &End) {
            self.0.push(end.clone());
        }
    }

    /// Open one connection against a server answering `answer`; how it
    /// went, the fleet's counts, and the request head the server got.
    fn handshake_with(mode: deflate::Mode, answer: &'static str) -> (Vec<End>, OpenStats, String) {
        let (target, head) = fake_server(answer);
        let mut cfg = ClientConfig::new(target);
        cfg.deflate = deflate::Config {
            mode,
            ..deflate::Config::default()
        };
        let mut fleet: Fleet<()> = Fleet::new(cfg).unwrap();
        let mut ends = Ends::default();
        fleet.connect((), &mut ends);
        let deadline = Instant::now() + Duration::from_secs(10);
        while fleet.pending() > 0 && Instant::now() < deadline {
            fleet.poll(&mut ends, Duration::from_millis(50)).unwrap();
        }
        fleet.abort_all(&mut ends);
        let head = head.recv_timeout(Duration::from_secs(10)).unwrap();
        (ends.0, fleet.stats().clone(), head)
    }

    #[test]
    fn an_extension_we_did_not_offer_fails_the_handshake() {
        // RFC 6455 §4.1 / RFC 7692 §7.1: fail, counted with a clear reason.
        let cases = [
            (
                deflate::Mode::Off,
                "permessage-deflate",
                "the server answered an extension we did not offer",
            ),
            (
                deflate::Mode::Shared,
                "x-webkit-deflate-frame",
                "the server answered an extension we did not offer",
            ),
            (
                // Our shared offer asked for server_no_context_takeover.
                deflate::Mode::Shared,
                "permessage-deflate",
                "the server's permessage-deflate answer does not fit our offer",
            ),
            (
                deflate::Mode::Dedicated,
                "permessage-deflate; no_such_param",
                "the server's permessage-deflate answer does not fit our offer",
            ),
        ];
        for (mode, answer, why) in cases {
            let (ends, stats, head) = handshake_with(mode, answer);
            let want = format!("handshake: {why}: Sec-WebSocket-Extensions: {answer}");
            assert_eq!(ends, [End::Failed(want.clone())], "{mode:?} / {answer}");
            assert_eq!((stats.opened, stats.failed), (0, 1));
            assert_eq!(stats.failures.get(&want), Some(&1));
            assert_eq!(stats.deflate_negotiated, 0);
            let offered = head.to_ascii_lowercase().contains("permessage-deflate");
            assert_eq!(offered, mode != deflate::Mode::Off, "{head}");
            assert_eq!(stats.deflate_offered, u64::from(offered));
        }
    }

    #[test]
    fn an_answer_that_fits_the_offer_opens_with_deflate() {
        let answer = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        let (ends, stats, head) = handshake_with(deflate::Mode::Shared, answer);
        assert_eq!(ends, [End::Cancelled]);
        assert_eq!((stats.opened, stats.failed), (1, 0));
        assert_eq!((stats.deflate_offered, stats.deflate_negotiated), (1, 1));
        let offer = deflate::client_offer(&deflate::Config::default()).unwrap();
        assert!(head.contains(&offer), "{head}");
    }
}
