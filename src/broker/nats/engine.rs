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
//! ([`presence_task`]), in the order they were queued.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::{Client, Event};
use bytes::Bytes;
use futures_util::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use serde_json::value::RawValue;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::names::{live_payload, Names, HDR_SEQUENCE, HDR_STREAM};
use super::presence::{self, Bucket};
use super::store::{Js, JsError, Read, Store};
use super::Settings;
use crate::broker::redis::history_page;
use crate::broker::redis::hub::{Hub, Snap};
use crate::broker::redis::Cmd;
use crate::broker::{ReplyBody, ReplyTo, WorkerMsg};
use crate::config::ChannelPolicy;
use crate::gateway::error::OpError;
use crate::pubsub::Position;

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

const UNREACHABLE: OpError = OpError::Unavailable("nats unreachable");
const JS_ERROR: OpError = OpError::Unavailable("nats error");

type Job = Pin<Box<dyn Future<Output = Done>>>;
/// Flushes after SUBSCRIBEs: the connection they were sent on and the
/// channels to confirm.
type Confirms = FuturesUnordered<Pin<Box<dyn Future<Output = (u64, Vec<Arc<str>>)>>>>;
type Backgrounds = FuturesUnordered<Pin<Box<dyn Future<Output = Background>>>>;

/// A finished command, handed back in pipeline order.
enum Done {
    Published {
        channel: Arc<str>,
        data: Box<RawValue>,
        reply: Option<ReplyTo>,
        ack: Result<async_nats::jetstream::publish::PublishAck, PublishErrorKind>,
        retried: bool,
    },
    Batch {
        reply: ReplyTo,
        results: Vec<Result<Position, OpError>>,
    },
    Sync {
        channel: Arc<str>,
        sub: crate::broker::redis::hub::PendingSub,
        snap: Result<Option<Snap>, JsError>,
    },
    CatchUp {
        channel: Arc<str>,
        gen: u64,
        snap: Result<Option<Snap>, JsError>,
    },
    History {
        reply: ReplyTo,
        page: Result<crate::broker::HistoryPage, OpError>,
    },
    Nothing,
}

/// Work for the presence task.
pub(super) enum PresenceOp {
    Join {
        key: String,
        json: String,
        /// The live subject to announce a new member on.
        event: Option<String>,
    },
    Leave {
        key: String,
        json: String,
        event: Option<String>,
    },
    Refresh(Vec<(String, String)>),
    Read {
        channel: String,
        reply: ReplyTo,
    },
}

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
    deferred: Vec<Cmd>,
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
            hub.clone(),
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
            deferred: Vec::new(),
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
        let deferred = std::mem::take(&mut self.deferred);
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
            let deferred = std::mem::take(&mut self.deferred);
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

    // ------------------------------------------------------------ commands --

    /// Keep this node's presence registry (for the refreshes) in step, and
    /// hand presence work to its task.
    fn presence_cmd(&mut self, c: Cmd) -> Option<Cmd> {
        match c {
            Cmd::Join {
                channel,
                member,
                event,
            } => {
                let json = serde_json::to_string(&member).expect("member serializes");
                let key = self.s.names.member_key(&channel, &member.client);
                self.members
                    .entry(channel.clone())
                    .or_default()
                    .insert(member.client.clone(), (key.clone(), json.clone()));
                if self.up {
                    let event = event.then(|| self.s.names.live(&channel));
                    let _ = self.presence.send(PresenceOp::Join { key, json, event });
                }
                // (Down: the refresh after the reconnection re-adds it.)
                None
            }
            Cmd::Leave {
                channel,
                client,
                event,
            } => {
                let held = self
                    .members
                    .get_mut(&channel)
                    .and_then(|m| m.remove(&client));
                if self.members.get(&channel).is_some_and(|m| m.is_empty()) {
                    self.members.remove(&channel);
                }
                if let Some((key, json)) = held {
                    // Down: the key is no longer refreshed and expires.
                    if self.up {
                        let event = event.then(|| self.s.names.live(&channel));
                        let _ = self.presence.send(PresenceOp::Leave { key, json, event });
                    }
                }
                None
            }
            Cmd::Presence { channel, reply } => {
                if self.up {
                    let _ = self.presence.send(PresenceOp::Read { channel, reply });
                } else {
                    self.reply(reply, ReplyBody::Presence(Err(UNREACHABLE)));
                }
                None
            }
            other => Some(other),
        }
    }

    /// NATS is unreachable: answer at once, keep what can wait.
    fn fail(&mut self, c: Cmd) {
        match c {
            Cmd::Publish { reply, .. } => {
                if let Some(to) = reply {
                    self.reply(to, ReplyBody::Published(Err(UNREACHABLE)));
                }
            }
            Cmd::PublishBatch { items, reply } => self.reply(
                reply,
                ReplyBody::PublishedBatch(items.iter().map(|_| Err(UNREACHABLE)).collect()),
            ),
            Cmd::Sync { channel, sub } => self.hub.sync_done(&channel, sub, None),
            Cmd::Rebase { channel, gen, .. } => self.fail(Cmd::CatchUp { channel, gen }),
            Cmd::CatchUp { channel, gen } => {
                let dup = self.deferred.iter().any(
                    |d| matches!(d, Cmd::CatchUp { channel: c, gen: g } if *c == channel && *g == gen),
                );
                if !dup
                    && self.deferred.len() < MAX_DEFERRED
                    && self.hub.catch_up_pending(&channel, gen)
                {
                    self.deferred.push(Cmd::CatchUp { channel, gen });
                }
            }
            Cmd::History { reply, .. } => self.reply(reply, ReplyBody::History(Err(UNREACHABLE))),
            Cmd::Disconnect { user } => log::warn!(
                "disconnect of user {user:?} done on this node only: nats is unreachable"
            ),
            other => {
                let _ = self.presence_cmd(other);
            }
        }
    }

    async fn submit(&mut self, cmds: Vec<Cmd>, pipeline: &mut FuturesOrdered<Job>) {
        for c in cmds {
            let Some(c) = self.presence_cmd(c) else {
                continue;
            };
            if !self.up {
                self.fail(c);
                continue;
            }
            match c {
                Cmd::Publish {
                    channel,
                    data,
                    reply,
                } => {
                    let job = self.publish(channel, data, reply, false).await;
                    pipeline.push_back(job);
                }
                Cmd::PublishBatch { items, reply } => {
                    let mut acks = Vec::with_capacity(items.len());
                    for (channel, data) in items {
                        acks.push(self.send_publication(&channel, &data).await);
                    }
                    let names = self.s.names.clone();
                    pipeline.push_back(Box::pin(async move {
                        let mut results = Vec::with_capacity(acks.len());
                        for a in acks {
                            results.push(match a {
                                Ok(fut) => position(&names, fut.await.map_err(|e| e.kind())),
                                Err(e) => Err(e),
                            });
                        }
                        Done::Batch { reply, results }
                    }));
                }
                Cmd::Sync { channel, sub } => {
                    let read = match &sub.since {
                        Some(p) => Read::After(p.offset, self.recovery_count(&channel)),
                        None if sub.latest => Read::Last(1),
                        None => Read::Meta,
                    };
                    let (store, now) = (self.store.clone(), self.hub.now_ms());
                    pipeline.push_back(Box::pin(async move {
                        let snap = store.snapshot(&channel, read, true, now).await;
                        Done::Sync { channel, sub, snap }
                    }));
                }
                Cmd::CatchUp { channel, gen } => {
                    let read = match self.hub.catch_up_from(&channel, gen) {
                        None => continue,
                        Some(None) => Read::Meta,
                        Some(Some(last)) => Read::After(last, self.recovery_count(&channel)),
                    };
                    let (store, now) = (self.store.clone(), self.hub.now_ms());
                    pipeline.push_back(Box::pin(async move {
                        let snap = store.snapshot(&channel, read, true, now).await;
                        Done::CatchUp { channel, gen, snap }
                    }));
                }
                Cmd::Rebase {
                    channel,
                    gen,
                    epoch,
                    last,
                } => {
                    let (store, now) = (self.store.clone(), self.hub.now_ms());
                    pipeline.push_back(Box::pin(async move {
                        let snap = match store.rebase(&channel, &epoch, last).await {
                            Ok(()) => store.snapshot(&channel, Read::Meta, true, now).await,
                            Err(e) => Err(e),
                        };
                        Done::CatchUp { channel, gen, snap }
                    }));
                }
                Cmd::History {
                    channel,
                    since,
                    limit,
                    reply,
                } => {
                    let read = match &since {
                        Some(p) => Read::After(p.offset, limit),
                        None => Read::Last(limit),
                    };
                    let (store, now) = (self.store.clone(), self.hub.now_ms());
                    pipeline.push_back(Box::pin(async move {
                        let page = match store.snapshot(&channel, read, false, now).await {
                            Ok(snap) => Ok(history_page(snap, since)),
                            Err(e) => {
                                log::warn!("history read of {channel:?}: {e}");
                                Err(match e {
                                    JsError::Unreachable(_) => UNREACHABLE,
                                    _ => JS_ERROR,
                                })
                            }
                        };
                        Done::History { reply, page }
                    }));
                }
                Cmd::Disconnect { user } => {
                    let msg = format!("d{}\n{user}", self.s.instance);
                    let sending = self
                        .client
                        .publish(self.s.names.control(), Bytes::from(msg));
                    match tokio::time::timeout(self.s.command_timeout, sending).await {
                        Ok(Ok(())) => {
                            log::info!("disconnect of user {user:?} sent to the other nodes")
                        }
                        failed => log::warn!(
                            "disconnect of user {user:?} not sent to other nodes: {failed:?}"
                        ),
                    }
                    pipeline.push_back(Box::pin(async { Done::Nothing }));
                }
                Cmd::Join { .. } | Cmd::Leave { .. } | Cmd::Presence { .. } => {}
            }
        }
    }

    fn recovery_count(&self, channel: &str) -> usize {
        self.policy.options(channel).history_size.clamp(1, MAX_READ)
    }

    /// Send one publication to its channel's stream (the stream is found,
    /// or created, first); the acknowledgement comes later.
    async fn send_publication(
        &mut self,
        channel: &str,
        data: &RawValue,
    ) -> Result<PublishAckFuture, OpError> {
        if !self.store.cached(channel) {
            // (The first publication of a channel on this node: one lookup,
            // or a creation, before it is sent; later ones go straight.)
            if let Err(e) = self.store.stream(channel, true).await {
                log::warn!("stream of channel {channel:?}: {e}");
                self.js_failed(&e);
                return Err(match e {
                    JsError::Unreachable(_) => UNREACHABLE,
                    _ => JS_ERROR,
                });
            }
        }
        let payload = Bytes::copy_from_slice(data.get().as_bytes());
        self.jsctx
            .publish(self.s.names.stored(channel), payload)
            .await
            .map_err(|e| {
                log::warn!("publish to channel {channel:?}: {e}");
                UNREACHABLE
            })
    }

    async fn publish(
        &mut self,
        channel: Arc<str>,
        data: Box<RawValue>,
        reply: Option<ReplyTo>,
        retried: bool,
    ) -> Job {
        match self.send_publication(&channel, &data).await {
            Ok(fut) => Box::pin(async move {
                let ack = fut.await.map_err(|e| e.kind());
                Done::Published {
                    channel,
                    data,
                    reply,
                    ack,
                    retried,
                }
            }),
            Err(e) => {
                if let Some(to) = reply {
                    self.reply(to, ReplyBody::Published(Err(e)));
                }
                Box::pin(async { Done::Nothing })
            }
        }
    }

    /// Hand a finished command's answer back.
    async fn complete(&mut self, done: Done, pipeline: &mut FuturesOrdered<Job>) {
        match done {
            Done::Published {
                channel,
                data,
                reply,
                ack,
                retried,
            } => {
                if let (Err(PublishErrorKind::StreamNotFound), false) = (&ack, retried) {
                    // The channel's stream is gone (deleted, or lost with a
                    // server): a new one, a new epoch, and the same
                    // publication once more.
                    self.store.forget(&channel);
                    if self.up {
                        let job = self.publish(channel, data, reply, true).await;
                        pipeline.push_back(job);
                        return;
                    }
                }
                if let Err(PublishErrorKind::TimedOut) = &ack {
                    self.js_failed(&JsError::Unreachable("publish timed out".into()));
                }
                let r = position(&self.s.names, ack);
                if r.is_ok() {
                    self.publications.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(to) = reply {
                    self.reply(to, ReplyBody::Published(r));
                }
            }
            Done::Batch { reply, results } => {
                let ok = results.iter().filter(|r| r.is_ok()).count();
                self.publications.fetch_add(ok as u64, Ordering::Relaxed);
                self.reply(reply, ReplyBody::PublishedBatch(results));
            }
            Done::Sync { channel, sub, snap } => {
                let snap = match snap {
                    Ok(s) => s,
                    Err(e) => {
                        log::warn!("subscribe read of {channel:?}: {e}");
                        self.js_failed(&e);
                        None
                    }
                };
                self.hub.sync_done(&channel, sub, snap);
            }
            Done::CatchUp { channel, gen, snap } => match snap {
                Ok(Some(snap)) => {
                    self.retry_delay = self.s.retry_min;
                    self.hub.catch_up_done(&channel, gen, snap)
                }
                Ok(None) => {}
                Err(e) => {
                    log::warn!("catch-up read of {channel:?}: {e}; tried again later");
                    self.js_failed(&e);
                    if self.deferred.len() < MAX_DEFERRED
                        && self.hub.catch_up_pending(&channel, gen)
                    {
                        self.deferred.push(Cmd::CatchUp { channel, gen });
                    }
                }
            },
            Done::History { reply, page } => self.reply(reply, ReplyBody::History(page)),
            Done::Nothing => {}
        }
    }
}

enum Background {
    Probe(Result<(), JsError>),
    Swept(Result<usize, JsError>),
}

/// A publish acknowledgement as a position: the stream names the epoch,
/// its sequence is the offset.
fn position(
    names: &Names,
    ack: Result<async_nats::jetstream::publish::PublishAck, PublishErrorKind>,
) -> Result<Position, OpError> {
    match ack {
        Ok(a) => match names.epoch_of(&a.stream) {
            Some(epoch) => Ok(Position {
                epoch: epoch.to_owned(),
                offset: a.sequence,
            }),
            None => {
                log::error!(
                    "publication stored in stream {:?}, not one of ours",
                    a.stream
                );
                Err(JS_ERROR)
            }
        },
        Err(PublishErrorKind::TimedOut) => Err(OpError::Unavailable(
            "nats timeout: the publication may have been stored",
        )),
        Err(e) => {
            log::warn!("publish failed: {e}");
            Err(JS_ERROR)
        }
    }
}

/// Hand a channel's live messages to the hub: republished publications
/// (headers name the stream and the sequence) as `OFFSET:EPOCH:DATA`,
/// presence events (`j`/`l` + member JSON) as they are.
async fn live_task(
    mut sub: async_nats::Subscriber,
    hub: Arc<Hub>,
    names: Names,
    channel: Arc<str>,
) {
    while let Some(msg) = sub.next().await {
        match &msg.headers {
            Some(h) => {
                let stream = h.get(HDR_STREAM).map(|v| v.as_str());
                let seq = h.get(HDR_SEQUENCE).map(|v| v.as_str());
                match live_payload(&names, stream, seq, &msg.payload) {
                    Some(p) => hub.on_message(&channel, &p),
                    None => {
                        log::warn!("message on channel {channel:?} from stream {stream:?} ignored")
                    }
                }
            }
            None => hub.on_message(&channel, &msg.payload),
        }
    }
}

/// The control subject: `d<INSTANCE>\n<USER>` from another node
/// disconnects USER here too.
async fn control_task(mut sub: async_nats::Subscriber, hub: Arc<Hub>, instance: String) {
    while let Some(msg) = sub.next().await {
        let text = String::from_utf8_lossy(&msg.payload);
        match text.strip_prefix('d').and_then(|r| r.split_once('\n')) {
            Some((node, _)) if node == instance => {}
            Some((node, user)) => {
                log::info!("node {node} disconnects user {user:?}: closing its connections here");
                hub.disconnect_user(user);
            }
            None => log::warn!("unknown control message ignored: {text:?}"),
        }
    }
}

/// Presence, one operation at a time, in the order queued.
async fn presence_task(
    mut rx: UnboundedReceiver<PresenceOp>,
    hub: Arc<Hub>,
    ctx: async_nats::jetstream::Context,
    client: Client,
    s: Settings,
    js_ok: Arc<AtomicBool>,
) {
    let js = Js::new(client.clone(), s.command_timeout);
    let mut bucket: Option<Bucket> = None;
    while let Some(op) = rx.recv().await {
        if bucket.is_none() {
            match presence::open(&js, &ctx, &s.names, s.presence_ttl, s.storage, s.replicas).await {
                Ok(b) => bucket = Some(b),
                Err(e) => log::warn!("presence bucket: {e}"),
            }
        }
        let Some(b) = &bucket else {
            if let PresenceOp::Read { reply, .. } = op {
                let body = ReplyBody::Presence(Err(UNREACHABLE));
                hub.inboxes_send(reply.worker, WorkerMsg::Reply { to: reply, body });
            }
            continue;
        };
        let announce = |subject: Option<String>, payload: String| {
            let client = client.clone();
            async move {
                if let Some(subject) = subject {
                    if let Err(e) = client.publish(subject, Bytes::from(payload)).await {
                        log::warn!("presence event not sent: {e}");
                    }
                }
            }
        };
        let failed = match op {
            PresenceOp::Join { key, json, event } => match b.join(&key, &json).await {
                Ok(()) => {
                    announce(event, format!("j{json}")).await;
                    None
                }
                Err(e) => Some((format!("join {key:?}"), e)),
            },
            PresenceOp::Leave { key, json, event } => match b.leave(&key).await {
                Ok(()) => {
                    announce(event, format!("l{json}")).await;
                    None
                }
                Err(e) => Some((format!("leave {key:?}"), e)),
            },
            PresenceOp::Refresh(all) => b.refresh(all).await.err().map(|e| ("refresh".into(), e)),
            PresenceOp::Read { channel, reply } => {
                let (answer, failed) = match b.members(&s.names, &channel).await {
                    Ok(info) => (Ok(info), None),
                    Err(e) => {
                        let unreachable =
                            matches!(e, JsError::Unreachable(_)) || !js_ok.load(Ordering::Acquire);
                        let code = if unreachable { UNREACHABLE } else { JS_ERROR };
                        (Err(code), Some((format!("read of {channel:?}"), e)))
                    }
                };
                hub.inboxes_send(
                    reply.worker,
                    WorkerMsg::Reply {
                        to: reply,
                        body: ReplyBody::Presence(answer),
                    },
                );
                failed
            }
        };
        if let Some((what, e)) = failed {
            log::warn!("presence {what}: {e}");
            if matches!(e, JsError::NoStream) {
                // The bucket was lost with its server (memory storage): the
                // next operation makes it anew, the refresh puts the
                // members back.
                bucket = None;
            }
        }
    }
}
