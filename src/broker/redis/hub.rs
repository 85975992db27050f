//! The node's view of its channels: which workers have subscribers, where
//! the node stands in each channel's stream, and the ordering rules that
//! turn Redis answers and pub/sub messages into an inbox sequence with no
//! gap and no duplicate.
//!
//! Everything here runs under one mutex, taken by the workers (subscribe,
//! unsubscribe), the pub/sub thread (messages, (re)subscriptions) and the
//! command thread (Redis answers). None of them does I/O while holding it:
//! Redis work is queued to the command thread ([`Cmd`]) or to the pub/sub
//! thread (a channel name to reconcile), and inbox wake-ups are sent after
//! the lock is released.
//!
//! Per channel, the node delivers offsets `last + 1, last + 2, …` of one
//! epoch to its workers and nothing else:
//!
//! - a live message with offset `<= last` is a duplicate and is dropped;
//! - one with offset `> last + 1` reveals a gap (messages lost while the
//!   pub/sub connection was down, say): it is held, later ones too, and the
//!   command thread reads the missing range from the stream. If the stream
//!   still has it, it is delivered in order, then what was held; if not,
//!   every subscriber gets a `resync` event (see [`resync_event`]) and
//!   delivery goes on from the stream's top;
//! - one with another epoch (the channel's history was lost in Redis) also
//!   gets a `resync` event, at offset 0 of the new epoch, and the new
//!   epoch's publications follow from its start (read from the stream if
//!   this one is not the first);
//! - a catch-up that finds the channel's offset below `last` under the same
//!   epoch (a Redis failover lost acknowledged publications) moves the
//!   channel to a new epoch in Redis, so that the lost offsets cannot be
//!   recovered with other content.
//!
//! A subscribe is answered at a point of that sequence: its reply is pushed
//! into the worker's inbox under the lock, with position `last` and a
//! replay of `(since, last]` taken from the Redis read and the node's tail
//! of recent deliveries; everything pushed after it is `> last`. A `since`
//! in an epoch that has ended gets `"recovered":false` and, when the
//! current epoch is held from its start, position 0 and a replay of
//! `(0, last]`: all of the current epoch came after the client's position.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde_json::value::RawValue;

use super::tail::{Tail, TailBytes};
use super::Cmd;
use crate::base::{FrameKind, OpError};
use crate::broker::{
    encode_event, publication_frame, Inboxes, ReplayChunk, ReplayRequest, ReplyBody, ReplyTo,
    SubFlags, Subscribed, WorkerMsg,
};
use crate::config::ChannelPolicy;
use crate::hooks::events::Events;
use crate::pubsub::history::{HistoryLimits, Publication};
use crate::pubsub::presence::Member;
use crate::pubsub::users::UserCounts;
use crate::pubsub::{Frame, Position};

/// Most recent deliveries kept per channel (bounded further by the
/// channel's history size and TTL): they answer most recoveries without a
/// Redis read, and cover what arrived while a Redis read was in flight.
const TAIL_MAX: usize = 1024;
/// Live messages held per channel while its position is being settled;
/// beyond it (or beyond the channel's history bytes) they are dropped and
/// read back from the stream.
const HELD_MAX: usize = 10_000;

/// A subscribe waiting for its answer.
#[derive(Debug)]
pub(crate) struct PendingSub {
    pub worker: usize,
    pub since: Option<Position>,
    /// The channel delivers its latest publication to new subscribers.
    pub latest: bool,
    /// The channel tracks presence (the member joins once answered).
    pub presence: bool,
    /// The member's join is announced.
    pub join_leave: bool,
    /// The subscription's overrides (given back in the answer).
    pub flags: SubFlags,
    pub member: Option<Member>,
    pub reply: ReplyTo,
}

/// What a Redis read found: the channel's epoch, its last offset, and the
/// publications asked for (offset order), each encoded once.
#[derive(Debug)]
pub(crate) struct Snap {
    pub epoch: Arc<str>,
    pub top: u64,
    pub pubs: Vec<Publication>,
}

/// A publication received through pub/sub.
#[derive(Debug)]
struct Live {
    epoch: Arc<str>,
    publ: Publication,
    /// The client id it is not delivered to (`exclude_client`).
    exclude: Option<Arc<str>>,
}

#[derive(Debug)]
struct Stream {
    epoch: Arc<str>,
    /// The last offset delivered to the workers.
    last: u64,
}

enum Answer {
    Ready(Subscribed),
    /// Only a Redis read can tell.
    NeedRedis,
    /// The client is ahead of this node: answer once `last` reaches it.
    Defer(u64),
}

#[derive(Debug)]
struct Chan {
    name: Arc<str>,
    /// Distinguishes this incarnation from a later one of the same name.
    gen: u64,
    interest: Vec<u32>,
    total: u32,
    /// Subscribed on the current pub/sub connection.
    in_redis: bool,
    stream: Option<Stream>,
    /// A catch-up read is in flight: live messages are held.
    repairing: bool,
    /// Recent deliveries, contiguous, ending at `stream.last`.
    tail: Tail,
    limits: HistoryLimits,
    held: VecDeque<Live>,
    /// Frame bytes in `held`.
    held_bytes: usize,
    held_overflow: bool,
    /// Subscribes waiting for the pub/sub SUBSCRIBE.
    waiting: Vec<PendingSub>,
    /// Subscribes waiting for `last` to reach an offset.
    deferred: Vec<(u64, PendingSub)>,
    /// Some subscriber was answered (during an outage) without a position.
    unpositioned: bool,
}

impl Chan {
    fn deliverable(&self) -> bool {
        self.in_redis && self.stream.is_some() && !self.repairing
    }

    fn position(&self) -> Position {
        match &self.stream {
            Some(s) => Position {
                epoch: s.epoch.to_string(),
                offset: s.last,
            },
            None => Position {
                epoch: String::new(),
                offset: 0,
            },
        }
    }

    fn lost(&self, sub: &PendingSub) -> Subscribed {
        Subscribed {
            position: self.position(),
            recovered: sub.since.as_ref().map(|_| false),
            replay: Vec::new(),
            replay_after: None,
        }
    }

    /// The next part of a replay, from a Redis read (if given) and the
    /// tail, up to `last`; `None`: only a Redis read can tell.
    fn replay_part(&self, req: &ReplayRequest, snap: Option<&Snap>) -> Option<ReplayChunk> {
        let part = |frames, top| {
            Some(ReplayChunk {
                channel: req.channel.clone(),
                tag: req.tag,
                frames,
                top,
            })
        };
        let Some(st) = self.stream.as_ref().filter(|st| *st.epoch == *req.epoch) else {
            // No position, or another epoch: the rest of the gap is gone.
            return part(None, self.position().offset);
        };
        if req.after >= st.last {
            return part(Some(Vec::new()), st.last);
        }
        let from_read = snap.filter(|s| s.epoch == st.epoch);
        let mut next = req.after + 1;
        let (mut frames, mut bytes) = (Vec::new(), 0);
        for p in from_read
            .iter()
            .flat_map(|s| s.pubs.iter())
            .chain(self.tail.iter())
        {
            if next > st.last || !frames.is_empty() && bytes + p.frame.len() > req.max_bytes {
                break;
            }
            if p.offset == next {
                bytes += p.frame.len();
                frames.push(p.frame.clone());
                next += 1;
            }
        }
        match (frames.is_empty(), snap.is_some()) {
            (false, _) => part(Some(frames), st.last),
            (true, true) => part(None, st.last),
            (true, false) => None,
        }
    }

    /// Answer `sub` at the current position from the tail and, if given, a
    /// Redis read.
    fn answer(&self, sub: &PendingSub, snap: Option<&Snap>) -> Answer {
        let Some(st) = &self.stream else {
            return Answer::NeedRedis;
        };
        let snap = snap.filter(|s| s.epoch == st.epoch);
        let ready = |recovered, replay| {
            Answer::Ready(Subscribed {
                position: self.position(),
                recovered,
                replay,
                replay_after: None,
            })
        };
        let read = snap.is_some();
        match &sub.since {
            Some(since) => {
                if *since.epoch != *st.epoch {
                    // The client's epoch has ended: the rest of it is lost,
                    // but all of the current one came after its position.
                    // Replay it from its start if it is all held.
                    let replay = self.whole_epoch(snap);
                    return match (replay, read) {
                        (Some(replay), _) => Answer::Ready(Subscribed {
                            position: Position {
                                epoch: st.epoch.to_string(),
                                offset: 0,
                            },
                            recovered: Some(false),
                            replay,
                            replay_after: None,
                        }),
                        (None, true) => ready(Some(false), vec![]),
                        (None, false) => Answer::NeedRedis,
                    };
                }
                if since.offset == st.last {
                    return ready(Some(true), vec![]);
                }
                if since.offset > st.last {
                    return match snap {
                        Some(s) if since.offset <= s.top => Answer::Defer(since.offset),
                        Some(_) => ready(Some(false), vec![]),
                        None => Answer::NeedRedis,
                    };
                }
                // (since, last] from the read, then from the tail.
                let mut replay = Vec::new();
                let mut next = since.offset + 1;
                let from_read = snap.iter().flat_map(|s| s.pubs.iter());
                for p in from_read.chain(self.tail.iter()) {
                    if next > st.last {
                        break;
                    }
                    if p.offset == next {
                        replay.push(p.frame.clone());
                        next += 1;
                    }
                }
                if next == st.last + 1 {
                    ready(Some(true), replay)
                } else if read {
                    ready(Some(false), vec![])
                } else {
                    Answer::NeedRedis
                }
            }
            None if sub.latest && st.last > 0 => {
                let at_last = |p: &&Publication| p.offset == st.last;
                let found = self
                    .tail
                    .back()
                    .filter(at_last)
                    .or_else(|| snap.and_then(|s| s.pubs.iter().find(at_last)));
                match (found, snap) {
                    (Some(p), _) => ready(None, vec![p.frame.clone()]),
                    (None, Some(s)) if s.top > st.last => Answer::Defer(s.top),
                    (None, Some(_)) => ready(None, vec![]),
                    (None, None) => Answer::NeedRedis,
                }
            }
            None => ready(None, vec![]),
        }
    }

    /// Every publication of the current epoch, `1..=last`, from a read
    /// (of this epoch) and the tail; `None` if some of it is not held.
    fn whole_epoch(&self, snap: Option<&Snap>) -> Option<Vec<Frame>> {
        let last = self.stream.as_ref()?.last;
        let mut replay = Vec::new();
        let mut next = 1;
        for p in snap
            .iter()
            .flat_map(|s| s.pubs.iter())
            .chain(self.tail.iter())
        {
            if next > last {
                break;
            }
            if p.offset == next {
                replay.push(p.frame.clone());
                next += 1;
            }
        }
        (next == last + 1).then_some(replay)
    }

    fn push_tail(&mut self, p: Publication) {
        let cap = self.limits.size.min(TAIL_MAX);
        self.tail.push(p, cap, &self.limits);
    }

    fn hold(&mut self, live: Live) {
        if self.held.len() >= HELD_MAX || self.held_bytes > self.limits.bytes {
            // Read back from the stream once the position is settled.
            self.held.clear();
            self.held_bytes = 0;
            self.held_overflow = true;
        }
        self.held_bytes += live.publ.frame.len();
        self.held.push_back(live);
    }

    fn unhold(&mut self) -> Option<Live> {
        let live = self.held.pop_front()?;
        self.held_bytes -= live.publ.frame.len();
        Some(live)
    }
}

/// Workers to wake once the lock is released.
#[derive(Default)]
struct Wakes(Vec<usize>);

impl Wakes {
    fn push(&mut self, inboxes: &Inboxes, w: usize, msg: WorkerMsg) {
        if inboxes.push(w, msg) && !self.0.contains(&w) {
            self.0.push(w);
        }
    }

    fn fire(self, inboxes: &Inboxes, except: Option<usize>) {
        for w in self.0 {
            if Some(w) != except {
                inboxes.wake(w);
            }
        }
    }
}

/// Counters for `/api/stats`.
#[derive(Debug, Default)]
pub(crate) struct HubStats {
    /// Gaps seen in a channel's live stream.
    pub gaps: AtomicU64,
    /// `resync` events sent (a gap that could not be filled, or a new epoch).
    pub resyncs: AtomicU64,
}

/// The `resync` event: the subscribers of `channel` missed publications
/// that can no longer be recovered (or the channel's history was lost and
/// a new epoch began); publications go on after `offset` in `epoch`. A
/// client treats it like `"recovered":false`: reload its state by other
/// means, and keep the new position.
pub fn resync_event(channel: &str, epoch: &str, offset: u64) -> Frame {
    encode_event(
        &serde_json::json!({
            "channel": channel,
            "resync": { "epoch": epoch, "offset": offset },
        }),
        FrameKind::Resync,
    )
}

pub(crate) struct Hub {
    chans: Mutex<HashMap<Arc<str>, Chan>>,
    /// The tails' bytes over the node, against `limits.history_memory`.
    pub tails: Arc<TailBytes>,
    inboxes: Arc<Inboxes>,
    policy: Arc<ChannelPolicy>,
    cmds: Sender<Cmd>,
    reconcile: Sender<Arc<str>>,
    pub cmd_up: AtomicBool,
    pub ps_up: AtomicBool,
    pub stop: AtomicBool,
    refuse_in_outage: bool,
    clock: Instant,
    next_gen: AtomicU64,
    pub stats: HubStats,
    /// Webhooks (occupied/vacated, members, users).
    pub events: Events,
    /// User presence on this node.
    pub users: UserCounts,
    /// Occupancy and user presence are decided in the shared store
    /// (Redis, by scripts) rather than per node (NATS).
    pub cluster: bool,
}

impl Hub {
    pub fn new(
        inboxes: Arc<Inboxes>,
        policy: Arc<ChannelPolicy>,
        cmds: Sender<Cmd>,
        reconcile: Sender<Arc<str>>,
        refuse_in_outage: bool,
        events: Events,
        cluster: bool,
    ) -> Hub {
        Hub {
            events,
            users: UserCounts::default(),
            cluster,
            chans: Mutex::new(HashMap::new()),
            tails: TailBytes::new(policy.node.history_memory),
            inboxes,
            policy,
            cmds,
            reconcile,
            cmd_up: AtomicBool::new(false),
            ps_up: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            refuse_in_outage,
            clock: Instant::now(),
            next_gen: AtomicU64::new(1),
            stats: HubStats::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Chan>> {
        self.chans.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    pub fn inboxes_send(&self, worker: usize, msg: WorkerMsg) {
        self.inboxes.send(worker, msg);
    }

    fn cmd(&self, c: Cmd) {
        // The command thread only ends when the broker is dropped.
        let _ = self.cmds.send(c);
    }

    /// This node's first subscriber of `channel` came (`occupied`) or its
    /// last one left: `channel_occupied` / `channel_vacated`, decided
    /// cluster-wide by the command thread when the store is shared.
    fn occupancy(&self, channel: &Arc<str>, occupied: bool) {
        use crate::hooks::config::EventKind;
        if !self.events.wants(EventKind::ChannelOccupied)
            && !self.events.wants(EventKind::ChannelVacated)
        {
            return;
        }
        if self.cluster {
            self.cmd(Cmd::Occupancy {
                channel: channel.clone(),
                occupied,
            });
        } else {
            self.events.channel(channel, occupied);
        }
    }

    /// A connection of `user` opened on this node.
    pub fn user_up(&self, user: &str) {
        // Under the count's lock: a user's up and down reach the command
        // thread (or the webhooks) in the order they happened.
        self.users.up(user, || {
            if self.cluster {
                self.cmd(Cmd::UserUp { user: user.into() });
            } else {
                self.events.user(user, true);
            }
        });
    }

    /// A connection of `user` on this node ended.
    pub fn user_down(&self, user: &str) {
        self.users.down(user, || {
            if self.cluster {
                self.cmd(Cmd::UserDown { user: user.into() });
            } else {
                self.events.user(user, false);
            }
        });
    }

    /// Channels held (with local interest).
    pub fn channels(&self) -> usize {
        self.lock().len()
    }

    // ------------------------------------------------------------ workers --

    pub fn subscribe(
        &self,
        worker: usize,
        channel: Arc<str>,
        since: Option<Position>,
        member: Option<Member>,
        flags: SubFlags,
        reply: ReplyTo,
    ) {
        let opts = self.policy.options(&channel);
        let sub = PendingSub {
            worker,
            since,
            latest: opts.deliver_latest,
            presence: flags.presence(opts.presence),
            join_leave: flags.join_leave(opts.join_leave),
            flags,
            member,
            reply,
        };
        let mut w = Wakes::default();
        let mut notify = false;
        {
            let mut map = self.lock();
            let ch = map.entry(channel.clone()).or_insert_with(|| {
                notify = true;
                self.occupancy(&channel, true);
                Chan {
                    name: channel.clone(),
                    gen: self.next_gen.fetch_add(1, Ordering::Relaxed),
                    interest: vec![0; self.inboxes.len()],
                    total: 0,
                    in_redis: false,
                    stream: None,
                    repairing: false,
                    tail: Tail::new(self.tails.clone()),
                    limits: opts.history_limits(),
                    held: VecDeque::new(),
                    held_bytes: 0,
                    held_overflow: false,
                    waiting: Vec::new(),
                    deferred: Vec::new(),
                    unpositioned: false,
                }
            });
            ch.interest[worker] += 1;
            ch.total += 1;
            if !self.ps_up.load(Ordering::Acquire) {
                self.answer_outage(ch, sub, &mut w);
            } else if ch.in_redis && ch.stream.is_some() {
                match ch.answer(&sub, None) {
                    Answer::Ready(s) => self.finish(ch, sub, s, &mut w),
                    _ => self.cmd(Cmd::Sync {
                        channel: channel.clone(),
                        sub,
                    }),
                }
            } else if ch.in_redis {
                self.cmd(Cmd::Sync {
                    channel: channel.clone(),
                    sub,
                });
            } else {
                ch.waiting.push(sub);
            }
            self.forget_if_idle(&mut map, &channel, &mut notify);
        }
        if notify {
            let _ = self.reconcile.send(channel);
        }
        w.fire(&self.inboxes, Some(worker));
    }

    pub fn unsubscribe(
        &self,
        worker: usize,
        channel: &str,
        member: Option<&Member>,
        flags: SubFlags,
    ) {
        let opts = self.policy.options(channel);
        let join_leave = flags.join_leave(opts.join_leave);
        match member {
            Some(m) if flags.presence(opts.presence) => {
                self.cmd(Cmd::Leave {
                    channel: channel.into(),
                    client: m.client().to_string(),
                    event: join_leave,
                    waited: None,
                });
                if !self.cluster {
                    // (With Redis, the command thread reads the member
                    // back as it leaves.)
                    self.events.member(channel, m, false);
                }
            }
            // Never tracked: announced only, as its join was.
            Some(m) if join_leave => self.cmd(Cmd::Announce {
                channel: channel.into(),
                member: m.clone(),
                join: false,
            }),
            _ => {}
        }
        let mut notify = false;
        let name = {
            let mut map = self.lock();
            let Some(ch) = map.get_mut(channel) else {
                return;
            };
            if ch.interest[worker] > 0 {
                ch.interest[worker] -= 1;
                ch.total -= 1;
            }
            let name = ch.name.clone();
            self.forget_if_idle(&mut map, channel, &mut notify);
            name
        };
        if notify {
            let _ = self.reconcile.send(name);
        }
    }

    /// Forget a channel nobody here listens to any more (the pub/sub thread,
    /// told through `notify`, unsubscribes).
    fn forget_if_idle(&self, map: &mut HashMap<Arc<str>, Chan>, channel: &str, notify: &mut bool) {
        if map.get(channel).is_some_and(|c| c.total == 0) {
            if let Some((name, _)) = map.remove_entry(channel) {
                self.occupancy(&name, false);
            }
            *notify = true;
            // After a churn of channels, hand the table's memory back.
            if map.capacity() > 64 && map.len() * 4 < map.capacity() {
                map.shrink_to(map.len() * 2);
            }
        }
    }

    /// Answer while Redis cannot be read: from the tail if it covers the
    /// request, else without recovery (or refused, if so configured).
    fn answer_outage(&self, ch: &mut Chan, sub: PendingSub, w: &mut Wakes) {
        if let Answer::Ready(s) = ch.answer(&sub, None) {
            return self.finish(ch, sub, s, w);
        }
        if self.refuse_in_outage {
            ch.interest[sub.worker] -= 1;
            ch.total -= 1;
            let msg = WorkerMsg::Reply {
                to: sub.reply,
                body: ReplyBody::Subscribed {
                    channel: ch.name.clone(),
                    client: None,
                    flags: sub.flags,
                    result: Err(OpError::Unavailable("broker unreachable")),
                },
            };
            return w.push(&self.inboxes, sub.worker, msg);
        }
        if ch.stream.is_none() {
            ch.unpositioned = true;
        }
        let s = ch.lost(&sub);
        self.finish(ch, sub, s, w);
    }

    /// Push a successful answer; the member joins presence first (so that a
    /// leave sent once the answer is handled comes after the join).
    fn finish(&self, ch: &Chan, sub: PendingSub, mut s: Subscribed, w: &mut Wakes) {
        if let (Some(true), Some(since)) = (s.recovered, &sub.since) {
            // The rest of a long gap is read a part at a time (replay).
            s.keep_first(since.offset, self.policy.node.replay_part);
        }
        match &sub.member {
            Some(m) if sub.presence => {
                self.cmd(Cmd::Join {
                    channel: ch.name.clone(),
                    member: m.clone(),
                    event: sub.join_leave,
                });
                self.events.member(&ch.name, m, true);
            }
            // Not tracked, announced all the same.
            Some(m) if sub.join_leave => self.cmd(Cmd::Announce {
                channel: ch.name.clone(),
                member: m.clone(),
                join: true,
            }),
            _ => {}
        }
        let msg = WorkerMsg::Reply {
            to: sub.reply,
            body: ReplyBody::Subscribed {
                channel: ch.name.clone(),
                client: sub.member.map(|m| m.client().to_string()),
                flags: sub.flags,
                result: Ok(s),
            },
        };
        w.push(&self.inboxes, sub.worker, msg);
    }

    /// Frames for every worker with interest.
    fn push_all(&self, ch: &Chan, offset: u64, frame: &Frame, w: &mut Wakes) {
        self.push_except(ch, offset, frame, &None, w);
    }

    /// [`Hub::push_all`] but to the connection of client id `exclude`.
    fn push_except(
        &self,
        ch: &Chan,
        offset: u64,
        frame: &Frame,
        exclude: &Option<Arc<str>>,
        w: &mut Wakes,
    ) {
        let (interest, name) = (&ch.interest, &ch.name);
        crate::broker::deliver_to_workers(interest, name, offset, frame, exclude, |worker, msg| {
            w.push(&self.inboxes, worker, msg)
        });
    }

    // ------------------------------------------------------- pub/sub side --

    pub fn wanted(&self, channel: &str) -> bool {
        self.lock().get(channel).is_some_and(|c| c.total > 0)
    }

    pub fn wanted_all(&self) -> Vec<Arc<str>> {
        self.lock()
            .values()
            .filter(|c| c.total > 0)
            .map(|c| c.name.clone())
            .collect()
    }

    pub fn pubsub_up(&self) {
        self.ps_up.store(true, Ordering::Release);
    }

    /// SUBSCRIBE took effect: what waited may read Redis now, and the node
    /// checks the stream for what it may have missed (or learns where the
    /// channel stands).
    pub fn confirmed(&self, channel: &str) {
        let mut map = self.lock();
        let Some(ch) = map.get_mut(channel) else {
            return;
        };
        if ch.in_redis || ch.total == 0 {
            return;
        }
        ch.in_redis = true;
        for sub in std::mem::take(&mut ch.waiting) {
            self.cmd(Cmd::Sync {
                channel: ch.name.clone(),
                sub,
            });
        }
        if ch.stream.is_some() {
            ch.repairing = true;
        }
        self.cmd(Cmd::CatchUp {
            channel: ch.name.clone(),
            gen: ch.gen,
        });
    }

    /// The pub/sub connection is gone: messages published from now on will
    /// be missing. Keep each channel's position (to catch up later), answer
    /// what waited.
    pub fn pubsub_down(&self) {
        let was_up = self.ps_up.swap(false, Ordering::AcqRel);
        let mut w = Wakes::default();
        let mut idle = Vec::new();
        {
            let mut map = self.lock();
            for ch in map.values_mut() {
                ch.in_redis = false;
                ch.repairing = false;
                ch.held.clear();
                ch.held_bytes = 0;
                ch.held_overflow = false;
                for sub in std::mem::take(&mut ch.waiting) {
                    self.answer_outage(ch, sub, &mut w);
                }
                for (_, sub) in std::mem::take(&mut ch.deferred) {
                    let s = ch.lost(&sub);
                    self.finish(ch, sub, s, &mut w);
                }
                if ch.total == 0 {
                    idle.push(ch.name.clone());
                }
            }
            for name in &idle {
                map.remove(name);
            }
        }
        if was_up {
            log::warn!("broker pub/sub connection lost: publications from other nodes wait");
        }
        w.fire(&self.inboxes, None);
    }

    /// A message on a channel's pub/sub: a publication `OFFSET:EPOCH:DATA`,
    /// or a presence event (`j` or `l`, then the member's JSON).
    /// Another node's operator disconnected `user`.
    pub fn disconnect_user(&self, user: &str) {
        self.inboxes.disconnect_user(user);
    }

    ///
    /// Publish options add two forms: `u` + DATA, a publication kept out of
    /// the history (no offset), and `x` + CLIENT + `\n` + one of the
    /// publication forms: not for the connection of client id CLIENT.
    pub fn on_message(&self, name: &str, payload: &[u8]) {
        let (exclude, payload) = match payload.strip_prefix(b"x") {
            Some(rest) => match rest.iter().position(|&b| b == b'\n') {
                Some(nl) => match std::str::from_utf8(&rest[..nl]) {
                    Ok(c) => (Some(Arc::<str>::from(c)), &rest[nl + 1..]),
                    Err(_) => return log::warn!("malformed message on {name:?} ignored"),
                },
                None => return log::warn!("malformed message on {name:?} ignored"),
            },
            None => (None, payload),
        };
        match payload.first() {
            Some(b'j') | Some(b'l') if exclude.is_none() => self.on_presence(name, payload),
            Some(b'u') => self.on_unsaved(name, &payload[1..], &exclude),
            Some(b'0'..=b'9') => match self.parse_publication(name, payload) {
                Some(mut live) => {
                    live.exclude = exclude;
                    self.on_publication(name, live)
                }
                None => log::warn!("malformed publication on channel {name:?} ignored"),
            },
            _ => log::warn!("unknown message on channel {name:?} ignored"),
        }
    }

    /// A publication without offset (`skip_history`): delivered to the
    /// subscribers at once, wherever the channel's stream stands.
    fn on_unsaved(&self, name: &str, data: &[u8], exclude: &Option<Arc<str>>) {
        let Ok(data) = serde_json::from_slice::<&RawValue>(data) else {
            return log::warn!("malformed publication on channel {name:?} ignored");
        };
        let frame = crate::broker::encode_unsaved(name, data);
        let mut w = Wakes::default();
        {
            let map = self.lock();
            if let Some(ch) = map.get(name).filter(|c| c.in_redis) {
                self.push_except(ch, 0, &frame, exclude, &mut w);
            }
        }
        w.fire(&self.inboxes, None);
    }

    fn parse_publication(&self, name: &str, payload: &[u8]) -> Option<Live> {
        let colon = payload.iter().position(|&b| b == b':')?;
        let offset: u64 = std::str::from_utf8(&payload[..colon]).ok()?.parse().ok()?;
        let rest = &payload[colon + 1..];
        let colon = rest.iter().position(|&b| b == b':')?;
        let epoch = std::str::from_utf8(&rest[..colon]).ok()?;
        let data: &RawValue = serde_json::from_slice(&rest[colon + 1..]).ok()?;
        Some(Live {
            exclude: None,
            epoch: epoch.into(),
            publ: Publication {
                offset,
                at_ms: self.now_ms(),
                frame: publication_frame(name, offset, data),
            },
        })
    }

    fn on_presence(&self, name: &str, payload: &[u8]) {
        let kind = if payload[0] == b'j' { "join" } else { "leave" };
        let Ok(member) = serde_json::from_slice::<Member>(&payload[1..]) else {
            return log::warn!("malformed presence event on channel {name:?} ignored");
        };
        if !member.valid() {
            return log::warn!("presence event with an invalid member on {name:?} ignored");
        }
        let frame = encode_event(
            &serde_json::json!({ "channel": name, kind: member }),
            FrameKind::Event,
        );
        let mut w = Wakes::default();
        {
            let map = self.lock();
            if let Some(ch) = map.get(name).filter(|c| c.in_redis) {
                self.push_all(ch, 0, &frame, &mut w);
            }
        }
        w.fire(&self.inboxes, None);
    }

    fn on_publication(&self, name: &str, live: Live) {
        let mut w = Wakes::default();
        {
            let mut map = self.lock();
            let Some(ch) = map.get_mut(name).filter(|c| c.total > 0) else {
                return;
            };
            if ch.deliverable() {
                self.process_live(ch, live, &mut w);
            } else {
                ch.hold(live);
            }
        }
        w.fire(&self.inboxes, None);
    }

    /// The next live publication of a channel whose position is settled.
    fn process_live(&self, ch: &mut Chan, live: Live, w: &mut Wakes) {
        let st = ch.stream.as_ref().expect("deliverable");
        if live.epoch != st.epoch {
            // The channel's history was lost in Redis: a new epoch began.
            // Start it from 0; a gap before this message is read back from
            // the new epoch's history like any other.
            self.resync(ch, live.epoch.clone(), 0, w);
            self.process_live(ch, live, w);
        } else if live.publ.offset <= st.last {
            // Already delivered (read from the stream before it arrived).
        } else if live.publ.offset == st.last + 1 {
            self.deliver(ch, live.publ, &live.exclude, w);
        } else {
            log::debug!(
                "channel {}: gap after offset {} (got {}): reading the stream",
                ch.name,
                st.last,
                live.publ.offset
            );
            self.stats.gaps.fetch_add(1, Ordering::Relaxed);
            ch.repairing = true;
            ch.held_bytes += live.publ.frame.len();
            ch.held.push_front(live);
            self.cmd(Cmd::CatchUp {
                channel: ch.name.clone(),
                gen: ch.gen,
            });
        }
    }

    fn deliver(&self, ch: &mut Chan, p: Publication, exclude: &Option<Arc<str>>, w: &mut Wakes) {
        self.push_except(ch, p.offset, &p.frame, exclude, w);
        let st = ch.stream.as_mut().expect("delivering");
        st.last = p.offset;
        ch.push_tail(p);
        if ch.deferred.is_empty() {
            return;
        }
        let last = ch.stream.as_ref().map_or(0, |s| s.last);
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut ch.deferred)
            .into_iter()
            .partition(|(target, _)| *target <= last);
        ch.deferred = rest;
        for (_, sub) in due {
            let s = match ch.answer(&sub, None) {
                Answer::Ready(s) => s,
                _ => ch.lost(&sub),
            };
            self.finish(ch, sub, s, w);
        }
    }

    /// Tell every subscriber that continuity is broken, and go on from
    /// `(epoch, last)`.
    fn resync(&self, ch: &mut Chan, epoch: Arc<str>, last: u64, w: &mut Wakes) {
        log::warn!(
            "channel {}: publications lost, subscribers told to resync at {epoch}/{last}",
            ch.name
        );
        self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
        ch.stream = Some(Stream {
            epoch: epoch.clone(),
            last,
        });
        ch.tail.clear();
        ch.unpositioned = false;
        self.push_all(ch, 0, &resync_event(&ch.name, &epoch, last), w);
        for (_, sub) in std::mem::take(&mut ch.deferred) {
            let s = ch.lost(&sub);
            self.finish(ch, sub, s, w);
        }
    }

    /// Deliver what was held, in order, until the next gap.
    fn drain_held(&self, ch: &mut Chan, w: &mut Wakes) {
        while ch.deliverable() {
            let Some(live) = ch.unhold() else {
                break;
            };
            self.process_live(ch, live, w);
        }
        if ch.held_overflow && ch.deliverable() {
            // Some held messages were dropped: read them back.
            ch.held_overflow = false;
            ch.repairing = true;
            self.cmd(Cmd::CatchUp {
                channel: ch.name.clone(),
                gen: ch.gen,
            });
        }
    }

    /// The first read after SUBSCRIBE settles where the node stands.
    fn establish(&self, ch: &mut Chan, snap: &Snap, w: &mut Wakes) {
        ch.stream = Some(Stream {
            epoch: snap.epoch.clone(),
            last: snap.top,
        });
        ch.repairing = false;
        ch.tail.clear();
        let contiguous = snap.pubs.windows(2).all(|p| p[1].offset == p[0].offset + 1);
        if contiguous && snap.pubs.last().is_some_and(|p| p.offset == snap.top) {
            for p in &snap.pubs {
                ch.push_tail(p.clone());
            }
        }
        if ch.unpositioned {
            // Subscribers answered during an outage learn the position now.
            ch.unpositioned = false;
            self.push_all(ch, 0, &resync_event(&ch.name, &snap.epoch, snap.top), w);
        }
        self.drain_held(ch, w);
    }

    // ------------------------------------------------------ command side --

    /// A subscribe's Redis read came back (`None`: Redis could not be read).
    pub fn sync_done(&self, channel: &str, sub: PendingSub, snap: Option<Snap>) {
        let mut w = Wakes::default();
        let mut notify = false;
        {
            let mut map = self.lock();
            let Some(ch) = map.get_mut(channel) else {
                // Cannot happen (a pending subscribe keeps its channel), but
                // the request must still get its one answer.
                log::error!("subscribe answer for unknown channel {channel:?}");
                let msg = WorkerMsg::Reply {
                    to: sub.reply,
                    body: ReplyBody::Subscribed {
                        channel: channel.into(),
                        client: None,
                        flags: SubFlags::NONE,
                        result: Err(OpError::Unavailable("channel state lost")),
                    },
                };
                drop(map);
                return self.inboxes.send(sub.worker, msg);
            };
            match snap {
                Some(snap) if ch.in_redis || ch.stream.is_some() => {
                    if ch.stream.is_none() {
                        self.establish(ch, &snap, &mut w);
                    }
                    let ps_up = self.ps_up.load(Ordering::Acquire);
                    match ch.answer(&sub, Some(&snap)) {
                        Answer::Ready(s) => self.finish(ch, sub, s, &mut w),
                        Answer::Defer(t) if ps_up => ch.deferred.push((t, sub)),
                        _ => {
                            let s = ch.lost(&sub);
                            self.finish(ch, sub, s, &mut w);
                        }
                    }
                }
                _ => self.answer_outage(ch, sub, &mut w),
            }
            self.forget_if_idle(&mut map, channel, &mut notify);
        }
        if notify {
            let _ = self.reconcile.send(channel.into());
        }
        w.fire(&self.inboxes, None);
    }

    /// What a catch-up should read: `None`: nothing (the channel is gone or
    /// settled); `Some(None)`: only the position; `Some(Some(last))`: the
    /// publications after `last`.
    pub fn catch_up_from(&self, channel: &str, gen: u64) -> Option<Option<u64>> {
        let map = self.lock();
        let ch = map.get(channel).filter(|c| c.gen == gen && c.in_redis)?;
        match &ch.stream {
            None => Some(None),
            Some(st) if ch.repairing => Some(Some(st.last)),
            Some(_) => None,
        }
    }

    /// Whether a catch-up is still wanted (to retry it after an outage).
    pub fn catch_up_pending(&self, channel: &str, gen: u64) -> bool {
        self.catch_up_from(channel, gen).is_some()
    }

    /// The next part of a subscriber's replay: from the tail at once, or
    /// after a Redis read ([`Hub::replay_done`]); answered under the lock,
    /// at a point of the channel's sequence.
    pub fn replay(&self, worker: usize, req: ReplayRequest, reply: ReplyTo) {
        let mut w = Wakes::default();
        {
            let map = self.lock();
            let part = match map.get(&*req.channel) {
                Some(ch) => ch.replay_part(&req, None),
                // Left meanwhile: the answer is dropped as stale.
                None => Some(ReplayChunk {
                    channel: req.channel.clone(),
                    tag: req.tag,
                    frames: None,
                    top: 0,
                }),
            };
            match part {
                Some(chunk) => {
                    let body = ReplyBody::Replay(chunk);
                    w.push(&self.inboxes, worker, WorkerMsg::Reply { to: reply, body });
                }
                None => self.cmd(Cmd::Replay { worker, req, reply }),
            }
        }
        w.fire(&self.inboxes, Some(worker));
    }

    /// A replay part's Redis read came back (`None`: Redis could not be
    /// read: the replay cannot go on).
    pub fn replay_done(
        &self,
        worker: usize,
        req: ReplayRequest,
        reply: ReplyTo,
        snap: Option<Snap>,
    ) {
        let mut w = Wakes::default();
        {
            let map = self.lock();
            let part = match (map.get(&*req.channel), &snap) {
                (Some(ch), Some(snap)) => ch.replay_part(&req, Some(snap)),
                _ => None,
            };
            let chunk = part.unwrap_or_else(|| ReplayChunk {
                channel: req.channel.clone(),
                tag: req.tag,
                frames: None,
                top: 0,
            });
            let body = ReplyBody::Replay(chunk);
            w.push(&self.inboxes, worker, WorkerMsg::Reply { to: reply, body });
        }
        w.fire(&self.inboxes, None);
    }

    /// A catch-up read came back.
    pub fn catch_up_done(&self, channel: &str, gen: u64, snap: Snap) {
        let mut w = Wakes::default();
        {
            let mut map = self.lock();
            let Some(ch) = map.get_mut(channel).filter(|c| c.gen == gen && c.in_redis) else {
                return;
            };
            let Some(st) = &ch.stream else {
                self.establish(ch, &snap, &mut w);
                drop(map);
                return w.fire(&self.inboxes, None);
            };
            if !ch.repairing {
                return;
            }
            let (epoch, last) = (st.epoch.clone(), st.last);
            ch.repairing = false;
            if snap.epoch != epoch {
                // A new epoch: from its start, with what its history holds.
                self.resync(ch, snap.epoch.clone(), 0, &mut w);
                if snap.top > 0 {
                    ch.repairing = true;
                    self.cmd(Cmd::CatchUp {
                        channel: ch.name.clone(),
                        gen,
                    });
                }
            } else if snap.top < last {
                // Redis lost publications this node delivered (a failover
                // to a replica that lagged): the same offsets would now
                // name other publications. Give the channel a new epoch.
                log::warn!(
                    "channel {}: redis is at offset {} of epoch {epoch}, below the {last} \
                     delivered here: starting a new epoch",
                    ch.name,
                    snap.top
                );
                ch.repairing = true;
                self.cmd(Cmd::Rebase {
                    channel: ch.name.clone(),
                    gen,
                    epoch: epoch.clone(),
                    last,
                });
            } else if snap.top > last {
                let mut pubs = snap.pubs.into_iter().filter(|p| p.offset > last).peekable();
                if pubs.peek().is_some_and(|p| p.offset == last + 1) {
                    let mut next = last + 1;
                    for p in pubs {
                        if p.offset != next {
                            break;
                        }
                        next += 1;
                        // Read back from the stream: the exclusion, carried
                        // only by the live message, is not known here.
                        self.deliver(ch, p, &None, &mut w);
                    }
                    if next <= snap.top {
                        // More than one read's worth: read on.
                        ch.repairing = true;
                        self.cmd(Cmd::CatchUp {
                            channel: ch.name.clone(),
                            gen,
                        });
                    }
                } else {
                    self.resync(ch, epoch, snap.top, &mut w);
                }
            }
            self.drain_held(ch, &mut w);
        }
        w.fire(&self.inboxes, None);
    }

    /// Trim the tails by age (about once a second).
    pub fn sweep(&self) {
        let now = self.now_ms();
        let mut map = self.lock();
        for ch in map.values_mut() {
            while let Some(f) = ch.tail.front() {
                if now.saturating_sub(f.at_ms) >= ch.limits.ttl_ms {
                    ch.tail.pop_front();
                } else {
                    break;
                }
            }
        }
    }
}
