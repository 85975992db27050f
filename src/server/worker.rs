//! One event loop: a mio `Poll`, an SO_REUSEPORT listener, the connections
//! it accepted, their timers and their buffers. Nothing here is shared with
//! other workers; they reach it only through its `Waker`.
//!
//! Per connection, an event is handled like mio's `tcp_server` example:
//! read to `WouldBlock` into the worker's one read buffer, decode in place,
//! spill only an incomplete frame into a pooled buffer, queue the replies,
//! and flush every connection that has something queued with one `writev`
//! at the end of the loop iteration.

use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::buffers::BufPool;
use super::conn_table::{ConnTable, RESERVED};
use super::outbuf::{Flush, OutQueue};
use super::sys::ReserveFd;
use super::timer::{TimerKey, TimerWheel};
use super::{ServerConfig, Shared};
use crate::proto::frame::{put_frame, OpCode};
use crate::proto::handshake::{self, Head};
use crate::proto::{Conn, Error, Event, State, TimerAction};

const LISTENER: Token = Token(RESERVED);
pub(crate) const WAKER: Token = Token(RESERVED + 1);
/// The per-worker read buffer.
const READ_BUF: usize = 64 * 1024;
/// Timer wheel: 16 ms ticks, 4096 slots (a rotation of ~65 s covers every
/// default deadline, so a tick visits only what expires).
const TICK_MS: u64 = 16;
const SLOTS: usize = 4096;

/// What a connection is for, decided by its request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// Not yet known (handshake in progress).
    Pending,
    /// `/echo`: every message comes back.
    Echo,
}

const F_DIRTY: u8 = 1; // in the worker's dirty list
const F_READ_PAUSED: u8 = 2; // out queue over the high-water mark
const F_WRITE_SHUT: u8 = 4; // our side is shut down; discarding input

/// Per-connection state. An idle connection holds no buffer: `spill` and
/// `out` are empty (no heap) unless a frame is incomplete or the kernel is
/// pushing back.
#[derive(Debug)]
pub(crate) struct Connection {
    sock: TcpStream,
    proto: Conn,
    /// Bytes of an incomplete request head or frame.
    spill: Vec<u8>,
    out: Option<Box<OutQueue>>,
    timer: Option<TimerKey>,
    route: Route,
    flags: u8,
}

pub(crate) struct Worker {
    id: usize,
    poll: Poll,
    listener: TcpListener,
    conns: ConnTable<Connection>,
    timers: TimerWheel<Token>,
    rbuf: Vec<u8>,
    spills: BufPool,
    /// Out queues not in use. Boxed because a connection holds one as an
    /// `Option<Box<_>>` (8 bytes while idle); the pool moves the boxes.
    #[allow(clippy::vec_box)]
    outs: Vec<Box<OutQueue>>,
    dirty: Vec<Token>,
    cfg: Arc<ServerConfig>,
    shared: Arc<Shared>,
    start: Instant,
    now: u64,
    reserve: ReserveFd,
    /// accept(2) ran out of descriptors: try again at this time.
    accept_retry_at: Option<u64>,
}

impl Worker {
    pub(crate) fn new(
        id: usize,
        poll: Poll,
        listener: std::net::TcpListener,
        cfg: Arc<ServerConfig>,
        shared: Arc<Shared>,
    ) -> io::Result<Worker> {
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Worker {
            id,
            poll,
            listener,
            conns: ConnTable::new(),
            timers: TimerWheel::new(TICK_MS, SLOTS, 0),
            rbuf: vec![0; READ_BUF],
            spills: BufPool::new(4096, 1 << 20, 1024),
            outs: Vec::new(),
            dirty: Vec::new(),
            cfg,
            shared,
            start: Instant::now(),
            now: 0,
            reserve: ReserveFd::new(),
            accept_retry_at: None,
        })
    }

    /// Run until the server is stopped.
    pub(crate) fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut fired = Vec::new();
        info!(
            "worker {} listening on {}",
            self.id,
            self.listener.local_addr()?
        );
        while !self.shared.stop.load(Ordering::Acquire) {
            let deadline = [self.timers.next_expiry(), self.accept_retry_at]
                .into_iter()
                .flatten()
                .min();
            let timeout = deadline.map(|d| Duration::from_millis(d.saturating_sub(self.now)));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            self.now = self.start.elapsed().as_millis() as u64;
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {}
                    t => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.on_readable(t);
                        }
                        if ev.is_writable() {
                            self.mark_dirty(t);
                        }
                    }
                }
            }
            if self.accept_retry_at.is_some_and(|t| t <= self.now) {
                self.accept_retry_at = None;
                self.accept_all();
            }
            self.timers.advance(self.now, &mut fired);
            for t in fired.drain(..) {
                self.on_timer(t);
            }
            self.flush_dirty();
        }
        info!(
            "worker {} stopping with {} connections",
            self.id,
            self.conns.len()
        );
        for t in self.conns.tokens() {
            self.drop_conn(t, "server stopping");
        }
        Ok(())
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((sock, peer)) => self.on_accept(sock, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Out of descriptors: free the spare one, accept the
                    // waiting connection and close it at once, so the listener
                    // does not stay readable and spin the loop; then back off.
                    if self.reserve.release() {
                        if let Ok((s, peer)) = self.listener.accept() {
                            warn!("out of file descriptors: refused {peer}");
                            drop(s);
                        }
                        self.reserve.restore();
                    } else {
                        warn!("out of file descriptors: accept paused for 100 ms");
                    }
                    self.shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                    self.accept_retry_at = Some(self.now + 100);
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
        let _ = sock.set_nodelay(true);
        let over =
            self.shared.connections.fetch_add(1, Ordering::AcqRel) >= self.cfg.max_connections;
        let mut conn = Connection {
            sock,
            proto: Conn::server(self.now),
            spill: Vec::new(),
            out: None,
            timer: None,
            route: Route::Pending,
            flags: 0,
        };
        if over {
            // Answer 503 and close once it is written; the request is read
            // and discarded meanwhile so that the close is clean.
            warn!(
                "connection limit {} reached: 503 to {peer}",
                self.cfg.max_connections
            );
            self.shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            let out = conn.out.get_or_insert_with(|| pop_out(&mut self.outs));
            handshake::write_error(out.as_mut(), Error::Unavailable);
            conn.proto.shutdown(self.now);
        }
        let token = self.conns.insert(conn);
        let c = self.conns.get_mut(token).expect("just inserted");
        if let Err(e) = self.poll.registry().register(
            &mut c.sock,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("register: {e}");
            self.drop_conn(token, "register failed");
            return;
        }
        self.shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
        self.arm(token);
        if over {
            self.mark_dirty(token);
        }
    }

    /// Read to `WouldBlock`, decoding as we go.
    fn on_readable(&mut self, token: Token) {
        loop {
            let Some(c) = self.conns.get_mut(token) else {
                return;
            };
            if c.flags & F_READ_PAUSED != 0 {
                return;
            }
            match c.sock.read(&mut self.rbuf) {
                Ok(0) => {
                    let why = if c.proto.state() == State::Open {
                        "peer closed TCP without a close frame"
                    } else {
                        "closed"
                    };
                    self.drop_conn(token, why);
                    return;
                }
                Ok(n) => {
                    self.shared
                        .stats
                        .bytes_in
                        .fetch_add(n as u64, Ordering::Relaxed);
                    if !self.on_bytes(token, n) {
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

    /// Process `self.rbuf[..n]` for `token`. Returns false if the connection
    /// is gone or reading should stop.
    fn on_bytes(&mut self, token: Token, n: usize) -> bool {
        let now = self.now;
        let cfg = &*self.cfg;
        let c = self.conns.get_mut(token).expect("caller checked");
        let before = c.proto.state();
        if before == State::Closed {
            return true; // discarding input until EOF or the linger deadline
        }
        let from_spill = !c.spill.is_empty();
        if from_spill {
            c.spill.extend_from_slice(&self.rbuf[..n]);
        }
        let out = c.out.get_or_insert_with(|| pop_out(&mut self.outs));
        let data: &mut [u8] = if from_spill {
            &mut c.spill
        } else {
            &mut self.rbuf[..n]
        };
        let stats = &self.shared.stats;
        let mut consumed = 0;
        let mut result = Ok(());
        if before == State::Handshake {
            match handshake_step(cfg, &mut c.proto, &mut c.route, data, now, out.as_mut()) {
                Ok(used) => consumed = used,
                Err(e) => result = Err(e),
            }
        }
        if result.is_ok() && c.proto.state() != State::Handshake && consumed < data.len() {
            let route = c.route;
            let mut on_event = |ev: Event<'_>, out: &mut OutQueue| {
                if let Event::Message { text, data } = ev {
                    stats.messages_in.fetch_add(1, Ordering::Relaxed);
                    if route == Route::Echo {
                        let op = if text { OpCode::Text } else { OpCode::Binary };
                        put_frame(out, op, data);
                        stats.messages_out.fetch_add(1, Ordering::Relaxed);
                    }
                }
            };
            match c.proto.decode(
                &mut data[consumed..],
                now,
                &cfg.limits,
                out.as_mut(),
                &mut on_event,
            ) {
                Ok(used) => consumed += used,
                Err(e) => result = Err(e),
            }
        }
        if let Err(e) = result {
            debug!("connection {:?}: {e}", token);
            stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            c.proto.fail(out.as_mut(), now, e);
            if e.http_status().is_some() {
                handshake::write_error(out.as_mut(), e);
            }
            consumed = data.len();
        }
        // Keep only an incomplete head or frame.
        let rest = data.len() - consumed;
        if from_spill {
            c.spill.drain(..consumed);
            if c.spill.is_empty() {
                self.spills.put(std::mem::take(&mut c.spill));
            }
        } else if rest > 0 {
            let mut s = self.spills.get();
            s.extend_from_slice(&self.rbuf[n - rest..n]);
            c.spill = s;
        }
        if c.spill.len() > cfg.max_head.max(cfg.limits.max_message) + 14 {
            // Cannot happen: the decoder refuses oversized heads and frames.
            unreachable!("spill beyond the limits");
        }
        let queued = out.len();
        if queued > cfg.out_high_water {
            c.flags |= F_READ_PAUSED;
        }
        let state_changed = c.proto.state() != before;
        if queued > 0 {
            self.mark_dirty(token);
        }
        if state_changed {
            self.arm(token);
        }
        let c = self.conns.get(token).expect("still there");
        c.flags & F_READ_PAUSED == 0
    }

    fn on_timer(&mut self, token: Token) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        c.timer = None;
        let out = c.out.get_or_insert_with(|| pop_out(&mut self.outs));
        match c
            .proto
            .handle_timeout(self.now, &self.cfg.timeouts, out.as_mut())
        {
            TimerAction::Drop(why) => {
                self.shared.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                self.drop_conn(token, why);
            }
            TimerAction::Continue => {
                if !out.is_empty() {
                    self.mark_dirty(token);
                } else if let Some(o) = c.out.take() {
                    self.outs.push(o);
                }
                self.arm(token);
            }
        }
    }

    /// (Re)arm the connection's one timer at its next deadline.
    fn arm(&mut self, token: Token) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        if let Some(k) = c.timer.take() {
            self.timers.cancel(k);
        }
        if let Some(at) = c.proto.next_timeout(self.now, &self.cfg.timeouts) {
            c.timer = Some(self.timers.insert(at, token));
        }
    }

    fn mark_dirty(&mut self, token: Token) {
        if let Some(c) = self.conns.get_mut(token) {
            if c.flags & F_DIRTY == 0 {
                c.flags |= F_DIRTY;
                self.dirty.push(token);
            }
        }
    }

    /// One `writev` burst per connection with something queued. Resumed
    /// reads may queue more: loop until nothing is left.
    fn flush_dirty(&mut self) {
        let mut dirty = Vec::new();
        while !self.dirty.is_empty() {
            std::mem::swap(&mut dirty, &mut self.dirty);
            self.flush_list(&mut dirty);
        }
        self.dirty = dirty;
        if self.outs.len() > 1024 {
            self.outs.truncate(1024);
        }
    }

    fn flush_list(&mut self, dirty: &mut Vec<Token>) {
        for token in dirty.drain(..) {
            let Some(c) = self.conns.get_mut(token) else {
                continue;
            };
            c.flags &= !F_DIRTY;
            let mut resume = false;
            if let Some(out) = c.out.as_mut() {
                let before = out.len();
                match out.flush(&mut c.sock) {
                    Ok(Flush::Done) => {
                        self.shared
                            .stats
                            .bytes_out
                            .fetch_add(before as u64, Ordering::Relaxed);
                        self.outs.push(c.out.take().expect("present"));
                        resume = c.flags & F_READ_PAUSED != 0;
                        c.flags &= !F_READ_PAUSED;
                    }
                    Ok(Flush::Blocked) => {
                        let after = out.len();
                        self.shared
                            .stats
                            .bytes_out
                            .fetch_add((before - after) as u64, Ordering::Relaxed);
                        if c.flags & F_READ_PAUSED != 0 && after <= self.cfg.out_high_water / 2 {
                            c.flags &= !F_READ_PAUSED;
                            self.on_readable(token);
                        }
                        // The writable event will bring it back here.
                        continue;
                    }
                    Err(e) => {
                        debug!("write: {e}");
                        self.drop_conn(token, "write error");
                        continue;
                    }
                }
            }
            // Everything is written. A finished connection shuts its side.
            if c.proto.state() == State::Closed && c.flags & F_WRITE_SHUT == 0 {
                c.flags |= F_WRITE_SHUT;
                // §7.1.1: "the server SHOULD close the underlying TCP connection
                // first". Shut our side; the peer's FIN (or the linger
                // deadline) ends it.
                let _ = c.sock.shutdown(std::net::Shutdown::Write);
            }
            if resume {
                self.on_readable(token);
            }
        }
    }

    fn drop_conn(&mut self, token: Token, why: &str) {
        if let Some(mut c) = self.conns.remove(token) {
            debug!("connection {token:?} closed: {why}");
            if let Some(k) = c.timer.take() {
                self.timers.cancel(k);
            }
            if let Some(mut o) = c.out.take() {
                o.clear();
                self.outs.push(o);
            }
            self.spills.put(std::mem::take(&mut c.spill));
            self.shared.connections.fetch_sub(1, Ordering::AcqRel);
            self.shared.stats.closed.fetch_add(1, Ordering::Relaxed);
            // Closing the descriptor removes it from epoll.
        }
    }

    pub(crate) fn waker(&self) -> io::Result<Waker> {
        Waker::new(self.poll.registry(), WAKER)
    }
}

#[allow(clippy::vec_box)]
fn pop_out(pool: &mut Vec<Box<OutQueue>>) -> Box<OutQueue> {
    pool.pop().unwrap_or_default()
}

/// The HTTP phase: parse the head, route it, answer. Returns the bytes used.
fn handshake_step(
    cfg: &ServerConfig,
    proto: &mut Conn,
    route: &mut Route,
    data: &[u8],
    now: u64,
    out: &mut OutQueue,
) -> Result<usize, Error> {
    let Some(head) = Head::parse(data, cfg.max_head)? else {
        return Ok(0);
    };
    match head.path() {
        "/echo" if cfg.echo => {
            let up = handshake::check_upgrade(&head)?;
            if let Some(check) = &cfg.origin_check {
                if !check(up.origin) {
                    return Err(Error::OriginRejected);
                }
            }
            let protocol = handshake::select_protocol(&head, &cfg.protocols);
            handshake::write_accept(out, up.key, protocol, None);
            proto.accept(now);
            *route = Route::Echo;
        }
        "/healthz" if head.method == "GET" && !head.wants_upgrade() => {
            handshake::write_response(out, 200, "", "ok");
            proto.shutdown(now);
        }
        _ => return Err(Error::NotFound),
    }
    Ok(head.len)
}
