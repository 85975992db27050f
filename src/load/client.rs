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
//! it may send on that connection through [`Ctx`]: `Conn::decode` holds the
//! connection while it calls back, so data frames sent from there are
//! masked and queued by [`Wire`], the connection's output, with its own mask
//! keys (the RFC asks for unpredictable keys, not for one generator).
//!
//! Reads go into one buffer of the fleet; only an incomplete response head
//! or frame is kept per connection, and the output buffer holds bytes only
//! while the kernel pushes back, so an idle connection holds little.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::net::{self, Target};
use super::report::OpenStats;
use super::{Observer, Rng};
use crate::proto::frame::{encode_header, OpCode, MAX_HEADER};
use crate::proto::handshake;
use crate::proto::mask::apply_mask;
use crate::proto::{Conn, Event, Limits, Output, State};

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
    /// Largest message accepted from the server.
    pub limits: Limits,
}

impl ClientConfig {
    /// Defaults: 10 s handshake timeout, 2 s close linger, 16 MiB messages.
    pub fn new(target: Target) -> ClientConfig {
        ClientConfig {
            target,
            src_ips: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            close_linger: Duration::from_secs(2),
            limits: Limits::default(),
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

/// What a handler may do with the connection it is called for.
pub struct Ctx<'a, T> {
    /// The connection's id in the fleet.
    pub id: usize,
    /// When the bytes that caused this call were read.
    pub now: Instant,
    /// The mode's per-connection state.
    pub user: &'a mut T,
    wire: &'a mut Wire,
    open: bool,
    close: &'a mut Option<u16>,
}

impl<T> Ctx<'_, T> {
    /// Can messages be sent?
    pub fn is_open(&self) -> bool {
        self.open && self.close.is_none()
    }

    /// Send a whole message as one frame. Returns false (and sends nothing)
    /// unless the connection is open.
    pub fn send(&mut self, text: bool, data: &[u8]) -> bool {
        if !self.is_open() {
            return false;
        }
        let op = if text { OpCode::Text } else { OpCode::Binary };
        self.wire.frame(true, op, data);
        true
    }

    /// Send a message in fragments of at most `frag` bytes (§5.4).
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
            self.wire.frame(fin, op, &rest[..n]);
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
        self.wire.queued()
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

struct Client<T> {
    sock: TcpStream,
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

/// Many client connections on one mio `Poll`.
pub struct Fleet<T> {
    poll: Poll,
    events: Events,
    /// Tokens of the last poll, and what each is ready for.
    ready: Vec<(usize, Ready)>,
    clients: Slab<Client<T>>,
    rbuf: Vec<u8>,
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
            rbuf: vec![0; READ_BUF],
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
        let mut sock = match net::connect(self.cfg.target.addr, src) {
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
        let key = handshake::write_client_request(&mut out.buf, &t.host, &t.path, &key, None, None);
        let now = Instant::now();
        let proto = Conn::client(self.ms(now), self.rng.next_u32());
        let c = Client {
            sock,
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
        let mut ctx = Ctx {
            id,
            now,
            user: &mut c.user,
            wire: &mut c.out,
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
        if let Some(end) = flush(c) {
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
            result = read_all(c, id, &mut self.rbuf, to_eof, cfg, epoch, h);
        }
        if result.is_none() {
            result = flush(c);
        }
        let after = c.phase;
        if before != after {
            if matches!(before, Phase::Connecting | Phase::Handshaking)
                && !matches!(after, Phase::Connecting | Phase::Handshaking)
            {
                self.pending -= 1;
                self.stats.opened += 1;
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

/// Write what is queued. `Some(end)` if the connection must end.
fn flush<T>(c: &mut Client<T>) -> Option<End> {
    if c.phase == Phase::Connecting {
        return None;
    }
    let w = &mut c.out;
    while w.pos < w.buf.len() {
        match c.sock.write(&w.buf[w.pos..]) {
            Ok(0) => return Some(io_end(c, "write returned 0")),
            Ok(n) => w.pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Some(io_end(c, &format!("write: {e}"))),
        }
    }
    w.buf.clear();
    w.pos = 0;
    if w.buf.capacity() > READ_BUF {
        w.buf = Vec::new();
    }
    None
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
    rbuf: &mut [u8],
    to_eof: bool,
    cfg: &ClientConfig,
    epoch: Instant,
    h: &mut H,
) -> Option<End> {
    loop {
        match c.sock.read(rbuf) {
            Ok(0) => {
                // A server that closes TCP after its close frame: normal.
                let what = if c.phase == Phase::Handshaking {
                    "connection closed before the response".to_string()
                } else {
                    "connection closed without a close frame".to_string()
                };
                return Some(io_end(c, &what));
            }
            Ok(n) => {
                if let Some(end) = on_bytes(c, id, &mut rbuf[..n], cfg, epoch, h) {
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

/// Handle bytes just read into `fresh`.
fn on_bytes<T, H: Handler<T>>(
    c: &mut Client<T>,
    id: usize,
    fresh: &mut [u8],
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
                consumed = resp.len;
                c.phase = Phase::Open;
                c.key = String::new();
                let mut ctx = Ctx {
                    id,
                    now,
                    user: &mut c.user,
                    wire: &mut c.out,
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
        let mut on_event = |ev: Event<'_>, wire: &mut Wire| {
            let mut ctx = Ctx {
                id,
                now,
                user: &mut *user,
                wire,
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
        match c.proto.decode(
            &mut data[consumed..],
            now_ms,
            &cfg.limits,
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
