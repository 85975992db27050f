//! The engine's shell: one mio event loop per core, each with its own
//! SO_REUSEPORT listener, connection table, timer wheel and buffer pools.
//! What each connection does is its `crate::endpoint::Endpoint`'s.
//!
//! Reading order: [`Server`] (start and stop), `worker` (the loop),
//! [`conn_table`], [`timer`], [`buffers`], [`sys`].

pub mod buffers;
pub mod conn_table;
mod desk;
mod frozen;
pub mod handoff;
pub mod sys;
pub mod timer;
mod tls_conn;
mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub use crate::base::counters::{Stats, WorkerGauges};
/// Old paths: the configuration, admission and out queues are the
/// endpoints' (`crate::endpoint`), which the shell hosts.
pub use crate::endpoint::{admission, config, outbuf};
pub use crate::endpoint::{Admission, OriginCheck, ServerConfig, Shared};

use crate::broker::{new_broker, Broker, Inboxes};
use crate::hooks::events::Events;
use crate::hooks::webhooks::Webhooks;
use desk::{Desk, Frozen, Order, Verdict};
use handoff::ListenerRole;

/// Copies of the listening sockets (the same sockets as the workers'),
/// kept for a handoff; given up once one succeeded.
type HandoffListeners = Arc<Mutex<Vec<(ListenerRole, std::net::TcpListener)>>>;

/// Starts a drain or stops the server from any thread.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
    inboxes: Arc<Inboxes>,
    listeners: HandoffListeners,
    /// Sealed by a handoff, its channels sent to the new process.
    broker: Arc<dyn Broker>,
    desks: Arc<Vec<Desk>>,
    cfg: Arc<ServerConfig>,
}

impl Handle {
    /// Hand the listening sockets and the connections that can move to a
    /// new process running `binary` with `args` (see [`handoff`]); once it
    /// took them, this one drains what stayed (as on SIGTERM) and so ends.
    /// On an error nothing changed: this process goes on serving. Returns
    /// the new process's pid.
    pub fn hand_over(
        &self,
        binary: &std::path::Path,
        args: &[std::ffi::OsString],
    ) -> Result<u32, handoff::HandoffError> {
        if self.shared.draining.load(Ordering::Acquire) {
            return Err(handoff::HandoffError::Busy("the server is draining"));
        }
        let mut held = self
            .listeners
            .lock()
            .map_err(|_| handoff::HandoffError::Busy("listener list poisoned"))?;
        if held.is_empty() {
            return Err(handoff::HandoffError::Busy(
                "the listeners were handed over already",
            ));
        }
        let fds: Vec<_> = held
            .iter()
            .map(|(role, l)| (*role, std::os::fd::AsFd::as_fd(l)))
            .collect();
        let mut conns = WorkerConns {
            handle: self,
            verdicts: Vec::new(),
        };
        let result = handoff::hand_over(
            binary,
            args,
            &fds,
            Some(&*self.broker),
            &mut conns,
            handoff::ANSWER_TIMEOUT,
        );
        drop(fds);
        if result.is_err() && self.shared.draining.load(Ordering::Acquire) {
            // A drain began meanwhile (and found the copies in use).
            held.clear();
        }
        let pid = result?;
        // Ours are copies; the workers close theirs as the drain begins.
        held.clear();
        drop(held);
        self.shared.handed_over.store(true, Ordering::Release);
        // Said before the drain: with nothing left to drain the workers
        // stop at once and the process may exit before the caller's thread
        // runs again (the line was lost so in a CI run).
        log::info!("handoff: pid {pid} serves now; this process drains and exits");
        self.drain();
        Ok(pid)
    }

    /// The new process, once it serves with the inherited listeners: take
    /// the old process's connections over `channel` (see [`handoff`]),
    /// each record checked first, spread over the workers. On an error the
    /// old process was told (`Refuse`) and keeps them; nothing was taken.
    /// Returns how many connections the workers took.
    pub fn take_connections(
        &self,
        channel: &handoff::Channel,
    ) -> Result<usize, handoff::HandoffError> {
        let limits = self.cfg.limits;
        let check = move |rec: &[u8]| {
            frozen::read(rec, 0, &limits)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let conns = handoff::receive_conns(channel, handoff::ANSWER_TIMEOUT, &check)?;
        let total = conns.len();
        // Confirmed before any is touched: the old process forgets them
        // only now, and if this answer is lost it resumes them while this
        // process never served them.
        handoff::confirm_conns(channel, total as u32)?;
        let workers = self.desks.len();
        let mut per: Vec<Vec<_>> = (0..workers).map(|_| Vec::new()).collect();
        for (i, c) in conns.into_iter().enumerate() {
            per[i % workers].push(c);
        }
        let (done, took) = std::sync::mpsc::channel();
        for (w, conns) in per.into_iter().enumerate() {
            if conns.is_empty() {
                continue;
            }
            self.desks[w].post(Order::Thaw {
                conns,
                done: done.clone(),
            });
            self.inboxes.wake(w);
        }
        drop(done);
        Ok(took.iter().sum())
    }

    /// Did a handoff succeed (the new process took over)? Then the pid
    /// file is the new process's.
    pub fn handed_over(&self) -> bool {
        self.shared.handed_over.load(Ordering::Acquire)
    }

    /// See [`Server::drain`].
    pub fn drain(&self) {
        self.shared.draining.store(true, Ordering::Release);
        self.wake();
        give_up_listeners(&self.listeners);
    }

    /// Stop now: open connections are dropped.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.wake();
    }

    fn wake(&self) {
        for w in 0..self.inboxes.len() {
            self.inboxes.wake(w);
        }
    }
}

/// The old process's connections, frozen worker by worker for a handoff
/// ([`handoff::Connections`]).
struct WorkerConns<'a> {
    handle: &'a Handle,
    /// One per frozen worker, which waits on it.
    verdicts: Vec<std::sync::mpsc::Sender<Verdict>>,
}

impl handoff::Connections for WorkerConns<'_> {
    fn freeze(&mut self) -> Result<Vec<(Vec<u8>, std::os::fd::RawFd)>, handoff::HandoffError> {
        let (frozen_tx, frozen_rx) = std::sync::mpsc::channel::<Vec<Frozen>>();
        for (w, desk) in self.handle.desks.iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::channel();
            self.verdicts.push(tx);
            desk.post(Order::Freeze {
                frozen: frozen_tx.clone(),
                verdict: rx,
            });
            self.handle.inboxes.wake(w);
        }
        drop(frozen_tx);
        // Every worker answers at its next turn; one that does not (it
        // ended) fails the handoff (the others resume, and so does it if
        // it ever reads its order: its verdict is sent).
        let until = std::time::Instant::now() + handoff::ANSWER_TIMEOUT;
        let mut all = Vec::new();
        for _ in 0..self.verdicts.len() {
            let left = until.saturating_duration_since(std::time::Instant::now());
            let frozen = frozen_rx.recv_timeout(left).map_err(|_| {
                handoff::HandoffError::Busy("a worker did not freeze its connections")
            })?;
            all.extend(frozen.into_iter().map(|f| (f.state, f.fd)));
        }
        Ok(all)
    }

    fn commit(&mut self) {
        for v in self.verdicts.drain(..) {
            let _ = v.send(Verdict::Commit);
        }
    }

    fn resume(&mut self) {
        for v in self.verdicts.drain(..) {
            let _ = v.send(Verdict::Resume);
        }
    }
}

impl Drop for WorkerConns<'_> {
    /// Never leave a worker waiting (a panic, an early return).
    fn drop(&mut self) {
        handoff::Connections::resume(self);
    }
}

/// A running server: its workers and the means to stop them.
pub struct Server {
    local_addr: SocketAddr,
    /// With TLS and `listen_plain`: the plaintext listener's address.
    plain_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    /// Copies of the listening sockets, for a handoff.
    listeners: HandoffListeners,
    /// Every worker's inbox; its waker also wakes the worker to stop (mio
    /// allows one `Waker` per `Poll`).
    inboxes: Arc<Inboxes>,
    /// Every worker's desk, for the handoff's orders.
    desks: Arc<Vec<Desk>>,
    cfg: Arc<ServerConfig>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    /// The webhook sender, stopped (its queue delivered for a grace) once
    /// the workers end.
    events: Events,
    /// How long queued webhooks are still delivered at the end.
    drain_timeout: std::time::Duration,
    broker: Arc<dyn Broker>,
}

impl Server {
    /// Bind every worker's listener, then start the workers. Binding happens
    /// here, so an address in use is reported before any thread starts.
    pub fn start(cfg: ServerConfig) -> io::Result<Server> {
        Server::start_with(cfg, None, None)
    }

    /// Start on listening sockets handed over by the previous process
    /// (`main`, `plain`: the handoff's listeners by role) instead of
    /// binding: their accept queues come with them. A count of listeners
    /// other than the number of workers is evened out: missing ones are
    /// bound beside them (SO_REUSEPORT); more listeners than workers is
    /// an error (see `even_out`). `broker_state`: the old broker's
    /// channels, restored before any worker starts (refused, as an error,
    /// by a broker that keeps its channels elsewhere).
    pub fn start_inherited(
        cfg: ServerConfig,
        main: Vec<std::net::TcpListener>,
        plain: Vec<std::net::TcpListener>,
        broker_state: Option<crate::broker::memory::snapshot::State>,
    ) -> io::Result<Server> {
        Server::start_with(cfg, Some((main, plain)), broker_state)
    }

    fn start_with(
        mut cfg: ServerConfig,
        inherited: Option<(Vec<std::net::TcpListener>, Vec<std::net::TcpListener>)>,
        broker_state: Option<crate::broker::memory::snapshot::State>,
    ) -> io::Result<Server> {
        let workers = cfg.workers.max(1);
        let shared = Arc::new(Shared {
            workers: (0..workers).map(|_| WorkerGauges::default()).collect(),
            ..Shared::default()
        });
        let (listeners, plain) = match inherited {
            Some((main, plain)) => (even_out(main, workers)?, even_out(plain, workers)?),
            None => bind_listeners(&cfg, workers)?,
        };
        let local_addr = listeners
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no listener"))?
            .local_addr()?;
        let plain_addr = plain.first().map(|l| l.local_addr()).transpose()?;
        let mut handed = Vec::new();
        for l in &listeners {
            handed.push((ListenerRole::Main, l.try_clone()?));
        }
        for l in &plain {
            handed.push((ListenerRole::Plain, l.try_clone()?));
        }
        let mut plain = plain.into_iter();
        // Polls and wakers first: the broker needs every worker's inbox.
        let mut polls = Vec::new();
        let mut inbox_wakers = Vec::new();
        for _ in 0..workers {
            let poll = mio::Poll::new()?;
            inbox_wakers.push(mio::Waker::new(poll.registry(), worker::WAKER)?);
            polls.push(poll);
        }
        let inboxes = Arc::new(Inboxes::new(inbox_wakers));
        // The proxies' threads; their decisions reach the workers' inboxes.
        if let Some(p) = crate::broker::start_proxy(&cfg.proxy, inboxes.clone())? {
            cfg.gateway.proxy = Some(p);
        }
        let cfg = Arc::new(cfg);
        let policy = Arc::new(cfg.gateway.policy.clone());
        let events = if cfg.webhooks.url.is_empty() {
            Events::OFF
        } else {
            let hooks = Webhooks::start(&cfg.webhooks).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("webhooks: {e}"))
            })?;
            Events::new(Arc::new(hooks))
        };
        let broker: Arc<dyn Broker> =
            new_broker(&cfg.broker, inboxes.clone(), policy, events.clone())?;
        if let Some(state) = broker_state {
            broker.restore(state).map_err(io::Error::other)?;
        }
        let desks: Arc<Vec<Desk>> = Arc::new((0..workers).map(|_| Desk::default()).collect());
        let mut threads = Vec::new();
        for (id, (l, poll)) in listeners.into_iter().zip(polls).enumerate() {
            let mut w = worker::Worker::new(
                id,
                poll,
                (l, plain.next()),
                cfg.clone(),
                shared.clone(),
                broker.clone(),
                inboxes.clone(),
                desks.clone(),
            )?;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("wsgate-worker-{id}"))
                    .spawn(move || w.run())?,
            );
        }
        Ok(Server {
            local_addr,
            plain_addr,
            shared,
            listeners: Arc::new(Mutex::new(handed)),
            inboxes,
            desks,
            threads,
            events,
            drain_timeout: std::time::Duration::from_millis(cfg.drain_timeout_ms),
            broker,
            cfg,
        })
    }

    /// The main listener's address (TLS when configured).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// With TLS and `listen_plain`: the plaintext listener's address.
    pub fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain_addr
    }

    /// Counters and the connection count.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stop every worker (open connections are dropped) and wait for them.
    pub fn stop(self) -> io::Result<()> {
        self.shared.stop.store(true, Ordering::Release);
        for w in 0..self.inboxes.len() {
            self.inboxes.wake(w);
        }
        // Stopping now: queued webhooks get a second, not the drain's time.
        let grace = std::time::Duration::from_secs(1);
        self.join_within(grace)
    }

    /// A handle that can start a drain or stop the server from another
    /// thread (a signal handler, say).
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
            inboxes: self.inboxes.clone(),
            listeners: self.listeners.clone(),
            broker: self.broker.clone(),
            desks: self.desks.clone(),
            cfg: self.cfg.clone(),
        }
    }

    /// Start a graceful drain (as on SIGTERM): stop accepting, tell every
    /// connection to reconnect elsewhere over the configured window, end
    /// when no connection is left or at the drain timeout. Use
    /// [`Server::join`] to wait for the end.
    pub fn drain(&self) {
        self.shared.draining.store(true, Ordering::Release);
        for w in 0..self.inboxes.len() {
            self.inboxes.wake(w);
        }
        give_up_listeners(&self.listeners);
    }

    /// Wait for the workers to end (they end when stopped, or on an error),
    /// then deliver the webhooks still queued for up to the drain timeout.
    pub fn join(self) -> io::Result<()> {
        let grace = self.drain_timeout;
        self.join_within(grace)
    }

    fn join_within(self, grace: std::time::Duration) -> io::Result<()> {
        let mut result = Ok(());
        for t in self.threads {
            let r = t
                .join()
                .map_err(|_| io::Error::other("worker panicked"))
                .and_then(|r| r);
            if result.is_ok() {
                result = r;
            }
        }
        self.events.stop(grace);
        result
    }

    /// The node's webhooks (their counters: [`Events::stats`]).
    pub fn events(&self) -> &Events {
        &self.events
    }
}

/// Close the copies kept for a handoff, so that the listening sockets
/// close with the workers' (a drain stops listening). Not waiting: a
/// handoff under way holds them, and closes them itself when it ends.
fn give_up_listeners(listeners: &HandoffListeners) {
    if let Ok(mut l) = listeners.try_lock() {
        l.clear();
    }
}

/// Every worker's listener (SO_REUSEPORT, one accept queue each), and with
/// TLS and `listen_plain` the plaintext ones beside them.
#[allow(clippy::type_complexity)]
fn bind_listeners(
    cfg: &ServerConfig,
    workers: usize,
) -> io::Result<(Vec<std::net::TcpListener>, Vec<std::net::TcpListener>)> {
    let first = sys::reuseport_listener(cfg.listen, 4096)?;
    // With port 0 the first bind picks the port; the others share it.
    let local_addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(sys::reuseport_listener(local_addr, 4096)?);
    }
    // The plaintext listener beside TLS, one per worker as well.
    let mut plain = Vec::new();
    if let Some(addr) = cfg.listen_plain.filter(|_| cfg.tls.is_some()) {
        let first = sys::reuseport_listener(addr, 4096)?;
        let addr = first.local_addr()?;
        plain.push(first);
        for _ in 1..workers {
            plain.push(sys::reuseport_listener(addr, 4096)?);
        }
    }
    Ok((listeners, plain))
}

/// Inherited listeners, one per worker: missing ones are bound beside the
/// first (SO_REUSEPORT on the same address). Extra ones (the old process
/// ran more workers) are refused: each has an accept queue of its own,
/// and closing it would reset the connections waiting in it.
fn even_out(
    mut ls: Vec<std::net::TcpListener>,
    workers: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    let Some(first) = ls.first() else {
        return Ok(ls);
    };
    if ls.len() > workers {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} listeners handed over for {workers} workers: run at least as many workers \
                 as the old process",
                ls.len()
            ),
        ));
    }
    let addr = first.local_addr()?;
    while ls.len() < workers {
        ls.push(sys::reuseport_listener(addr, 4096)?);
    }
    Ok(ls)
}
