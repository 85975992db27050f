//! One event loop: a mio `Poll`, an SO_REUSEPORT listener, the connections
//! it accepted, their timers and buffers, its subscription index, and its
//! inbox. Nothing here is shared with other workers; they and the broker
//! reach it only through the inbox and its `Waker`.
//!
//! Per connection, an event is handled like mio's `tcp_server` example:
//! read to `WouldBlock` (or at most `READ_BUDGET` per turn of the loop, the
//! rest at the next turn) into the worker's one read buffer, decode in place,
//! spill only an incomplete head or frame into a pooled buffer, queue the
//! replies. At the end of each loop iteration the inbox is drained (every
//! publication is queued to every local subscriber, by reference) and every
//! connection with something queued gets one `writev`.

use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use super::admission;
use super::buffers::BufPool;
use super::conn_table::{key_of, token_of, ConnTable, RESERVED};
use super::outbuf::{Flush, OutPool, OutQueue};
use super::sys::ReserveFd;
use super::timer::{TimerKey, TimerWheel};
use super::{ServerConfig, Shared};
use crate::base::counters::{Counters, DeflateCounts};
use crate::broker::{Broker, Inboxes, ReplyBody, ReplyTo, Tag, Tags, WorkerMsg};
use crate::config::SlowConsumer;
use crate::gateway::close_code;
use crate::gateway::error::OpError;
use crate::gateway::session::{Ctx, Divert, Session};
use crate::http::stream::{Kind, StreamState};
use crate::http::{self, api, static_files};
use crate::proto::deflate::{self, Engine, SharedFrame};
use crate::proto::handshake::{self, Head};
use crate::proto::{Conn, Error, Event, Output, Sender, State, TimerAction};
use crate::pubsub::topics::Topics;
use crate::pubsub::Frame;

mod replay;

const LISTENER: Token = Token(RESERVED);
pub(crate) const WAKER: Token = Token(RESERVED + 1);
/// The per-worker read buffer.
const READ_BUF: usize = 64 * 1024;
/// Bytes read from one connection per turn of the loop; what is left waits
/// for the next turn (see `Core::read_again`). Without it a client that
/// writes faster than its worker decodes (a ping or pong flood, say) kept
/// the worker in `on_readable`, or in the flush-resume-read cycle of
/// `flush_dirty`, for as long as it kept writing: no other connection of
/// that worker was served, no timer fired, no publication went out
/// (tests/abuse.rs, the ping flood).
const READ_BUDGET: usize = READ_BUF;
/// Timer wheel: 16 ms ticks, 4096 slots (a rotation of ~65 s covers every
/// default deadline, so a tick visits only what expires).
const TICK_MS: u64 = 16;
const SLOTS: usize = 4096;
/// How often worker 0 asks the broker to trim and forget channels.
const SWEEP_MS: u64 = 1000;

/// What a connection is for, decided by its request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// Request head not yet complete.
    Pending,
    /// `/echo`: every message comes back.
    Echo,
    /// `/ws`: the gateway's client protocol.
    Gateway,
    /// Plain HTTP (API, metrics, health), possibly kept alive.
    Http,
    /// `/sse`: an EventSource stream.
    Sse,
    /// `/poll`: a long-poll request being held.
    Poll,
}

const F_DIRTY: u16 = 1; // in the worker's dirty list
const F_READ_PAUSED: u16 = 2; // out queue over the high-water mark
const F_WRITE_SHUT: u16 = 4; // our side is shut down; discarding input
const F_HTTP_WAIT: u16 = 8; // an HTTP request waits for the broker
const F_KEEP_ALIVE: u16 = 16; // the waiting HTTP request keeps the connection
const F_STREAM: u16 = 32; // SSE or long-poll: the session has a stream state
const F_SEND: u16 = 64; // the waiting HTTP request is a `POST /send` op
const F_EOF: u16 = 128; // the peer sent FIN: write what is owed, then close
const F_TRUSTED: u16 = 256; // the peer is a trusted proxy (XFF / PROXY v2 name the client)
const F_PROXY_DONE: u16 = 512; // the PROXY v2 header was read
const F_HOLD: u16 = 1024; // a subscription's reply waits: its publications go through Session::divert
const F_READ_AGAIN: u16 = 2048; // listed in `Core::read_again` (once)

/// Per-connection state. An idle connection holds no buffer: `spill` and
/// `out` are empty (no heap) unless a frame is incomplete or the kernel is
/// pushing back.
#[derive(Debug)]
pub(crate) struct Connection {
    sock: TcpStream,
    proto: Conn,
    /// Bytes of an incomplete request head or frame. Boxed: an idle
    /// connection pays 8 bytes for it instead of a 24-byte `Vec`.
    #[allow(clippy::box_collection)] // the box is the point: 8 bytes idle
    spill: Option<Box<Vec<u8>>>,
    out: Option<Box<OutQueue>>,
    timer: Option<TimerKey>,
    route: Route,
    flags: u16,
    /// The client IP's key in the per-IP count (0: not counted).
    ip_key: u32,
    session: Option<Box<Session>>,
}

impl Connection {
    /// Bytes held in `spill`.
    fn spill_len(&self) -> usize {
        self.spill.as_ref().map_or(0, |s| s.len())
    }
}

/// Everything of a worker but its connection table, so that both can be
/// borrowed at once.
struct Core {
    id: usize,
    poll: Poll,
    /// None once draining: the listening socket is closed so that new
    /// connections go to other nodes.
    listener: Option<TcpListener>,
    timers: TimerWheel<Token>,
    rbuf: Vec<u8>,
    spills: BufPool,
    #[allow(clippy::vec_box)] // connections hold `Option<Box<OutQueue>>`; the pool moves boxes
    outs: OutPool,
    dirty: Vec<Token>,
    cfg: Arc<ServerConfig>,
    shared: Arc<Shared>,
    broker: Arc<dyn Broker>,
    inboxes: Arc<Inboxes>,
    inbox: Vec<WorkerMsg>,
    topics: Topics,
    /// Every request handed to the broker gets a tag; its answer is matched
    /// to the request by it.
    tags: Tags,
    /// HTTP requests waiting for the broker: the tag of each one's request
    /// (an answer with another tag is a stale one, undone).
    http_waits: std::collections::HashMap<Token, Tag>,
    /// permessage-deflate: the worker's compressors and decompressor, shared
    /// by its connections (and its compress-once cache for publications).
    deflate: Engine,
    /// permessage-deflate counts the engine does not keep: connections
    /// that negotiated it, and fan-out's shared frames (compressions and
    /// compressed deliveries). See `publish_deflate_counts`.
    deflate_conns: u64,
    shared_compressions: u64,
    shared_deliveries: u64,
    /// The counts last stored in this worker's gauges.
    deflate_published: DeflateCounts,
    /// This worker's counters since they were last added to the totals
    /// (`Shared::stats`): plain integers on the hot path.
    counts: Counters,
    /// Publish instants of deliveries queued this iteration (for the
    /// publish-to-write histogram, observed after the flush).
    delivered: Vec<Instant>,
    start: Instant,
    now: u64,
    reserve: ReserveFd,
    /// accept(2) ran out of descriptors: try again at this time.
    accept_retry_at: Option<u64>,
    next_sweep: u64,
    next_client: u64,
    client_prefix: String,
    /// Long-polls with an answer due, answered after the inbox is drained.
    polls_ready: Vec<Token>,
    /// Connections with input left to read: their read budget ran out, or
    /// their out queue drained and their reads resume. Read at the next
    /// turn of the loop, which then does not wait in `poll` (edge-triggered
    /// readiness will not report that input again).
    read_again: Vec<Token>,
    /// This worker's share of the handshake rate.
    handshakes: admission::Bucket,
    /// Draining: connections still to be told to leave, in random order,
    /// and when the drain started.
    drain_queue: Vec<Token>,
    /// Draining: connections whose request has not been read yet (accepted
    /// just before the drain began). Told to leave once it is answered.
    drain_later: Vec<Token>,
    drain: Option<Drain>,
}

/// A graceful drain in progress.
#[derive(Debug, Clone, Copy)]
struct Drain {
    start: u64,
    total: usize,
}

pub(crate) struct Worker {
    conns: ConnTable<Connection>,
    core: Core,
}

impl Worker {
    pub(crate) fn new(
        id: usize,
        poll: Poll,
        listener: std::net::TcpListener,
        cfg: Arc<ServerConfig>,
        shared: Arc<Shared>,
        broker: Arc<dyn Broker>,
        inboxes: Arc<Inboxes>,
    ) -> io::Result<Worker> {
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let client_prefix = format!("{}{id}-", &crate::broker::new_epoch()[..6]);
        let deflate = Engine::new(cfg.compression);
        let handshakes = admission::Bucket::full(
            (cfg.admission.handshake_rate / cfg.workers.max(1) as u32).max(1),
            0,
        );
        Ok(Worker {
            conns: ConnTable::new(),
            core: Core {
                id,
                poll,
                listener: Some(listener),
                timers: TimerWheel::new(TICK_MS, SLOTS, 0),
                rbuf: vec![0; READ_BUF],
                spills: BufPool::new(4096, 1 << 20, 1024),
                outs: OutPool::default(),
                dirty: Vec::new(),
                cfg,
                shared,
                broker,
                inboxes,
                inbox: Vec::new(),
                topics: Topics::default(),
                tags: Tags::default(),
                http_waits: Default::default(),
                deflate,
                deflate_conns: 0,
                shared_compressions: 0,
                shared_deliveries: 0,
                deflate_published: DeflateCounts::default(),
                counts: Counters::default(),
                delivered: Vec::new(),
                start: Instant::now(),
                now: 0,
                reserve: ReserveFd::new(),
                accept_retry_at: None,
                next_sweep: SWEEP_MS,
                next_client: 0,
                client_prefix,
                polls_ready: Vec::new(),
                read_again: Vec::new(),
                handshakes,
                drain_queue: Vec::new(),
                drain_later: Vec::new(),
                drain: None,
            },
        })
    }

    /// Run until the server is stopped.
    pub(crate) fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut fired = Vec::new();
        let mut again = Vec::new();
        info!(
            "worker {} listening on {}",
            self.core.id,
            self.core
                .listener
                .as_ref()
                .map(|l| l.local_addr())
                .transpose()?
                .map_or("-".into(), |a| a.to_string())
        );
        while !self.core.shared.stop.load(Ordering::Acquire) {
            let c = &self.core;
            let sweep = (c.id == 0).then_some(c.next_sweep);
            // While draining, wake every 10 ms to let the next ones go.
            let drain_tick =
                (!c.drain_queue.is_empty() || !c.drain_later.is_empty()).then_some(c.now + 10);
            let deadline = [c.timers.next_expiry(), c.accept_retry_at, sweep, drain_tick]
                .into_iter()
                .flatten()
                .min();
            let timeout = if c.read_again.is_empty() {
                deadline.map(|d| Duration::from_millis(d.saturating_sub(c.now)))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.core.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            let busy_from = Instant::now();
            self.core.now = self.core.start.elapsed().as_millis() as u64;
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {}
                    t => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            // A short read drains the socket unless the peer
                            // also closed (then read on to see the EOF).
                            self.on_readable(t, !(ev.is_read_closed() || ev.is_error()));
                        }
                        if ev.is_writable() {
                            self.mark_dirty(t);
                        }
                    }
                }
            }
            // One more read budget for each connection left with input,
            // after every new event had its turn.
            std::mem::swap(&mut again, &mut self.core.read_again);
            for t in again.drain(..) {
                if let Some(c) = self.conns.get_mut(t) {
                    c.flags &= !F_READ_AGAIN;
                }
                self.on_readable(t, false);
            }
            if self
                .core
                .accept_retry_at
                .is_some_and(|t| t <= self.core.now)
            {
                self.core.accept_retry_at = None;
                self.accept_all();
            }
            self.core.timers.advance(self.core.now, &mut fired);
            for t in fired.drain(..) {
                self.on_timer(t);
            }
            if self.core.id == 0 && self.core.now >= self.core.next_sweep {
                self.core.next_sweep = self.core.now + SWEEP_MS;
                self.core.broker.sweep();
            }
            self.drain_inbox();
            // Before the flush: a client that got its echo or publication
            // finds it counted when it scrapes.
            self.core.publish_deflate_counts();
            self.core.counts.publish(&self.core.shared.stats);
            if self.core.shared.draining.load(Ordering::Acquire) && self.drain_step() {
                self.flush_dirty();
                break;
            }
            self.flush_dirty();
            self.after_iteration(busy_from);
        }
        info!(
            "worker {} stopping with {} connections",
            self.core.id,
            self.conns.len()
        );
        for t in self.conns.tokens() {
            self.drop_conn(t, "server stopping");
        }
        self.core.counts.publish(&self.core.shared.stats);
        Ok(())
    }

    /// One step of a graceful drain. Returns true when the worker is done
    /// (no connection left, or the drain timeout passed).
    ///
    /// The listener is closed at once, after accepting what already waits
    /// in its backlog: the kernel completed those handshakes, and closing
    /// the listener would reset them. Then connections are told to leave
    /// (WebSocket: close 4000, SSE: the stream ends, long-poll: answered)
    /// in a random order spread over `drain_window`, so that clients do not
    /// all reconnect at the same moment.
    fn drain_step(&mut self) -> bool {
        if self.core.drain.is_none() {
            self.accept_all();
        }
        let core = &mut self.core;
        let now = core.now;
        let d = match core.drain {
            Some(d) => d,
            None => {
                if let Some(mut l) = core.listener.take() {
                    let _ = core.poll.registry().deregister(&mut l);
                }
                let mut q = self.conns.tokens();
                // Fisher-Yates with a xorshift seeded from the clock.
                let mut x =
                    (Instant::now().elapsed().as_nanos() as u64 ^ 0x9E37_79B9_7F4A_7C15) | 1;
                for i in (1..q.len()).rev() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    q.swap(i, (x % (i as u64 + 1)) as usize);
                }
                let d = Drain {
                    start: now,
                    total: q.len(),
                };
                info!(
                    "worker {} draining {} connections over {} ms",
                    core.id,
                    q.len(),
                    core.cfg.drain_window_ms
                );
                core.drain_queue = q;
                core.drain = Some(d);
                d
            }
        };
        let elapsed = now - d.start;
        if elapsed >= core.cfg.drain_timeout_ms {
            info!(
                "worker {}: drain timeout, dropping {} connections",
                core.id,
                self.conns.len()
            );
            return true;
        }
        let window = core.cfg.drain_window_ms.max(1);
        let due = (d.total as u64 * elapsed.min(window) / window) as usize + 1;
        let told = d.total - core.drain_queue.len();
        for _ in told..due.min(d.total) {
            let Some(token) = self.core.drain_queue.pop() else {
                break;
            };
            if !self.tell_to_leave(token) {
                self.core.drain_later.push(token);
            }
        }
        let mut later = std::mem::take(&mut self.core.drain_later);
        later.retain(|&t| !self.tell_to_leave(t));
        self.core.drain_later = later;
        self.core.drain_queue.is_empty() && self.conns.is_empty()
    }

    /// Ask one connection to go elsewhere. Returns false when it cannot be
    /// told yet: its request has not been read, and it is asked again on the
    /// next drain step (the handshake deadline bounds the wait).
    fn tell_to_leave(&mut self, token: Token) -> bool {
        let core = &mut self.core;
        let Some(c) = self.conns.get_mut(token) else {
            return true;
        };
        if c.route == Route::Pending && c.proto.state() == State::Handshake {
            return false;
        }
        if c.route == Route::Poll && c.flags & F_STREAM != 0 {
            core.polls_ready.push(token);
            self.drain_inbox_polls();
            return true;
        }
        let out = c.out.get_or_insert_with(|| core.outs.pop());
        match c.proto.state() {
            State::Open => c.proto.close(
                out.as_mut(),
                core.now,
                close_code::SHUTDOWN,
                "server shutting down",
            ),
            State::Handshake if c.flags & F_HTTP_WAIT != 0 => {
                // Answered by the broker shortly; close after that response.
                c.flags &= !F_KEEP_ALIVE;
                return true;
            }
            _ => c.proto.shutdown(core.now),
        }
        core.arm(token, c);
        core.mark_dirty(token, c);
        true
    }

    fn drain_inbox_polls(&mut self) {
        while let Some(t) = self.core.polls_ready.pop() {
            self.answer_poll(t);
        }
    }

    fn after_iteration(&mut self, busy_from: Instant) {
        let c = &mut self.core;
        let done = Instant::now();
        for p in c.delivered.drain(..) {
            let us = done.saturating_duration_since(p).as_micros() as u64;
            c.counts.publish_to_write.observe_us(us);
        }
        // What the flush counted (bytes written, connections closed).
        c.counts.publish(&c.shared.stats);
        let g = &c.shared.workers[c.id];
        g.connections
            .store(self.conns.len() as u64, Ordering::Relaxed);
        g.subscriptions
            .store(c.topics.subscriptions() as u64, Ordering::Relaxed);
        g.iterations.fetch_add(1, Ordering::Relaxed);
        let busy = done.duration_since(busy_from).as_micros() as u64;
        g.loop_lag_max_us.fetch_max(busy, Ordering::Relaxed);
    }

    fn accept_all(&mut self) {
        loop {
            let Some(listener) = self.core.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((sock, peer)) => self.on_accept(sock, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Out of descriptors: free the spare one, accept the
                    // waiting connection and close it at once, so the listener
                    // does not stay readable and spin the loop; then back off.
                    let c = &mut self.core;
                    if c.reserve.release() {
                        if let Some(Ok((s, peer))) = c.listener.as_ref().map(|l| l.accept()) {
                            warn!("out of file descriptors: refused {peer}");
                            drop(s);
                        }
                        c.reserve.restore();
                    } else {
                        warn!("out of file descriptors: accept paused for 100 ms");
                    }
                    c.counts.refused += 1;
                    c.accept_retry_at = Some(c.now + 100);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // ECONNABORTED and friends concern one connection only.
                    debug!("accept: {e}");
                }
            }
        }
    }

    fn on_accept(&mut self, sock: TcpStream, peer: std::net::SocketAddr) {
        let core = &mut self.core;
        let _ = sock.set_nodelay(true);
        let over =
            core.shared.connections.fetch_add(1, Ordering::AcqRel) >= core.cfg.max_connections;
        let mut conn = Connection {
            sock,
            proto: Conn::server(core.now),
            spill: None,
            out: None,
            timer: None,
            route: Route::Pending,
            flags: 0,
            ip_key: 0,
            session: None,
        };
        let ip = peer.ip();
        if !over && admission::is_trusted(&core.cfg.admission.trusted, ip) {
            // The client is named by the proxy (X-Forwarded-For or PROXY
            // v2): counted per IP once that is read.
            conn.flags |= F_TRUSTED;
        } else if !over && !core.admit_ip(&mut conn, ip) {
            let out = conn.out.get_or_insert_with(|| core.outs.pop());
            refuse_per_ip(out.as_mut(), ip);
            conn.proto.shutdown(core.now);
        } else if over {
            // Answer 503 and close once it is written; the request is read
            // and discarded meanwhile so that the close is clean.
            warn!(
                "connection limit {} reached: 503 to {peer}",
                core.cfg.max_connections
            );
            core.counts.refused += 1;
            let out = conn.out.get_or_insert_with(|| core.outs.pop());
            handshake::write_error(out.as_mut(), Error::Unavailable);
            conn.proto.shutdown(core.now);
        }
        let token = self.conns.insert(conn);
        let c = self.conns.get_mut(token).expect("just inserted");
        if let Err(e) = core.poll.registry().register(
            &mut c.sock,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("register: {e}");
            self.drop_conn(token, "register failed");
            return;
        }
        core.counts.accepted += 1;
        core.arm(token, c);
        if over {
            core.mark_dirty(token, c);
        }
    }

    /// Read to `WouldBlock`, processing as we go, or until `READ_BUDGET`
    /// bytes were read: the rest waits for the next turn of the loop.
    ///
    /// With `short_read_drains`, a read that returns less than the buffer
    /// holds is taken as the end of the input (TCP hands over everything
    /// queued up to the buffer's size; anything arriving later raises a new
    /// edge), which saves the `recv` that would return `EAGAIN`: one of
    /// three system calls per small echo (docs/benchmarks.md). Not when the
    /// event also said the peer closed, so that the EOF is read now.
    fn on_readable(&mut self, token: Token, short_read_drains: bool) {
        let mut budget = READ_BUDGET;
        loop {
            let Some(c) = self.conns.get_mut(token) else {
                return;
            };
            if c.flags & (F_READ_PAUSED | F_EOF) != 0 {
                return;
            }
            if budget == 0 {
                self.core.read_again(token, c);
                return;
            }
            match c.sock.read(&mut self.core.rbuf) {
                Ok(0) => {
                    // The peer sent FIN. Replies to what it sent before are
                    // still owed (a half-closed client waits for them): stop
                    // reading, write what is queued, then close.
                    let pending = c.out.as_ref().is_some_and(|o| !o.is_empty())
                        || c.session.as_ref().is_some_and(|s| s.has_pending());
                    if pending {
                        c.flags |= F_EOF | F_READ_PAUSED;
                        self.core.mark_dirty(token, c);
                        return;
                    }
                    let why = if c.proto.state() == State::Open {
                        "peer closed TCP without a close frame"
                    } else {
                        "closed"
                    };
                    self.drop_conn(token, why);
                    return;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    self.core.counts.bytes_in += n as u64;
                    if !self.process(token, n) {
                        return;
                    }
                    if short_read_drains && n < self.core.rbuf.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("read: {e}");
                    self.drop_conn(token, "read error");
                    return;
                }
            }
        }
    }

    /// Process `rbuf[..fresh]` (after any spilled bytes) for `token`.
    /// Returns false if the connection is gone or reading should stop.
    fn process(&mut self, token: Token, fresh: usize) -> bool {
        let core = &mut self.core;
        let Some(c) = self.conns.get_mut(token) else {
            return false;
        };
        let before = c.proto.state();
        // A request waits for the broker, or a long-poll is held: the next
        // request (HTTP/1.1 pipelining) waits for its answer, in order.
        let waiting =
            c.flags & F_HTTP_WAIT != 0 || c.route == Route::Poll && c.flags & F_STREAM != 0;
        if before == State::Closed || c.flags & F_STREAM != 0 && !waiting {
            // Discarding input until EOF or the linger deadline; SSE
            // clients have nothing to say while they listen.
            return true;
        }
        let from_spill = c.spill_len() != 0 || waiting;
        if from_spill {
            c.spill
                .get_or_insert_with(|| Box::new(core.spills.get()))
                .extend_from_slice(&core.rbuf[..fresh]);
        }
        if waiting {
            // The next request waits until the current one is answered;
            // bounded by the head and body limits.
            let cap = core.cfg.max_head + core.cfg.gateway.max_body;
            if c.spill_len() > cap {
                c.flags |= F_READ_PAUSED;
            }
            return c.flags & F_READ_PAUSED == 0;
        }
        let mut out = c.out.take().unwrap_or_else(|| core.outs.pop());
        let mut spill = c.spill.take();
        // Moved out for the call (a pointer swap), so `core` stays borrowable.
        let mut rbuf = std::mem::take(&mut core.rbuf);
        let data: &mut [u8] = match spill.as_deref_mut() {
            Some(s) if from_spill => s,
            _ => &mut rbuf[..fresh],
        };
        let consumed = core.consume(token, c, data, &mut out);
        if let Some(s) = c.session.as_mut().filter(|s| s.rate_exceeded) {
            s.rate_exceeded = false;
            core.counts.rate_limited += 1;
            warn!("connection {token:?}: message rate exceeded: close 1008");
            c.proto.close(
                out.as_mut(),
                core.now,
                crate::proto::error::code::POLICY,
                "message rate exceeded",
            );
        }
        // Keep only an incomplete head or frame.
        let rest = data.len() - consumed;
        match spill {
            Some(mut s) if from_spill => {
                s.drain(..consumed);
                if s.is_empty() {
                    core.spills.put(*s);
                } else {
                    c.spill = Some(s);
                }
            }
            _ if rest > 0 => {
                let mut s = core.spills.get();
                s.extend_from_slice(&rbuf[fresh - rest..fresh]);
                c.spill = Some(Box::new(s));
            }
            _ => {}
        }
        core.rbuf = rbuf;
        let queued = out.len();
        if queued == 0 {
            core.outs.push(out); // an idle connection holds no out queue
        } else {
            c.out = Some(out);
        }
        core.after_session(token, c);
        // Not read on while its replies, or its unanswered ops, are over
        // their bounds.
        if queued > core.cfg.out_high_water || backlogged(c, &core.cfg.gateway) {
            c.flags |= F_READ_PAUSED;
        }
        // A connection that just finished its close handshake has nothing
        // queued but must still shut its side down: flush_one does it.
        if queued > 0 || c.proto.state() == State::Closed {
            core.mark_dirty(token, c);
        }
        if c.proto.state() != before {
            core.arm(token, c);
        }
        c.flags & F_READ_PAUSED == 0
    }

    fn on_timer(&mut self, token: Token) {
        let core = &mut self.core;
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        c.timer = None;
        let out = c.out.get_or_insert_with(|| core.outs.pop());
        let expired = c
            .session
            .as_ref()
            .and_then(|s| s.expires_at_ms)
            .is_some_and(|e| e <= core.now);
        if expired && c.proto.state() != State::Closed {
            // The token expired and no `refresh` replaced it.
            if let Some(s) = c.session.as_mut() {
                s.expires_at_ms = None;
            }
            core.counts.timeouts += 1;
            debug!("connection {token:?}: token expired");
            if c.route == Route::Poll && c.flags & F_STREAM != 0 {
                core.polls_ready.push(token);
                self.drain_inbox_polls();
                return;
            }
            if c.flags & F_STREAM != 0 || c.proto.state() == State::Handshake {
                c.proto.shutdown(core.now);
            } else {
                c.proto.close(
                    out.as_mut(),
                    core.now,
                    crate::auth::close_code::TOKEN_EXPIRED,
                    "token expired",
                );
            }
            core.arm(token, c);
            core.mark_dirty(token, c);
            return;
        }
        if c.flags & F_STREAM != 0 && c.proto.state() != State::Closed {
            let Some(st) = c.session.as_mut().and_then(|s| s.stream.as_mut()) else {
                return;
            };
            if core.now < st.deadline {
                core.arm(token, c);
                return;
            }
            match st.kind {
                Kind::Sse => {
                    st.keepalive(core.now, out.as_mut());
                    core.mark_dirty(token, c);
                    core.arm(token, c);
                }
                Kind::Poll => self.answer_poll(token),
            }
            return;
        }
        match c
            .proto
            .handle_timeout(core.now, &core.cfg.timeouts, out.as_mut())
        {
            TimerAction::Drop(why) => {
                core.counts.timeouts += 1;
                self.drop_conn(token, why);
            }
            TimerAction::Continue => {
                if !out.is_empty() {
                    core.mark_dirty(token, c);
                } else if let Some(o) = c.out.take() {
                    core.outs.push(o);
                }
                core.arm(token, c);
            }
        }
    }

    fn mark_dirty(&mut self, token: Token) {
        if let Some(c) = self.conns.get_mut(token) {
            self.core.mark_dirty(token, c);
        }
    }

    /// Everything the broker and other workers sent: answers, and frames to
    /// queue for local subscribers.
    fn drain_inbox(&mut self) {
        // Handling a message can queue more for this same worker (an answer
        // to a pipelined request, a leave event), and the broker does not
        // wake the worker that called it: drain until empty. The passes are
        // bounded; anything left wakes the loop again at once.
        for _ in 0..16 {
            if !self.drain_inbox_once() {
                // Polls due without a message: every channel was refused
                // when the poll came in (each pass answers the others).
                self.drain_inbox_polls();
                return;
            }
        }
        self.core.inboxes.wake(self.core.id);
    }

    /// One pass over the inbox; false if it was empty.
    fn drain_inbox_once(&mut self) -> bool {
        let core = &mut self.core;
        let mut msgs = std::mem::take(&mut core.inbox);
        core.inboxes.drain(core.id, &mut msgs);
        if msgs.is_empty() {
            core.inbox = msgs;
            return false;
        }
        for msg in msgs.drain(..) {
            match msg {
                WorkerMsg::Deliver {
                    channel,
                    offset,
                    frame,
                    published,
                } => self.fan_out(&channel, offset, &frame, published),
                WorkerMsg::Reply { to, body } => self.on_reply(to, body),
                WorkerMsg::Disconnect { user } => self.disconnect_user(&user),
            }
        }
        self.core.inbox = msgs;
        while let Some(t) = self.core.polls_ready.pop() {
            self.answer_poll(t);
        }
        true
    }

    /// An operator disconnects a user: WebSocket connections get close 4000
    /// (reconnect), streams end, polls answer.
    fn disconnect_user(&mut self, user: &str) {
        let mut n = 0;
        for token in self.conns.tokens() {
            let Some(c) = self.conns.get_mut(token) else {
                continue;
            };
            if c.session.as_ref().and_then(|s| s.user.as_deref()) != Some(user) {
                continue;
            }
            n += 1;
            let core = &mut self.core;
            if c.flags & F_STREAM != 0 && c.route == Route::Poll {
                core.polls_ready.push(token);
                continue;
            }
            let out = c.out.get_or_insert_with(|| core.outs.pop());
            if c.flags & F_STREAM != 0 {
                c.proto.shutdown(core.now);
            } else {
                c.proto.close(
                    out.as_mut(),
                    core.now,
                    close_code::SHUTDOWN,
                    "disconnected by operator",
                );
            }
            core.arm(token, c);
            core.mark_dirty(token, c);
        }
        info!(
            "worker {}: disconnected {n} connections of user {user:?}",
            self.core.id
        );
        while let Some(t) = self.core.polls_ready.pop() {
            self.answer_poll(t);
        }
    }

    /// Write a long-poll's answer and end its session; the connection goes
    /// back to reading requests (keep-alive) or closes.
    fn answer_poll(&mut self, token: Token) {
        let core = &mut self.core;
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if c.route != Route::Poll || c.flags & F_STREAM == 0 {
            return;
        }
        let Some(mut s) = c.session.take() else {
            return;
        };
        let body = match s.stream.as_mut() {
            Some(st) if !st.done => st.poll_answer(),
            _ => {
                c.session = Some(s);
                return;
            }
        };
        let keep = core.keep_alive(c);
        let out = c.out.get_or_insert_with(|| core.outs.pop());
        http::respond(out.as_mut(), 200, "application/json", &body, keep);
        let mut ctx = core.ctx(token);
        s.close(&mut ctx);
        c.flags &= !(F_STREAM | F_KEEP_ALIVE);
        c.route = Route::Http;
        core.finish_http(token, c, keep);
        core.mark_dirty(token, c);
        if keep && c.spill_len() != 0 {
            self.process(token, 0);
        }
    }

    /// Queue one frame to every local subscriber of `channel`.
    fn fan_out(&mut self, channel: &Arc<str>, offset: u64, frame: &Frame, published: Instant) {
        let core = &mut self.core;
        let Some(subs) = core.topics.subscribers(channel) else {
            return;
        };
        let cap = core.cfg.gateway.max_queued_bytes;
        let mut overflow = Vec::new();
        let mut n = 0u64;
        // Compressed once for this worker, when the first WebSocket
        // subscriber with permessage-deflate is met.
        let mut compressed = SharedFrame::new(frame.bytes());
        let compressions = core.deflate.stats.compressed;
        let mut compressed_n = 0u64;
        for &key in subs {
            let token = token_of(key);
            let Some(c) = self.conns.get_mut(token) else {
                continue;
            };
            let stream = c.flags & F_STREAM != 0;
            if !(c.proto.is_open() || stream && c.proto.state() != State::Closed) {
                continue;
            }
            if c.flags & F_HOLD != 0 {
                // Its subscription's reply still waits behind an earlier
                // one: the publication goes after that reply.
                let room = cap.saturating_sub(c.out.as_ref().map_or(0, |o| o.len()));
                if let Some(s) = c.session.as_mut() {
                    match s.divert(channel, frame, room) {
                        Divert::No => {}
                        Divert::Held => {
                            n += 1;
                            continue;
                        }
                        Divert::Full => {
                            overflow.push(token);
                            continue;
                        }
                    }
                }
            }
            let ws_frame = (!stream).then(|| compressed.for_conn(&mut c.proto, &mut core.deflate));
            let len = ws_frame.as_ref().map_or(frame.len(), |f| f.len());
            let out = c.out.get_or_insert_with(|| core.outs.pop());
            if out.len() + len > cap {
                // The queue holds what this burst queued so far, not yet
                // written: give the socket a chance before calling the
                // subscriber slow. A reader's kernel buffer takes it; a
                // client that does not read stays over the cap.
                let _ = out.flush(&mut c.sock);
                if out.len() + len > cap {
                    overflow.push(token);
                    continue;
                }
            }
            if stream {
                // SSE and long-poll write their own framing (per connection:
                // the event id is this stream's resume token).
                if let Some(st) = c.session.as_mut().and_then(|s| s.stream.as_mut()) {
                    st.on_frame(channel, frame, out.as_mut());
                    if st.kind == Kind::Poll && st.ready && !st.done {
                        core.polls_ready.push(token);
                    }
                }
            } else if let Some(f) = ws_frame {
                if !Arc::ptr_eq(&f, frame.bytes()) {
                    compressed_n += 1;
                }
                out.push_shared(f);
            }
            n += 1;
            if c.flags & F_DIRTY == 0 {
                c.flags |= F_DIRTY;
                core.dirty.push(token);
            }
        }
        // Every compression in the loop above was the shared frame's.
        core.shared_compressions += core.deflate.stats.compressed - compressions;
        core.shared_deliveries += compressed_n;
        if n > 0 {
            core.delivered.push(published);
            core.counts.deliveries += n;
            core.counts.messages_out += n;
        }
        core.topics.delivered(channel, offset);
        for token in overflow {
            self.slow_consumer(token, channel, offset);
        }
    }

    /// A subscriber's out queue is full: apply the configured policy.
    /// Control frames (the close, the notice) are queued past the cap.
    fn slow_consumer(&mut self, token: Token, channel: &str, offset: u64) {
        let core = &mut self.core;
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let out = c.out.get_or_insert_with(|| core.outs.pop());
        match core.cfg.gateway.slow_consumer {
            SlowConsumer::Close => {
                warn!(
                    "closing slow consumer {token:?} ({} bytes queued)",
                    out.len()
                );
                core.counts.slow_consumer_closes += 1;
                if c.flags & F_STREAM != 0 {
                    // A stream has no close frame: it ends; EventSource
                    // reconnects with its Last-Event-ID and recovers.
                    c.proto.shutdown(core.now);
                } else {
                    c.proto.close(
                        out.as_mut(),
                        core.now,
                        close_code::SLOW_CONSUMER,
                        "slow consumer",
                    );
                }
                core.arm(token, c);
            }
            SlowConsumer::Drop => {
                core.counts.dropped += 1;
                // The last publication it was sent: the one before this, or,
                // when this is a presence event, the channel's latest.
                let last = if offset > 0 {
                    offset - 1
                } else {
                    core.topics.last_offset(channel)
                };
                if let Some(s) = c.session.as_mut() {
                    let mut ctx = core.ctx(token);
                    s.drop_channel(&mut ctx, channel, last, out.as_mut());
                }
            }
        }
        core.mark_dirty(token, c);
    }

    fn on_reply(&mut self, to: ReplyTo, body: ReplyBody) {
        let body = match body {
            ReplyBody::Replay(chunk) => return self.on_replay(token_of(to.conn), chunk),
            body => body,
        };
        let core = &mut self.core;
        let token = token_of(to.conn);
        let Some(c) = self.conns.get_mut(token) else {
            // The connection left before the answer came.
            return core.undo(token, body);
        };
        // A subscribe of an earlier session on this connection (a poll
        // answered before all its subscribes were, the connection kept for
        // other requests): not this session's, nor an HTTP request's
        // answer. Undone like a closed connection's.
        let stale = matches!(&body, ReplyBody::Subscribed { client, .. }
            if c.session.as_ref().is_none_or(|s| client.as_ref().is_some_and(|cl| *cl != s.client)));
        if stale {
            if let ReplyBody::Subscribed {
                channel,
                client,
                result,
            } = body
            {
                debug!("stale subscribe answer for {token:?} ({channel}): undone");
                if result.is_ok() {
                    core.broker
                        .unsubscribe(core.id, &channel, client.as_deref());
                }
            }
            return;
        }
        let mut out = c.out.take().unwrap_or_else(|| core.outs.pop());
        // Matched by tag: an answer the connection no longer waits for (its
        // session ended, or it moved on to another HTTP request) is undone.
        let stale = match (c.route, c.session.as_mut()) {
            (Route::Gateway | Route::Sse | Route::Poll, Some(s)) => {
                let (mut ctx, deflate) = core.ctx_deflate(token);
                // Nothing goes out after our close frame, or on an ended
                // stream; the session still takes the answer.
                let writable = c.proto.is_open()
                    || c.flags & F_STREAM != 0 && c.proto.state() != State::Closed;
                let (tag, id) = (to.tag, to.id.as_deref());
                let result = if writable {
                    // Replies and replays compressed when permessage-deflate is on.
                    let mut tx = c.proto.sender(out.as_mut(), deflate);
                    s.on_reply(&mut ctx, tag, id, body, &mut tx)
                } else {
                    s.on_reply(&mut ctx, tag, id, body, &mut Vec::new())
                };
                if let Some(st) = s.stream.as_mut() {
                    // A short poll (`wait=0`) answers once every channel is in.
                    if st.kind == Kind::Poll && st.waiting == 0 && st.interval_ms == 0 {
                        st.ready = true;
                    }
                    if st.kind == Kind::Poll && st.ready && !st.done {
                        core.polls_ready.push(token);
                    }
                }
                result.err()
            }
            (Route::Http, _)
                if c.flags & F_HTTP_WAIT != 0 && core.http_waits.get(&token) == Some(&to.tag) =>
            {
                core.http_waits.remove(&token);
                let keep = core.keep_alive(c);
                let send = c.flags & F_SEND != 0;
                c.flags &= !(F_HTTP_WAIT | F_KEEP_ALIVE | F_SEND);
                let action = if send {
                    api::render_send_answer(to.id.as_deref(), body)
                } else {
                    api::render_reply(body)
                };
                if let api::Action::Respond {
                    status,
                    content_type,
                    body,
                } = action
                {
                    http::respond(out.as_mut(), status, content_type, &body, keep);
                }
                core.finish_http(token, c, keep);
                c.out = Some(out);
                core.mark_dirty(token, c);
                // Requests that arrived meanwhile.
                if keep && c.spill_len() != 0 {
                    self.process(token, 0);
                }
                return;
            }
            _ => Some(body),
        };
        if let Some(body) = stale {
            core.undo(token, body);
        }
        c.out = Some(out);
        core.after_session(token, c);
        core.mark_dirty(token, c);
        self.pull_replay(token, false);
    }

    /// One `writev` burst per connection with something queued, until
    /// nothing is left dirty. (Reads resumed by a flush wait for the next
    /// turn of the loop: `Core::read_again`.)
    fn flush_dirty(&mut self) {
        let mut dirty = Vec::new();
        while !self.core.dirty.is_empty() {
            std::mem::swap(&mut dirty, &mut self.core.dirty);
            for token in dirty.drain(..) {
                self.flush_one(token);
            }
        }
        self.core.dirty = dirty;
    }

    fn flush_one(&mut self, token: Token) {
        let core = &mut self.core;
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        c.flags &= !F_DIRTY;
        let mut resume = false;
        // Replies still owed (a half-closed client waits for them), and
        // whether the connection may be read on when its queue drains.
        let owed = c.session.as_ref().is_some_and(|s| s.has_pending());
        let backlog = backlogged(c, &core.cfg.gateway);
        if let Some(out) = c.out.as_mut() {
            let before = out.len();
            let result = out.flush(&mut c.sock);
            let written = before - out.len();
            core.counts.bytes_out += written as u64;
            match result {
                Ok(Flush::Done) if c.flags & F_EOF != 0 && !owed => {
                    self.drop_conn(token, "peer closed TCP; replies written");
                    return;
                }
                Ok(Flush::Done) => {
                    core.outs.push(c.out.take().expect("present"));
                    if !backlog {
                        resume = c.flags & F_READ_PAUSED != 0;
                        c.flags &= !F_READ_PAUSED;
                    }
                }
                Ok(Flush::Blocked) => {
                    // The writable event brings it back here.
                    if c.flags & F_READ_PAUSED != 0
                        && out.len() <= core.cfg.out_high_water / 2
                        && !backlog
                    {
                        c.flags &= !F_READ_PAUSED;
                        // Next turn, not here: reading now could queue
                        // more, flush, read again... for as long as the
                        // client keeps up (see READ_BUDGET).
                        core.read_again(token, c);
                    }
                    if c.session.as_ref().is_some_and(|s| !s.replays.is_empty()) {
                        self.pull_replay(token, true);
                    }
                    return;
                }
                Err(e) => {
                    debug!("write: {e}");
                    self.drop_conn(token, "write error");
                    return;
                }
            }
        }
        // Everything is written. A finished connection shuts its side.
        if c.proto.state() == State::Closed && c.flags & F_WRITE_SHUT == 0 {
            c.flags |= F_WRITE_SHUT;
            // §7.1.1: "the server SHOULD close the underlying TCP connection
            // first". Shut our side; the peer's FIN (or the linger deadline)
            // ends it.
            let _ = c.sock.shutdown(std::net::Shutdown::Write);
        }
        if resume {
            // Next turn, as above.
            core.read_again(token, c);
        }
        if c.session.as_ref().is_some_and(|s| !s.replays.is_empty()) {
            self.pull_replay(token, true);
        }
    }

    fn drop_conn(&mut self, token: Token, why: &str) {
        let core = &mut self.core;
        if let Some(mut c) = self.conns.remove(token) {
            debug!("connection {token:?} closed: {why}");
            core.http_waits.remove(&token);
            if let Some(k) = c.timer.take() {
                core.timers.cancel(k);
            }
            if let Some(mut o) = c.out.take() {
                o.clear();
                core.outs.push(o);
            }
            if let Some(mut s) = c.session.take() {
                let mut ctx = core.ctx(token);
                s.close(&mut ctx);
            }
            if let Some(s) = c.spill.take() {
                core.spills.put(*s);
            }
            core.shared.connections.fetch_sub(1, Ordering::AcqRel);
            if c.ip_key != 0 {
                core.shared.per_ip.release(c.ip_key);
            }
            core.counts.closed += 1;
            // Closing the descriptor removes it from epoll.
        }
    }
}

impl Core {
    /// (Re)arm the connection's one timer at its next deadline.
    fn arm(&mut self, token: Token, c: &mut Connection) {
        if let Some(k) = c.timer.take() {
            self.timers.cancel(k);
        }
        let stream = c
            .session
            .as_ref()
            .and_then(|s| s.stream.as_ref())
            .filter(|_| c.flags & F_STREAM != 0 && c.proto.state() != State::Closed);
        let at = match stream {
            Some(st) => Some(st.deadline),
            None => c.proto.next_timeout(self.now, &self.cfg.timeouts),
        };
        // The token's expiry, while the connection is still in use.
        let expiry = c
            .session
            .as_ref()
            .and_then(|s| s.expires_at_ms)
            .filter(|_| c.proto.state() != State::Closed);
        let at = match (at, expiry) {
            (Some(a), Some(e)) => Some(a.min(e)),
            (a, e) => a.or(e),
        };
        if let Some(at) = at {
            c.timer = Some(self.timers.insert(at, token));
        }
    }

    /// Store this worker's permessage-deflate counts for `/metrics`, when
    /// they moved: plain counters on the hot path, a few relaxed stores per
    /// loop iteration here.
    fn publish_deflate_counts(&mut self) {
        let e = &self.deflate.stats;
        let now = DeflateCounts {
            connections: self.deflate_conns,
            messages_in: e.inflated,
            in_wire_bytes: e.inflated_from_bytes,
            in_payload_bytes: e.inflated_bytes,
            // The engine counts compressions: a message sent to one
            // connection is one, but a publication's shared frame is
            // compressed once and delivered to many.
            messages_out: e.compressed - self.shared_compressions + self.shared_deliveries,
            out_payload_bytes: e.raw_bytes,
            out_wire_bytes: e.deflated_bytes,
        };
        if now != self.deflate_published {
            self.shared.workers[self.id].deflate.store(&now);
            self.deflate_published = now;
        }
    }

    /// An answer nobody waits for any more (the connection, its session or
    /// its request is gone): a successful subscribe is undone in full, its
    /// presence included; anything else is dropped.
    fn undo(&mut self, token: Token, body: ReplyBody) {
        match body {
            ReplyBody::Subscribed {
                channel,
                client,
                result: Ok(_),
            } => {
                debug!("late subscribe answer for {token:?}: {channel:?} undone");
                self.broker
                    .unsubscribe(self.id, &channel, client.as_deref());
            }
            other => debug!("answer for {token:?} dropped: {other:?}"),
        }
    }

    /// After a `/ws` session took a message or an answer: whether its
    /// publications go through `Session::divert`, a refreshed token's
    /// expiry, and reading resumed once its unanswered ops are within bounds.
    fn after_session(&mut self, token: Token, c: &mut Connection) {
        let Some(s) = c.session.as_mut() else {
            return;
        };
        if s.holding() {
            c.flags |= F_HOLD;
        } else {
            c.flags &= !F_HOLD;
        }
        if s.refreshed {
            // A `refresh` op replaced the token: a new expiry.
            s.refreshed = false;
            s.expires_at_ms = self
                .cfg
                .gateway
                .auth
                .expires_in_ms(&s.access, unix_now_ms())
                .map(|left| self.now + left);
            self.arm(token, c);
        }
        let queued = c.out.as_ref().map_or(0, |o| o.len());
        if c.route == Route::Gateway
            && c.flags & (F_READ_PAUSED | F_EOF) == F_READ_PAUSED
            && queued <= self.cfg.out_high_water / 2
            && !backlogged(c, &self.cfg.gateway)
        {
            c.flags &= !F_READ_PAUSED;
            self.read_again(token, c);
        }
    }

    /// Read the connection again at the next turn of the loop, once: a
    /// connection listed twice (its budget ran out, and its out queue
    /// drained) was read twice per turn, and its entries were carried over
    /// turn after turn, so a client pipelining ops got one more read budget
    /// per turn each time its queue crossed the pause mark: turns of
    /// hundreds of ms for every other connection of the worker (a channel
    /// churn: 9 to 22 entries for 4 connections within a second).
    fn read_again(&mut self, token: Token, c: &mut Connection) {
        if c.flags & F_READ_AGAIN == 0 {
            c.flags |= F_READ_AGAIN;
            self.read_again.push(token);
        }
    }

    fn mark_dirty(&mut self, token: Token, c: &mut Connection) {
        if c.flags & F_DIRTY == 0 {
            c.flags |= F_DIRTY;
            self.dirty.push(token);
        }
    }

    fn ctx<'a>(&'a mut self, token: Token) -> Ctx<'a> {
        self.ctx_deflate(token).0
    }

    /// A session's context, and the worker's permessage-deflate engine
    /// (for a `Sender`) borrowed beside it.
    fn ctx_deflate(&mut self, token: Token) -> (Ctx<'_>, &mut Engine) {
        let ctx = Ctx {
            worker: self.id,
            conn: key_of(token),
            broker: &*self.broker,
            topics: &mut self.topics,
            cfg: &self.cfg.gateway,
            counts: &mut self.counts,
            tags: &mut self.tags,
        };
        (ctx, &mut self.deflate)
    }

    /// Consume what can be consumed of `data`: request heads (and bodies)
    /// while in the HTTP phase, then frames. Returns the bytes used.
    fn consume(
        &mut self,
        token: Token,
        c: &mut Connection,
        data: &mut [u8],
        out: &mut OutQueue,
    ) -> usize {
        let mut consumed = 0;
        if c.flags & (F_TRUSTED | F_PROXY_DONE) == F_TRUSTED
            && self.cfg.admission.proxy_protocol
            && c.proto.state() == State::Handshake
        {
            match admission::parse_proxy_v2(data) {
                Ok(None) => return 0,
                Ok(Some((source, len))) => {
                    c.flags |= F_PROXY_DONE;
                    consumed = len;
                    if let Some(src) = source {
                        if !self.admit_ip(c, src.ip()) {
                            refuse_per_ip(out, src.ip());
                            c.proto.shutdown(self.now);
                            return data.len();
                        }
                    }
                }
                Err(()) => {
                    debug!("connection {token:?}: bad PROXY v2 header from a trusted proxy");
                    handshake::write_response(out, 400, "", "bad PROXY protocol header");
                    c.proto.shutdown(self.now);
                    return data.len();
                }
            }
        }
        while c.proto.state() == State::Handshake && c.flags & (F_HTTP_WAIT | F_STREAM) == 0 {
            match self.http_step(token, c, &data[consumed..], out) {
                Ok(0) => return consumed,
                Ok(used) => consumed += used,
                Err(e) => {
                    debug!("connection {token:?}: {e}");
                    self.counts.protocol_errors += 1;
                    handshake::write_error(out, e);
                    c.proto.shutdown(self.now);
                    return data.len();
                }
            }
        }
        if c.route == Route::Sse && c.flags & F_STREAM != 0 {
            // An SSE stream does not end to answer what follows it.
            return data.len();
        }
        if c.flags & (F_HTTP_WAIT | F_STREAM) != 0
            || consumed == data.len()
            || c.proto.state() == State::Closed
        {
            // What follows a pending request or a held long-poll stays
            // spilled until it is answered.
            return consumed;
        }
        let route = c.route;
        let id = self.id;
        let mut session = c.session.take();
        let mut ctx = Ctx {
            worker: id,
            conn: key_of(token),
            broker: &*self.broker,
            topics: &mut self.topics,
            cfg: &self.cfg.gateway,
            counts: &mut self.counts,
            tags: &mut self.tags,
        };
        let mut on_event = |ev: Event<'_>, tx: &mut Sender<'_, OutQueue>| {
            if let Event::Message { text, data } = ev {
                ctx.counts.messages_in += 1;
                match route {
                    Route::Echo => {
                        // Compressed when permessage-deflate is on.
                        tx.put_message(text, data);
                        ctx.counts.messages_out += 1;
                    }
                    Route::Gateway => {
                        if let Some(s) = session.as_mut() {
                            s.on_message(&mut ctx, text, data, tx);
                        }
                    }
                    Route::Http | Route::Pending | Route::Sse | Route::Poll => {}
                }
            }
        };
        let result = c.proto.decode_with(
            &mut data[consumed..],
            self.now,
            &self.cfg.limits,
            &mut self.deflate,
            out,
            &mut on_event,
        );
        c.session = session;
        match result {
            Ok(used) => consumed + used,
            Err(e) => {
                debug!("connection {token:?}: {e}");
                self.counts.protocol_errors += 1;
                c.proto.fail(out, self.now, e);
                data.len()
            }
        }
    }

    /// The HTTP phase: parse one request, route it, answer or upgrade.
    /// Returns the bytes used (0: incomplete).
    fn http_step(
        &mut self,
        token: Token,
        c: &mut Connection,
        data: &[u8],
        out: &mut OutQueue,
    ) -> Result<usize, Error> {
        let cfg = self.cfg.clone();
        let Some(head) = Head::parse(data, cfg.max_head)? else {
            return Ok(0);
        };
        let path = head.path();
        // Behind a trusted proxy without PROXY v2: the client is named by
        // X-Forwarded-For, and counted per IP from the first request.
        if c.flags & F_TRUSTED != 0 && !cfg.admission.proxy_protocol && c.ip_key == 0 {
            if let Ok(peer) = c.sock.peer_addr() {
                let client = admission::forwarded_for(&head, &cfg.admission.trusted, peer.ip());
                if !self.admit_ip(c, client) {
                    refuse_per_ip(out, client);
                    c.proto.shutdown(self.now);
                    return Ok(data.len());
                }
            }
        }
        // New long-lived connections are rate limited per worker.
        let long_lived = matches!(path, "/ws" | "/sse" | "/poll") || (path == "/echo" && cfg.echo);
        if long_lived && !self.take_handshake() {
            self.counts.refused_handshake_rate += 1;
            warn!(
                "handshake rate {}/s exceeded: 503",
                cfg.admission.handshake_rate
            );
            handshake::write_response(out, 503, "Retry-After: 1\r\n", "handshake rate exceeded");
            c.proto.shutdown(self.now);
            return Ok(data.len());
        }
        // Every parameter of the query decodes, or the request gets 400:
        // a malformed cursor, token or channel is never read as absent.
        let query = match http::Query::parse(head.query()) {
            Ok(q) => q,
            Err(e) => {
                debug!("connection {token:?}: {e}: 400");
                let e = OpError::BadRequest(e.to_string());
                let v = serde_json::json!({ "error": crate::gateway::error::error_json(&e) });
                http::respond_json(out, e.http_status(), &v, false);
                c.proto.shutdown(self.now);
                return Ok(data.len());
            }
        };
        let ws_route = match path {
            "/echo" if cfg.echo => Some(Route::Echo),
            "/ws" => Some(Route::Gateway),
            _ => None,
        };
        if let Some(route) = ws_route {
            let up = handshake::check_upgrade(&head)?;
            if !http::origin_allowed(&head, cfg.origin_check.as_deref()) {
                return Err(Error::OriginRejected);
            }
            // A token, where auth is configured: refused before the upgrade.
            let access = match route {
                Route::Gateway => match self.authenticate(&head) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        self.refuse_auth(c, e, out);
                        return Ok(head.len);
                    }
                },
                _ => None,
            };
            // The user it names must be a valid user id.
            let user = match access.as_ref().map(|a| self.user_of(query, a)) {
                Some(Err(e)) => {
                    self.refuse_request(c, &e, out);
                    return Ok(head.len);
                }
                Some(Ok(u)) => u,
                None => None,
            };
            // `/ws` also speaks `wsgate.v1` and never echoes a `bearer.` token.
            let protocol = match route {
                Route::Gateway => crate::auth::select_protocol(&head, &cfg.protocols),
                _ => handshake::select_protocol(&head, &cfg.protocols),
            };
            // RFC 7692: the first acceptable permessage-deflate offer, or none.
            let offers = head.header_values("sec-websocket-extensions");
            let dfl = deflate::negotiate(offers, &cfg.compression);
            let ext = dfl.as_ref().map(|p| p.to_header());
            handshake::write_accept(out, up.key, protocol, ext.as_deref());
            c.proto.accept(self.now);
            if let Some(p) = &dfl {
                c.proto.set_deflate(p, &cfg.compression);
                self.deflate_conns += 1;
            }
            c.route = route;
            if route == Route::Gateway {
                let access = access.unwrap_or(crate::auth::Access::Open);
                self.open_session(token, c, query, out, access, user);
            }
            return Ok(head.len);
        }
        // The browser transports and the API: a refused Origin gets 403
        // before a stream opens or an op runs.
        if http::origin_applies(path) && !http::origin_allowed(&head, cfg.origin_check.as_deref()) {
            return Err(Error::OriginRejected);
        }
        // Plain HTTP: the whole body must be here.
        let body_len = match http::body_length(&head, cfg.gateway.max_body) {
            Ok(n) => n,
            Err(e) => {
                http::respond(
                    out,
                    e.status(),
                    "text/plain; charset=utf-8",
                    e.reason().as_bytes(),
                    false,
                );
                c.proto.shutdown(self.now);
                return Ok(data.len());
            }
        };
        let total = head.len + body_len;
        if data.len() < total {
            return Ok(0);
        }
        let body = &data[head.len..total];
        // A draining server keeps no connection for a next request, and
        // says so in the response.
        let draining = self.shared.draining.load(Ordering::Relaxed);
        let keep = http::keep_alive(&head) && !draining;
        c.route = Route::Http;
        self.counts.http_requests += 1;
        // The tag of the broker request the answer waits for, if any.
        let mut wait_tag = None;
        let action = match (head.method, path) {
            ("GET", "/healthz") => {
                // 503 while draining, so that a load balancer polling on a
                // kept-alive connection takes this node out.
                let b = self.broker.stats();
                let (status, state) = if draining {
                    (503, "draining")
                } else if b.healthy {
                    (200, "ok")
                } else {
                    (503, "degraded")
                };
                api::Action::json(
                    status,
                    &serde_json::json!({ "status": state, "broker": b.kind }),
                )
            }
            ("GET", "/sse") => {
                return self
                    .open_stream(token, c, &head, query, Kind::Sse, out, keep)
                    .map(|_| total)
            }
            ("GET", "/poll") => {
                return self
                    .open_stream(token, c, &head, query, Kind::Poll, out, keep)
                    .map(|_| total)
            }
            ("POST", "/send") => {
                let (action, tag) = self.send_op(token, &head, query, body);
                wait_tag = tag;
                action
            }
            ("POST", "/api/disconnect") => self.disconnect_request(&head, body),
            ("GET", p) if cfg.gateway.demo && static_files::lookup(p).is_some() => {
                let (content_type, body) = static_files::lookup(p).expect("checked");
                api::Action::Respond {
                    status: 200,
                    content_type,
                    body: body.to_vec(),
                }
            }
            ("GET", "/metrics") => api::Action::Respond {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: crate::http::metrics::render(
                    &self.shared.stats,
                    &self.shared.workers,
                    &self.broker.stats(),
                )
                .into_bytes(),
            },
            (_, p) if api::is_api_path(p) => {
                let tag = self.tags.fresh();
                wait_tag = Some(tag);
                let reply = ReplyTo {
                    worker: self.id,
                    conn: key_of(token),
                    id: None,
                    tag,
                };
                let shared = self.shared.clone();
                let broker = self.broker.clone();
                api::handle(
                    &head,
                    query,
                    body,
                    &cfg.gateway,
                    &*self.broker,
                    reply,
                    move || stats_json(&shared, &*broker),
                )
            }
            _ => return Err(Error::NotFound),
        };
        let action = match (action, wait_tag) {
            // Every broker request has a tag; without one no answer could
            // ever be matched to this request.
            (api::Action::Pending, None) => {
                warn!("{path}: a broker request without a tag: 503");
                api::Action::error(&OpError::Unavailable("no answer to wait for"))
            }
            (a, _) => a,
        };
        match action {
            api::Action::Respond {
                status,
                content_type,
                body,
            } => {
                http::respond(out, status, content_type, &body, keep);
                self.finish_http(token, c, keep);
            }
            api::Action::Pending => {
                if let Some(tag) = wait_tag {
                    self.http_waits.insert(token, tag);
                }
                c.flags |= F_HTTP_WAIT;
                if path == "/send" {
                    c.flags |= F_SEND;
                }
                if keep {
                    c.flags |= F_KEEP_ALIVE;
                }
            }
        }
        Ok(total)
    }

    /// `GET /sse` and `GET /poll`: a session that subscribes to the named
    /// channels, resuming from the client's token or cursor.
    #[allow(clippy::too_many_arguments)]
    fn open_stream(
        &mut self,
        token: Token,
        c: &mut Connection,
        head: &Head<'_>,
        query: http::Query<'_>,
        kind: Kind,
        out: &mut OutQueue,
        keep: bool,
    ) -> Result<(), Error> {
        let access = match self.authenticate(head) {
            Ok(a) => a,
            Err(e) => {
                self.refuse_auth(c, e, out);
                return Ok(());
            }
        };
        let channels: Vec<String> = query.values("channel").collect();
        let read = http::stream_request::read(head, query, kind, channels.len(), &self.cfg.gateway)
            .and_then(|(r, interval)| Ok((r, interval, self.user_of(query, &access)?)));
        let (resume, interval, user) = match read {
            Ok(r) => r,
            Err(e) => {
                let v = serde_json::json!({ "error": crate::gateway::error::error_json(&e) });
                http::respond_json(out, e.http_status(), &v, keep);
                self.finish_http(token, c, keep);
                return Ok(());
            }
        };
        let mut st = Box::new(StreamState::new(
            kind,
            resume.clone(),
            channels.len(),
            self.now,
            interval,
        ));
        st.cap = self.cfg.gateway.max_queued_bytes;
        if kind == Kind::Sse {
            StreamState::sse_start(out);
        }
        let mut s = self.new_session(user, access);
        let mut ctx = self.ctx(token);
        // The user's personal channel is part of the stream too.
        let personal = s.user.as_deref().map(crate::pubsub::user_channel);
        let since = personal.as_deref().and_then(|p| resume.get(p).cloned());
        if s.join_personal(&mut ctx, since) {
            st.waiting += 1;
        }
        for ch in &channels {
            if let Err(e) = s.subscribe(&mut ctx, ch, resume.get(ch).cloned()) {
                st.on_error(ch, &e, out);
            }
        }
        if kind == Kind::Poll && st.waiting == 0 {
            st.ready = true; // every channel was refused: answer now
        }
        let ready = kind == Kind::Poll && st.ready;
        s.stream = Some(st);
        c.session = Some(s);
        c.route = if kind == Kind::Sse {
            Route::Sse
        } else {
            Route::Poll
        };
        c.flags |= F_STREAM;
        if keep {
            c.flags |= F_KEEP_ALIVE;
        }
        if ready {
            self.polls_ready.push(token);
        }
        self.arm(token, c);
        Ok(())
    }

    /// `POST /send`: one client op over plain HTTP (publish, presence, ping),
    /// parsed once. Returns the action and, when the broker answers, its
    /// request's tag.
    fn send_op(
        &mut self,
        token: Token,
        head: &Head<'_>,
        query: http::Query<'_>,
        body: &[u8],
    ) -> (api::Action, Option<Tag>) {
        use crate::gateway::ops::{parse, Op};
        use crate::gateway::reply::{Dispatched, Reply};
        let (id, op) = match parse(body) {
            Ok((id, Op::Subscribe { .. } | Op::Unsubscribe { .. })) => {
                let e = OpError::BadRequest("subscribe through /sse or /poll".into());
                return (api::send_reply(id, &Reply::Error(e)), None);
            }
            Err((id, e)) => return (api::send_reply(id, &Reply::Error(e)), None),
            Ok(op) => op,
        };
        let access = match self.authenticate(head) {
            Ok(a) => a,
            Err(e) => return (api::Action::error(&e.op_error()), None),
        };
        let user = match self.user_of(query, &access) {
            Ok(u) => u,
            Err(e) => return (api::Action::error(&e), None),
        };
        let mut s = self.new_session(user, access);
        let mut ctx = self.ctx(token);
        match s.dispatch(&mut ctx, id, op) {
            // The broker answers.
            Dispatched::Asked(tag, ..) => (api::Action::Pending, Some(tag)),
            // Answered at once (ping, or an error).
            Dispatched::Now(_, reply) => (api::send_reply(id, &reply), None),
        }
    }

    /// `POST /api/disconnect {"user":"…"}`: every worker of every node
    /// closes that user's connections.
    fn disconnect_request(&mut self, head: &Head<'_>, body: &[u8]) -> api::Action {
        if !api::authorized(head, self.cfg.gateway.api_key.as_deref()) {
            return api::Action::error(&OpError::Unauthorized);
        }
        #[derive(serde::Deserialize)]
        struct Req {
            user: String,
        }
        match serde_json::from_slice::<Req>(body) {
            Ok(r) => {
                match crate::pubsub::valid_user(&r.user, self.cfg.gateway.max_channel_length) {
                    Ok(()) => {
                        self.broker.disconnect_user(&r.user);
                        api::Action::json(200, &serde_json::json!({ "ok": true }))
                    }
                    Err(e) => api::Action::error(&OpError::BadChannel(e)),
                }
            }
            Err(e) => api::Action::error(&OpError::BadRequest(e.to_string())),
        }
    }

    /// Count a connection for client `ip`, unless that IP is at its limit.
    fn admit_ip(&mut self, c: &mut Connection, ip: std::net::IpAddr) -> bool {
        let limit = self.cfg.admission.per_ip;
        if limit == 0 || c.ip_key != 0 {
            return true;
        }
        let key = admission::ip_key(ip);
        if self.shared.per_ip.acquire(key, limit) {
            c.ip_key = key;
            true
        } else {
            self.counts.refused_per_ip += 1;
            false
        }
    }

    /// One token of this worker's share of the handshake rate.
    fn take_handshake(&mut self) -> bool {
        let rate = self.cfg.admission.handshake_rate;
        if rate == 0 {
            return true;
        }
        let share = (rate / self.inboxes.len() as u32).max(1);
        self.handshakes.take(self.now, share, share)
    }

    /// The request's access: its token verified, or open mode.
    fn authenticate(&self, head: &Head<'_>) -> Result<crate::auth::Access, crate::auth::AuthError> {
        let now = unix_now_ms() / 1000;
        let token = crate::auth::token_from_head(head);
        self.cfg.gateway.auth.authenticate(token.as_ref(), now)
    }

    /// 401 for a missing or invalid token; the connection then closes.
    fn refuse_auth(&mut self, c: &mut Connection, e: crate::auth::AuthError, out: &mut OutQueue) {
        debug!("auth refused: {}", e.reason());
        self.counts.refused += 1;
        let extra = format!("WWW-Authenticate: {}\r\n", e.www_authenticate());
        handshake::write_response(out, e.http_status(), &extra, e.reason());
        c.proto.shutdown(self.now);
    }

    /// The user a request names (its token's `sub`, or `?user=` in open
    /// mode), refused unless it is a valid user id.
    fn user_of(
        &self,
        query: http::Query<'_>,
        access: &crate::auth::Access,
    ) -> Result<Option<String>, OpError> {
        let named = query.value("user");
        crate::gateway::session::user_of(access, named, self.cfg.gateway.max_channel_length)
    }

    /// 400 (or the error's status) with the error's JSON, then close.
    fn refuse_request(&mut self, c: &mut Connection, e: &OpError, out: &mut OutQueue) {
        debug!("request refused: {e}");
        self.counts.refused += 1;
        let v = serde_json::json!({ "error": crate::gateway::error::error_json(e) });
        http::respond_json(out, e.http_status(), &v, false);
        c.proto.shutdown(self.now);
    }

    /// A session for `access` and its `user` (see [`Core::user_of`]), with
    /// its token's expiry on this worker's clock.
    fn new_session(&mut self, user: Option<String>, access: crate::auth::Access) -> Box<Session> {
        self.next_client += 1;
        let client = format!("{}{}", self.client_prefix, self.next_client);
        let mut s = Box::new(Session::new(client, user));
        s.expires_at_ms = self
            .cfg
            .gateway
            .auth
            .expires_in_ms(&access, unix_now_ms())
            .map(|left| self.now + left);
        s.access = access;
        s
    }

    /// Is the connection kept for a next request after the answer to its
    /// waiting one? Not while draining, and the answer says so.
    fn keep_alive(&self, c: &Connection) -> bool {
        c.flags & F_KEEP_ALIVE != 0 && !self.shared.draining.load(Ordering::Relaxed)
    }

    /// An HTTP response is queued: wait for the next request, or close.
    fn finish_http(&mut self, token: Token, c: &mut Connection, keep: bool) {
        // A draining server keeps no connection for a next request.
        let keep = keep && !self.shared.draining.load(Ordering::Relaxed);
        if keep {
            // A new handshake phase: its deadline bounds the idle time
            // between requests.
            c.proto = Conn::server(self.now);
        } else {
            c.proto.shutdown(self.now);
        }
        self.arm(token, c);
    }

    /// A `/ws` connection: its session, its personal channel, and the
    /// channels named in the URL (`?channel=a&channel=b`).
    fn open_session(
        &mut self,
        token: Token,
        c: &mut Connection,
        query: http::Query<'_>,
        out: &mut OutQueue,
        access: crate::auth::Access,
        user: Option<String>,
    ) {
        let mut s = self.new_session(user, access);
        let (mut ctx, deflate) = self.ctx_deflate(token);
        let mut tx = c.proto.sender(out, deflate);
        s.start(&mut ctx, query.values("channel"), &mut tx);
        c.session = Some(s);
    }
}

/// Does the connection's session have too many ops unanswered to be read on?
fn backlogged(c: &Connection, cfg: &crate::gateway::GatewayConfig) -> bool {
    c.session.as_ref().is_some_and(|s| s.backlogged(cfg))
}

/// `/api/stats`.
fn stats_json(shared: &Shared, broker: &dyn Broker) -> serde_json::Value {
    let st = &shared.stats;
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let workers: Vec<_> = shared
        .workers
        .iter()
        .map(|w| {
            serde_json::json!({
                "connections": l(&w.connections),
                "subscriptions": l(&w.subscriptions),
            })
        })
        .collect();
    serde_json::json!({
        "connections": shared.connections.load(Ordering::Relaxed),
        "subscriptions": shared.workers.iter().map(|w| l(&w.subscriptions)).sum::<u64>(),
        "messages_in": l(&st.messages_in),
        "messages_out": l(&st.messages_out),
        "bytes_in": l(&st.bytes_in),
        "bytes_out": l(&st.bytes_out),
        "deliveries": l(&st.deliveries),
        "dropped": l(&st.dropped),
        "slow_consumer_closes": l(&st.slow_consumer_closes),
        "broker": broker.stats(),
        "workers": workers,
    })
}

/// 429 for a client IP at its connection limit.
fn refuse_per_ip(out: &mut OutQueue, ip: std::net::IpAddr) {
    warn!("connection limit per IP reached: 429 to {ip}");
    handshake::write_response(
        out,
        429,
        "Retry-After: 5\r\n",
        "too many connections from this address",
    );
}

/// Wall-clock time (token expiries are Unix times).
fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connection_state_is_small() {
        let sizes = [
            ("Connection", std::mem::size_of::<Connection>()),
            ("proto::Conn", std::mem::size_of::<Conn>()),
            ("TcpStream", std::mem::size_of::<TcpStream>()),
        ];
        eprintln!("{sizes:?}");
        assert!(std::mem::size_of::<Connection>() <= 128, "{sizes:?}");
        // Release builds (what runs): mio's TcpStream is the bare descriptor
        // there (4 B; debug builds add a selector id), so the whole state is
        // 80 B (docs/density.md). `cargo test --release --lib idle_connection`.
        #[cfg(not(debug_assertions))]
        assert!(std::mem::size_of::<Connection>() <= 80, "{sizes:?}");
    }
}
