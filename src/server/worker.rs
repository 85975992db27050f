//! One event loop: a mio `Poll`, an SO_REUSEPORT listener, the connections
//! it accepted, their timers and buffers, and its inbox. Nothing here is
//! shared with other workers; they and the broker reach it only through
//! the inbox and its `Waker`.
//!
//! The worker is an I/O shell: it polls, accepts (admission: the
//! connection limit, the per-IP count, a trusted proxy), reads, spills,
//! runs the timer wheel, drains the inbox, dispatches fan-out, and
//! flushes. What a connection is for, and what it does with its bytes,
//! answers, timers and deliveries, is its [`Endpoint`]'s: each `handle_*`
//! call returns [`Effects`] the shell applies (re-arm the timer, flush, a
//! long-poll is due, process the spill, resume reading).
//!
//! Per connection, an event is handled like mio's `tcp_server` example:
//! read to `WouldBlock` (or at most `READ_BUDGET` per turn of the loop, the
//! rest at the next turn) into the worker's one read buffer, decode in place,
//! spill only an incomplete head or frame into a pooled buffer, queue the
//! replies. At the end of each loop iteration the inbox is drained (every
//! publication is queued to every local subscriber, by reference) and every
//! connection with something queued gets one `writev`.

use std::io::{self, Read};
use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use super::buffers::BufPool;
use super::conn_table::{key_of, token_of, ConnTable, RESERVED};
use super::sys::ReserveFd;
use super::timer::{TimerKey, TimerWheel};
use crate::base::{Frame, FrameKind};
use crate::broker::{Broker, Inboxes, ReplyBody, ReplyTo, WorkerMsg};
use crate::delta;
use crate::endpoint::{
    admission, refuse_per_ip, Delivery, Effects, Endpoint, Env, Fanout, Flush, Handshake, Input,
    Link, OutPool, OutQueue, ServerConfig, Shared, Timeout,
};
use crate::proto::handshake;
use crate::proto::{Conn, Error, State};

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

const F_DIRTY: u8 = 1; // in the worker's dirty list
const F_READ_PAUSED: u8 = 2; // out queue over the high-water mark, or requests waiting their turn
const F_WRITE_SHUT: u8 = 4; // our side is shut down; discarding input
const F_EOF: u8 = 8; // the peer sent FIN: write what is owed, then close
const F_HOLD: u8 = 16; // a subscription's reply waits: its publications go through Session::divert
const F_READ_AGAIN: u8 = 32; // listed in `Core::read_again` (once)

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
    flags: u8,
    /// The client IP's key in the per-IP count (0: not counted).
    ip_key: u32,
    /// What the connection is for, with its own data.
    endpoint: Endpoint,
}

impl Connection {
    /// Bytes held in `spill`.
    fn spill_len(&self) -> usize {
        self.spill.as_ref().map_or(0, |s| s.len())
    }

    /// Its endpoint, and the parts of the connection the endpoint works
    /// with (an out queue is taken from the pool if it has none).
    fn split(&mut self, token: Token, outs: &mut OutPool) -> (&mut Endpoint, Link<'_>) {
        let out = self.out.get_or_insert_with(|| outs.pop());
        let link = Link {
            key: key_of(token),
            proto: &mut self.proto,
            out,
            ip_key: &mut self.ip_key,
            peer: None,
        };
        (&mut self.endpoint, link)
    }
}

/// Everything of a worker but its connection table, so that both can be
/// borrowed at once.
struct Core {
    poll: Poll,
    /// None once draining: the listening socket is closed so that new
    /// connections go to other nodes.
    listener: Option<TcpListener>,
    timers: TimerWheel<TimerToken>,
    rbuf: Vec<u8>,
    spills: BufPool,
    #[allow(clippy::vec_box)] // connections hold `Option<Box<OutQueue>>`; the pool moves boxes
    outs: OutPool,
    dirty: Vec<Token>,
    inbox: Vec<crate::broker::WorkerMsg>,
    /// The worker's services, lent to the endpoints: its id and clock,
    /// configuration, broker, subscription index, tags, permessage-deflate
    /// engine and counters.
    env: Env,
    /// Publish instants of deliveries queued this iteration (for the
    /// publish-to-write histogram, observed after the flush).
    delivered: Vec<Instant>,
    start: Instant,
    reserve: ReserveFd,
    /// accept(2) ran out of descriptors: try again at this time.
    accept_retry_at: Option<u64>,
    next_sweep: u64,
    /// Long-polls with an answer due, answered after the inbox is drained.
    polls_ready: Vec<Token>,
    /// Connections with input left to read: their read budget ran out, or
    /// their out queue drained and their reads resume. Read at the next
    /// turn of the loop, which then does not wait in `poll` (edge-triggered
    /// readiness will not report that input again).
    read_again: Vec<Token>,
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
        Ok(Worker {
            conns: ConnTable::new(),
            core: Core {
                poll,
                listener: Some(listener),
                timers: TimerWheel::new(TICK_MS, SLOTS, 0),
                rbuf: vec![0; READ_BUF],
                spills: BufPool::new(4096, 1 << 20, 1024),
                outs: OutPool::default(),
                dirty: Vec::new(),
                inbox: Vec::new(),
                env: Env::new(id, cfg, shared, broker, inboxes),
                delivered: Vec::new(),
                start: Instant::now(),
                reserve: ReserveFd::new(),
                accept_retry_at: None,
                next_sweep: SWEEP_MS,
                polls_ready: Vec::new(),
                read_again: Vec::new(),
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
            self.core.env.id,
            self.core
                .listener
                .as_ref()
                .map(|l| l.local_addr())
                .transpose()?
                .map_or("-".into(), |a| a.to_string())
        );
        while !self.core.env.shared.stop.load(Ordering::Acquire) {
            let c = &self.core;
            let now = c.env.now;
            let sweep = (c.env.id == 0).then_some(c.next_sweep);
            // While draining, wake every 10 ms to let the next ones go.
            let drain_tick =
                (!c.drain_queue.is_empty() || !c.drain_later.is_empty()).then_some(now + 10);
            let deadline = [c.timers.next_expiry(), c.accept_retry_at, sweep, drain_tick]
                .into_iter()
                .flatten()
                .min();
            let timeout = if c.read_again.is_empty() {
                deadline.map(|d| Duration::from_millis(d.saturating_sub(now)))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.core.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            let busy_from = Instant::now();
            self.core.env.now = self.core.start.elapsed().as_millis() as u64;
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
            let now = self.core.env.now;
            if self.core.accept_retry_at.is_some_and(|t| t <= now) {
                self.core.accept_retry_at = None;
                self.accept_all();
            }
            self.core.timers.advance(now, &mut fired);
            for t in fired.drain(..) {
                self.on_timer(t.token());
            }
            if self.core.env.id == 0 && now >= self.core.next_sweep {
                self.core.next_sweep = now + SWEEP_MS;
                self.core.env.broker.sweep();
            }
            self.drain_inbox();
            // Before the flush: a client that got its echo or publication
            // finds it counted when it scrapes.
            self.core.env.publish_deflate_counts();
            self.core.env.publish_counts();
            if self.core.env.draining() && self.drain_step() {
                self.flush_dirty();
                break;
            }
            self.flush_dirty();
            self.after_iteration(busy_from);
        }
        info!(
            "worker {} stopping with {} connections",
            self.core.env.id,
            self.conns.len()
        );
        for t in self.conns.tokens() {
            self.drop_conn(t, "server stopping");
        }
        self.core.env.publish_counts();
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
        let now = core.env.now;
        let cfg = core.env.cfg.clone();
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
                    core.env.id,
                    q.len(),
                    cfg.drain_window_ms
                );
                core.drain_queue = q;
                core.drain = Some(d);
                d
            }
        };
        let elapsed = now - d.start;
        if elapsed >= cfg.drain_timeout_ms {
            info!(
                "worker {}: drain timeout, dropping {} connections",
                core.env.id,
                self.conns.len()
            );
            return true;
        }
        let window = cfg.drain_window_ms.max(1);
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
        let (ep, mut link) = c.split(token, &mut core.outs);
        let fx = ep.handle_drain(&mut core.env, &mut link);
        core.apply(token, c, fx.unwrap_or(Effects::NONE));
        if fx.is_some_and(|fx| fx.has(Effects::DUE)) {
            self.drain_inbox_polls();
        }
        fx.is_some()
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
            c.env.counts.publish_to_write.observe_us(us);
        }
        // What the flush counted (bytes written, connections closed).
        c.env.publish_counts();
        let g = &c.env.shared.workers[c.env.id];
        g.connections
            .store(self.conns.len() as u64, Ordering::Relaxed);
        g.subscriptions
            .store(c.env.topics.subscriptions() as u64, Ordering::Relaxed);
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
                    c.env.counts.refused += 1;
                    c.accept_retry_at = Some(c.env.now + 100);
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

    /// A new connection, admitted or refused: over `max_connections` it
    /// gets 503, from a client IP at its limit 429 (each then closes once
    /// written); from a trusted proxy, its client is counted once the
    /// PROXY v2 header or `X-Forwarded-For` names it.
    fn on_accept(&mut self, sock: TcpStream, peer: std::net::SocketAddr) {
        let core = &mut self.core;
        let env = &mut core.env;
        let _ = sock.set_nodelay(true);
        let over = env.shared.connections.fetch_add(1, Ordering::AcqRel) >= env.cfg.max_connections;
        let mut conn = Connection {
            sock,
            proto: Conn::server(env.now),
            spill: None,
            out: None,
            timer: None,
            flags: 0,
            ip_key: 0,
            endpoint: Endpoint::new(),
        };
        let ip = peer.ip();
        if !over && admission::is_trusted(&env.cfg.admission.trusted, ip) {
            conn.endpoint = Endpoint::Handshake(Handshake::trusted());
        } else if !over && !env.admit_ip(&mut conn.ip_key, ip) {
            let out = conn.out.get_or_insert_with(|| core.outs.pop());
            refuse_per_ip(out.as_mut(), ip);
            conn.proto.shutdown(env.now);
        } else if over {
            // Answer 503 and close once it is written; the request is read
            // and discarded meanwhile so that the close is clean.
            warn!(
                "connection limit {} reached: 503 to {peer}",
                env.cfg.max_connections
            );
            env.counts.refused += 1;
            let out = conn.out.get_or_insert_with(|| core.outs.pop());
            handshake::write_error(out.as_mut(), Error::Unavailable);
            conn.proto.shutdown(env.now);
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
        core.env.counts.accepted += 1;
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
                    let pending =
                        c.out.as_ref().is_some_and(|o| !o.is_empty()) || c.endpoint.owes_replies();
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
                    self.core.env.counts.bytes_in += n as u64;
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
        match c.endpoint.input(&c.proto) {
            // Discarding input until EOF or the linger deadline; SSE
            // clients have nothing to say while they listen.
            Input::Discard => return true,
            Input::Defer => {
                // The next request waits until the current one is answered;
                // bounded by the head and body limits.
                c.spill
                    .get_or_insert_with(|| Box::new(core.spills.get()))
                    .extend_from_slice(&core.rbuf[..fresh]);
                let cap = core.env.cfg.max_head + core.env.cfg.gateway.max_body;
                if c.spill_len() > cap {
                    c.flags |= F_READ_PAUSED;
                }
                return c.flags & F_READ_PAUSED == 0;
            }
            Input::Read => {}
        }
        let from_spill = c.spill_len() != 0;
        if from_spill {
            c.spill
                .get_or_insert_with(|| Box::new(core.spills.get()))
                .extend_from_slice(&core.rbuf[..fresh]);
        }
        // Behind a trusted proxy without PROXY v2, the first request's
        // `X-Forwarded-For` names the client: the endpoint reads it
        // against the peer's address.
        let peer = (c.ip_key == 0 && c.endpoint.reads_forwarded_for(&core.env))
            .then(|| c.sock.peer_addr().ok().map(|a| a.ip()))
            .flatten();
        let mut spill = c.spill.take();
        // Moved out for the call (a pointer swap), so `core` stays borrowable.
        let mut rbuf = std::mem::take(&mut core.rbuf);
        let data: &mut [u8] = match spill.as_deref_mut() {
            Some(s) if from_spill => s,
            _ => &mut rbuf[..fresh],
        };
        let (ep, mut link) = c.split(token, &mut core.outs);
        link.peer = peer;
        let (consumed, fx) = ep.handle_bytes(&mut core.env, &mut link, data);
        // Keep only an incomplete head or frame (or requests waiting their
        // turn).
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
        let queued = c.out.as_ref().map_or(0, |o| o.len());
        core.apply(token, c, fx);
        // Not read on while its replies, or its unanswered ops, are over
        // their bounds.
        if queued > core.env.cfg.out_high_water || c.endpoint.backlogged(&core.env) {
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
        let (ep, mut link) = c.split(token, &mut core.outs);
        match ep.handle_timeout(&mut core.env, &mut link) {
            Timeout::Drop(why) => self.drop_conn(token, why),
            Timeout::Fired(fx) => {
                core.apply(token, c, fx);
                if fx.has(Effects::DUE) {
                    self.drain_inbox_polls();
                }
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
        self.core.env.inboxes.wake(self.core.env.id);
    }

    /// One pass over the inbox; false if it was empty.
    fn drain_inbox_once(&mut self) -> bool {
        let core = &mut self.core;
        let mut msgs = std::mem::take(&mut core.inbox);
        core.env.inboxes.drain(core.env.id, &mut msgs);
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
                    exclude,
                } => self.fan_out(&channel, offset, &frame, published, exclude.as_deref()),
                WorkerMsg::Reply { to, body } => self.on_reply(to, body),
                WorkerMsg::Disconnect { user } => self.disconnect_user(&user),
            }
        }
        self.core.inbox = msgs;
        self.drain_inbox_polls();
        true
    }

    /// An operator disconnects a user: WebSocket connections get close 4000
    /// (reconnect), streams end, polls answer.
    fn disconnect_user(&mut self, user: &str) {
        let mut n = 0;
        for token in self.conns.tokens() {
            let core = &mut self.core;
            let Some(c) = self.conns.get_mut(token) else {
                continue;
            };
            let (ep, mut link) = c.split(token, &mut core.outs);
            let fx = ep.handle_disconnect(&mut core.env, &mut link, user);
            n += usize::from(fx.is_some());
            core.apply(token, c, fx.unwrap_or(Effects::NONE));
        }
        info!(
            "worker {}: disconnected {n} connections of user {user:?}",
            self.core.env.id
        );
        self.drain_inbox_polls();
    }

    /// A long-poll's answer is due: the endpoint writes it and goes back to
    /// reading requests (keep-alive), or closes.
    fn answer_poll(&mut self, token: Token) {
        let core = &mut self.core;
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let (ep, mut link) = c.split(token, &mut core.outs);
        let fx = ep.handle_due(&mut core.env, &mut link);
        core.apply(token, c, fx);
        if fx.has(Effects::AGAIN) && c.spill_len() != 0 {
            self.process(token, 0);
        }
    }

    /// Queue one frame to every local subscriber of `channel`: per
    /// subscriber a match on its endpoint's kind and a push of the shared
    /// frame.
    fn fan_out(
        &mut self,
        channel: &Arc<str>,
        offset: u64,
        frame: &Frame,
        published: Instant,
        exclude: Option<&str>,
    ) {
        let core = &mut self.core;
        let env = &mut core.env;
        let Some(subs) = env.topics.subscribers(channel) else {
            return;
        };
        let fan = Fanout {
            channel,
            frame,
            cap: env.cfg.gateway.max_queued_bytes,
        };
        let mut overflow = Vec::new();
        let mut n = 0u64;
        // Compressed once for this worker, when the first WebSocket
        // subscriber with permessage-deflate is met; the delta form
        // computed once, when the first delta subscriber can take it.
        let delta_offset = match frame.kind() {
            FrameKind::Publication => frame.offset(),
            FrameKind::Event | FrameKind::Resync => 0,
        };
        let mut forms = delta::Fanout::new(&mut env.deltas, channel, delta_offset, frame.bytes());
        let compressions = env.deflate.stats.compressed;
        let mut compressed_n = 0u64;
        for key in subs.iter() {
            let token = token_of(key);
            let Some(c) = self.conns.get_mut(token) else {
                continue;
            };
            // `exclude_client`: not the publisher's own connection.
            if exclude.is_some_and(|x| c.endpoint.session().is_some_and(|s| s.client() == x)) {
                continue;
            }
            let hold = c.flags & F_HOLD != 0;
            let sock = &mut c.sock;
            let delivery = c.endpoint.deliver(
                &mut env.deflate,
                &mut c.proto,
                &mut c.out,
                &mut core.outs,
                &fan,
                &mut forms,
                hold,
                // The queue holds what this burst queued so far, not yet
                // written: give the socket a chance before calling the
                // subscriber slow. A reader's kernel buffer takes it; a
                // client that does not read stays over the cap.
                |out| {
                    let _ = out.flush(sock);
                },
            );
            match delivery {
                Delivery::Skipped => continue,
                Delivery::Held => {
                    n += 1;
                    continue;
                }
                Delivery::Full => {
                    overflow.push(token);
                    continue;
                }
                Delivery::Queued => {}
                Delivery::Compressed => compressed_n += 1,
                Delivery::Due => core.polls_ready.push(token),
            }
            n += 1;
            if c.flags & F_DIRTY == 0 {
                c.flags |= F_DIRTY;
                core.dirty.push(token);
            }
        }
        // Every compression in the loop above was the shared frame's.
        let compressions = env.deflate.stats.compressed - compressions;
        env.count_shared_frame(compressions, compressed_n);
        if n > 0 {
            core.delivered.push(published);
            env.counts.deliveries += n;
            env.counts.messages_out += n;
        }
        env.topics.delivered(channel, offset);
        for token in overflow {
            self.slow_consumer(token, channel, offset);
        }
    }

    /// A subscriber's out queue is full: its endpoint applies the
    /// configured policy.
    fn slow_consumer(&mut self, token: Token, channel: &str, offset: u64) {
        let core = &mut self.core;
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let (ep, mut link) = c.split(token, &mut core.outs);
        let fx = ep.handle_slow(&mut core.env, &mut link, channel, offset);
        core.apply(token, c, fx | Effects::DIRTY);
    }

    /// A broker answer, to the connection that asked (matched to its
    /// request by tag by the endpoint).
    fn on_reply(&mut self, to: ReplyTo, body: ReplyBody) {
        let token = token_of(to.conn);
        let core = &mut self.core;
        let Some(c) = self.conns.get_mut(token) else {
            // The connection left before the answer came.
            return core.env.undo(to.conn, body);
        };
        let (ep, mut link) = c.split(token, &mut core.outs);
        let fx = match body {
            ReplyBody::Replay(chunk) => ep.handle_replay(&mut core.env, &mut link, chunk),
            body => ep.handle_reply(&mut core.env, &mut link, to.tag, to.id.as_deref(), body),
        };
        core.apply(token, c, fx);
        if fx == Effects::NONE {
            return;
        }
        // Requests that arrived while this one waited.
        if fx.has(Effects::AGAIN) && c.spill_len() != 0 {
            self.process(token, 0);
        }
        self.pull_replay(token, false);
    }

    /// Ask for the connection's next replay part, if one is due. `wake`:
    /// the answer of a broker that answers at once lands in this worker's
    /// own inbox outside `drain_inbox`, so the loop must not sleep on it.
    fn pull_replay(&mut self, token: Token, wake: bool) {
        let core = &mut self.core;
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let queued = c.out.as_ref().map_or(0, |o| o.len());
        c.endpoint
            .pull_replay(&mut core.env, key_of(token), &c.proto, queued, wake);
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
        let owed = c.endpoint.owes_replies();
        let backlog = c.endpoint.backlogged(&core.env);
        if let Some(out) = c.out.as_mut() {
            let before = out.len();
            let result = out.flush(&mut c.sock);
            let written = before - out.len();
            core.env.counts.bytes_out += written as u64;
            match result {
                Ok(Flush::Done) if c.flags & F_EOF != 0 && !owed => {
                    self.drop_conn(token, "peer closed TCP; replies written");
                    return;
                }
                Ok(Flush::Done) => {
                    if let Some(o) = c.out.take() {
                        core.outs.push(o);
                    }
                    if !backlog {
                        resume = c.flags & F_READ_PAUSED != 0;
                        c.flags &= !F_READ_PAUSED;
                    }
                }
                Ok(Flush::Blocked) => {
                    // The writable event brings it back here.
                    if c.flags & F_READ_PAUSED != 0
                        && out.len() <= core.env.cfg.out_high_water / 2
                        && !backlog
                    {
                        c.flags &= !F_READ_PAUSED;
                        // Next turn, not here: reading now could queue
                        // more, flush, read again... for as long as the
                        // client keeps up (see READ_BUDGET).
                        core.read_again(token, c);
                    }
                    if c.endpoint.replaying() {
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
        if c.endpoint.replaying() {
            self.pull_replay(token, true);
        }
    }

    fn drop_conn(&mut self, token: Token, why: &str) {
        let core = &mut self.core;
        if let Some(mut c) = self.conns.remove(token) {
            debug!("connection {token:?} closed: {why}");
            if let Some(k) = c.timer.take() {
                core.timers.cancel(k);
            }
            if let Some(mut o) = c.out.take() {
                o.clear();
                core.outs.push(o);
            }
            c.endpoint.close(&mut core.env, key_of(token));
            if let Some(s) = c.spill.take() {
                core.spills.put(*s);
            }
            if c.ip_key != 0 {
                core.env.shared.per_ip.release(c.ip_key);
            }
            core.env.counts.closed += 1;
            // Counted (why it closed, and that it did) before the count of
            // connections drops and before its peer sees the close: whoever
            // sees either finds the counters that go with it.
            core.env.publish_counts();
            core.env.shared.connections.fetch_sub(1, Ordering::AcqRel);
            // Closing the descriptor (when `c` drops) removes it from epoll.
        }
    }
}

/// A connection's token as its timer holds it. Never zero (a token
/// carries its slot's generation, and generation 0 is never given out), so
/// that the wheel's `Option` of it takes 8 bytes and one armed timer 24
/// (32 with a bare `Token`): every connection has one with heartbeats on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TimerToken(NonZeroUsize);

impl TimerToken {
    fn of(token: Token) -> TimerToken {
        TimerToken(NonZeroUsize::new(token.0).expect("a connection's token has a generation >= 1"))
    }

    fn token(self) -> Token {
        Token(self.0.get())
    }
}

impl Core {
    /// (Re)arm the connection's one timer at its endpoint's next deadline.
    fn arm(&mut self, token: Token, c: &mut Connection) {
        if let Some(k) = c.timer.take() {
            self.timers.cancel(k);
        }
        if let Some(at) = c.endpoint.deadline(&c.proto, &self.env) {
            c.timer = Some(self.timers.insert(at, TimerToken::of(token)));
        }
    }

    /// Apply what an endpoint asked for. An out queue left empty goes back
    /// to the pool (an idle connection holds none). Whether its
    /// publications go through `Session::divert` is read again, and a
    /// `/ws` connection whose unanswered ops were answered may be read on.
    fn apply(&mut self, token: Token, c: &mut Connection, fx: Effects) {
        if c.out.as_ref().is_some_and(|o| o.is_empty()) {
            if let Some(o) = c.out.take() {
                self.outs.push(o);
            }
        }
        if fx.has(Effects::REARM) {
            self.arm(token, c);
        }
        if fx.has(Effects::DIRTY) {
            self.mark_dirty(token, c);
        }
        if fx.has(Effects::DUE) {
            self.polls_ready.push(token);
        }
        if c.endpoint.holds_publications() {
            c.flags |= F_HOLD;
        } else {
            c.flags &= !F_HOLD;
        }
        let queued = c.out.as_ref().map_or(0, |o| o.len());
        if fx.has(Effects::RESUME)
            && c.flags & (F_READ_PAUSED | F_EOF) == F_READ_PAUSED
            && queued <= self.env.cfg.out_high_water / 2
            && !c.endpoint.backlogged(&self.env)
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
            ("Endpoint", std::mem::size_of::<Endpoint>()),
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
