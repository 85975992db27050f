//! The Redis broker: several gateway nodes share channels through Redis.
//!
//! Two threads per node, each with its own connection (the `redis` crate's
//! blocking API), and no worker ever waits for either:
//!
//! - the **command thread** ([`command`]) runs everything that reads or
//!   writes keys: publish, history reads, presence. Workers queue [`Cmd`]s
//!   on a channel and return at once; the thread drains the queue in
//!   batches, sends each batch as one pipeline, and pushes the answers into
//!   the workers' inboxes;
//! - the **pub/sub thread** ([`pubsub`]) holds a SUBSCRIBE connection: it
//!   subscribes to a channel while this node has a local subscriber (and
//!   unsubscribes after the last one leaves), and hands each message to the
//!   [`hub`], which encodes the frame once and pushes a copy to every
//!   interested worker.
//!
//! Per channel, Redis keeps (all keys carry the channel as hash tag):
//!
//! | key | type | what |
//! |---|---|---|
//! | `PREFIX:meta:{CH}` | hash | `e`: the epoch, `o`: the last offset, `b`: the history's data bytes (TTL `meta_ttl`) |
//! | `PREFIX:history:{CH}` | stream | id `OFFSET-0`, fields `d` (data) and `t` (ms), at most `history_size` entries and `history_bytes` bytes of data, TTL `history_ttl` |
//! | `PREFIX:presence:{CH}` | hash | client → `EXPIRY_MS|MEMBER_JSON` (expired fields swept by [`scripts::MEMBERS_EXPIRED`]), key TTL 3 × `presence_ttl` |
//! | `PREFIX:members` | sorted set | `INSTANCE\nCH` → latest expiry of that node's members of CH: swept every `presence_refresh` (one key for the cluster) |
//! | `PREFIX:ch:{CH}` | pub/sub | `OFFSET:EPOCH:DATA`, or `j`/`l` + member JSON |
//! | `PREFIX:control` | pub/sub | `d<INSTANCE>\n<USER>`: an operator disconnected USER on the node INSTANCE (node id/random) |
//!
//! A publication is one Lua script ([`scripts::PUBLISH`]): offset, stream
//! entry and PUBLISH in one atomic step, so the pub/sub order is the offset
//! order. How a node orders subscribe answers against live messages, and
//! what it does with gaps and lost epochs, is in [`hub`].
//!
//! **Outages.** Each thread reconnects with exponential backoff and full
//! jitter. While the command connection is down, publish, history and
//! presence fail with error 10 `unavailable` (HTTP 503) and subscribes are
//! answered without recovery (`"recovered":false`, or refused with
//! `outage_subscribe = "refuse"`), unless the node's own recent deliveries
//! cover the request. When the pub/sub connection comes back, the node
//! resubscribes every channel and reads each stream after the last offset
//! it delivered: the missed publications are delivered in order, or the
//! subscribers get a `resync` event. [`BrokerStats::healthy`] is false while
//! either connection is down (`/healthz` answers 503 `degraded`,
//! `wsgate_broker_healthy` is 0).

mod clock;
mod command;
// The hub and the commands are broker-independent: the NATS broker
// (src/broker/nats.rs) runs the same ones.
pub(crate) mod hub;
mod pubsub;
mod scripts;
mod tail;

pub(crate) use command::history_page;
pub use hub::resync_event;

use std::io;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::value::RawValue;

use super::{Broker, BrokerStats, Inboxes, PublishOptions, ReplyBody, ReplyTo, WorkerMsg};
use crate::base::OpError;
use crate::config::{BrokerConfig, ChannelPolicy, OutageSubscribe};
use crate::hooks::events::Events;
use crate::pubsub::presence::Member;
use crate::pubsub::Position;
use hub::{Hub, PendingSub};

/// Work for the command thread.
#[derive(Debug)]
pub(crate) enum Cmd {
    Publish {
        channel: Arc<str>,
        data: Box<RawValue>,
        opts: PublishOptions,
        reply: Option<ReplyTo>,
    },
    PublishBatch {
        items: Vec<(String, Box<RawValue>)>,
        reply: ReplyTo,
    },
    /// Read what a subscribe needs, then answer it through the hub.
    Sync {
        channel: Arc<str>,
        sub: PendingSub,
    },
    /// Read a channel's stream after the node's last delivery (or its
    /// position, if the node has none yet).
    CatchUp {
        channel: Arc<str>,
        gen: u64,
    },
    /// The channel's offset went backwards under `epoch` (below `last`):
    /// give it a new epoch, then catch up.
    Rebase {
        channel: Arc<str>,
        gen: u64,
        epoch: Arc<str>,
        last: u64,
    },
    History {
        channel: String,
        since: Option<Position>,
        limit: usize,
        /// Newest first.
        reverse: bool,
        reply: ReplyTo,
    },
    Presence {
        channel: String,
        reply: ReplyTo,
    },
    /// Read what a replay part needs that the tail does not hold, then
    /// answer it through the hub.
    Replay {
        worker: usize,
        req: super::ReplayRequest,
        reply: ReplyTo,
    },
    Join {
        channel: Arc<str>,
        member: Member,
        event: bool,
    },
    Leave {
        channel: Arc<str>,
        client: String,
        event: bool,
        /// The member's JSON, set by the command thread (its registry)
        /// when the leave must wait for Redis: sent with the leave then, so
        /// that its `member_removed` is not lost if Redis restarted empty.
        waited: Option<String>,
    },
    /// Announce a join (`join`) or leave of a member not tracked in
    /// presence (a subscribe grant's `presence` off, `join_leave` on).
    Announce {
        channel: Arc<str>,
        member: Member,
        join: bool,
    },
    /// Tell the other nodes to disconnect a user (this node has already).
    Disconnect {
        user: String,
    },
    /// This node's first subscriber of a channel came (`occupied`), or its
    /// last one left: the channel's node set decides whether the
    /// cluster-wide event is this node's to send.
    Occupancy {
        channel: Arc<str>,
        occupied: bool,
    },
    /// A user's first connection on this node opened.
    UserUp {
        user: String,
    },
    /// A user's last connection on this node ended.
    UserDown {
        user: String,
    },
    /// Which of `users` are online anywhere.
    Users {
        users: Vec<String>,
        reply: ReplyTo,
    },
}

/// Redis key and pub/sub channel names.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub fn meta(&self, ch: &str) -> String {
        format!("{}:meta:{{{ch}}}", self.prefix)
    }

    pub fn history(&self, ch: &str) -> String {
        format!("{}:history:{{{ch}}}", self.prefix)
    }

    pub fn presence(&self, ch: &str) -> String {
        format!("{}:presence:{{{ch}}}", self.prefix)
    }

    /// The pub/sub channel.
    pub fn channel(&self, ch: &str) -> String {
        format!("{}:ch:{{{ch}}}", self.prefix)
    }

    /// The nodes with a subscriber of a channel (sorted set, see
    /// [`scripts::OCCUPANCY`]).
    pub fn nodes(&self, ch: &str) -> String {
        format!("{}:nodes:{{{ch}}}", self.prefix)
    }

    /// A publish's idempotency key, remembered for the window.
    pub fn idempotency(&self, ch: &str, key: &str) -> String {
        format!("{}:idem:{{{ch}}}:{key}", self.prefix)
    }

    /// A user's nodes (hash, see [`scripts::USER`]).
    pub fn user(&self, user: &str) -> String {
        format!("{}:user:{{{user}}}", self.prefix)
    }

    /// Every user any node announced, by latest expiry (sorted set): what
    /// the nodes sweep to find users whose node died.
    pub fn users(&self) -> String {
        format!("{}:users", self.prefix)
    }

    /// Every channel any node announced as occupied, by latest expiry
    /// (sorted set): what the nodes sweep to find channels whose nodes
    /// died ([`scripts::OCCUPANCY`]'s `check`).
    pub fn occupied(&self) -> String {
        format!("{}:occupied", self.prefix)
    }

    /// Every node's channels with members (`INSTANCE\nCHANNEL`), by
    /// latest expiry (sorted set): what the nodes sweep to find members
    /// whose node died ([`scripts::MEMBERS_EXPIRED`]).
    pub fn members(&self) -> String {
        format!("{}:members", self.prefix)
    }

    /// The nodes' control channel (pub/sub): `d<INSTANCE>\n<USER>` asks
    /// every node but INSTANCE to disconnect USER.
    pub fn control(&self) -> String {
        format!("{}:control", self.prefix)
    }

    /// The gateway channel of a pub/sub channel name.
    pub fn channel_of<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(self.prefix.as_str())?
            .strip_prefix(":ch:{")?
            .strip_suffix('}')
    }
}

/// Exponential backoff with full jitter: the n-th delay is uniform in
/// `[0, min(max, min·2^n)]`.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let seed = crate::broker::new_epoch()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
        Backoff {
            min,
            max,
            attempt: 0,
            rng: seed | 1,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn next_delay(&mut self) -> Duration {
        let cap = self
            .min
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let frac = (r >> 11) as f64 / (1u64 << 53) as f64;
        cap.mul_f64(frac)
    }
}

/// The Redis client of `broker.redis_url`: for `rediss://`, TLS through
/// the redis crate's rustls support (*ring*, as the gateway's own TLS),
/// with `redis_ca` as the roots if given and a client certificate if
/// given.
fn client(cfg: &BrokerConfig) -> io::Result<::redis::Client> {
    let bad = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "broker.redis_url {:?}: {what}",
                super::without_credentials(&cfg.redis_url)
            ),
        )
    };
    let tls_files =
        !cfg.redis_ca.as_os_str().is_empty() || !cfg.redis_tls_cert.as_os_str().is_empty();
    if cfg.redis_url.starts_with("rediss://") {
        crate::tls::provider::install_default();
    }
    if !tls_files {
        return ::redis::Client::open(cfg.redis_url.as_str()).map_err(|e| bad(e.to_string()));
    }
    let read =
        |p: &std::path::Path| std::fs::read(p).map_err(|e| bad(format!("{}: {e}", p.display())));
    let root_cert = match cfg.redis_ca.as_os_str().is_empty() {
        true => None,
        false => Some(read(&cfg.redis_ca)?),
    };
    let client_tls = match cfg.redis_tls_cert.as_os_str().is_empty() {
        true => None,
        false => Some(::redis::ClientTlsConfig {
            client_cert: read(&cfg.redis_tls_cert)?,
            client_key: read(&cfg.redis_tls_key)?,
        }),
    };
    ::redis::Client::build_with_tls(
        cfg.redis_url.as_str(),
        ::redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(|e| bad(e.to_string()))
}

/// Settings both threads need.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub client: ::redis::Client,
    pub keys: Keys,
    pub node_id: String,
    /// This broker instance (node id + a random part): how the control
    /// channel tells its own messages from other nodes', even if two nodes
    /// were given the same `node_id`.
    pub instance: String,
    pub presence_ttl_ms: u64,
    pub presence_refresh: Duration,
    pub meta_ttl_ms: u64,
    pub command_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl HubBroker {
    /// The broker of a node in a cluster sharing channels through Redis:
    /// start the two threads and wait (up to about a second) for their
    /// first connection attempts, so that a node whose Redis is up starts
    /// healthy. A node whose Redis is down starts all the same (degraded)
    /// and connects when it can.
    pub fn redis(
        cfg: &BrokerConfig,
        inboxes: Arc<Inboxes>,
        policy: Arc<ChannelPolicy>,
        events: Events,
    ) -> io::Result<HubBroker> {
        let client = client(cfg)?;
        let node_id = node_id(cfg);
        let settings = Settings {
            client,
            keys: Keys {
                prefix: cfg.prefix.clone(),
            },
            instance: format!("{node_id}/{}", crate::broker::new_epoch()),
            node_id,
            presence_ttl_ms: cfg.presence_ttl.0,
            presence_refresh: Duration::from_millis(cfg.presence_refresh.0),
            meta_ttl_ms: cfg.meta_ttl.0,
            command_timeout: Duration::from_millis(cfg.command_timeout.0),
            reconnect_min: Duration::from_millis(cfg.reconnect_min.0),
            reconnect_max: Duration::from_millis(cfg.reconnect_max.0),
        };
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (sub_tx, sub_rx) = mpsc::channel();
        let hub = Arc::new(Hub::new(
            inboxes.clone(),
            policy.clone(),
            cmd_tx.clone(),
            sub_tx,
            cfg.outage_subscribe == OutageSubscribe::Refuse,
            events,
            true,
        ));
        let publications = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut threads = Vec::new();
        {
            let (hub, settings, ready, policy, publications) = (
                hub.clone(),
                settings.clone(),
                ready_tx.clone(),
                policy.clone(),
                publications.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name("wsgate-redis-cmd".into())
                    .spawn(move || {
                        command::run(hub, cmd_rx, settings, policy, publications, ready)
                    })?,
            );
        }
        {
            let (hub, settings, ready) = (hub.clone(), settings.clone(), ready_tx);
            threads.push(
                std::thread::Builder::new()
                    .name("wsgate-redis-sub".into())
                    .spawn(move || pubsub::run(hub, sub_rx, settings, ready))?,
            );
        }
        let deadline =
            std::time::Instant::now() + settings.command_timeout.max(Duration::from_secs(1));
        for _ in 0..2 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if ready_rx.recv_timeout(left).is_err() {
                break;
            }
        }
        log::info!(
            "redis broker {} at {} ({})",
            settings.node_id,
            super::without_credentials(&cfg.redis_url),
            if hub.cmd_up.load(Ordering::Acquire) && hub.ps_up.load(Ordering::Acquire) {
                "connected"
            } else {
                "not reachable yet: degraded"
            }
        );
        let send = move |cmd| cmd_tx.send(cmd).err().map(|mpsc::SendError(c)| c);
        Ok(HubBroker {
            kind: "redis",
            hub,
            send: Box::new(send),
            inboxes,
            publications,
            threads,
        })
    }
}

/// The [`Broker`] of the brokers built on the [`Hub`] (Redis, NATS): the
/// workers' subscribes go to the hub, everything else to the broker's
/// command queue (`send`), served by its threads.
pub struct HubBroker {
    pub(crate) kind: &'static str,
    pub(crate) hub: Arc<Hub>,
    /// Queue a command; gives it back if the broker's threads are gone.
    pub(crate) send: Box<dyn Fn(Cmd) -> Option<Cmd> + Send + Sync>,
    pub(crate) inboxes: Arc<Inboxes>,
    pub(crate) publications: Arc<std::sync::atomic::AtomicU64>,
    /// Joined once `hub.stop` is set, when the broker is dropped.
    pub(crate) threads: Vec<JoinHandle<()>>,
}

impl HubBroker {
    fn send(&self, cmd: Cmd) {
        if let Some(cmd) = (self.send)(cmd) {
            answer_stopped(&self.inboxes, cmd);
        }
    }
}

/// The broker's thread is gone (shutting down): answer what expects it.
fn answer_stopped(inboxes: &Inboxes, cmd: Cmd) {
    const STOPPED: OpError = OpError::Unavailable("broker stopped");
    let answer = |to: ReplyTo, body| inboxes.send(to.worker, WorkerMsg::Reply { to, body });
    match cmd {
        Cmd::Publish {
            reply: Some(to), ..
        } => answer(to, ReplyBody::Published(Err(STOPPED))),
        Cmd::PublishBatch { items, reply } => answer(
            reply,
            ReplyBody::PublishedBatch(items.iter().map(|_| Err(STOPPED)).collect()),
        ),
        Cmd::History { reply, .. } => answer(reply, ReplyBody::History(Err(STOPPED))),
        Cmd::Presence { reply, .. } => answer(reply, ReplyBody::Presence(Err(STOPPED))),
        Cmd::Users { reply, .. } => answer(reply, ReplyBody::Users(Err(STOPPED))),
        _ => {}
    }
}

/// The node's name in the broker and the logs: `node_id`, or host name and
/// process id.
pub(crate) fn node_id(cfg: &BrokerConfig) -> String {
    if cfg.node_id.is_empty() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "node".into());
        format!("{host}-{}", std::process::id())
    } else {
        cfg.node_id.clone()
    }
}

impl Drop for HubBroker {
    fn drop(&mut self) {
        self.hub.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Broker for HubBroker {
    fn publish(
        &self,
        _from: usize,
        channel: &str,
        data: &RawValue,
        opts: &PublishOptions,
        reply: Option<ReplyTo>,
    ) {
        if self.kind == "nats" && (opts.exclude_client.is_some() || opts.skip_history) {
            // The live subject could carry the exclusion, a second subject
            // the live-only publications: not built (docs/hooks.md). An
            // idempotency key is JetStream's Nats-Msg-Id.
            if let Some(to) = reply {
                let e = OpError::BadRequest(
                    "exclude_client and skip_history need the memory or redis broker".into(),
                );
                self.inboxes.send(
                    to.worker,
                    WorkerMsg::Reply {
                        to,
                        body: ReplyBody::Published(Err(e)),
                    },
                );
            }
            return;
        }
        self.send(Cmd::Publish {
            channel: channel.into(),
            data: data.to_owned(),
            opts: opts.clone(),
            reply,
        });
    }

    fn publish_batch(&self, _from: usize, items: &[(String, Box<RawValue>)], reply: ReplyTo) {
        self.send(Cmd::PublishBatch {
            items: items.to_vec(),
            reply,
        });
    }

    fn subscribe(
        &self,
        from: usize,
        channel: Arc<str>,
        since: Option<Position>,
        member: Option<Member>,
        flags: super::SubFlags,
        reply: ReplyTo,
    ) {
        self.hub
            .subscribe(from, channel, since, member, flags, reply);
    }

    fn unsubscribe(
        &self,
        from: usize,
        channel: &str,
        member: Option<&Member>,
        flags: super::SubFlags,
    ) {
        self.hub.unsubscribe(from, channel, member, flags);
    }

    fn history(
        &self,
        _from: usize,
        channel: &str,
        since: Option<Position>,
        limit: usize,
        reverse: bool,
        reply: ReplyTo,
    ) {
        self.send(Cmd::History {
            channel: channel.into(),
            since,
            limit,
            reverse,
            reply,
        });
    }

    fn presence(&self, _from: usize, channel: &str, reply: ReplyTo) {
        self.send(Cmd::Presence {
            channel: channel.into(),
            reply,
        });
    }

    fn disconnect_user(&self, user: &str) {
        self.inboxes.disconnect_user(user);
        self.send(Cmd::Disconnect { user: user.into() });
    }

    fn replay(&self, from: usize, req: super::ReplayRequest, reply: ReplyTo) {
        self.hub.replay(from, req, reply);
    }

    fn sweep(&self) {
        self.hub.sweep();
    }

    fn events(&self) -> &Events {
        &self.hub.events
    }

    fn user_up(&self, _from: usize, user: &str) {
        self.hub.user_up(user);
    }

    fn user_down(&self, _from: usize, user: &str) {
        self.hub.user_down(user);
    }

    fn users_online(&self, _from: usize, users: Vec<String>, reply: ReplyTo) {
        self.send(Cmd::Users { users, reply });
    }

    fn stats(&self) -> BrokerStats {
        BrokerStats {
            kind: self.kind,
            healthy: self.hub.cmd_up.load(Ordering::Acquire)
                && self.hub.ps_up.load(Ordering::Acquire),
            channels: self.hub.channels(),
            history_publications: 0,
            publications: self.publications.load(Ordering::Relaxed),
            gaps: self.hub.stats.gaps.load(Ordering::Relaxed),
            resyncs: self.hub.stats.resyncs.load(Ordering::Relaxed),
            history_bytes: self.hub.tails.used.load(Ordering::Relaxed),
            history_limit: self.hub.tails.limit,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_channel_as_hash_tag() {
        let k = Keys {
            prefix: "wsgate".into(),
        };
        assert_eq!(k.meta("chat"), "wsgate:meta:{chat}");
        assert_eq!(k.history("$user:a"), "wsgate:history:{$user:a}");
        assert_eq!(k.channel_of(&k.channel("news:eu")), Some("news:eu"));
        assert_eq!(k.channel_of("other:ch:{x}"), None);
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays[0] <= Duration::from_millis(100));
        assert!(delays[1] <= Duration::from_millis(200));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        let mut distinct = delays.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 10, "jittered: {delays:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
