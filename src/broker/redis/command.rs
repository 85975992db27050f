//! The command thread: one Redis connection for everything but pub/sub.
//!
//! It takes what the workers (and the hub) queued, as many as are waiting
//! (up to [`MAX_BATCH`]), sends them as one pipeline and hands each answer
//! back: replies into the workers' inboxes, subscribe and catch-up reads to
//! the [`Hub`]. A queue that fills while a pipeline is in flight makes the
//! next pipeline longer, which is how it keeps up with many publishers.
//!
//! While Redis is unreachable the queue keeps being drained: each command
//! fails at once (publish, history and presence answer `unavailable`,
//! subscribes are answered without recovery), catch-up reads and leaves are
//! kept for the reconnection, and the members of this node are re-added to
//! presence once it is back.
//!
//! **What a publish's answer means.** Every publish carries a deadline on
//! Redis's clock ([`RedisClock`]); the script refuses to run after it. So:
//!
//! - an offset: published;
//! - error 10 `unavailable` (503): not published, and it never will be —
//!   the command was not sent (no connection), or Redis refused it (past
//!   its deadline, or an error);
//! - error 13 `outcome_unknown` (504): sent, and no answer came (Redis
//!   stopped, the connection dropped with it in flight). It may have run
//!   before its deadline; the answer waits until the deadline has certainly
//!   passed on Redis's clock, so it can no longer run: the outcome is
//!   settled, and the history tells which.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::{Connection, ConnectionLike, RedisResult, Value};
use serde_json::value::RawValue;

use super::clock::{self, RedisClock};
use super::hub::{Hub, Snap};
use super::{scripts, Backoff, Cmd, Settings};
use crate::base::OpError;
use crate::broker::compact::compact;
use crate::broker::{
    new_epoch, publication_frame, HistoryPage, PublishOptions, ReplyBody, ReplyTo, WorkerMsg,
    IDEMPOTENCY_WINDOW_MS,
};
use crate::config::ChannelPolicy;
use crate::pubsub::history::Publication;
use crate::pubsub::presence::{Member, Presence};
use crate::pubsub::Position;

/// Commands sent in one pipeline at most.
const MAX_BATCH: usize = 512;
/// Entries read from a stream at once for a recovery.
const MAX_READ: usize = 10_000;
/// Commands kept for the reconnection, at most.
const MAX_DEFERRED: usize = 100_000;
/// How often the thread looks at the stop flag when idle.
const TICK: Duration = Duration::from_millis(100);

const UNREACHABLE: OpError = OpError::Unavailable("redis unreachable");
const EXPIRED: OpError = OpError::Unavailable("redis did not run it in time: not published");
const UNANSWERED: OpError = OpError::OutcomeUnknown(
    "redis did not answer in time: it may have been published, and no longer can be",
);

struct Shas {
    publish: String,
    read: String,
    join: String,
    leave: String,
    members: String,
    members_expired: String,
    rebase: String,
    occupancy: String,
    user: String,
    index_drop: String,
}

/// Users whose expiry passed looked at per refresh (the sweep of users of
/// nodes that died).
const SWEEP_USERS: usize = 100;
/// Channels whose expiry passed looked at per refresh (the sweep of
/// channels whose nodes died): `channel_vacated` within `presence_ttl` +
/// `presence_refresh` while fewer come due per refresh.
const SWEEP_CHANNELS: usize = 1000;

/// Transitions made while Redis was unreachable (see
/// `CommandThread::owed`).
#[derive(Default)]
struct Owed {
    vacated: HashSet<Arc<str>>,
    offline: HashSet<String>,
}

/// What a command needed to know when it was encoded.
enum Plan {
    Plain,
    /// A catch-up: read after this offset (`None`: the position only), or
    /// nothing to do.
    CatchUp(Option<Option<u64>>),
}

struct CommandThread {
    hub: Arc<Hub>,
    rx: Receiver<Cmd>,
    s: Settings,
    policy: Arc<ChannelPolicy>,
    publications: Arc<AtomicU64>,
    con: Option<Connection>,
    shas: Shas,
    /// This node's members, re-asserted every `presence_refresh`:
    /// channel → client → member JSON.
    members: HashMap<Arc<str>, HashMap<String, String>>,
    /// The channels this node has a subscriber of, re-asserted in their
    /// node sets every `presence_refresh` (with webhooks for them only).
    occupied: HashSet<Arc<str>>,
    /// Catch-ups and leaves that wait for the connection.
    deferred: Vec<Cmd>,
    /// What this node's subscribers and users did while Redis was
    /// unreachable, owed to the cluster when it is back: channels vacated
    /// here (`gone`), users whose last connection here ended (`gone`).
    /// Occupied channels and online users need nothing kept: the refresh
    /// after the reconnection re-derives them. At most [`MAX_DEFERRED`]
    /// each.
    owed: Owed,
    backoff: Backoff,
    retry_at: Instant,
    next_refresh: Instant,
    down_since: Option<Instant>,
    /// Redis's clock as last read on this connection.
    clock: Option<RedisClock>,
    /// Publishes sent and not answered, each answered `outcome_unknown`
    /// once its deadline has certainly passed.
    unsettled: Vec<(Instant, ReplyTo, ReplyBody)>,
}

pub(super) fn run(
    hub: Arc<Hub>,
    rx: Receiver<Cmd>,
    s: Settings,
    policy: Arc<ChannelPolicy>,
    publications: Arc<AtomicU64>,
    ready: Sender<()>,
) {
    let sha = |code: &str| ::redis::Script::new(code).get_hash().to_owned();
    let mut t = CommandThread {
        shas: Shas {
            publish: sha(scripts::PUBLISH),
            read: sha(scripts::READ),
            join: sha(scripts::JOIN),
            leave: sha(scripts::LEAVE),
            members: sha(scripts::MEMBERS),
            members_expired: sha(scripts::MEMBERS_EXPIRED),
            rebase: sha(scripts::REBASE),
            occupancy: sha(scripts::OCCUPANCY),
            user: sha(scripts::USER),
            index_drop: sha(scripts::INDEX_DROP),
        },
        owed: Owed::default(),
        occupied: HashSet::new(),
        backoff: Backoff::new(s.reconnect_min, s.reconnect_max),
        hub,
        rx,
        s,
        policy,
        publications,
        con: None,
        members: HashMap::new(),
        deferred: Vec::new(),
        retry_at: Instant::now(),
        next_refresh: Instant::now(),
        down_since: Some(Instant::now()),
        clock: None,
        unsettled: Vec::new(),
    };
    t.connect();
    let _ = ready.send(());
    t.run();
}

impl CommandThread {
    fn run(&mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while !self.hub.stopping() {
            let now = Instant::now();
            // Not while unanswered publishes wait for their deadline: a
            // connection attempt can block for `command_timeout`, and they
            // are answered a few ms after the connection was given up.
            if self.con.is_none() && now >= self.retry_at && self.unsettled.is_empty() {
                // What queued during the last attempt fails now, not after
                // this one too.
                let queued: Vec<Cmd> = self.rx.try_iter().collect();
                if !queued.is_empty() {
                    self.run_batch(queued, false);
                }
                self.connect();
            }
            let mut wait = self.next_refresh.saturating_duration_since(now).min(TICK);
            if self.con.is_none() {
                wait = wait.min(self.retry_at.saturating_duration_since(now));
            }
            if let Some(first) = self.unsettled.iter().map(|u| u.0).min() {
                wait = wait.min(first.saturating_duration_since(now));
            }
            match self.rx.recv_timeout(wait) {
                Ok(c) => {
                    batch.push(c);
                    while batch.len() < MAX_BATCH {
                        match self.rx.try_recv() {
                            Ok(c) => batch.push(c),
                            Err(_) => break,
                        }
                    }
                    self.run_batch(std::mem::take(&mut batch), false);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.settle(Instant::now());
            if Instant::now() >= self.next_refresh {
                self.refresh_presence();
            }
            if self
                .clock
                .is_some_and(|c| c.sent.elapsed() >= clock::REFRESH)
            {
                self.read_clock();
            }
        }
    }

    fn connect(&mut self) {
        match self.open() {
            Ok((con, clock)) => {
                self.con = Some(con);
                self.clock = Some(clock);
                self.backoff.reset();
                self.hub.cmd_up.store(true, Ordering::Release);
                if let Some(t) = self.down_since.take() {
                    log::info!(
                        "redis command connection up (after {:.1} s)",
                        t.elapsed().as_secs_f64()
                    );
                }
                // What waited for the connection, then presence at once
                // (Redis may have lost it).
                let deferred = std::mem::take(&mut self.deferred);
                if !deferred.is_empty() {
                    self.run_batch(deferred, false);
                }
                self.next_refresh = Instant::now();
            }
            Err(e) => {
                let delay = self.backoff.next_delay();
                if self.down_since.is_none() {
                    self.down_since = Some(Instant::now());
                }
                log::warn!(
                    "redis command connection: {e}; next attempt in {} ms",
                    delay.as_millis()
                );
                self.retry_at = Instant::now() + delay;
            }
        }
    }

    fn open(&self) -> RedisResult<(Connection, RedisClock)> {
        let mut con = self
            .s
            .client
            .get_connection_with_timeout(self.s.command_timeout)?;
        con.set_read_timeout(Some(self.s.command_timeout))?;
        con.set_write_timeout(Some(self.s.command_timeout))?;
        ::redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(format!("wsgate:{}:cmd", self.s.node_id))
            .exec(&mut con)?;
        Self::load_scripts(&mut con)?;
        let clock = Self::time(&mut con)?;
        Ok((con, clock))
    }

    /// Read Redis's clock (`TIME`).
    fn time(con: &mut Connection) -> RedisResult<RedisClock> {
        let sent = Instant::now();
        let (s, us): (u64, u64) = ::redis::cmd("TIME").query(con)?;
        Ok(RedisClock {
            sent,
            received: Instant::now(),
            redis_us: s * 1_000_000 + us,
        })
    }

    /// Read Redis's clock again (the clocks may drift apart).
    fn read_clock(&mut self) {
        let Some(con) = self.con.as_mut() else {
            return;
        };
        match Self::time(con) {
            Ok(c) => self.clock = Some(c),
            Err(e) => self.lost(&e),
        }
    }

    /// Answer the unanswered publishes whose deadline has certainly passed.
    fn settle(&mut self, now: Instant) {
        if !self.unsettled.iter().any(|u| u.0 <= now) {
            return;
        }
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.unsettled)
            .into_iter()
            .partition(|u| u.0 <= now);
        self.unsettled = rest;
        for (_, to, body) in due {
            self.reply(to, body);
        }
    }

    /// A batch was sent and its answers did not come: the publishes in it
    /// are answered `outcome_unknown` once their deadline has certainly
    /// passed; the rest fail as if never sent (reads and presence changes
    /// are safe to repeat or to lose).
    fn unanswered(&mut self, batch: Vec<Cmd>, settled_at: Instant) {
        for c in batch {
            match c {
                Cmd::Publish { reply, .. } => {
                    if let Some(to) = reply {
                        self.unsettled.push((
                            settled_at,
                            to,
                            ReplyBody::Published(Err(UNANSWERED)),
                        ));
                    }
                }
                Cmd::PublishBatch { items, reply } => {
                    let body =
                        ReplyBody::PublishedBatch(items.iter().map(|_| Err(UNANSWERED)).collect());
                    self.unsettled.push((settled_at, reply, body));
                }
                c => self.fail(c),
            }
        }
    }

    fn load_scripts(con: &mut Connection) -> RedisResult<()> {
        for code in [
            scripts::PUBLISH,
            scripts::READ,
            scripts::JOIN,
            scripts::LEAVE,
            scripts::MEMBERS,
            scripts::MEMBERS_EXPIRED,
            scripts::REBASE,
            scripts::OCCUPANCY,
            scripts::USER,
            scripts::INDEX_DROP,
        ] {
            ::redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(code)
                .query::<String>(con)?;
        }
        Ok(())
    }

    /// The connection failed: every command fails fast until it is back.
    fn lost(&mut self, e: &::redis::RedisError) {
        self.con = None;
        self.hub.cmd_up.store(false, Ordering::Release);
        self.down_since = Some(Instant::now());
        let delay = self.backoff.next_delay();
        self.retry_at = Instant::now() + delay;
        log::warn!(
            "redis command connection lost: {e}; reconnecting in {} ms",
            delay.as_millis()
        );
    }

    fn reply(&self, to: ReplyTo, body: ReplyBody) {
        self.hub
            .inboxes_send(to.worker, WorkerMsg::Reply { to, body });
    }

    fn run_batch(&mut self, mut batch: Vec<Cmd>, retried: bool) {
        for c in &mut batch {
            self.note_member(c);
        }
        if self.con.is_none() {
            for c in batch {
                self.fail(c);
            }
            return;
        }
        let clock = self.clock.expect("read at every connection");
        let deadline = clock.deadline_ms(Instant::now(), self.s.command_timeout);
        let mut packed = Vec::with_capacity(batch.len() * 128);
        let mut counts = Vec::with_capacity(batch.len());
        let mut plans = Vec::with_capacity(batch.len());
        for c in &batch {
            let (n, plan) = self.encode(c, deadline, &mut packed);
            counts.push(n);
            plans.push(plan);
        }
        let total: usize = counts.iter().sum();
        let values = if total == 0 {
            Vec::new()
        } else {
            let con = self.con.as_mut().expect("checked above");
            let answers = match con.req_packed_commands(&packed, 0, total) {
                Ok(v) if v.len() == total => Ok(v),
                Ok(v) => Err(::redis::RedisError::from(std::io::Error::other(format!(
                    "{} answers for {total} commands",
                    v.len()
                )))),
                Err(e) => Err(e),
            };
            match answers {
                Ok(v) => v,
                Err(e) => {
                    // Some of it may have reached Redis, and may still run
                    // there until the deadline.
                    self.lost(&e);
                    return self.unanswered(batch, clock.settled_at(deadline));
                }
            }
        };
        let mut values = values.into_iter();
        let mut retry = Vec::new();
        for ((c, n), plan) in batch.into_iter().zip(counts).zip(plans) {
            let vals: Vec<Value> = values.by_ref().take(n).collect();
            if !retried && vals.iter().any(is_noscript) {
                retry.push(c);
                continue;
            }
            self.complete(c, plan, vals);
        }
        if !retry.is_empty() {
            // Someone flushed the scripts: load them again and retry once.
            let con = self.con.as_mut().expect("checked above");
            if let Err(e) = Self::load_scripts(con) {
                self.lost(&e);
            }
            self.run_batch(retry, true);
        }
    }

    /// Keep this node's presence registry (for the refreshes) in step; a
    /// leave that will wait for Redis takes its member's JSON along.
    fn note_member(&mut self, c: &mut Cmd) {
        match c {
            Cmd::Join {
                channel, member, ..
            } => {
                let json = serde_json::to_string(member).expect("member serializes");
                self.members
                    .entry(channel.clone())
                    .or_default()
                    .insert(member.client().to_string(), json);
            }
            Cmd::Leave {
                channel,
                client,
                waited,
                ..
            } => {
                if let Some(m) = self.members.get_mut(channel) {
                    let json = m.remove(client);
                    if self.con.is_none() && waited.is_none() {
                        *waited = json;
                    }
                    if m.is_empty() {
                        self.members.remove(channel);
                    }
                }
            }
            Cmd::Occupancy { channel, occupied } => {
                if *occupied {
                    self.occupied.insert(channel.clone());
                } else {
                    self.occupied.remove(channel);
                    if self.occupied.capacity() > 64
                        && self.occupied.len() * 4 < self.occupied.capacity()
                    {
                        self.occupied.shrink_to(self.occupied.len() * 2);
                    }
                }
            }
            _ => {}
        }
    }

    fn history_ttl(&self, channel: &str) -> (usize, u64) {
        let o = self.policy.options(channel);
        (o.history_size, o.history_ttl.0)
    }

    fn history_bytes(&self, channel: &str) -> usize {
        self.policy.options(channel).history_bytes
    }

    fn read_cmd(
        &self,
        channel: &str,
        mode: &str,
        after: u64,
        count: usize,
        create: bool,
    ) -> ::redis::Cmd {
        let (_, ttl) = self.history_ttl(channel);
        let mut c = ::redis::cmd("EVALSHA");
        c.arg(&self.shas.read)
            .arg(2)
            .arg(self.s.keys.meta(channel))
            .arg(self.s.keys.history(channel))
            .arg(mode)
            .arg(after)
            .arg(count)
            .arg(ttl.max(1))
            .arg(if create { new_epoch() } else { String::new() })
            .arg(self.s.meta_ttl_ms.max(ttl).max(1));
        c
    }

    fn publish_cmd(
        &self,
        channel: &str,
        data: &RawValue,
        opts: &PublishOptions,
        deadline_ms: u64,
    ) -> ::redis::Cmd {
        let (size, ttl) = self.history_ttl(channel);
        let key = opts.idempotency_key.as_deref();
        let mut c = ::redis::cmd("EVALSHA");
        c.arg(&self.shas.publish)
            .arg(3)
            .arg(self.s.keys.meta(channel))
            .arg(self.s.keys.history(channel))
            .arg(self.s.keys.idempotency(channel, key.unwrap_or("")))
            .arg(self.s.keys.channel(channel))
            // Stored and sent in the one compact form (see broker::compact).
            .arg(&*compact(data))
            .arg(size)
            .arg(ttl.max(1))
            .arg(self.s.meta_ttl_ms.max(ttl).max(1))
            .arg(new_epoch())
            .arg(self.history_bytes(channel))
            .arg(deadline_ms)
            .arg(if key.is_some() { "1" } else { "0" })
            .arg(IDEMPOTENCY_WINDOW_MS)
            .arg(if opts.skip_history { "1" } else { "0" })
            .arg(opts.exclude_client.as_deref().unwrap_or(""));
        c
    }

    fn user_cmd(&self, mode: &str, user: &str) -> ::redis::Cmd {
        let mut c = ::redis::cmd("EVALSHA");
        c.arg(&self.shas.user)
            .arg(1)
            .arg(self.s.keys.user(user))
            .arg(mode)
            .arg(&self.s.instance)
            .arg(self.s.presence_ttl_ms.max(1));
        c
    }

    fn occupancy_cmd(&self, mode: &str, channel: &str) -> ::redis::Cmd {
        let mut c = ::redis::cmd("EVALSHA");
        c.arg(&self.shas.occupancy)
            .arg(2)
            .arg(self.s.keys.nodes(channel))
            .arg(self.s.keys.presence(channel))
            .arg(mode)
            .arg(&self.s.instance)
            .arg(self.s.presence_ttl_ms.max(1))
            .arg(self.leave_events(channel));
        c
    }

    /// The sweep's `ZADD` of a user's latest expiry (ms on Redis's clock).
    fn user_expiry_cmd(&self, user: &str) -> ::redis::Cmd {
        self.expiry_cmd(self.s.keys.users(), user)
    }

    /// The sweep's `ZADD` of the latest expiry of this node's members of
    /// a channel: `INSTANCE\nCHANNEL` (per node, as a live node's refresh
    /// must not hide a dead one's members of the same channel).
    fn members_expiry_cmd(&self, channel: &str) -> ::redis::Cmd {
        self.expiry_cmd(
            self.s.keys.members(),
            &format!("{}\n{channel}", self.s.instance),
        )
    }

    /// The pub/sub channel that announces joins and leaves of `channel`'s
    /// members, `""` where its namespace has no `join_leave`.
    fn leave_events(&self, channel: &str) -> String {
        if self.policy.options(channel).join_leave {
            self.s.keys.channel(channel)
        } else {
            String::new()
        }
    }

    /// The sweep's `ZADD` of an occupied channel's latest expiry.
    fn occupied_expiry_cmd(&self, channel: &str) -> ::redis::Cmd {
        self.expiry_cmd(self.s.keys.occupied(), channel)
    }

    fn expiry_cmd(&self, index: String, member: &str) -> ::redis::Cmd {
        let now = self.redis_now_ms();
        let mut c = ::redis::cmd("ZADD");
        c.arg(index)
            .arg("GT")
            .arg(now + self.s.presence_ttl_ms.max(1))
            .arg(member);
        c
    }

    /// A [`scripts::OCCUPANCY`] answer: its events, sent (the members it
    /// removed first: `member_removed` before `channel_vacated`).
    fn occupancy_events(&self, channel: &str, v: Option<&Value>) {
        match occupancy_answer(v) {
            Some((events, _)) => {
                if let Some(Value::Array(items)) = v {
                    self.members_removed(channel, items.get(2..).unwrap_or_default());
                }
                if events & 2 != 0 {
                    self.hub.events.channel(channel, false);
                }
                if events & 1 != 0 {
                    self.hub.events.channel(channel, true);
                }
            }
            None => log::warn!("occupancy of {channel:?}: {v:?}"),
        }
    }

    /// `member_removed` for each member JSON of a script's answer (the
    /// member as it joined: its user included).
    fn members_removed(&self, channel: &str, items: &[Value]) {
        for b in items.iter().filter_map(bytes) {
            match serde_json::from_slice::<Member>(b) {
                Ok(m) => self.hub.events.member(channel, &m, false),
                Err(e) => log::warn!("member of {channel:?} removed, not sent: {e}"),
            }
        }
    }

    /// `member_added` for the members a refresh's [`scripts::JOIN`] added
    /// back (removed as a dead node's when this node's refresh came late,
    /// or lost by Redis).
    fn members_added(&self, channel: &str, v: Option<&Value>) {
        let Some(Value::Array(items)) = v else {
            return log::warn!("presence refresh of {channel:?}: {v:?}");
        };
        for b in items.iter().filter_map(bytes) {
            if let Ok(m) = serde_json::from_slice::<Member>(b) {
                self.hub.events.member(channel, &m, true);
            }
        }
    }

    /// A [`scripts::USER`] answer to `up`, `refresh`, `down` or `gone`:
    /// its events, sent.
    fn user_events(&self, user: &str, v: Option<&Value>) -> Option<u64> {
        match user_answer(v) {
            Some((alive, events)) => {
                self.send_user_events(user, events);
                Some(alive)
            }
            None => {
                log::warn!("user presence of {user:?}: {v:?}");
                None
            }
        }
    }

    /// Bits of a [`scripts::USER`] answer: 2 offline, then 1 online.
    fn send_user_events(&self, user: &str, events: u64) {
        if events & 2 != 0 {
            self.hub.events.user(user, false);
        }
        if events & 1 != 0 {
            self.hub.events.user(user, true);
        }
    }

    /// Redis's clock now, as last read (0 before the first read).
    fn redis_now_ms(&self) -> u64 {
        self.clock
            .map_or(0, |c| c.deadline_ms(Instant::now(), Duration::ZERO))
    }

    /// Append a command's Redis commands to `out`; returns how many.
    /// Publishes refuse to run after `deadline_ms` (Redis's clock).
    fn encode(&self, c: &Cmd, deadline_ms: u64, out: &mut Vec<u8>) -> (usize, Plan) {
        let recovery_count = |channel: &str| self.history_ttl(channel).0.clamp(1, MAX_READ);
        match c {
            Cmd::Publish {
                channel,
                data,
                opts,
                ..
            } => {
                self.publish_cmd(channel, data, opts, deadline_ms)
                    .write_packed_command(out);
                (1, Plan::Plain)
            }
            Cmd::PublishBatch { items, .. } => {
                let opts = PublishOptions::default();
                for (channel, data) in items {
                    self.publish_cmd(channel, data, &opts, deadline_ms)
                        .write_packed_command(out);
                }
                (items.len(), Plan::Plain)
            }
            Cmd::Occupancy { channel, occupied } => {
                let mode = if *occupied { "up" } else { "down" };
                self.occupancy_cmd(mode, channel).write_packed_command(out);
                if *occupied {
                    self.occupied_expiry_cmd(channel).write_packed_command(out);
                    return (2, Plan::Plain);
                }
                (1, Plan::Plain)
            }
            Cmd::UserUp { user } => {
                self.user_cmd("up", user).write_packed_command(out);
                self.user_expiry_cmd(user).write_packed_command(out);
                (2, Plan::Plain)
            }
            Cmd::UserDown { user } => {
                self.user_cmd("down", user).write_packed_command(out);
                (1, Plan::Plain)
            }
            Cmd::Users { users, .. } => {
                for u in users {
                    self.user_cmd("check", u).write_packed_command(out);
                }
                (users.len(), Plan::Plain)
            }
            Cmd::Sync { channel, sub } => {
                let cmd = match &sub.since {
                    Some(p) => {
                        let mut c = self.read_cmd(
                            channel,
                            "after",
                            p.offset,
                            recovery_count(channel),
                            true,
                        );
                        // If `p.epoch` has ended: the current one from its start.
                        c.arg(&p.epoch);
                        c
                    }
                    None if sub.latest => self.read_cmd(channel, "last", 0, 1, true),
                    None => self.read_cmd(channel, "meta", 0, 0, true),
                };
                cmd.write_packed_command(out);
                (1, Plan::Plain)
            }
            Cmd::CatchUp { channel, gen } => {
                let from = self.hub.catch_up_from(channel, *gen);
                let cmd = match from {
                    None => return (0, Plan::CatchUp(None)),
                    Some(None) => self.read_cmd(channel, "meta", 0, 0, true),
                    Some(Some(last)) => {
                        self.read_cmd(channel, "after", last, recovery_count(channel), true)
                    }
                };
                cmd.write_packed_command(out);
                (1, Plan::CatchUp(from))
            }
            Cmd::Rebase {
                channel,
                epoch,
                last,
                ..
            } => {
                // The new epoch, then a read in the same pipeline.
                ::redis::cmd("EVALSHA")
                    .arg(&self.shas.rebase)
                    .arg(2)
                    .arg(self.s.keys.meta(channel))
                    .arg(self.s.keys.history(channel))
                    .arg(&**epoch)
                    .arg(*last)
                    .arg(new_epoch())
                    .write_packed_command(out);
                self.read_cmd(channel, "meta", 0, 0, true)
                    .write_packed_command(out);
                (2, Plan::Plain)
            }
            Cmd::History {
                channel,
                since,
                limit,
                ..
            } => {
                let cmd = match since {
                    // `limit` 0: the position only.
                    _ if *limit == 0 => self.read_cmd(channel, "meta", 0, 0, false),
                    Some(p) => self.read_cmd(channel, "after", p.offset, *limit, false),
                    None => self.read_cmd(channel, "last", 0, *limit, false),
                };
                cmd.write_packed_command(out);
                (1, Plan::Plain)
            }
            Cmd::Replay { req, .. } => {
                let count = recovery_count(&req.channel);
                self.read_cmd(&req.channel, "after", req.after, count, false)
                    .write_packed_command(out);
                (1, Plan::Plain)
            }
            Cmd::Presence { channel, .. } => {
                ::redis::cmd("EVALSHA")
                    .arg(&self.shas.members)
                    .arg(1)
                    .arg(self.s.keys.presence(channel))
                    .write_packed_command(out);
                (1, Plan::Plain)
            }
            Cmd::Join {
                channel,
                member,
                event,
            } => {
                let json = serde_json::to_string(member).expect("member serializes");
                ::redis::cmd("EVALSHA")
                    .arg(&self.shas.join)
                    .arg(1)
                    .arg(self.s.keys.presence(channel))
                    .arg(if *event {
                        self.s.keys.channel(channel)
                    } else {
                        String::new()
                    })
                    .arg(self.s.presence_ttl_ms.max(1))
                    .arg(&*member.client())
                    .arg(json)
                    .write_packed_command(out);
                self.members_expiry_cmd(channel).write_packed_command(out);
                (2, Plan::Plain)
            }
            Cmd::Leave {
                channel,
                client,
                event,
                waited,
            } => {
                ::redis::cmd("EVALSHA")
                    .arg(&self.shas.leave)
                    .arg(1)
                    .arg(self.s.keys.presence(channel))
                    .arg(if *event {
                        self.s.keys.channel(channel)
                    } else {
                        String::new()
                    })
                    .arg(client)
                    .arg(waited.as_deref().unwrap_or(""))
                    .write_packed_command(out);
                (1, Plan::Plain)
            }
            Cmd::Announce {
                channel,
                member,
                join,
            } => {
                let json = serde_json::to_string(member).expect("member serializes");
                let kind = if *join { 'j' } else { 'l' };
                ::redis::cmd("PUBLISH")
                    .arg(self.s.keys.channel(channel))
                    .arg(format!("{kind}{json}"))
                    .write_packed_command(out);
                (1, Plan::Plain)
            }
            Cmd::Disconnect { user } => {
                ::redis::cmd("PUBLISH")
                    .arg(self.s.keys.control())
                    .arg(format!("d{}\n{user}", self.s.instance))
                    .write_packed_command(out);
                (1, Plan::Plain)
            }
        }
    }

    /// Hand a command's answers back.
    fn complete(&mut self, c: Cmd, plan: Plan, vals: Vec<Value>) {
        let now = self.hub.now_ms();
        match c {
            Cmd::Publish {
                channel,
                data,
                opts,
                reply,
            } => {
                let v = vals.into_iter().next();
                // The script's third element marks a repeated idempotency key.
                let repeat = matches!(&v, Some(Value::Array(a)) if a.len() > 2);
                let r = v.map_or(Err(UNREACHABLE), |v| self.position(v));
                crate::broker::client_event(&self.hub.events, &channel, &data, &opts, &r, repeat);
                if let Some(to) = reply {
                    self.reply(to, ReplyBody::Published(r));
                }
            }
            Cmd::PublishBatch { reply, .. } => {
                let results = vals.into_iter().map(|v| self.position(v)).collect();
                self.reply(reply, ReplyBody::PublishedBatch(results));
            }
            Cmd::Sync { channel, sub } => {
                let snap = vals
                    .into_iter()
                    .next()
                    .and_then(|v| parse_snap(&channel, v, now).ok().flatten());
                self.hub.sync_done(&channel, sub, snap);
            }
            Cmd::CatchUp { channel, gen } => {
                if let Plan::CatchUp(Some(_)) = plan {
                    match vals
                        .into_iter()
                        .next()
                        .map(|v| parse_snap(&channel, v, now))
                    {
                        Some(Ok(Some(snap))) => self.hub.catch_up_done(&channel, gen, snap),
                        other => log::error!("catch-up read of {channel:?} failed: {other:?}"),
                    }
                }
            }
            Cmd::Rebase { channel, gen, .. } => {
                // The read after the rebase shows the new epoch: the hub
                // resyncs the subscribers to it and reads its history.
                match vals
                    .into_iter()
                    .nth(1)
                    .map(|v| parse_snap(&channel, v, now))
                {
                    Some(Ok(Some(snap))) => self.hub.catch_up_done(&channel, gen, snap),
                    other => log::error!("rebase of {channel:?} failed: {other:?}"),
                }
            }
            Cmd::History {
                channel,
                since,
                reverse,
                reply,
                ..
            } => {
                let page = vals
                    .into_iter()
                    .next()
                    .ok_or(UNREACHABLE)
                    .and_then(|v| {
                        parse_snap(&channel, v, now).map_err(|e| {
                            log::warn!("history read of {channel:?}: {e}");
                            OpError::Unavailable("redis error")
                        })
                    })
                    .map(|snap| history_page(snap, since).reversed(reverse));
                self.reply(reply, ReplyBody::History(page));
            }
            Cmd::Replay { worker, req, reply } => {
                let snap = vals
                    .into_iter()
                    .next()
                    .and_then(|v| parse_snap(&req.channel, v, now).ok().flatten());
                self.hub.replay_done(worker, req, reply, snap);
            }
            Cmd::Presence { channel, reply } => {
                let info = match vals.into_iter().next() {
                    Some(Value::Array(items)) => {
                        let mut p = Presence::default();
                        for m in items.iter().filter_map(bytes) {
                            match serde_json::from_slice::<Member>(m) {
                                Ok(m) if m.valid() => {
                                    p.join(m);
                                }
                                _ => log::warn!("presence of {channel:?}: invalid member skipped"),
                            }
                        }
                        Ok(p.info())
                    }
                    other => {
                        log::warn!("presence read of {channel:?}: {other:?}");
                        Err(OpError::Unavailable("redis error"))
                    }
                };
                self.reply(reply, ReplyBody::Presence(info));
            }
            Cmd::Join { channel, .. } | Cmd::Announce { channel, .. } => {
                if let Some(Value::ServerError(e)) = vals.first() {
                    log::warn!("presence update of {channel:?}: {e:?}");
                }
            }
            Cmd::Leave { channel, .. } => match vals.first() {
                Some(Value::ServerError(e)) => {
                    log::warn!("presence update of {channel:?}: {e:?}")
                }
                Some(v) => self.members_removed(&channel, std::slice::from_ref(v)),
                None => {}
            },
            Cmd::Occupancy { channel, .. } => self.occupancy_events(&channel, vals.first()),
            Cmd::UserUp { user } | Cmd::UserDown { user } => {
                self.user_events(&user, vals.first());
            }
            Cmd::Users { users, reply } => {
                let mut online = Vec::with_capacity(users.len());
                for (u, v) in users.into_iter().zip(&vals) {
                    match user_answer(Some(v)) {
                        Some((alive, events)) => {
                            // Its last node died: this read saw it go.
                            self.send_user_events(&u, events);
                            online.push((u, alive > 0));
                        }
                        None => {
                            log::warn!("user presence read of {u:?}: {v:?}");
                            return self.reply(
                                reply,
                                ReplyBody::Users(Err(OpError::Unavailable("redis error"))),
                            );
                        }
                    }
                }
                self.reply(reply, ReplyBody::Users(Ok(online)));
            }
            Cmd::Disconnect { user } => match vals.first() {
                Some(Value::Int(n)) => {
                    log::info!("disconnect of user {user:?} sent to {n} nodes' control channel")
                }
                other => {
                    log::warn!("disconnect of user {user:?} not sent to other nodes: {other:?}")
                }
            },
        }
    }

    /// A publish script's answer: `{epoch, offset}`.
    fn position(&self, v: Value) -> Result<Position, OpError> {
        if let Value::Array(a) = &v {
            if let (Some(e), Some(o)) = (a.first().and_then(bytes), a.get(1).and_then(int)) {
                self.publications.fetch_add(1, Ordering::Relaxed);
                return Ok(Position {
                    epoch: String::from_utf8_lossy(e).into_owned(),
                    offset: o,
                });
            }
        }
        if matches!(&v, Value::ServerError(e) if e.code() == "EXPIRED") {
            log::warn!("publish refused by redis: it ran after its deadline");
            return Err(EXPIRED);
        }
        log::warn!("publish failed in redis: {v:?}");
        Err(OpError::Unavailable("redis error"))
    }

    /// Redis is unreachable: answer at once, keep what can wait.
    fn fail(&mut self, c: Cmd) {
        match c {
            Cmd::Publish { reply, .. } => {
                if let Some(to) = reply {
                    self.reply(to, ReplyBody::Published(Err(UNREACHABLE)));
                }
            }
            Cmd::PublishBatch { items, reply } => {
                self.reply(
                    reply,
                    ReplyBody::PublishedBatch(items.iter().map(|_| Err(UNREACHABLE)).collect()),
                );
            }
            Cmd::Sync { channel, sub } => self.hub.sync_done(&channel, sub, None),
            Cmd::Rebase { channel, gen, .. } => {
                // The catch-up after the reconnection will see it again.
                self.fail(Cmd::CatchUp { channel, gen });
            }
            Cmd::CatchUp { channel, gen } => {
                let dup = self.deferred.iter().any(
                    |d| matches!(d, Cmd::CatchUp { channel: c, gen: g } if *c == channel && *g == gen),
                );
                if !dup && self.hub.catch_up_pending(&channel, gen) {
                    self.deferred.push(Cmd::CatchUp { channel, gen });
                }
            }
            Cmd::History { reply, .. } => self.reply(reply, ReplyBody::History(Err(UNREACHABLE))),
            Cmd::Presence { reply, .. } => self.reply(reply, ReplyBody::Presence(Err(UNREACHABLE))),
            Cmd::Replay { worker, req, reply } => self.hub.replay_done(worker, req, reply, None),
            // Re-added by the refresh after the reconnection.
            // An announcement is for now or never (as a join's).
            Cmd::Join { .. } | Cmd::Announce { .. } => {}
            // Removed at once when Redis is back (else it expires with its
            // TTL, as the refresh no longer asserts it).
            Cmd::Leave { .. } if self.deferred.len() < MAX_DEFERRED => self.deferred.push(c),
            Cmd::Leave { .. } => {}
            Cmd::Disconnect { user } => log::warn!(
                "disconnect of user {user:?} done on this node only: redis is unreachable"
            ),
            Cmd::Users { reply, .. } => self.reply(reply, ReplyBody::Users(Err(UNREACHABLE))),
            // Re-derived by the refresh after the reconnection (which
            // sends `channel_occupied` / `user_online` when it finds no live
            // node): a vacancy or absence that began here during the outage
            // is owed (`gone`); one undone during the outage is not.
            Cmd::Occupancy {
                channel,
                occupied: true,
            } => {
                self.owed.vacated.remove(&channel);
            }
            Cmd::UserUp { user } => {
                self.owed.offline.remove(&user);
            }
            Cmd::Occupancy {
                channel,
                occupied: false,
            } => {
                if self.owed.vacated.len() < MAX_DEFERRED {
                    self.owed.vacated.insert(channel);
                } else {
                    log::warn!("channel_vacated of {channel:?} not owed: too many owed");
                }
            }
            Cmd::UserDown { user } => {
                if self.owed.offline.len() < MAX_DEFERRED {
                    self.owed.offline.insert(user);
                } else {
                    log::warn!("user_offline of {user:?} not owed: too many owed");
                }
            }
        }
    }

    /// Re-assert every member, occupied channel and user of this node
    /// (their expiry moves forward), settling first what it owes from an
    /// outage; then sweep what dead nodes left behind.
    ///
    /// The occupancy and user scripts re-derive their events here: a
    /// channel or user that no live node holds (Redis was unreachable when
    /// it came, or restarted empty, or this refresh came late) gets its
    /// `channel_occupied` / `user_online` now.
    fn refresh_presence(&mut self) {
        self.next_refresh = Instant::now() + self.s.presence_refresh;
        if self.con.is_none() {
            return;
        }
        let users = self.hub.users.users();
        let owed_vacated: Vec<Arc<str>> = self
            .owed
            .vacated
            .iter()
            .filter(|c| !self.occupied.contains(*c))
            .cloned()
            .collect();
        let owed_offline: Vec<String> = if self.owed.offline.is_empty() {
            Vec::new()
        } else {
            let here: HashSet<&String> = users.iter().collect();
            self.owed
                .offline
                .iter()
                .filter(|u| !here.contains(u))
                .cloned()
                .collect()
        };
        if users.is_empty()
            && self.occupied.is_empty()
            && self.members.is_empty()
            && owed_vacated.is_empty()
            && owed_offline.is_empty()
        {
            self.owed = Owed::default();
            return self.sweep();
        }
        // Answers kept, in this order: owed channels, owed users, members
        // (each channel's), occupied channels, users; everything else
        // ignored. Members first: a node's members expire no later than its
        // channels.
        let mut pipe = ::redis::pipe();
        for channel in &owed_vacated {
            pipe.add_command(self.occupancy_cmd("gone", channel));
        }
        for u in &owed_offline {
            pipe.add_command(self.user_cmd("gone", u));
        }
        let with_members: Vec<Arc<str>> = self.members.keys().cloned().collect();
        for channel in &with_members {
            let c = pipe
                .cmd("EVALSHA")
                .arg(&self.shas.join)
                .arg(1)
                .arg(self.s.keys.presence(channel))
                .arg("")
                .arg(self.s.presence_ttl_ms.max(1));
            for (client, json) in &self.members[channel] {
                c.arg(client).arg(json);
            }
            pipe.add_command(self.members_expiry_cmd(channel)).ignore();
        }
        let occupied: Vec<Arc<str>> = self.occupied.iter().cloned().collect();
        for channel in &occupied {
            pipe.add_command(self.occupancy_cmd("refresh", channel));
            pipe.add_command(self.occupied_expiry_cmd(channel)).ignore();
        }
        for u in &users {
            pipe.add_command(self.user_cmd("refresh", u));
            pipe.add_command(self.user_expiry_cmd(u)).ignore();
        }
        let con = self.con.as_mut().expect("checked above");
        let answers: Vec<Value> = match pipe.query(con) {
            Ok(a) => a,
            Err(e) => {
                if e.code() == Some("NOSCRIPT") {
                    if let Err(e) = Self::load_scripts(con) {
                        self.lost(&e);
                    }
                    self.next_refresh = Instant::now();
                } else if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                    self.lost(&e);
                } else {
                    log::warn!("presence refresh: {e}");
                }
                return;
            }
        };
        let mut answers = answers.iter();
        for channel in &owed_vacated {
            self.occupancy_events(channel, answers.next());
        }
        for u in &owed_offline {
            self.user_events(u, answers.next());
        }
        self.owed = Owed::default();
        for channel in &with_members {
            self.members_added(channel, answers.next());
        }
        for channel in &occupied {
            self.occupancy_events(channel, answers.next());
        }
        for u in &users {
            self.user_events(u, answers.next());
        }
        self.sweep();
    }

    /// Members first, so that a dead node's `member_removed` come before
    /// its channels' `channel_vacated` (which also removes what is left,
    /// see [`scripts::OCCUPANCY`]).
    fn sweep(&mut self) {
        self.sweep_members();
        self.sweep_users();
        self.sweep_channels();
    }

    /// Nodes' channels whose members' latest expiry passed (the node died,
    /// or its members left): each channel is swept by
    /// [`scripts::MEMBERS_EXPIRED`], which removes the expired members once
    /// for the cluster; this node sends their `member_removed`. The entry
    /// is dropped then (unless its node re-announced it meanwhile).
    fn sweep_members(&mut self) {
        self.sweep_index(
            self.s.keys.members(),
            SWEEP_CHANNELS,
            |t, entry| {
                let c = index_channel(entry);
                let mut cmd = ::redis::cmd("EVALSHA");
                cmd.arg(&t.shas.members_expired)
                    .arg(1)
                    .arg(t.s.keys.presence(c))
                    .arg(t.leave_events(c));
                cmd
            },
            |t, entry, v| match v {
                Value::Array(items) if !items.is_empty() => {
                    t.members_removed(index_channel(entry), &items[1..]);
                    true
                }
                other => {
                    log::warn!("presence sweep of {entry:?}: {other:?}");
                    false
                }
            },
        );
    }

    /// The members of `index` whose latest expiry passed, at most `limit`,
    /// with the time read (Redis's clock).
    fn due(&mut self, index: &str, limit: usize) -> Option<(u64, Vec<String>)> {
        let now = self.redis_now_ms();
        let con = self.con.as_mut()?;
        match ::redis::cmd("ZRANGEBYSCORE")
            .arg(index)
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query(con)
        {
            Ok(d) => Some((now, d)),
            Err(e) => {
                log::warn!("presence sweep of {index}: {e}");
                None
            }
        }
    }

    /// Drop `gone` from `index` unless re-announced since `now`.
    fn drop_due(&mut self, index: &str, now: u64, gone: &[&str]) {
        if gone.is_empty() {
            return;
        }
        let Some(con) = self.con.as_mut() else {
            return;
        };
        let mut c = ::redis::cmd("EVALSHA");
        c.arg(&self.shas.index_drop).arg(1).arg(index).arg(now);
        for g in gone {
            c.arg(*g);
        }
        if let Err(e) = c.query::<Value>(con) {
            log::warn!("presence sweep of {index}: {e}");
        }
    }

    /// Users whose latest expiry passed (their nodes died, or left): each
    /// is checked by [`scripts::USER`], and the one check that sees the
    /// user's last node expire sends `user_offline`.
    fn sweep_users(&mut self) {
        self.sweep_index(
            self.s.keys.users(),
            SWEEP_USERS,
            |t, u| t.user_cmd("check", u),
            |t, u, v| t.user_events(u, Some(v)) == Some(0),
        );
    }

    /// Channels whose latest expiry passed (their nodes died, or every
    /// node left): each is checked by [`scripts::OCCUPANCY`], and the one
    /// check that sees the channel's last node expire sends
    /// `channel_vacated`, for the cluster.
    fn sweep_channels(&mut self) {
        self.sweep_index(
            self.s.keys.occupied(),
            SWEEP_CHANNELS,
            |t, c| t.occupancy_cmd("check", c),
            |t, c, v| {
                t.occupancy_events(c, Some(v));
                occupancy_answer(Some(v)).is_some_and(|(_, left)| left == 0)
            },
        );
    }

    /// Sweep an index of latest expiries: each due member (at most
    /// `limit`) checked by its script (`check`), its events sent by
    /// `settle`, which says whether nothing is left of it; those are
    /// dropped from the index.
    fn sweep_index(
        &mut self,
        index: String,
        limit: usize,
        check: fn(&Self, &str) -> ::redis::Cmd,
        settle: fn(&Self, &str, &Value) -> bool,
    ) {
        let Some((now, due)) = self.due(&index, limit) else {
            return;
        };
        if due.is_empty() {
            return;
        }
        let mut pipe = ::redis::pipe();
        for m in &due {
            pipe.add_command(check(self, m));
        }
        let Some(con) = self.con.as_mut() else {
            return;
        };
        let answers: Vec<Value> = match pipe.query(con) {
            Ok(a) => a,
            Err(e) => return log::warn!("presence sweep of {index}: {e}"),
        };
        let gone: Vec<&str> = due
            .iter()
            .zip(&answers)
            .filter(|(m, v)| settle(self, m, v))
            .map(|(m, _)| m.as_str())
            .collect();
        self.drop_due(&index, now, &gone);
    }
}

/// The channel of a `PREFIX:members` entry (`INSTANCE\nCHANNEL`).
fn index_channel(entry: &str) -> &str {
    entry.split_once('\n').map_or(entry, |(_, c)| c)
}

/// A [`scripts::USER`] answer: (fields alive, events bits).
fn user_answer(v: Option<&Value>) -> Option<(u64, u64)> {
    match v? {
        Value::Array(a) => Some((int(a.first()?)?, int(a.get(1)?)?)),
        _ => None,
    }
}

/// A [`scripts::OCCUPANCY`] answer: (events bits, live nodes left).
fn occupancy_answer(v: Option<&Value>) -> Option<(u64, u64)> {
    match v? {
        Value::Array(a) => Some((int(a.first()?)?, int(a.get(1)?)?)),
        _ => None,
    }
}

fn is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT")
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// A read script's answer: `{}` (no such channel) or `{epoch, top, off,
/// data, …}`.
fn parse_snap(channel: &str, v: Value, now_ms: u64) -> Result<Option<Snap>, String> {
    let Value::Array(items) = v else {
        return Err(format!("unexpected answer {v:?}"));
    };
    if items.is_empty() {
        return Ok(None);
    }
    let epoch = items
        .first()
        .and_then(bytes)
        .and_then(|e| std::str::from_utf8(e).ok())
        .ok_or("no epoch")?;
    let top = items.get(1).and_then(int).ok_or("no offset")?;
    let mut pubs = Vec::with_capacity(items.len().saturating_sub(2) / 2);
    for pair in items[2..].chunks(2) {
        let (Some(off), Some(data)) = (pair.first().and_then(int), pair.get(1).and_then(bytes))
        else {
            return Err("malformed entry".into());
        };
        let Ok(raw) = serde_json::from_slice::<&RawValue>(data) else {
            log::warn!("channel {channel:?}: offset {off} is not JSON; skipped");
            continue;
        };
        pubs.push(Publication {
            offset: off,
            at_ms: now_ms,
            frame: publication_frame(channel, off, raw),
        });
    }
    Ok(Some(Snap {
        epoch: epoch.into(),
        top,
        pubs,
    }))
}

/// The history API's page from a read, with the same rules as memory.rs:
/// recovery replays all of the gap or says it could not.
pub(crate) fn history_page(snap: Option<Snap>, since: Option<Position>) -> HistoryPage {
    let Some(snap) = snap else {
        return HistoryPage {
            position: Position {
                epoch: String::new(),
                offset: 0,
            },
            recovered: since.map(|_| false),
            publications: Vec::new(),
        };
    };
    let position = Position {
        epoch: snap.epoch.to_string(),
        offset: snap.top,
    };
    match since {
        None => HistoryPage {
            position,
            recovered: None,
            publications: snap.pubs,
        },
        Some(s) => {
            let whole = *s.epoch == *snap.epoch
                && s.offset <= snap.top
                && (s.offset == snap.top
                    || snap.pubs.first().is_some_and(|p| p.offset == s.offset + 1));
            HistoryPage {
                position,
                recovered: Some(whole),
                publications: if whole { snap.pubs } else { Vec::new() },
            }
        }
    }
}
