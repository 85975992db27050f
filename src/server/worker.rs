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
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use super::buffers::BufPool;
use super::conn_table::{self, key_of, token_of, ConnTable, Gen, Generational, RESERVED};
use super::desk::{Desk, Frozen, Order, Verdict};
use super::frozen;
use super::sys::ReserveFd;
use super::timer::{TimerKey, TimerWheel};
use super::tls_conn::{count_failure, Preface, TlsConn, MAX_PENDING};
use crate::base::{Frame, FrameKind, SubKey};
use crate::broker::{Broker, Inboxes, ReplyBody, ReplyTo, WorkerMsg};
use crate::delta;
use crate::endpoint::{
    admission, refuse_per_ip, write_direct, Delivery, DirectEcho, Effects, Endpoint, Env, Fanout,
    Flush, Handshake, Input, Link, OutPool, OutQueue, ServerConfig, Shared, Timeout,
};
use crate::proto::handshake;
use crate::proto::{Conn, Error, State};
use crate::tls::{TlsError, TlsServer};

const LISTENER: Token = Token(RESERVED);
pub(crate) const WAKER: Token = Token(RESERVED + 1);
/// The plaintext listener beside a TLS one (`listen_plain`).
const LISTENER_PLAIN: Token = Token(RESERVED + 2);
/// Bytes read per `read` call (into the per-worker read buffer, which has
/// room for a TLS connection's pending records in front of them).
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
/// How long queues beyond the out pool's idle size stay pooled unused
/// before they are freed ([`OutPool::trim_idle`]): a fan-out at least this
/// often reuses its queues.
const POOL_TRIM_MS: u64 = 10_000;
/// How long a handoff's freeze waits, reading nothing, for what the
/// connections asked (`/ws` ops, HTTP requests at the broker) to be
/// answered; a connection still waiting then stays in the old process
/// (close 4000 or `Connection: close` in its drain).
const QUIESCE_MS: u64 = 2000;

const F_DIRTY: u8 = 1; // in the worker's dirty list
const F_READ_PAUSED: u8 = 2; // out queue over the high-water mark, or requests waiting their turn
const F_WRITE_SHUT: u8 = 4; // our side is shut down; discarding input
const F_EOF: u8 = 8; // the peer sent FIN: write what is owed, then close
const F_HOLD: u8 = 16; // a subscription's reply waits: its publications go through Session::divert
const F_READ_AGAIN: u8 = 32; // listed in `Core::read_again` (once)

/// Per-connection state. An idle connection holds no buffer: `held` and
/// `out` are empty (no heap) unless a frame is incomplete or the kernel is
/// pushing back; a TLS connection holds its session there, and no buffer
/// while idle either.
#[derive(Debug)]
pub(crate) struct Connection {
    sock: TcpStream,
    proto: Conn,
    /// The spill and the TLS session. Boxed: a plain idle connection pays
    /// 8 bytes for both.
    held: Option<Box<Held>>,
    out: Option<Box<OutQueue>>,
    timer: Option<TimerKey>,
    flags: u8,
    /// Its slot's generation in the connection table (in what would be
    /// padding: the slot costs no more than the connection).
    gen: Gen,
    /// The client IP's key in the per-IP count (0: not counted).
    ip_key: u32,
    /// What the connection is for, with its own data.
    endpoint: Endpoint,
}

impl Generational for Connection {
    fn generation(&self) -> Gen {
        self.gen
    }
    fn set_generation(&mut self, g: Gen) {
        self.gen = g;
    }
}

/// What a connection holds beyond its fixed entry, only while it must.
#[derive(Debug, Default)]
struct Held {
    /// Bytes of an incomplete request head or frame (plaintext); pooled,
    /// no heap when empty.
    spill: Vec<u8>,
    /// On the TLS listener: the session, for the connection's life.
    tls: Option<Box<TlsConn>>,
}

impl Connection {
    /// Bytes held in the spill.
    fn spill_len(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.spill.len())
    }

    /// The spill, moved out (empty, without heap, when there is none).
    fn take_spill(&mut self) -> Vec<u8> {
        self.held
            .as_mut()
            .map(|h| std::mem::take(&mut h.spill))
            .unwrap_or_default()
    }

    /// The spill, to append to (taken from the pool if there is none).
    fn spill_mut(&mut self, pool: &mut BufPool) -> &mut Vec<u8> {
        let held = self.held.get_or_insert_with(Box::default);
        if held.spill.capacity() == 0 {
            held.spill = pool.get();
        }
        &mut held.spill
    }

    /// Put the spill back; an empty one goes to the pool, and a plain
    /// connection with nothing held frees its box.
    fn put_spill(&mut self, spill: Vec<u8>, pool: &mut BufPool) {
        if spill.is_empty() {
            pool.put(spill);
            if self.held.as_ref().is_some_and(|h| h.tls.is_none()) {
                self.held = None;
            }
        } else {
            self.held.get_or_insert_with(Box::default).spill = spill;
        }
    }

    fn tls(&self) -> Option<&TlsConn> {
        self.held.as_ref().and_then(|h| h.tls.as_deref())
    }

    fn tls_mut(&mut self) -> Option<&mut TlsConn> {
        self.held.as_mut().and_then(|h| h.tls.as_deref_mut())
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
            direct: None,
        };
        (&mut self.endpoint, link)
    }
}

/// Everything of a worker but its connection table, so that both can be
/// borrowed at once.
struct Core {
    poll: Poll,
    /// None once draining: the listening socket is closed so that new
    /// connections go to other nodes. Speaks TLS when `tls` is set.
    listener: Option<TcpListener>,
    /// With TLS: the plaintext listener (`listen_plain`), if any.
    plain_listener: Option<TcpListener>,
    /// TLS on `listener`: makes a session per connection.
    tls: Option<Arc<TlsServer>>,
    /// TLS records to send, produced while reading (handshake messages,
    /// alerts), before they are queued: reused.
    tls_scratch: Vec<u8>,
    /// TLS connections of this worker whose handshake finished.
    tls_open: u64,
    timers: TimerWheel<TimerSlot>,
    rbuf: Vec<u8>,
    spills: BufPool,
    #[allow(clippy::vec_box)] // connections hold `Option<Box<OutQueue>>`; the pool moves boxes
    outs: OutPool,
    dirty: Vec<Token>,
    /// A fan-out's subscribers in slot order (reused: `Worker::fan_out`).
    fan_keys: Vec<SubKey>,
    inbox: Vec<crate::broker::WorkerMsg>,
    /// The worker's services, lent to the endpoints: its id and clock,
    /// configuration, broker, subscription index, tags, permessage-deflate
    /// engine and counters.
    env: Env,
    /// Publish instants of deliveries queued this iteration (for the
    /// publish-to-write histogram, observed after the flush).
    delivered: Vec<Instant>,
    /// Echoes `/echo` recorded to be written from the read buffer: reused.
    direct: Vec<DirectEcho>,
    start: Instant,
    reserve: ReserveFd,
    /// accept(2) ran out of descriptors: try again at this time.
    accept_retry_at: Option<u64>,
    next_sweep: u64,
    /// When the out pool is next trimmed.
    next_pool_trim: u64,
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
    /// Every worker's desk (this one's at `env.id`): handoff orders.
    desks: Arc<Vec<Desk>>,
    /// A freeze waiting for the connections' unanswered requests (until
    /// the deadline): meanwhile nothing is read.
    quiesce: Option<Quiesce>,
}

/// A handoff's freeze order, waiting for the connections to be at rest.
struct Quiesce {
    frozen: std::sync::mpsc::Sender<Vec<Frozen>>,
    verdict: std::sync::mpsc::Receiver<Verdict>,
    until: u64,
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
    // Each is one of the worker's own parts or shared services; a struct
    // gathering them would be built for this one call.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: usize,
        poll: Poll,
        // The main listener (TLS when configured) and the plaintext one
        // beside it, if any.
        (listener, plain): (std::net::TcpListener, Option<std::net::TcpListener>),
        cfg: Arc<ServerConfig>,
        shared: Arc<Shared>,
        broker: Arc<dyn Broker>,
        inboxes: Arc<Inboxes>,
        desks: Arc<Vec<Desk>>,
    ) -> io::Result<Worker> {
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let plain_listener = match plain {
            Some(l) => {
                let mut l = TcpListener::from_std(l);
                poll.registry()
                    .register(&mut l, LISTENER_PLAIN, Interest::READABLE)?;
                Some(l)
            }
            None => None,
        };
        let tls = cfg.tls.clone();
        // With TLS a read lands behind the connection's pending records.
        let rbuf_len = READ_BUF + if tls.is_some() { MAX_PENDING } else { 0 };
        Ok(Worker {
            conns: ConnTable::new(),
            core: Core {
                poll,
                listener: Some(listener),
                plain_listener,
                tls,
                tls_scratch: Vec::new(),
                tls_open: 0,
                timers: TimerWheel::new(TICK_MS, SLOTS, 0),
                rbuf: vec![0; rbuf_len],
                // At most 4 MiB of idle spill buffers per worker.
                spills: BufPool::new(4096, 1 << 20, 4 << 20),
                outs: OutPool::default(),
                dirty: Vec::new(),
                fan_keys: Vec::new(),
                inbox: Vec::new(),
                env: Env::new(id, cfg, shared, broker, inboxes),
                delivered: Vec::new(),
                direct: Vec::new(),
                start: Instant::now(),
                reserve: ReserveFd::new(),
                accept_retry_at: None,
                next_sweep: SWEEP_MS,
                next_pool_trim: POOL_TRIM_MS,
                polls_ready: Vec::new(),
                read_again: Vec::new(),
                drain_queue: Vec::new(),
                drain_later: Vec::new(),
                drain: None,
                desks,
                quiesce: None,
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
            let quiesce = c.quiesce.as_ref().map(|q| q.until.min(now + 10));
            let pool_trim = c.outs.over_idle_size().then_some(c.next_pool_trim);
            let deadline = [
                c.timers.next_expiry(),
                c.accept_retry_at,
                sweep,
                drain_tick,
                quiesce,
                pool_trim,
            ]
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
                    LISTENER => self.accept_all(false),
                    LISTENER_PLAIN => self.accept_all(true),
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
                self.accept_all(false);
                self.accept_all(true);
            }
            self.core.timers.advance(now, &mut fired);
            for t in fired.drain(..) {
                if let Some(token) = self.conns.token_at(t.slot()) {
                    self.on_timer(token);
                }
            }
            if now >= self.core.next_pool_trim {
                self.core.next_pool_trim = now + POOL_TRIM_MS;
                let freed = self.core.outs.trim_idle();
                if freed > 0 {
                    debug!("worker {}: {freed} idle out queues freed", self.core.env.id);
                }
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
            self.take_orders();
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
        // What waits in the accept queues is accepted before the
        // listeners close, unless they went to a new process (which
        // accepts it).
        if self.core.drain.is_none() && !self.core.env.shared.handed_over.load(Ordering::Acquire) {
            self.accept_all(false);
            self.accept_all(true);
        }
        let core = &mut self.core;
        let now = core.env.now;
        let cfg = core.env.cfg.clone();
        let d = match core.drain {
            Some(d) => d,
            None => {
                for mut l in [core.listener.take(), core.plain_listener.take()]
                    .into_iter()
                    .flatten()
                {
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
        g.tls_connections.store(c.tls_open, Ordering::Relaxed);
        g.subscriptions
            .store(c.env.topics.subscriptions() as u64, Ordering::Relaxed);
        g.iterations.fetch_add(1, Ordering::Relaxed);
        let busy = done.duration_since(busy_from).as_micros() as u64;
        g.loop_lag_max_us.fetch_max(busy, Ordering::Relaxed);
    }

    /// Accept what waits on the main listener (TLS when configured), or
    /// with `plain_side` on the plaintext one beside it.
    fn accept_all(&mut self, plain_side: bool) {
        let tls = !plain_side && self.core.tls.is_some();
        loop {
            let listener = if plain_side {
                self.core.plain_listener.as_ref()
            } else {
                self.core.listener.as_ref()
            };
            let Some(listener) = listener else {
                return;
            };
            match listener.accept() {
                Ok((_, peer)) if self.conns.is_full() => {
                    // Dropped: closed at once (a worker holds fewer than
                    // 2^24 connections: `ConnTable::is_full`).
                    warn!("connection table full: {peer} closed");
                    self.core.env.counts.refused += 1;
                }
                Ok((sock, peer)) if tls => self.on_accept_tls(sock, peer),
                Ok((sock, peer)) => self.on_accept(sock, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Out of descriptors: free the spare one, accept the
                    // waiting connection and close it at once, so the listener
                    // does not stay readable and spin the loop; then back off.
                    let c = &mut self.core;
                    if c.reserve.release() {
                        let l = if plain_side {
                            c.plain_listener.as_ref()
                        } else {
                            c.listener.as_ref()
                        };
                        if let Some(Ok((s, peer))) = l.map(|l| l.accept()) {
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
            held: None,
            out: None,
            timer: None,
            flags: 0,
            gen: Gen::default(),
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
        self.register(conn, over);
    }

    /// Enter an accepted connection in the table and the poll, and arm its
    /// handshake deadline; `dirty`: it has an answer queued already.
    fn register(&mut self, conn: Connection, dirty: bool) {
        let core = &mut self.core;
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
        if dirty {
            core.mark_dirty(token, c);
        }
    }

    /// A new connection on the TLS listener. Admission comes first, before
    /// any TLS work: over `max_connections`, from a client IP at its
    /// limit, or over the handshake rate, it is closed at once (no HTTP
    /// 503 or 429 can be read before a TLS handshake, and spending one on
    /// a connection to refuse is what a flood wants). Then a session; the
    /// handshake deadline, armed here, covers the TLS handshake and the
    /// request head.
    fn on_accept_tls(&mut self, sock: TcpStream, peer: std::net::SocketAddr) {
        let core = &mut self.core;
        let env = &mut core.env;
        let over = env.shared.connections.fetch_add(1, Ordering::AcqRel) >= env.cfg.max_connections;
        let ip = peer.ip();
        let trusted = admission::is_trusted(&env.cfg.admission.trusted, ip);
        let mut ip_key = 0;
        let refused = if over {
            warn!(
                "connection limit {} reached: TLS connection from {peer} closed",
                env.cfg.max_connections
            );
            env.counts.refused += 1;
            true
        } else if !trusted && !env.admit_ip(&mut ip_key, ip) {
            warn!("connection limit per IP reached: TLS connection from {ip} closed");
            true
        } else if !env.take_handshake() {
            env.counts.refused_handshake_rate += 1;
            warn!(
                "handshake rate {}/s exceeded: TLS connection from {peer} closed",
                env.cfg.admission.handshake_rate
            );
            true
        } else {
            false
        };
        let session = match core.tls.as_ref().map(|t| t.session()) {
            Some(Ok(s)) if !refused => Some(s),
            Some(Err(e)) => {
                warn!("tls: no session for {peer}: {e}");
                None
            }
            _ => None,
        };
        let Some(session) = session else {
            if ip_key != 0 {
                env.shared.per_ip.release(ip_key);
            }
            env.shared.connections.fetch_sub(1, Ordering::AcqRel);
            drop(sock); // closed before a byte of TLS
            return;
        };
        let _ = sock.set_nodelay(true);
        // Behind a trusted proxy with PROXY protocol, the shell reads the
        // header before the ClientHello (`preface`) and counts the client
        // it names; the request phase then has nothing left to learn.
        let (hs, preface) = match (trusted, env.cfg.admission.proxy_protocol) {
            (true, true) => (Handshake::default(), Preface::ProxyHeader),
            (true, false) => (Handshake::trusted(), Preface::Done),
            (false, _) => (Handshake::default(), Preface::RefuseProxyHeader),
        };
        let conn = Connection {
            sock,
            proto: Conn::server(env.now),
            held: Some(Box::new(Held {
                spill: Vec::new(),
                tls: Some(Box::new(TlsConn::new(session, preface))),
            })),
            out: None,
            timer: None,
            flags: 0,
            gen: Gen::default(),
            ip_key,
            endpoint: Endpoint::Handshake(hs.rate_paid()),
        };
        self.register(conn, false);
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
            let core = &mut self.core;
            let Some(c) = self.conns.get_mut(token) else {
                return;
            };
            // Quiescing for a handoff: read after the freeze (see
            // `take_orders`).
            if c.flags & (F_READ_PAUSED | F_EOF) != 0 || core.quiesce.is_some() {
                return;
            }
            if budget == 0 {
                core.read_again(token, c);
                return;
            }
            // With TLS, the records an earlier read left incomplete go in
            // front of the new bytes (`MAX_PENDING` at most: room is kept).
            let pre = match c.tls() {
                Some(t) => {
                    core.rbuf[..t.pending.len()].copy_from_slice(&t.pending);
                    t.pending.len()
                }
                None => 0,
            };
            match c.sock.read(&mut core.rbuf[pre..pre + READ_BUF]) {
                Ok(0) => {
                    self.on_eof(token);
                    return;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    core.env.counts.bytes_in += n as u64;
                    let go_on = if c.tls().is_some() {
                        self.feed_tls(token, pre + n)
                    } else {
                        self.process(token, n)
                    };
                    if !go_on {
                        return;
                    }
                    if short_read_drains && n < READ_BUF {
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

    /// The peer sent FIN (or, with TLS, its close_notify). Replies to what
    /// it sent before are still owed (a half-closed client waits for
    /// them): stop reading, write what is queued, then close.
    fn on_eof(&mut self, token: Token) {
        let core = &mut self.core;
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let pending = c.out.as_ref().is_some_and(|o| !o.is_empty()) || c.endpoint.owes_replies();
        if pending {
            c.flags |= F_EOF | F_READ_PAUSED;
            core.mark_dirty(token, c);
            return;
        }
        let why = match c.tls() {
            Some(t) if t.session.is_handshaking() => {
                core.env.counts.tls_failed_eof += 1;
                "peer closed TCP during the TLS handshake"
            }
            _ if c.proto.state() == State::Open => "peer closed TCP without a close frame",
            _ => "closed",
        };
        self.drop_conn(token, why);
    }

    /// `rbuf[..len]` holds a TLS connection's pending records and the bytes
    /// just read: decrypt the complete records in place, keep the rest as
    /// pending, queue what the session must send (handshake messages,
    /// alerts), and hand the plaintext to the endpoint as plain bytes are.
    /// Returns false if the connection is gone or reading should stop.
    fn feed_tls(&mut self, token: Token, len: usize) -> bool {
        let core = &mut self.core;
        let Some(c) = self.conns.get_mut(token) else {
            return false;
        };
        let Some(t) = c.held.as_mut().and_then(|h| h.tls.as_deref_mut()) else {
            return false;
        };
        let len = match t.preface {
            Preface::Done => len,
            _ => match self.read_preface(token, len) {
                Ok(0) => return true,
                Ok(len) => return self.feed_tls(token, len),
                Err(go_on) => return go_on,
            },
        };
        let mut records = std::mem::take(&mut core.tls_scratch);
        let fed = t.session.feed(&mut core.rbuf[..len], &mut records);
        // Kept as it is: rustls may keep its place in those bytes.
        let left = &core.rbuf[fed.consumed.min(len)..len];
        t.pending.clear();
        if left.is_empty() {
            core.spills.put(std::mem::take(&mut t.pending));
        } else {
            if t.pending.capacity() == 0 {
                t.pending = core.spills.get();
            }
            t.pending.extend_from_slice(left);
        }
        let overgrown = t.pending.len() > MAX_PENDING;
        if fed.established {
            if t.session.resumed() {
                core.env.counts.tls_handshakes_resumed += 1;
            } else {
                core.env.counts.tls_handshakes_full += 1;
            }
            core.tls_open += 1;
            t.open_counted = true;
        }
        if !records.is_empty() {
            let out = c.out.get_or_insert_with(|| core.outs.pop());
            out.push_records(&records);
            core.mark_dirty(token, c);
        }
        records.clear();
        core.tls_scratch = records;
        // The plaintext first, even with an error: data before a fatal
        // alert was sent by the peer and is delivered.
        let mut go_on = fed.plaintext == 0 || self.process(token, fed.plaintext);
        let error = match fed.error {
            Some(e) => Some(e),
            None if overgrown => {
                warn!("tls: connection {token:?} left more than {MAX_PENDING} bytes of records pending: closed");
                Some(TlsError::Protocol {
                    error: rustls::Error::General("too many records pending".into()),
                    alert_sent: false,
                })
            }
            None => None,
        };
        if let Some(e) = error {
            self.tls_failed(token, &e);
            return false;
        }
        if fed.peer_closed {
            self.on_eof(token);
            go_on = false;
        }
        go_on
    }

    /// `rbuf[..len]` holds the first bytes of a TLS connection (behind
    /// what an earlier read kept): read what comes before the ClientHello
    /// (`TlsConn::preface`). `Ok(n)`: the preface is read, and the
    /// `rbuf[..n]` left are records; `Err(go_on)`: it is incomplete (kept
    /// as pending; go on reading), or the connection was refused (closed
    /// before a byte of TLS: the peer is a proxy, or not speaking TLS).
    fn read_preface(&mut self, token: Token, len: usize) -> Result<usize, bool> {
        let core = &mut self.core;
        let Some(c) = self.conns.get_mut(token) else {
            return Err(false);
        };
        let Some(t) = c.held.as_mut().and_then(|h| h.tls.as_deref_mut()) else {
            return Err(false);
        };
        let data = &core.rbuf[..len];
        let peer = || c.sock.peer_addr().map_or("?".into(), |a| a.to_string());
        let used = match t.preface {
            Preface::Done => return Ok(len),
            Preface::RefuseProxyHeader => match admission::starts_like_proxy(data) {
                Some(false) => 0,
                Some(true) => {
                    core.env.counts.tls_failed_proxy_untrusted += 1;
                    warn!(
                        "tls: PROXY header from {}, not a trusted proxy: closed",
                        peer()
                    );
                    self.drop_conn(token, "PROXY header from an untrusted peer");
                    return Err(false);
                }
                None => {
                    keep_pending(&mut core.spills, t, data);
                    return Err(true);
                }
            },
            Preface::ProxyHeader => match admission::parse_proxy(data) {
                Ok(None) => {
                    keep_pending(&mut core.spills, t, data);
                    return Err(true);
                }
                Ok(Some((source, used))) => {
                    if let Some(src) = source {
                        if !core.env.admit_ip(&mut c.ip_key, src.ip()) {
                            warn!(
                                "connection limit per IP reached: TLS connection for {src} \
                                 (PROXY header from {}) closed",
                                peer()
                            );
                            self.drop_conn(token, "per-IP limit (PROXY header)");
                            return Err(false);
                        }
                        debug!("tls: connection {token:?} from {src} by PROXY header");
                    }
                    used
                }
                Err(()) => {
                    core.env.counts.tls_failed_proxy_header += 1;
                    warn!(
                        "tls: missing or bad PROXY header from trusted proxy {}: closed",
                        peer()
                    );
                    self.drop_conn(token, "missing or bad PROXY header");
                    return Err(false);
                }
            },
        };
        t.preface = Preface::Done;
        t.pending.clear();
        core.rbuf.copy_within(used..len, 0);
        Ok(len - used)
    }

    /// The TLS session failed: what the peer must be told (an alert, the
    /// 400 for plaintext HTTP) is queued; write it, then close. No close
    /// frame: the TLS layer that would carry it is gone.
    fn tls_failed(&mut self, token: Token, e: &TlsError) {
        let core = &mut self.core;
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        count_failure(&mut core.env.counts, e);
        debug!("connection {token:?}: {e}");
        if let Some(t) = c.tls_mut() {
            t.failed = true;
        }
        if let Some(out) = c.out.as_mut() {
            out.discard_plaintext();
        }
        if c.out.as_ref().is_some_and(|o| !o.is_empty()) {
            c.flags |= F_EOF | F_READ_PAUSED;
            core.mark_dirty(token, c);
        } else {
            self.drop_conn(token, "TLS failed");
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
                c.spill_mut(&mut core.spills)
                    .extend_from_slice(&core.rbuf[..fresh]);
                let cap = core.env.cfg.max_head + core.env.cfg.gateway.max_body;
                if c.spill_len() > cap {
                    c.flags |= F_READ_PAUSED;
                }
                return c.flags & F_READ_PAUSED == 0;
            }
            Input::Read => {}
        }
        // Moved out for the call, so `core` stays borrowable.
        let mut spill = c.take_spill();
        let from_spill = !spill.is_empty();
        if from_spill {
            spill.extend_from_slice(&core.rbuf[..fresh]);
        }
        // Behind a trusted proxy without PROXY v2, the first request's
        // `X-Forwarded-For` names the client: the endpoint reads it
        // against the peer's address.
        let peer = (c.ip_key == 0 && c.endpoint.reads_forwarded_for(&core.env))
            .then(|| c.sock.peer_addr().ok().map(|a| a.ip()))
            .flatten();
        // Moved out for the call (a pointer swap), so `core` stays borrowable.
        let mut rbuf = std::mem::take(&mut core.rbuf);
        let data: &mut [u8] = if from_spill {
            &mut spill
        } else {
            &mut rbuf[..fresh]
        };
        // Plain connections: `/echo` writes its echoes from these bytes.
        let plain = c.tls().is_none();
        let mut direct = std::mem::take(&mut core.direct);
        let (ep, mut link) = c.split(token, &mut core.outs);
        link.peer = peer;
        link.direct = plain.then_some(&mut direct);
        let (consumed, fx) = ep.handle_bytes(&mut core.env, &mut link, data);
        if !direct.is_empty() {
            // Counted before the client can see its echo (as before a flush).
            core.env.publish_counts();
            if let Some(out) = c.out.as_mut() {
                let n = write_direct(&mut c.sock, out, &direct, data);
                core.env.counts.bytes_out += n as u64;
            }
            direct.clear();
        }
        core.direct = direct;
        // Keep only an incomplete head or frame (or requests waiting their
        // turn).
        let rest = data.len() - consumed;
        if from_spill {
            spill.drain(..consumed);
        } else if rest > 0 {
            spill = core.spills.get();
            spill.extend_from_slice(&rbuf[fresh - rest..fresh]);
        }
        c.put_spill(spill, &mut core.spills);
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
        // The occupant's own timer is the one that fired: armed, and no
        // longer pending in the wheel. (A connection cancels its timer when
        // it goes, so another's is not expected here; one that fired in the
        // same round as its connection went, the slot taken again since,
        // is ignored.)
        match c.timer {
            Some(k) if !core.timers.is_pending(k) => c.timer = None,
            _ => {
                debug!("a timer for the slot of {token:?}, not its occupant's: ignored");
                return;
            }
        }
        let (ep, mut link) = c.split(token, &mut core.outs);
        match ep.handle_timeout(&mut core.env, &mut link) {
            Timeout::Drop(why) => {
                if c.tls().is_some_and(|t| t.session.is_handshaking()) {
                    core.env.counts.tls_failed_timeout += 1;
                    self.drop_conn(token, "TLS handshake deadline");
                } else {
                    self.drop_conn(token, why);
                }
            }
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
        // In slot order, not the hash set's (random) order: each
        // subscriber's slot, session and out queue, and its kernel socket
        // when the flush writes it, are met in about the order they were
        // allocated (issue 13 part 4). The dirty list then comes out
        // sorted, so `flush_dirty`'s sort finds one ascending run.
        let mut keys = std::mem::take(&mut core.fan_keys);
        conn_table::in_slot_order(subs.iter(), &mut keys);
        for &key in &keys {
            let Some((token, c)) = self.conns.get_mut_sub(key) else {
                continue;
            };
            // `exclude_client`: not the publisher's own connection.
            if exclude.is_some_and(|x| c.endpoint.session().is_some_and(|s| s.client() == x)) {
                continue;
            }
            let hold = c.flags & F_HOLD != 0;
            let sock = &mut c.sock;
            let mut tls = c.held.as_mut().and_then(|h| h.tls.as_deref_mut());
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
                    // With TLS only records go out: encrypt first (a
                    // failure is handled at the connection's flush).
                    if tls.as_mut().map_or(Ok(()), |t| t.seal(out, false)).is_ok() {
                        let _ = out.flush(sock);
                    }
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
        keys.clear();
        core.fan_keys = keys;
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
    ///
    /// In slot order: a fan-out marks its subscribers dirty in the order
    /// of the channel's hash set, that is at random, and writing in that
    /// order met every connection's slot, queue and kernel socket (file,
    /// socket, sock: allocated as they were accepted) out of cache; in
    /// slot order, roughly the order of accept, they come in sequence
    /// (issue 13: `fdget_pos`, `inet_send_prepare` and the worker's own
    /// flush took ~2.5 % more of the fan-out's CPU than the floor's, which
    /// writes its subscribers in accept order). A sort of 15,000 tokens
    /// costs ~30 ns a delivery.
    fn flush_dirty(&mut self) {
        let mut dirty = Vec::new();
        while !self.core.dirty.is_empty() {
            std::mem::swap(&mut dirty, &mut self.core.dirty);
            if dirty.len() > 1 {
                dirty.sort_unstable_by_key(|t| conn_table::slot_of(*t));
            }
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
        // With TLS: encrypt what the endpoint queued; once the WebSocket
        // close (or the answer before a close) is queued, or the peer left
        // and nothing more is owed, our close_notify goes after it.
        let closing = c.proto.state() == State::Closed || (c.flags & F_EOF != 0 && !owed);
        let mut tls_done = false;
        if let Some(t) = c.held.as_mut().and_then(|h| h.tls.as_deref_mut()) {
            let notify = closing && !t.notified && !t.failed && t.session.is_open();
            if notify || c.out.is_some() {
                let out = c.out.get_or_insert_with(|| core.outs.pop());
                if let Err(e) = t.seal(out, closing) {
                    count_failure(&mut core.env.counts, &e);
                    debug!("connection {token:?}: {e}");
                    c.flags |= F_EOF | F_READ_PAUSED;
                }
            }
            tls_done = t.failed;
        }
        if let Some(out) = c.out.as_mut() {
            let before = out.len();
            let result = out.flush(&mut c.sock);
            let written = before - out.len();
            core.env.counts.bytes_out += written as u64;
            match result {
                Ok(Flush::Done) if c.flags & F_EOF != 0 && (!owed || tls_done) => {
                    self.drop_conn(token, "peer closed TCP; replies written");
                    return;
                }
                Ok(Flush::Done) if tls_done => {
                    self.drop_conn(token, "TLS failed; its alert written");
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

    /// Handoff orders posted to this worker's desk, at a turn boundary
    /// (nothing is half done: every read was processed, every queue
    /// flushed as far as the sockets took it).
    fn take_orders(&mut self) {
        for order in self.core.desks[self.core.env.id].take() {
            match order {
                Order::Freeze { frozen, verdict } => {
                    self.core.quiesce = Some(Quiesce {
                        frozen,
                        verdict,
                        until: self.core.env.now + QUIESCE_MS,
                    });
                    let polls: Vec<_> = self
                        .conns
                        .tokens()
                        .into_iter()
                        .filter(|&t| self.conns.get(t).is_some_and(|c| c.endpoint.is_held_poll()))
                        .collect();
                    for t in polls {
                        self.answer_poll(t);
                    }
                    self.flush_dirty();
                }
                Order::Thaw { conns, done } => {
                    let n = self.thaw_all(conns);
                    let _ = done.send(n);
                }
            }
        }
        let Some(q) = &self.core.quiesce else {
            return;
        };
        // At rest: nothing unanswered (answers come through the inbox,
        // which is drained meanwhile; no new request is read).
        let waiting = self
            .conns
            .tokens()
            .into_iter()
            .any(|t| self.conns.get(t).is_some_and(|c| !c.endpoint.at_rest()));
        if waiting && self.core.env.now < q.until {
            return;
        }
        let Some(q) = self.core.quiesce.take() else {
            return;
        };
        self.freeze_all(&q.frozen, &q.verdict);
        // Reads skipped while quiescing (their readiness was reported
        // then, and will not be again): every connection left is read.
        for t in self.conns.tokens() {
            if let Some(c) = self.conns.get_mut(t) {
                self.core.read_again(t, c);
            }
        }
    }

    /// Old process: freeze every connection that can move, hand the
    /// records over, and wait, serving nothing, for the verdict: commit
    /// forgets them (the new process has them), anything else resumes
    /// them untouched. What cannot move stays, and is drained after a
    /// commit (close 4000, as on SIGTERM).
    fn freeze_all(
        &mut self,
        reply: &std::sync::mpsc::Sender<Vec<Frozen>>,
        verdict: &std::sync::mpsc::Receiver<Verdict>,
    ) {
        let mut records = Vec::new();
        let mut tokens = Vec::new();
        let mut stays = 0usize;
        for token in self.conns.tokens() {
            match self.freeze_one(token) {
                Ok(f) => {
                    records.push(f);
                    tokens.push(token);
                }
                Err(why) => {
                    stays += 1;
                    debug!("handoff: connection {token:?} stays: {why}");
                }
            }
        }
        info!(
            "worker {}: handoff: {} connections frozen, {stays} stay",
            self.core.env.id,
            tokens.len()
        );
        if reply.send(records).is_err() {
            return;
        }
        match verdict.recv() {
            Ok(Verdict::Commit) => {
                for &t in &tokens {
                    self.forget(t);
                }
                info!(
                    "worker {}: handoff: {} connections moved",
                    self.core.env.id,
                    tokens.len()
                );
            }
            Ok(Verdict::Resume) | Err(_) => {
                info!(
                    "worker {}: handoff failed: {} connections resume here",
                    self.core.env.id,
                    tokens.len()
                );
            }
        }
    }

    /// One connection's record, or why it stays.
    fn freeze_one(&mut self, token: Token) -> Result<Frozen, crate::endpoint::Stays> {
        let core = &self.core;
        let c = self.conns.get(token).ok_or("gone")?;
        if c.tls().is_some() {
            // The rustls session cannot be exported as a session the next
            // process could go on with (see docs/handoff-status.md).
            return Err("TLS");
        }
        if c.flags & (F_EOF | F_WRITE_SHUT) != 0 {
            return Err("closing");
        }
        let out = c.out.as_ref().map(|o| o.unwritten()).unwrap_or_default();
        let spill = c.held.as_ref().map_or(&[][..], |h| &h.spill[..]);
        let state = frozen::write(&core.env, c.ip_key, spill, &out, &c.proto, &c.endpoint)?;
        if state.len() > super::handoff::MAX_STATE {
            return Err("its state is larger than a handoff record");
        }
        Ok(Frozen {
            state,
            fd: std::os::fd::AsRawFd::as_raw_fd(&c.sock),
        })
    }

    /// A connection the new process took: out of the table and the poll,
    /// its descriptor closed (the new process holds its own), and nothing
    /// written or shut: its peer sees nothing of the move.
    fn forget(&mut self, token: Token) {
        let core = &mut self.core;
        let Some(mut c) = self.conns.remove(token) else {
            return;
        };
        // Before the close: with the socket open in the new process, the
        // old epoll would otherwise keep reporting it.
        let _ = core.poll.registry().deregister(&mut c.sock);
        if let Some(k) = c.timer.take() {
            core.timers.cancel(k);
        }
        if let Some(mut o) = c.out.take() {
            o.clear();
            core.outs.push(o);
        }
        c.endpoint.forget(&mut core.env, key_of(token));
        if let Some(h) = c.held.take() {
            core.spills.put(h.spill);
        }
        if c.ip_key != 0 {
            core.env.shared.per_ip.release(c.ip_key);
        }
        core.env.shared.connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// New process: take frozen connections in (their records were
    /// checked by the handoff thread; one that fails here is closed and
    /// logged). Returns how many were registered.
    fn thaw_all(&mut self, conns: Vec<(Vec<u8>, std::os::fd::OwnedFd)>) -> usize {
        let mut n = 0;
        for (state, fd) in conns {
            match self.thaw_one(&state, fd) {
                Ok(()) => n += 1,
                Err(e) => warn!("handoff: a connection could not be taken in: {e}"),
            }
        }
        info!("worker {}: handoff: took {n} connections", self.core.env.id);
        n
    }

    fn thaw_one(&mut self, state: &[u8], fd: std::os::fd::OwnedFd) -> io::Result<()> {
        if self.conns.is_full() {
            return Err(io::Error::other("connection table full"));
        }
        let core = &mut self.core;
        let env = &mut core.env;
        let parts = frozen::read(state, env.now, &env.cfg.limits)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let std_sock = std::net::TcpStream::from(fd);
        std_sock.set_nonblocking(true)?;
        let sock = TcpStream::from_std(std_sock);
        if parts.ip_key != 0 {
            // Admitted by the old process: counted whatever the limit.
            env.shared.per_ip.acquire(parts.ip_key, u32::MAX);
        }
        env.shared.connections.fetch_add(1, Ordering::AcqRel);
        let held = (!parts.spill.is_empty()).then(|| {
            let mut spill = core.spills.get();
            spill.extend_from_slice(parts.spill);
            Box::new(Held { spill, tls: None })
        });
        let out = (!parts.out.is_empty()).then(|| {
            let mut o = core.outs.pop();
            crate::proto::Output::put(o.as_mut(), parts.out);
            o
        });
        let conn = Connection {
            sock,
            proto: parts.proto,
            held,
            out,
            timer: None,
            flags: 0,
            gen: Gen::default(),
            ip_key: parts.ip_key,
            endpoint: Endpoint::new(),
        };
        let token = self.conns.insert(conn);
        let c = self.conns.get_mut(token).expect("just inserted");
        // Made once its key is known: a session asks the broker again.
        c.endpoint = Endpoint::thaw(parts.endpoint, &mut core.env, key_of(token));
        if let Err(e) = core.poll.registry().register(
            &mut c.sock,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.drop_conn(token, "register failed");
            return Err(e);
        }
        core.arm(token, c);
        core.apply(token, c, Effects::DIRTY);
        // Input that came while it was frozen: edge-triggered readiness
        // may have been reported to the old process's poll only.
        core.read_again(token, c);
        if c.spill_len() != 0 {
            // Ops that waited their turn in the old process.
            self.process(token, 0);
        }
        Ok(())
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
            if let Some(h) = c.held.take() {
                core.spills.put(h.spill);
                if let Some(t) = h.tls {
                    if t.open_counted {
                        core.tls_open -= 1;
                    }
                    core.spills.put(t.pending);
                }
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

/// A connection's slot as its timer holds it, plus one: never zero, so
/// that the wheel's `Option` of it takes 4 bytes and one armed timer 16
/// (24 with the 8-byte token; every connection has one with heartbeats on).
/// The slot names the connection without the token's generation: a
/// connection's timer is cancelled whenever it leaves the table
/// (`drop_conn`, `forget`), so a timer that fires belongs to its slot's
/// present occupant, and `on_timer` still checks that the occupant's timer
/// is the one that fired (armed, and no longer pending).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TimerSlot(NonZeroU32);

/// Keep `data`, a TLS connection's incomplete preface, as its pending
/// bytes (read again in front of the next).
fn keep_pending(spills: &mut BufPool, t: &mut TlsConn, data: &[u8]) {
    t.pending.clear();
    if t.pending.capacity() == 0 {
        t.pending = spills.get();
    }
    t.pending.extend_from_slice(data);
}

impl TimerSlot {
    fn of(token: Token) -> TimerSlot {
        // A token's low 32 bits; the table's slots stay below u32::MAX
        // (`ConnTable::insert`), so this is the slot plus one.
        let slot = conn_table::slot_of(token) as u32;
        TimerSlot(NonZeroU32::MIN.saturating_add(slot))
    }

    fn slot(self) -> usize {
        self.0.get() as usize - 1
    }
}

impl Core {
    /// (Re)arm the connection's one timer at its endpoint's next deadline.
    fn arm(&mut self, token: Token, c: &mut Connection) {
        if let Some(k) = c.timer.take() {
            self.timers.cancel(k);
        }
        if let Some(at) = c.endpoint.deadline(&c.proto, &self.env) {
            c.timer = Some(self.timers.insert(at, TimerSlot::of(token)));
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
        // Its armed timer (heartbeats on): 16 B in the wheel's arena (24
        // with the 8-byte token before issue 13 part 5).
        assert_eq!(TimerWheel::<TimerSlot>::ENTRY_BYTES, 16, "{sizes:?}");
        // The table's slot is the connection: its generation is inside,
        // and slab's entry (this enum, as slab 0.4 declares it) finds a
        // niche for its tag (the descriptor is never -1).
        #[allow(dead_code)]
        enum Entry<T> {
            Vacant(usize),
            Occupied(T),
        }
        assert_eq!(
            std::mem::size_of::<Entry<Connection>>(),
            std::mem::size_of::<Connection>(),
            "{sizes:?}"
        );
    }
}
