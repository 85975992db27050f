//! The NATS thread: one connection (the `async-nats` client on a
//! current-thread tokio runtime of its own) and one loop that
//!
//! - takes the workers' and the hub's commands ([`Cmd`]), as many as are
//!   waiting, and runs them as an ordered pipeline: publishes are sent in
//!   the order they came (so one connection's publications get offsets in
//!   that order) and every answer is handed back in that order, as the
//!   Redis command thread does with one pipeline;
//! - holds a core NATS subscription to a channel's live subject exactly
//!   while the hub wants the channel (a node subscribes only while it has
//!   local subscribers), confirms it to the hub once the server has it
//!   (after a flush), and hands every message to the hub;
//! - follows the connection: down, the hub is told (subscribes are answered
//!   without recovery, publishes fail at once with `unavailable`); up again
//!   (the client reconnects by itself, with our backoff and jitter), every
//!   subscription is confirmed again, so the hub reads each stream after
//!   the last offset it delivered.
//!
//! Presence writes and reads run one at a time on a task of their own
//! ([`presence_task`]), in the order they were queued; each channel's live
//! messages reach the hub through a task of their own ([`live_task`]).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, Event};
use futures_util::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::live::{control_task, live_task};
use super::presence::{presence_task, PresenceOp};
use super::store::{Js, JsError, Store};
use super::Settings;
use crate::broker::redis::hub::Hub;
use crate::broker::redis::Cmd;
use crate::broker::{ReplyBody, ReplyTo, WorkerMsg};
use crate::config::ChannelPolicy;

/// Commands taken from the queue at once.
const MAX_BATCH: usize = 512;
/// Commands in the pipeline at most; beyond, the queue waits.
const MAX_IN_FLIGHT: usize = 8_192;
/// Stream entries read at once for a recovery (as with Redis).
const MAX_READ: usize = 10_000;
/// Commands kept for the reconnection, at most.
const MAX_DEFERRED: usize = 100_000;
const TICK: Duration = Duration::from_millis(100);
/// How often a node that saw JetStream fail asks whether it is back.
const PROBE_EVERY: Duration = Duration::from_secs(1);

mod commands;

use commands::Done;

type Job = Pin<Box<dyn Future<Output = Done>>>;
/// Flushes after SUBSCRIBEs: the connection they were sent on and the
/// channels to confirm.
type Confirms = FuturesUnordered<Pin<Box<dyn Future<Output = (u64, Vec<Arc<str>>)>>>>;
type Backgrounds = FuturesUnordered<Pin<Box<dyn Future<Output = Background>>>>;

pub(super) struct Engine {
    hub: Arc<Hub>,
    s: Settings,
    policy: Arc<ChannelPolicy>,
    publications: Arc<AtomicU64>,
    client: Client,
    jsctx: async_nats::jetstream::Context,
    store: Rc<Store>,
    presence: UnboundedSender<PresenceOp>,
    /// This node's members, re-put every `presence_refresh`:
    /// channel → client → (key, member JSON).
    members: HashMap<Arc<str>, HashMap<String, (String, String)>>,
    /// Catch-ups and rebases that wait for NATS.
    deferred: HashSet<(Arc<str>, u64)>,
    /// Live subscriptions: channel → the task handing its messages to the
    /// hub (aborting it drops the subscription: UNSUB).
    subs: HashMap<Arc<str>, tokio::task::JoinHandle<()>>,
    /// The connection is up (as far as the loop has seen).
    up: bool,
    /// Counts connections, so that a flush from an older one confirms
    /// nothing.
    conn: u64,
    /// JetStream answered the last request (false after a timeout or "no
    /// responders" until a probe succeeds).
    js_ok: Arc<AtomicBool>,
    down_since: Option<Instant>,
    next_refresh: Instant,
    next_sweep: Instant,
    next_probe: Instant,
    /// When the deferred catch-ups are tried again, and the delay after
    /// that (doubled while they fail, up to `reconnect_max`).
    next_retry: Instant,
    retry_delay: Duration,
    ready: Option<std_mpsc::Sender<()>>,
}

/// Everything the loop waits on.
pub(super) struct Inputs {
    pub cmds: UnboundedReceiver<Cmd>,
    pub reconcile: UnboundedReceiver<Arc<str>>,
    pub events: UnboundedReceiver<Event>,
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        hub: Arc<Hub>,
        s: Settings,
        policy: Arc<ChannelPolicy>,
        publications: Arc<AtomicU64>,
        client: Client,
        js_ok: Arc<AtomicBool>,
        ready: std_mpsc::Sender<()>,
    ) -> Engine {
        let jsctx = async_nats::jetstream::ContextBuilder::new()
            .timeout(s.command_timeout)
            .ack_timeout(s.command_timeout)
            .max_ack_inflight(MAX_IN_FLIGHT * 64)
            .backpressure_on_inflight(false)
            .build(client.clone());
        let store = Rc::new(Store::new(
            Js::new(client.clone(), s.command_timeout),
            s.names.clone(),
            policy.clone(),
            s.storage,
            s.replicas,
        ));
        let (ptx, prx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(presence_task(
            prx,
            jsctx.clone(),
            client.clone(),
            s.clone(),
            js_ok.clone(),
        ));
        let now = Instant::now();
        Engine {
            hub,
            policy,
            publications,
            client,
            jsctx,
            store,
            presence: ptx,
            members: HashMap::new(),
            deferred: HashSet::new(),
            subs: HashMap::new(),
            up: false,
            conn: 0,
            js_ok,
            down_since: Some(now),
            next_refresh: now,
            next_sweep: now + s.sweep_every,
            next_probe: now,
            next_retry: now,
            retry_delay: s.retry_min,
            ready: Some(ready),
            s,
        }
    }

    pub async fn run(mut self, mut inp: Inputs) {
        let control = match self.client.subscribe(self.s.names.control()).await {
            Ok(sub) => Some(tokio::spawn(control_task(
                sub,
                self.hub.clone(),
                self.s.instance.clone(),
            ))),
            Err(e) => {
                log::error!("nats control subscription: {e}");
                None
            }
        };
        let mut pipeline: FuturesOrdered<Job> = FuturesOrdered::new();
        let mut confirms: Confirms = FuturesUnordered::new();
        let mut background: Backgrounds = FuturesUnordered::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let started = Instant::now();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            tokio::select! {
                biased;
                Some(ev) = inp.events.recv() => self.on_event(ev, &mut confirms, &mut pipeline).await,
                Some(done) = pipeline.next(), if !pipeline.is_empty() => {
                    self.complete(done, &mut pipeline).await;
                }
                Some((conn, chans)) = confirms.next(), if !confirms.is_empty() => {
                    if conn == self.conn && self.up {
                        for ch in chans {
                            self.hub.confirmed(&ch);
                        }
                    }
                }
                Some(b) = background.next(), if !background.is_empty() => self.on_background(b),
                Some(ch) = inp.reconcile.recv() => {
                    let mut chans = vec![ch];
                    while let Ok(c) = inp.reconcile.try_recv() {
                        chans.push(c);
                    }
                    self.reconcile(chans, &mut confirms).await;
                }
                n = inp.cmds.recv_many(&mut batch, MAX_BATCH), if pipeline.len() < MAX_IN_FLIGHT => {
                    if n == 0 {
                        break;
                    }
                    let cmds: Vec<Cmd> = std::mem::take(&mut batch);
                    self.submit(cmds, &mut pipeline).await;
                }
                _ = tick.tick() => {
                    if self.hub.stopping() {
                        break;
                    }
                    if self.ready.is_some() && started.elapsed() >= Duration::from_secs(1) {
                        self.signal_ready();
                    }
                    self.housekeeping(&mut confirms, &mut pipeline, &mut background).await;
                }
            }
        }
        for (_, t) in self.subs.drain() {
            t.abort();
        }
        if let Some(t) = control {
            t.abort();
        }
    }

    /// The catch-ups that waited, as commands again.
    fn take_deferred(&mut self) -> Vec<Cmd> {
        self.deferred
            .drain()
            .map(|(channel, gen)| Cmd::CatchUp { channel, gen })
            .collect()
    }

    /// Keep a catch-up for later (once per channel incarnation).
    fn defer(&mut self, channel: Arc<str>, gen: u64) {
        if self.deferred.len() < MAX_DEFERRED && self.hub.catch_up_pending(&channel, gen) {
            self.deferred.insert((channel, gen));
        }
    }

    fn signal_ready(&mut self) {
        if let Some(r) = self.ready.take() {
            let _ = r.send(());
        }
    }

    fn set_health(&self) {
        let ok = self.up && self.js_ok.load(Ordering::Acquire);
        self.hub.cmd_up.store(ok, Ordering::Release);
    }

    fn reply(&self, to: ReplyTo, body: ReplyBody) {
        self.hub
            .inboxes_send(to.worker, WorkerMsg::Reply { to, body });
    }

    /// A JetStream request got no answer: say so until a probe succeeds.
    fn js_failed(&mut self, e: &JsError) {
        if matches!(e, JsError::Unreachable(_)) && self.js_ok.swap(false, Ordering::AcqRel) {
            log::warn!("jetstream not answering ({e}): degraded until it does");
            self.set_health();
            self.next_probe = Instant::now() + PROBE_EVERY;
        }
    }

    // ---------------------------------------------------------- connection --

    async fn on_event(
        &mut self,
        ev: Event,
        confirms: &mut Confirms,
        pipeline: &mut FuturesOrdered<Job>,
    ) {
        match ev {
            Event::Connected => self.connected(confirms, pipeline).await,
            Event::Disconnected => self.disconnected(),
            Event::SlowConsumer(sid) => log::warn!(
                "nats subscription {sid}: messages dropped by the client (slow consumer); \
                 the gap is read back from the stream when the next publication arrives"
            ),
            Event::LameDuckMode => {
                log::info!("nats server entering lame duck mode: this node will reconnect")
            }
            other => log::warn!("nats: {other}"),
        }
    }

    async fn connected(&mut self, confirms: &mut Confirms, pipeline: &mut FuturesOrdered<Job>) {
        if self.up {
            return;
        }
        self.up = true;
        self.conn += 1;
        if let Some(t) = self.down_since.take() {
            log::info!(
                "nats connection up (after {:.1} s)",
                t.elapsed().as_secs_f64()
            );
        }
        self.js_ok.store(true, Ordering::Release);
        self.set_health();
        self.hub.pubsub_up();
        // The client resubscribes what it had; subscribe what is wanted and
        // not held, drop what is held and not wanted, then confirm all.
        let wanted = self.hub.wanted_all();
        let mut chans: Vec<Arc<str>> = self.subs.keys().cloned().collect();
        chans.extend(wanted);
        self.reconcile(chans, confirms).await;
        let deferred = self.take_deferred();
        if !deferred.is_empty() {
            self.submit(deferred, pipeline).await;
        }
        self.next_refresh = Instant::now();
        self.signal_ready();
    }

    fn disconnected(&mut self) {
        if !self.up {
            return;
        }
        self.up = false;
        self.conn += 1;
        self.down_since = Some(Instant::now());
        self.set_health();
        log::warn!("nats connection lost: publications fail and wait for the reconnection");
        self.hub.pubsub_down();
    }

    /// Make the live subscriptions of `chans` match the hub's interest, and
    /// confirm the wanted ones once the server has them.
    async fn reconcile(&mut self, mut chans: Vec<Arc<str>>, confirms: &mut Confirms) {
        chans.sort();
        chans.dedup();
        let mut confirm = Vec::new();
        for ch in chans {
            let want = self.hub.wanted(&ch);
            if want && !self.subs.contains_key(&ch) {
                // (Bounded: the client's queue may be full while it
                // reconnects, and this loop must go on answering.)
                let subscribing = self.client.subscribe(self.s.names.live(&ch));
                match tokio::time::timeout(self.s.command_timeout, subscribing).await {
                    Ok(Ok(sub)) => {
                        let task = tokio::spawn(live_task(
                            sub,
                            self.hub.clone(),
                            self.s.names.clone(),
                            ch.clone(),
                        ));
                        self.subs.insert(ch.clone(), task);
                    }
                    failed => {
                        // Tried again at the next reconnection, or with the
                        // channel's next subscriber.
                        log::error!("nats subscribe to channel {ch:?}: {failed:?}");
                        continue;
                    }
                }
            } else if !want {
                if let Some(t) = self.subs.remove(&ch) {
                    t.abort();
                }
            }
            if want {
                confirm.push(ch);
            }
        }
        if self.up && !confirm.is_empty() {
            // The server has every SUB sent before a PING once it answers
            // the PONG.
            let (client, conn, wait) = (self.client.clone(), self.conn, self.s.command_timeout);
            confirms.push(Box::pin(async move {
                match tokio::time::timeout(wait, client.flush()).await {
                    Ok(Ok(())) => (conn, confirm),
                    _ => (0, Vec::new()),
                }
            }));
        }
    }

    async fn housekeeping(
        &mut self,
        confirms: &mut Confirms,
        pipeline: &mut FuturesOrdered<Job>,
        background: &mut Backgrounds,
    ) {
        // Events are the main signal; the state is checked too, in case
        // the client's event queue dropped one.
        match self.client.connection_state() {
            async_nats::connection::State::Connected if !self.up => {
                self.connected(confirms, pipeline).await
            }
            async_nats::connection::State::Disconnected if self.up => self.disconnected(),
            _ => {}
        }
        let now = Instant::now();
        if now >= self.next_refresh {
            self.next_refresh = now + self.s.presence_refresh;
            if self.up && !self.members.is_empty() {
                let all = self
                    .members
                    .values()
                    .flat_map(|m| m.values().cloned())
                    .collect();
                let _ = self.presence.send(PresenceOp::Refresh(all));
            }
        }
        if !self.up {
            return;
        }
        if !self.js_ok.load(Ordering::Acquire) && now >= self.next_probe {
            self.next_probe = now + PROBE_EVERY;
            let js = self.store.js.clone();
            background.push(Box::pin(async move { Background::Probe(js.probe().await) }));
        }
        if now >= self.next_sweep {
            self.next_sweep = now + self.s.sweep_every;
            let (store, idle) = (self.store.clone(), self.s.meta_ttl);
            background.push(Box::pin(async move {
                Background::Swept(store.sweep(idle).await)
            }));
        }
        if self.js_ok.load(Ordering::Acquire) && !self.deferred.is_empty() && now >= self.next_retry
        {
            self.next_retry = now + self.retry_delay;
            self.retry_delay = (self.retry_delay * 2).min(self.s.retry_max);
            let deferred = self.take_deferred();
            self.submit(deferred, pipeline).await;
        }
    }

    fn on_background(&mut self, b: Background) {
        match b {
            Background::Probe(Ok(())) => {
                if !self.js_ok.swap(true, Ordering::AcqRel) {
                    log::info!("jetstream answers again");
                    self.set_health();
                }
            }
            Background::Probe(Err(e)) => log::debug!("jetstream probe: {e}"),
            Background::Swept(Ok(0)) => {}
            Background::Swept(Ok(n)) => {
                log::info!("deleted {n} idle channel streams (no publication for meta_ttl)")
            }
            Background::Swept(Err(e)) => log::warn!("sweep of idle channel streams: {e}"),
        }
    }
}

enum Background {
    Probe(Result<(), JsError>),
    Swept(Result<usize, JsError>),
}
