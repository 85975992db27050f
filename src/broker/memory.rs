//! The in-memory broker: a single node needs nothing else.
//!
//! Channels live in shards (a mutex each, chosen by the channel name's
//! hash). A publish locks one shard, assigns the offset, keeps the frame in
//! the history and pushes it into the inbox of every worker with a
//! subscriber, all under the lock, so every worker sees a channel's
//! publications in offset order. Wake-ups are sent after the lock is
//! released. Each worker gets its own copy of the frame, so that reference
//! counting never bounces a cache line between cores.
//!
//! What a channel costs, and for how long (SECURITY.md, "channel churn",
//! "history budget"):
//!
//! - A **live** channel (a subscriber, a present member, or history held)
//!   is a full record. At most `limits.max_channels` of them: beyond, a
//!   subscribe or publish that would create another is refused (error 10).
//! - An **idle** channel (none of those) keeps only its position, epoch and
//!   offset, for [`IDLE_GRACE_MS`]: 32 bytes with its expiry and its key, a
//!   keyed 64-bit hash of the name (not the name), about 100 with the hash
//!   table's and the FIFO's slack. A client that resumes within the grace
//!   is answered exactly as if the channel had stayed (nothing held: at the
//!   top it missed nothing, behind it its gap is lost). At most
//!   `limits.max_channels` idle positions too; beyond, the oldest is
//!   forgotten early (its clients then get `recovered:false`, which is
//!   true of any gap they had, and costs a client at the top a reload).
//! - History expires by age through a heap per shard ordered by when each
//!   channel's oldest publication is due, and idle positions through a FIFO
//!   per shard (the grace is the same for all): [`MemoryBroker::sweep`]
//!   pops what is due, a bounded number per shard per call, so its cost
//!   follows what expired, never the number of channels.
//! - All histories together hold at most `limits.history_memory` bytes of
//!   frames: past it, the publications that would expire first, node-wide,
//!   are dropped before their age (a merge over the shards' heaps), until
//!   the total is back under 15/16 of the budget. Offsets and epochs stay,
//!   so a recovery into what was dropped says `recovered:false`, never a
//!   partial replay; one from later still recovers.
//!
//! Counts (channels, idle positions, history bytes) are kept as they
//! change: `stats` reads counters and walks nothing.
//!
//! A live handoff (issue 17) moves the channels to the next process
//! ([`snapshot`]): [`Broker::seal`] takes them and from then on refuses
//! every publish (error 10, `unavailable`: not made, retrying makes it
//! once), so that nothing is accepted here that the snapshot lacks;
//! [`Broker::unseal`] undoes that when the handoff fails.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

pub mod snapshot;

use serde_json::value::RawValue;

use super::{
    encode_event, encode_unsaved, new_epoch_bits, publication_frame, Broker, BrokerStats,
    HistoryPage, Inboxes, PublishOptions, ReplayChunk, ReplayRequest, ReplyBody, ReplyTo, SubFlags,
    Subscribed, WorkerMsg, IDEMPOTENCY_WINDOW_MS,
};
use crate::base::{FrameKind, OpError};
use crate::config::ChannelPolicy;
use crate::hooks::events::Events;
use crate::pubsub::history::{Epoch, History, Publication, Recovery};
use crate::pubsub::presence::{Member, Presence};
use crate::pubsub::users::UserCounts;
use crate::pubsub::Position;

const SHARDS: usize = 64;

/// How long an idle channel keeps its epoch and offset. Clients between two
/// long-polls, or reconnecting, hold a position in it; forgetting the
/// channel at once would change its epoch under them and turn every resume
/// into `recovered:false`.
const IDLE_GRACE_MS: u64 = 300_000;

/// Expired entries (history fronts, idle positions) handled per shard per
/// sweep; what is left waits for the next one.
const SWEEP_BUDGET: usize = 512;

/// Idempotency keys remembered per shard (about 64k per node); beyond, the
/// oldest is forgotten before its window ends.
const IDEM_PER_SHARD: usize = 1024;

/// Refusal and eviction warnings: at most one per this many ms each.
const LOG_EVERY_MS: u64 = 10_000;

/// What a publish gets while the broker is sealed for a handoff.
pub const SEALED: OpError = OpError::Unavailable("a handoff to a new process is under way: retry");

struct Channel {
    name: Arc<str>,
    history: History,
    /// Local subscriptions per worker.
    interest: Box<[u32]>,
    presence: Presence,
    /// The due time of this channel's entry in its shard's expiry heap
    /// (there is at most one that matches).
    expiry: Option<u64>,
}

impl Channel {
    fn idle(&self) -> bool {
        self.interest.iter().all(|&n| n == 0) && self.presence.is_empty() && self.history.is_empty()
    }
}

/// An idle channel's position, kept for its grace.
#[derive(Clone, Copy)]
struct Idle {
    epoch: Epoch,
    top: u64,
    expires: u64,
}

/// Keys of idle positions are already keyed hashes: hashing them again
/// would add nothing.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Default)]
struct Shard {
    live: HashMap<Arc<str>, Channel>,
    /// Idle positions by [`MemoryBroker::idle_key`]. Two names with the same
    /// 64-bit key (about 1 in 2^40 among a million idle channels) would
    /// share a position: the second gets the first's epoch, which none of
    /// its clients holds, so they are told `recovered:false`; nothing is
    /// ever replayed from the wrong channel, since an idle position holds
    /// no publication.
    idle: HashMap<u64, Idle, BuildHasherDefault<KeyHasher>>,
    /// (key, expires) in the order channels went idle: expiry order.
    /// Entries of channels that came back are stale (their expiry differs)
    /// and skipped.
    idle_order: VecDeque<(u64, u64)>,
    /// (due, channel): when each channel's oldest publication leaves by age.
    expiry: BinaryHeap<Reverse<(u64, Arc<str>)>>,
    /// Idempotency keys (`CHANNEL\nKEY`) of recent publishes: their
    /// answer, and when the key is forgotten.
    idem: HashMap<String, (Position, u64)>,
    /// (key, expires) in insertion order: expiry order.
    idem_order: VecDeque<(String, u64)>,
}

impl Shard {
    /// The answer of an earlier publish with this key, if it is still
    /// remembered.
    fn idempotent(&mut self, key: &str, now: u64) -> Option<Position> {
        self.forget_keys(now);
        self.idem.get(key).map(|(p, _)| p.clone())
    }

    fn remember_key(&mut self, key: String, pos: Position, now: u64) {
        self.remember_key_until(key, pos, now + IDEMPOTENCY_WINDOW_MS);
    }

    /// Remember a key until `expires` (a key moved by a handoff keeps what
    /// was left of its window).
    fn remember_key_until(&mut self, key: String, pos: Position, expires: u64) {
        self.idem_order.push_back((key.clone(), expires));
        self.idem.insert(key, (pos, expires));
        while self.idem.len() > IDEM_PER_SHARD {
            let Some((k, e)) = self.idem_order.pop_front() else {
                break;
            };
            if self.idem.get(&k).is_some_and(|(_, x)| *x == e) {
                self.idem.remove(&k);
            }
        }
    }

    /// Forget the keys whose window has passed.
    fn forget_keys(&mut self, now: u64) {
        while let Some((_, e)) = self.idem_order.front() {
            if *e > now {
                break;
            }
            let (k, e) = self.idem_order.pop_front().expect("peeked");
            if self.idem.get(&k).is_some_and(|(_, x)| *x == e) {
                self.idem.remove(&k);
            }
        }
    }

    /// Queue the channel's history for expiry, unless it already is.
    fn schedule(expiry: &mut BinaryHeap<Reverse<(u64, Arc<str>)>>, ch: &mut Channel) {
        if ch.expiry.is_none() {
            if let Some(due) = ch.history.next_expiry() {
                expiry.push(Reverse((due, ch.name.clone())));
                ch.expiry = Some(due);
            }
        }
    }

    /// [`Shard::schedule`] by name.
    fn reschedule(&mut self, name: &str) {
        if let Some(ch) = self.live.get_mut(name) {
            Shard::schedule(&mut self.expiry, ch);
        }
    }

    /// Hand memory back after a churn: hash tables and queues keep their
    /// peak capacity otherwise.
    fn shrink(&mut self) {
        fn sparse(len: usize, cap: usize) -> bool {
            cap > 64 && len * 4 < cap
        }
        if sparse(self.live.len(), self.live.capacity()) {
            self.live.shrink_to(self.live.len() * 2);
        }
        if sparse(self.idle.len(), self.idle.capacity()) {
            self.idle.shrink_to(self.idle.len() * 2);
        }
        if sparse(self.idle_order.len(), self.idle_order.capacity()) {
            self.idle_order.shrink_to(self.idle_order.len() * 2);
        }
        // Stale heap entries (channels gone or rescheduled) are dropped
        // once they are many.
        if self.expiry.len() > 2 * self.live.len() + 64 {
            let live = &self.live;
            self.expiry.retain(|Reverse((due, name))| {
                live.get(name).is_some_and(|c| c.expiry == Some(*due))
            });
        }
        if sparse(self.expiry.len(), self.expiry.capacity()) {
            self.expiry.shrink_to(self.expiry.len() * 2);
        }
    }
}

/// A warning that may repeat: logged at most once per [`LOG_EVERY_MS`].
#[derive(Default)]
struct Throttle(AtomicU64);

impl Throttle {
    fn allow(&self, now_ms: u64) -> bool {
        let last = self.0.load(Ordering::Relaxed);
        (last == 0 || now_ms >= last + LOG_EVERY_MS)
            && self
                .0
                .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Node-wide counts, kept as they change.
#[derive(Default)]
struct Counts {
    live: AtomicUsize,
    idle: AtomicUsize,
    history_publications: AtomicUsize,
    history_bytes: AtomicUsize,
    history_evictions: AtomicU64,
    idle_evictions: AtomicU64,
    limit_refusals: AtomicU64,
    publications: AtomicU64,
}

fn adjust(counter: &AtomicUsize, before: usize, after: usize) {
    if after > before {
        counter.fetch_add(after - before, Ordering::Relaxed);
    } else if before > after {
        counter.fetch_sub(before - after, Ordering::Relaxed);
    }
}

pub struct MemoryBroker {
    shards: Vec<Mutex<Shard>>,
    /// The keys of the channel-name hash ([`MemoryBroker::name_hash`]):
    /// random, and handed to the next process with the channels.
    hash_keys: [AtomicU64; 2],
    /// Sealed for a handoff: publishes are refused ([`SEALED`]).
    sealed: AtomicBool,
    inboxes: Arc<Inboxes>,
    policy: Arc<ChannelPolicy>,
    clock: Instant,
    /// Added to the clock (tests move time forward with it).
    skew_ms: AtomicU64,
    counts: Counts,
    /// One thread at a time brings the history back under its budget.
    evicting: AtomicBool,
    refusal_log: Throttle,
    eviction_log: Throttle,
    /// Webhooks: occupied/vacated, members, users.
    events: Events,
    /// User presence (this node is the whole cluster).
    users: UserCounts,
}

/// Workers to wake once the shard lock is released.
#[derive(Default)]
struct Wakes(u64, Vec<usize>);

impl Wakes {
    fn add(&mut self, w: usize) {
        if w < 64 {
            self.0 |= 1 << w;
        } else if !self.1.contains(&w) {
            self.1.push(w);
        }
    }

    fn fire(self, inboxes: &Inboxes, except: usize) {
        let mut bits = self.0;
        while bits != 0 {
            let w = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if w != except {
                inboxes.wake(w);
            }
        }
        for w in self.1 {
            if w != except {
                inboxes.wake(w);
            }
        }
    }
}

impl MemoryBroker {
    pub fn new(inboxes: Arc<Inboxes>, policy: Arc<ChannelPolicy>) -> MemoryBroker {
        Self::with_events(inboxes, policy, Events::OFF)
    }

    /// A broker that emits webhooks through `events`.
    pub fn with_events(
        inboxes: Arc<Inboxes>,
        policy: Arc<ChannelPolicy>,
        events: Events,
    ) -> MemoryBroker {
        MemoryBroker {
            events,
            users: UserCounts::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hash_keys: [AtomicU64::new(random_u64()), AtomicU64::new(random_u64())],
            sealed: AtomicBool::new(false),
            inboxes,
            policy,
            clock: Instant::now(),
            skew_ms: AtomicU64::new(0),
            counts: Counts::default(),
            evicting: AtomicBool::new(false),
            refusal_log: Throttle::default(),
            eviction_log: Throttle::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64 + self.skew_ms.load(Ordering::Relaxed)
    }

    fn lock(s: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
        s.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A keyed hash of a channel name: SipHash-2-4 (std's `SipHasher`,
    /// deprecated for `HashMap` use in favour of `DefaultHasher`, whose
    /// algorithm is unspecified; this one is fixed, so that the next
    /// process, given the keys, hashes a name as this one did, and keyed,
    /// so that a client cannot choose names that collide). It chooses the
    /// shard (bits 32..) and is the idle position's key (whose table
    /// indexes by the low bits and tags by the top ones).
    fn name_hash(&self, channel: &str) -> u64 {
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new_with_keys(
            self.hash_keys[0].load(Ordering::Relaxed),
            self.hash_keys[1].load(Ordering::Relaxed),
        );
        h.write(channel.as_bytes());
        h.finish()
    }

    fn shard_of(hash: u64) -> usize {
        ((hash >> 32) as usize) % SHARDS
    }

    fn shard(&self, channel: &str) -> MutexGuard<'_, Shard> {
        Self::lock(&self.shards[Self::shard_of(self.name_hash(channel))])
    }

    fn idle_key(&self, channel: &str) -> u64 {
        self.name_hash(channel)
    }

    /// Idle positions one shard may keep.
    fn idle_cap(&self) -> usize {
        self.policy.node.max_channels.div_ceil(SHARDS)
    }

    /// Run `f` on a channel's history, keeping the node's counts right.
    fn account<R>(&self, h: &mut History, f: impl FnOnce(&mut History) -> R) -> R {
        let (n, b) = (h.len(), h.bytes());
        let r = f(h);
        adjust(&self.counts.history_publications, n, h.len());
        adjust(&self.counts.history_bytes, b, h.bytes());
        r
    }

    /// The live record of `name`: as it is, back from its idle position, or
    /// new; refused when the node holds `limits.max_channels` channels.
    fn open<'a>(
        &self,
        shard: &'a mut Shard,
        name: &str,
        now: u64,
    ) -> Result<&'a mut Channel, OpError> {
        if !shard.live.contains_key(name) {
            let max = self.policy.node.max_channels;
            if self.counts.live.fetch_add(1, Ordering::Relaxed) >= max {
                self.counts.live.fetch_sub(1, Ordering::Relaxed);
                self.counts.limit_refusals.fetch_add(1, Ordering::Relaxed);
                if self.refusal_log.allow(now) {
                    log::warn!(
                        "channel {name:?} refused: the node holds limits.max_channels = {max} \
                         channels (wsgate_channel_limit_refusals_total counts every refusal)"
                    );
                }
                return Err(OpError::Unavailable("the node's channel limit is reached"));
            }
            let limits = self.policy.options(name).history_limits();
            let history = match shard.idle.remove(&self.idle_key(name)) {
                Some(i) => {
                    self.counts.idle.fetch_sub(1, Ordering::Relaxed);
                    History::resume(i.epoch, i.top, limits)
                }
                None => History::new(Epoch(new_epoch_bits()), limits),
            };
            let name: Arc<str> = name.into();
            shard.live.insert(
                name.clone(),
                Channel {
                    history,
                    interest: vec![0; self.inboxes.len()].into_boxed_slice(),
                    presence: Presence::default(),
                    expiry: None,
                    name,
                },
            );
        }
        Ok(shard.live.get_mut(name).expect("present or inserted above"))
    }

    /// A channel with nothing left (no subscriber, member or history) keeps
    /// only its position, for the grace.
    fn settle(&self, shard: &mut Shard, name: &str, now: u64) {
        if !shard.live.get(name).is_some_and(Channel::idle) {
            return;
        }
        let ch = shard.live.remove(name).expect("checked above");
        self.counts.live.fetch_sub(1, Ordering::Relaxed);
        let key = self.idle_key(name);
        let expires = now + IDLE_GRACE_MS;
        let idle = Idle {
            epoch: ch.history.epoch(),
            top: ch.history.top(),
            expires,
        };
        if shard.idle.insert(key, idle).is_none() {
            self.counts.idle.fetch_add(1, Ordering::Relaxed);
        }
        shard.idle_order.push_back((key, expires));
        while shard.idle.len() > self.idle_cap() {
            if !self.forget_oldest_idle(shard, u64::MAX) {
                break;
            }
            self.counts.idle_evictions.fetch_add(1, Ordering::Relaxed);
            if self.eviction_log.allow(now) {
                log::warn!(
                    "more idle channels than limits.max_channels: the oldest positions are \
                     forgotten early (wsgate_idle_channel_evictions_total)"
                );
            }
        }
        if shard.idle_order.len() > 2 * shard.idle.len() + 64 {
            let idle = &shard.idle;
            shard
                .idle_order
                .retain(|(k, e)| idle.get(k).is_some_and(|i| i.expires == *e));
        }
    }

    /// Forget the idle position that went idle first, if it expires by
    /// `before`; false if there is none.
    fn forget_oldest_idle(&self, shard: &mut Shard, before: u64) -> bool {
        while let Some(&(key, expires)) = shard.idle_order.front() {
            if expires > before {
                return false;
            }
            shard.idle_order.pop_front();
            if shard.idle.get(&key).is_some_and(|i| i.expires == expires) {
                shard.idle.remove(&key);
                self.counts.idle.fetch_sub(1, Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// The due time of the shard's oldest history, after dropping stale
    /// heap entries and requeuing those whose front has moved.
    fn oldest(shard: &mut Shard) -> Option<u64> {
        loop {
            let Reverse((due, name)) = shard.expiry.peek()?;
            let due = *due;
            match shard.live.get_mut(name) {
                Some(ch) if ch.expiry == Some(due) => {
                    if ch.history.next_expiry() == Some(due) {
                        return Some(due);
                    }
                    shard.expiry.pop();
                    ch.expiry = None;
                    Shard::schedule(&mut shard.expiry, ch);
                }
                _ => {
                    shard.expiry.pop();
                }
            }
        }
    }

    /// Trim by age what is due in one shard (at most `budget` channels).
    fn expire(&self, shard: &mut Shard, now: u64, budget: usize) {
        for _ in 0..budget {
            match shard.expiry.peek() {
                Some(Reverse((due, _))) if *due <= now => {}
                _ => return,
            }
            let Some(Reverse((due, name))) = shard.expiry.pop() else {
                return;
            };
            let Some(ch) = shard.live.get_mut(&name).filter(|c| c.expiry == Some(due)) else {
                continue; // stale
            };
            ch.expiry = None;
            self.account(&mut ch.history, |h| h.trim(now));
            Shard::schedule(&mut shard.expiry, ch);
            self.settle(shard, &name, now);
        }
    }

    /// Drop the shard's publication that would expire first; false if the
    /// shard holds none.
    fn evict_oldest(&self, shard: &mut Shard, now: u64) -> bool {
        if Self::oldest(shard).is_none() {
            return false;
        }
        let Some(Reverse((_, name))) = shard.expiry.pop() else {
            return false;
        };
        let Some(ch) = shard.live.get_mut(&name) else {
            return false;
        };
        ch.expiry = None;
        self.account(&mut ch.history, History::pop_front);
        Shard::schedule(&mut shard.expiry, ch);
        let n = self
            .counts
            .history_evictions
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if self.eviction_log.allow(now) {
            log::warn!(
                "history budget (limits.history_memory = {} bytes) full: the oldest publications \
                 are dropped before their age ({n} so far, wsgate_history_evictions_total; \
                 channel {name:?} now)",
                self.policy.node.history_memory
            );
        }
        self.settle(shard, &name, now);
        true
    }

    /// Bring the histories back under 15/16 of `limits.history_memory`,
    /// dropping the oldest publications first (called with no shard lock
    /// held).
    fn enforce_budget(&self) {
        let limit = self.policy.node.history_memory;
        if self.counts.history_bytes.load(Ordering::Relaxed) <= limit
            || self.evicting.swap(true, Ordering::Acquire)
        {
            return;
        }
        let target = limit - limit / 16;
        let now = self.now_ms();
        let over = || self.counts.history_bytes.load(Ordering::Relaxed) > target;
        // A merge over the shards' oldest publications: one pass to learn
        // them, then a shard's are dropped while they are the oldest.
        let mut tops: BinaryHeap<Reverse<(u64, usize)>> = self
            .shards
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Self::oldest(&mut Self::lock(s)).map(|d| Reverse((d, i))))
            .collect();
        while over() {
            let Some(Reverse((_, i))) = tops.pop() else {
                break;
            };
            let next = tops.peek().map_or(u64::MAX, |Reverse((d, _))| *d);
            let mut shard = Self::lock(&self.shards[i]);
            while over() && Self::oldest(&mut shard).is_some_and(|d| d <= next) {
                self.evict_oldest(&mut shard, now);
            }
            if let Some(d) = Self::oldest(&mut shard) {
                tops.push(Reverse((d, i)));
            }
        }
        self.evicting.store(false, Ordering::Release);
    }

    /// Publish under the shard lock: offset, history, fan-out to workers.
    /// The position, and whether it was a repeat (an idempotency key seen
    /// within its window: the first publication's position, nothing made).
    fn publish_locked(
        &self,
        shard: &mut Shard,
        channel: &str,
        data: &RawValue,
        opts: &PublishOptions,
        now: u64,
        wakes: &mut Wakes,
    ) -> Result<(Position, bool), OpError> {
        let key = opts
            .idempotency_key
            .as_ref()
            .map(|k| format!("{channel}\n{k}"));
        if let Some(pos) = key.as_ref().and_then(|k| shard.idempotent(k, now)) {
            return Ok((pos, true));
        }
        // Under the shard lock: a publish that takes the lock after
        // `seal` read this shard sees the seal (the lock orders them), so
        // nothing is accepted that the snapshot lacks.
        if self.sealed.load(Ordering::Acquire) {
            return Err(SEALED);
        }
        let pos = self.publish_new(shard, channel, data, opts, now, wakes)?;
        if let Some(k) = key {
            shard.remember_key(k, pos.clone(), now);
        }
        Ok((pos, false))
    }

    fn publish_new(
        &self,
        shard: &mut Shard,
        channel: &str,
        data: &RawValue,
        opts: &PublishOptions,
        now: u64,
        wakes: &mut Wakes,
    ) -> Result<Position, OpError> {
        let ch = self.open(shard, channel, now)?;
        if opts.skip_history {
            // Live only: no offset, the position stays where it is.
            let frame = encode_unsaved(&ch.name, data);
            let exclude = &opts.exclude_client;
            super::deliver_to_workers(&ch.interest, &ch.name, 0, &frame, exclude, |w, msg| {
                if self.inboxes.push(w, msg) {
                    wakes.add(w);
                }
            });
            self.counts.publications.fetch_add(1, Ordering::Relaxed);
            let pos = ch.history.position();
            self.settle(shard, channel, now);
            return Ok(pos);
        }
        let offset = ch.history.next_offset();
        let frame = publication_frame(&ch.name, offset, data);
        let exclude = &opts.exclude_client;
        super::deliver_to_workers(&ch.interest, &ch.name, offset, &frame, exclude, |w, msg| {
            if self.inboxes.push(w, msg) {
                wakes.add(w);
            }
        });
        self.account(&mut ch.history, |h| {
            h.push(Publication {
                offset,
                at_ms: now,
                frame,
            })
        });
        self.counts.publications.fetch_add(1, Ordering::Relaxed);
        let pos = ch.history.position();
        shard.reschedule(channel);
        // A channel without history (history_size = 0) and without
        // subscribers is idle again at once.
        self.settle(shard, channel, now);
        Ok(pos)
    }

    /// A presence event to every worker with subscribers (under the lock).
    fn presence_event(&self, ch: &Channel, kind: &str, m: &Member, wakes: &mut Wakes) {
        let frame = encode_event(
            &serde_json::json!({ "channel": &*ch.name, kind: m }),
            FrameKind::Event,
        );
        let published = Instant::now();
        for (w, &n) in ch.interest.iter().enumerate() {
            if n > 0 {
                let msg = WorkerMsg::Deliver {
                    channel: ch.name.clone(),
                    offset: 0,
                    frame: frame.copy(),
                    published,
                    exclude: None,
                };
                if self.inboxes.push(w, msg) {
                    wakes.add(w);
                }
            }
        }
    }

    fn reply(&self, to: ReplyTo, body: ReplyBody, wakes: &mut Wakes) {
        let w = to.worker;
        if self.inboxes.push(w, WorkerMsg::Reply { to, body }) {
            wakes.add(w);
        }
    }
}

/// A random 64-bit key: std's randomly keyed hasher, fresh per call.
fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(0x5EA1_u64)
}

/// Moving the channels to the next process ([`snapshot`]).
impl MemoryBroker {
    /// Seal, then take every shard's channels, idle positions and
    /// idempotency keys, with ages and what is left of each grace.
    fn take_state(&self) -> snapshot::State {
        self.sealed.store(true, Ordering::Release);
        let now = self.now_ms();
        let mut st = snapshot::State {
            hash_keys: (
                self.hash_keys[0].load(Ordering::Relaxed),
                self.hash_keys[1].load(Ordering::Relaxed),
            ),
            ..Default::default()
        };
        for s in &self.shards {
            let mut shard = Self::lock(s);
            for ch in shard.live.values_mut() {
                // What is past its age does not move.
                self.account(&mut ch.history, |h| h.trim(now));
                let h = &ch.history;
                st.channels.push(snapshot::ChannelState {
                    name: ch.name.to_string(),
                    epoch: h.epoch().0,
                    top: h.top(),
                    publications: h
                        .after(0, usize::MAX)
                        .into_iter()
                        .map(|p| snapshot::PubState {
                            offset: p.offset,
                            age_ms: now.saturating_sub(p.at_ms),
                            frame: p.frame,
                        })
                        .collect(),
                });
            }
            st.idle.extend(
                shard
                    .idle
                    .iter()
                    .filter(|(_, i)| i.expires > now)
                    .map(|(&key, i)| snapshot::IdleState {
                        key,
                        epoch: i.epoch.0,
                        top: i.top,
                        left_ms: i.expires - now,
                    }),
            );
            st.keys
                .extend(
                    shard
                        .idem
                        .iter()
                        .filter(|(_, (_, e))| *e > now)
                        .map(|(k, (pos, e))| snapshot::KeyState {
                            key: k.clone(),
                            epoch: pos.epoch.clone(),
                            offset: pos.offset,
                            left_ms: e - now,
                        }),
                );
        }
        st
    }

    /// Take the channels of the previous process into this broker, which
    /// must hold none yet (before the workers start). Ages become times on
    /// this broker's clock, moved forward by the oldest age so that no
    /// time is before its start; the current limits apply (a history over
    /// the channel's count, bytes or age is trimmed, the node's history
    /// budget is enforced, channels over `limits.max_channels` are left
    /// out and counted as refusals).
    fn restore_state(&self, st: snapshot::State) -> Result<(), String> {
        let c = &self.counts;
        if c.live.load(Ordering::Relaxed) + c.idle.load(Ordering::Relaxed) > 0 {
            return Err("this broker holds channels already".into());
        }
        self.hash_keys[0].store(st.hash_keys.0, Ordering::Relaxed);
        self.hash_keys[1].store(st.hash_keys.1, Ordering::Relaxed);
        let oldest = st
            .channels
            .iter()
            .flat_map(|c| c.publications.iter().map(|p| p.age_ms))
            .max()
            .unwrap_or(0);
        self.skew_ms.fetch_add(oldest, Ordering::Relaxed);
        let now = self.now_ms();
        let mut left_out = 0usize;
        for ch in st.channels {
            let mut shard = self.shard(&ch.name);
            let limits = self.policy.options(&ch.name).history_limits();
            let Ok(live) = self.open(&mut shard, &ch.name, now) else {
                left_out += 1;
                continue;
            };
            let first = ch.publications.first().map_or(ch.top, |p| p.offset - 1);
            self.account(&mut live.history, |h| {
                *h = History::resume(Epoch(ch.epoch), first, limits);
                for p in ch.publications {
                    h.push(Publication {
                        offset: p.offset,
                        at_ms: now.saturating_sub(p.age_ms),
                        frame: p.frame,
                    });
                }
                h.trim(now);
            });
            shard.reschedule(&ch.name);
            // No subscriber yet: a channel without history keeps its
            // position only (sessions that come back find it there).
            self.settle(&mut shard, &ch.name, now);
        }
        let mut idle = st.idle;
        idle.sort_by_key(|i| i.left_ms);
        for i in idle {
            let mut shard = Self::lock(&self.shards[Self::shard_of(i.key)]);
            let expires = now + i.left_ms;
            let entry = Idle {
                epoch: Epoch(i.epoch),
                top: i.top,
                expires,
            };
            if shard.idle.insert(i.key, entry).is_none() {
                self.counts.idle.fetch_add(1, Ordering::Relaxed);
            }
            shard.idle_order.push_back((i.key, expires));
            while shard.idle.len() > self.idle_cap() {
                if !self.forget_oldest_idle(&mut shard, u64::MAX) {
                    break;
                }
                self.counts.idle_evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut keys = st.keys;
        keys.sort_by_key(|k| k.left_ms);
        for k in keys {
            // `CHANNEL\nKEY`: channel names have no line break.
            let channel = k.key.split_once('\n').map_or(&*k.key, |(c, _)| c);
            let mut shard = self.shard(channel);
            let pos = Position {
                epoch: k.epoch,
                offset: k.offset,
            };
            // Remembered for what was left of its window.
            shard.remember_key_until(k.key, pos, now + k.left_ms);
        }
        self.enforce_budget();
        if left_out > 0 {
            log::warn!(
                "handoff: {left_out} channels left out: over limits.max_channels = {}",
                self.policy.node.max_channels
            );
        }
        Ok(())
    }
}

/// The history API's page of a channel's history.
fn history_page(h: &History, since: Option<&Position>, limit: usize) -> HistoryPage {
    let position = h.position();
    match since {
        Some(pos) => match h.since_at_most(pos, limit) {
            Recovery::Recovered(p) => HistoryPage {
                position,
                recovered: Some(true),
                publications: p,
            },
            Recovery::Lost => HistoryPage {
                position,
                recovered: Some(false),
                publications: Vec::new(),
            },
        },
        None => {
            let skip = h.len().saturating_sub(limit);
            HistoryPage {
                position,
                recovered: None,
                publications: h.after(0, usize::MAX).split_off(skip),
            }
        }
    }
}

impl Broker for MemoryBroker {
    fn publish(
        &self,
        from: usize,
        channel: &str,
        data: &RawValue,
        opts: &PublishOptions,
        reply: Option<ReplyTo>,
    ) {
        let now = self.now_ms();
        let mut wakes = Wakes::default();
        {
            let mut shard = self.shard(channel);
            let made = self.publish_locked(&mut shard, channel, data, opts, now, &mut wakes);
            let repeat = matches!(made, Ok((_, true)));
            let pos = made.map(|(p, _)| p);
            super::client_event(&self.events, channel, data, opts, &pos, repeat);
            if let Some(to) = reply {
                self.reply(to, ReplyBody::Published(pos), &mut wakes);
            }
        }
        wakes.fire(&self.inboxes, from);
        self.enforce_budget();
    }

    fn publish_batch(&self, from: usize, items: &[(String, Box<RawValue>)], reply: ReplyTo) {
        let now = self.now_ms();
        let mut wakes = Wakes::default();
        let mut results = Vec::with_capacity(items.len());
        for (channel, data) in items {
            {
                let mut shard = self.shard(channel);
                let opts = PublishOptions::default();
                let r = self
                    .publish_locked(&mut shard, channel, data, &opts, now, &mut wakes)
                    .map(|(p, _)| p);
                results.push(r);
            }
            // After each publication, not each batch: a batch of big
            // publications would otherwise overshoot the budget by its size.
            self.enforce_budget();
        }
        self.reply(reply, ReplyBody::PublishedBatch(results), &mut wakes);
        wakes.fire(&self.inboxes, from);
    }

    fn subscribe(
        &self,
        from: usize,
        channel: Arc<str>,
        since: Option<Position>,
        member: Option<Member>,
        flags: SubFlags,
        reply: ReplyTo,
    ) {
        let opts = self.policy.options(&channel);
        let (presence, join_leave) = (
            flags.presence(opts.presence),
            flags.join_leave(opts.join_leave),
        );
        let now = self.now_ms();
        let mut wakes = Wakes::default();
        {
            let mut shard = self.shard(&channel);
            let ch = match self.open(&mut shard, &channel, now) {
                Ok(ch) => ch,
                Err(e) => {
                    let body = ReplyBody::Subscribed {
                        channel: channel.clone(),
                        client: None,
                        flags,
                        result: Err(e),
                    };
                    self.reply(reply, body, &mut wakes);
                    drop(shard);
                    wakes.fire(&self.inboxes, from);
                    return;
                }
            };
            if ch.interest.iter().all(|&n| n == 0) {
                // Under the shard lock: ordered with the channel's vacated.
                self.events.channel(&channel, true);
            }
            ch.interest[from] += 1;
            // What is past its age is not replayed, swept or not.
            self.account(&mut ch.history, |h| h.trim(now));
            let (recovered, replay, replay_after) = match &since {
                // The gap's first part; the rest is read a part at a time
                // (Broker::replay) as the subscriber's out queue drains.
                Some(pos) => match ch.history.gap(pos) {
                    Some(0) => (Some(true), Vec::new(), None),
                    Some(_) => {
                        let part = self.policy.node.replay_part;
                        let first = ch.history.chunk(pos.offset, part).unwrap_or_default();
                        let end = pos.offset + first.len() as u64;
                        let more = (end < ch.history.top()).then_some(end);
                        (Some(true), first, more)
                    }
                    None => (Some(false), Vec::new(), None),
                },
                None if opts.deliver_latest => (
                    None,
                    ch.history
                        .latest()
                        .map(|p| p.frame.clone())
                        .into_iter()
                        .collect(),
                    None,
                ),
                None => (None, Vec::new(), None),
            };
            let result = Subscribed {
                position: ch.history.position(),
                recovered,
                replay,
                replay_after,
            };
            // The answer goes first: the subscriber is in the worker's index
            // before anything published after this point reaches it.
            self.reply(
                reply,
                ReplyBody::Subscribed {
                    channel: channel.clone(),
                    client: member.as_ref().map(|m| m.client().to_string()),
                    flags,
                    result: Ok(result),
                },
                &mut wakes,
            );
            if let Some(m) = member {
                if !presence {
                    // Not tracked (a grant's `presence` off), announced all
                    // the same when its `join_leave` is on.
                    if join_leave {
                        self.presence_event(ch, "join", &m, &mut wakes);
                    }
                } else if ch.presence.join(m.clone()) {
                    if join_leave {
                        self.presence_event(ch, "join", &m, &mut wakes);
                    }
                    self.events.member(&channel, &m, true);
                }
            }
        }
        wakes.fire(&self.inboxes, from);
    }

    fn unsubscribe(&self, from: usize, channel: &str, member: Option<&Member>, flags: SubFlags) {
        let opts = self.policy.options(channel);
        let (presence, join_leave) = (
            flags.presence(opts.presence),
            flags.join_leave(opts.join_leave),
        );
        let now = self.now_ms();
        let mut wakes = Wakes::default();
        {
            let mut shard = self.shard(channel);
            let Some(ch) = shard.live.get_mut(channel) else {
                return;
            };
            let was = ch.interest[from];
            ch.interest[from] = was.saturating_sub(1);
            if !presence {
                // Never tracked: announced only (as its join was).
                if let Some(m) = member.filter(|_| join_leave) {
                    self.presence_event(ch, "leave", m, &mut wakes);
                }
            } else if let Some(m) = member.and_then(|m| ch.presence.leave(&m.client())) {
                if join_leave {
                    self.presence_event(ch, "leave", &m, &mut wakes);
                }
                self.events.member(channel, &m, false);
            }
            if was > 0 && ch.interest.iter().all(|&n| n == 0) {
                self.events.channel(channel, false);
            }
            self.settle(&mut shard, channel, now);
        }
        wakes.fire(&self.inboxes, from);
    }

    fn history(
        &self,
        from: usize,
        channel: &str,
        since: Option<Position>,
        limit: usize,
        reverse: bool,
        reply: ReplyTo,
    ) {
        let now = self.now_ms();
        let mut wakes = Wakes::default();
        {
            let mut shard = self.shard(channel);
            let page = if let Some(ch) = shard.live.get_mut(channel) {
                self.account(&mut ch.history, |h| h.trim(now));
                let page = history_page(&ch.history, since.as_ref(), limit);
                self.settle(&mut shard, channel, now);
                page
            } else if let Some(i) = shard.idle.get(&self.idle_key(channel)) {
                let limits = self.policy.options(channel).history_limits();
                history_page(
                    &History::resume(i.epoch, i.top, limits),
                    since.as_ref(),
                    limit,
                )
            } else {
                HistoryPage {
                    // A channel never published to (or forgotten): a new epoch
                    // would be made at its first publication.
                    position: Position {
                        epoch: String::new(),
                        offset: 0,
                    },
                    recovered: since.as_ref().map(|_| false),
                    publications: Vec::new(),
                }
            };
            let mut page = page;
            if reverse {
                page.publications.reverse();
            }
            self.reply(reply, ReplyBody::History(Ok(page)), &mut wakes);
        }
        wakes.fire(&self.inboxes, from);
    }

    fn presence(&self, from: usize, channel: &str, reply: ReplyTo) {
        let info = {
            let shard = self.shard(channel);
            shard
                .live
                .get(channel)
                .map(|c| c.presence.info())
                .unwrap_or_default()
        };
        let mut wakes = Wakes::default();
        self.reply(reply, ReplyBody::Presence(Ok(info)), &mut wakes);
        wakes.fire(&self.inboxes, from);
    }

    fn replay(&self, from: usize, req: ReplayRequest, reply: ReplyTo) {
        let now = self.now_ms();
        let mut wakes = Wakes::default();
        {
            let mut shard = self.shard(&req.channel);
            let (frames, top) = match shard.live.get_mut(&*req.channel) {
                Some(ch) => {
                    self.account(&mut ch.history, |h| h.trim(now));
                    let frames = (Epoch::parse(&req.epoch) == Some(ch.history.epoch()))
                        .then(|| ch.history.chunk(req.after, req.max_bytes))
                        .flatten();
                    (frames, ch.history.top())
                }
                // A subscriber's channel is live; a late request finds none.
                None => (None, 0),
            };
            let chunk = ReplayChunk {
                channel: req.channel,
                tag: req.tag,
                frames,
                top,
            };
            // Under the lock: ordered with the channel's publications.
            self.reply(reply, ReplyBody::Replay(chunk), &mut wakes);
        }
        wakes.fire(&self.inboxes, from);
    }

    fn disconnect_user(&self, user: &str) {
        self.inboxes.disconnect_user(user);
    }

    fn events(&self) -> &Events {
        &self.events
    }

    fn user_up(&self, _from: usize, user: &str) {
        self.users.up(user, || self.events.user(user, true));
    }

    fn user_down(&self, _from: usize, user: &str) {
        self.users.down(user, || self.events.user(user, false));
    }

    fn users_online(&self, from: usize, users: Vec<String>, reply: ReplyTo) {
        let online = users
            .into_iter()
            .map(|u| {
                let on = self.users.online(&u);
                (u, on)
            })
            .collect();
        let mut wakes = Wakes::default();
        self.reply(reply, ReplyBody::Users(Ok(online)), &mut wakes);
        wakes.fire(&self.inboxes, from);
    }

    fn sweep(&self) {
        let now = self.now_ms();
        for s in &self.shards {
            let mut shard = Self::lock(s);
            self.expire(&mut shard, now, SWEEP_BUDGET);
            for _ in 0..SWEEP_BUDGET {
                if !self.forget_oldest_idle(&mut shard, now) {
                    break;
                }
            }
            shard.forget_keys(now);
            shard.shrink();
        }
    }

    fn seal(&self) -> Option<Vec<u8>> {
        Some(self.take_state().encode())
    }

    fn unseal(&self) {
        self.sealed.store(false, Ordering::Release);
    }

    fn restore(&self, state: snapshot::State) -> Result<(), String> {
        self.restore_state(state)
    }

    fn stats(&self) -> BrokerStats {
        let c = &self.counts;
        let r = Ordering::Relaxed;
        BrokerStats {
            kind: "memory",
            healthy: true,
            channels: c.live.load(r),
            history_publications: c.history_publications.load(r),
            publications: c.publications.load(r),
            idle_channels: c.idle.load(r),
            history_bytes: c.history_bytes.load(r),
            history_limit: self.policy.node.history_memory,
            history_evictions: c.history_evictions.load(r),
            idle_evictions: c.idle_evictions.load(r),
            channel_limit_refusals: c.limit_refusals.load(r),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use mio::Token;

    struct Fixture {
        broker: MemoryBroker,
        inboxes: Arc<Inboxes>,
        _poll: mio::Poll,
    }

    fn fixture(tweak: impl FnOnce(&mut Config)) -> Fixture {
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), Token(0)).unwrap();
        let inboxes = Arc::new(Inboxes::new(vec![waker]));
        let mut cfg = Config::default();
        tweak(&mut cfg);
        let policy = Arc::new(ChannelPolicy::new(&cfg));
        Fixture {
            broker: MemoryBroker::new(inboxes.clone(), policy),
            inboxes,
            _poll: poll,
        }
    }

    fn to() -> ReplyTo {
        ReplyTo {
            worker: 0,
            conn: crate::base::ConnKey::new(1, 1),
            id: None,
            tag: crate::broker::Tag(1),
        }
    }

    fn data(n: usize) -> Box<RawValue> {
        RawValue::from_string(format!("\"{}\"", "x".repeat(n))).unwrap()
    }

    impl Fixture {
        /// Everything in the worker's inbox.
        fn take(&self) -> Vec<WorkerMsg> {
            let mut v = Vec::new();
            self.inboxes.drain(0, &mut v);
            v
        }

        /// The broker's answer in the inbox (publications are skipped).
        fn answer(&self) -> ReplyBody {
            self.take()
                .into_iter()
                .find_map(|m| match m {
                    WorkerMsg::Reply { body, .. } => Some(body),
                    _ => None,
                })
                .expect("an answer")
        }

        fn subscribe(&self, ch: &str, since: Option<Position>) -> Result<Subscribed, OpError> {
            self.broker
                .subscribe(0, ch.into(), since, None, SubFlags::NONE, to());
            match self.answer() {
                ReplyBody::Subscribed { result, .. } => result,
                other => panic!("{other:?}"),
            }
        }

        fn publish(&self, ch: &str, size: usize) -> Result<Position, OpError> {
            self.broker
                .publish(0, ch, &data(size), &PublishOptions::default(), Some(to()));
            match self.answer() {
                ReplyBody::Published(r) => r,
                other => panic!("{other:?}"),
            }
        }

        fn replay(&self, ch: &str, epoch: &str, after: u64, max_bytes: usize) -> ReplayChunk {
            let req = ReplayRequest {
                channel: ch.into(),
                epoch: epoch.into(),
                after,
                max_bytes,
                tag: 7,
            };
            self.broker.replay(0, req, to());
            match self.answer() {
                ReplyBody::Replay(c) => c,
                other => panic!("{other:?}"),
            }
        }

        fn later(&self, ms: u64) {
            self.broker.skew_ms.fetch_add(ms, Ordering::Relaxed);
        }

        fn shard_capacity(&self) -> usize {
            self.broker
                .shards
                .iter()
                .map(|s| {
                    let s = MemoryBroker::lock(s);
                    s.live.capacity() + s.idle.capacity() + s.idle_order.capacity()
                })
                .sum()
        }
    }

    fn at(epoch: &str, offset: u64) -> Option<Position> {
        Some(Position {
            epoch: epoch.into(),
            offset,
        })
    }

    fn history_of(f: &Fixture, ch: &str, since: Option<Position>) -> HistoryPage {
        f.broker.history(0, ch, since, 1000, false, to());
        match f.answer() {
            ReplyBody::History(Ok(p)) => p,
            other => panic!("{other:?}"),
        }
    }

    fn keyed(f: &Fixture, ch: &str, key: &str) -> Result<Position, OpError> {
        let opts = PublishOptions {
            idempotency_key: Some(key.into()),
            ..Default::default()
        };
        f.broker.publish(0, ch, &data(3), &opts, Some(to()));
        match f.answer() {
            ReplyBody::Published(r) => r,
            other => panic!("{other:?}"),
        }
    }

    /// Seal, encode, decode, restore into a fresh broker: what a handoff
    /// does with the channels.
    fn moved(old: &Fixture, tweak: impl FnOnce(&mut Config)) -> Fixture {
        let bytes = old.broker.seal().expect("the memory broker has state");
        let state = snapshot::State::decode(&bytes).unwrap();
        let new = fixture(tweak);
        new.broker.restore(state).unwrap();
        new
    }

    #[test]
    fn a_sealed_broker_refuses_publishes_and_unsealed_serves_on_with_nothing_lost() {
        let f = fixture(|_| {});
        let p = f.publish("a", 5).unwrap();
        let k = keyed(&f, "a", "k1").unwrap();
        let _state = f.broker.seal().unwrap();
        assert_eq!(f.publish("a", 5), Err(SEALED));
        assert_eq!(f.publish("new", 5), Err(SEALED));
        assert_eq!(SEALED.code(), 10, "documented as unavailable");
        f.broker.publish_batch(0, &[("a".into(), data(1))], to());
        match f.answer() {
            ReplyBody::PublishedBatch(r) => assert_eq!(r, vec![Err(SEALED)]),
            other => panic!("{other:?}"),
        }
        // A key already answered keeps its answer while sealed (nothing
        // new is made); a new key is refused.
        assert_eq!(keyed(&f, "a", "k1"), Ok(k));
        assert_eq!(keyed(&f, "a", "k2"), Err(SEALED));
        // Reads and subscribes are served.
        let s = f.subscribe("a", at(&p.epoch, 0)).unwrap();
        assert_eq!((s.recovered, s.replay.len()), (Some(true), 2));
        f.broker.unseal();
        let q = f.publish("a", 5).unwrap();
        assert_eq!(
            (q.epoch, q.offset),
            (p.epoch, 3),
            "the next offset: none lost"
        );
    }

    #[test]
    fn channels_move_with_offsets_epochs_data_ages_idle_positions_and_keys() {
        let old = fixture(|_| {});
        for i in 0..3 {
            for _ in 0..=i {
                old.publish(&format!("ch-{i}"), 10 + i).unwrap();
            }
        }
        let k = keyed(&old, "ch-0", "once").unwrap();
        // An idle channel: its position only.
        let idle = old.subscribe("quiet", None).unwrap().position;
        old.broker.unsubscribe(0, "quiet", None, SubFlags::NONE);
        // A publication 200 s old (TTL 300 s).
        old.later(200_000);
        let young = old.publish("ch-2", 1).unwrap();
        let before: Vec<_> = (0..3)
            .map(|i| history_of(&old, &format!("ch-{i}"), None))
            .collect();
        let new = moved(&old, |_| {});
        for (i, b) in before.iter().enumerate() {
            let a = history_of(&new, &format!("ch-{i}"), None);
            assert_eq!(a.position, b.position);
            let json = |p: &HistoryPage| -> Vec<(u64, Vec<u8>)> {
                p.publications
                    .iter()
                    .map(|p| (p.offset, p.json().to_vec()))
                    .collect()
            };
            assert_eq!(json(&a), json(b), "ch-{i}");
        }
        // Recovery from an old position: exactly the missed ones, same epoch.
        let s = new.subscribe("ch-2", at(&young.epoch, 1)).unwrap();
        assert_eq!((s.recovered, s.position.offset), (Some(true), 4));
        let offsets: Vec<_> = s.replay.iter().map(|f| f.offset()).collect();
        assert_eq!(offsets, vec![2, 3, 4]);
        // The idle position resumes in its epoch.
        let s = new.subscribe("quiet", Some(idle.clone())).unwrap();
        assert_eq!((s.recovered, s.position), (Some(true), idle));
        // The key's answer moved: not published again.
        assert_eq!(keyed(&new, "ch-0", "once"), Ok(k.clone()));
        assert_eq!(history_of(&new, "ch-0", None).position.offset, k.offset);
        // Ages moved: 100 s more and the 200-s-old publications are past
        // their TTL, the young one is not.
        new.later(100_000);
        let h = history_of(&new, "ch-2", None);
        assert_eq!(
            h.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![4]
        );
        new.broker.sweep();
        assert_eq!(new.broker.stats().history_publications, 1, "the young one");
    }

    #[test]
    fn a_restore_keeps_to_the_new_limits_and_refuses_a_broker_in_use() {
        let old = fixture(|_| {});
        for ch in ["a", "b", "c"] {
            old.publish(ch, 10).unwrap();
        }
        let new = moved(&old, |c| c.limits.max_channels = 2);
        let st = new.broker.stats();
        assert_eq!((st.channels, st.history_publications), (2, 2));
        let again = snapshot::State::decode(&old.broker.seal().unwrap()).unwrap();
        assert!(new.broker.restore(again).is_err(), "holds channels already");
    }

    #[test]
    fn a_churn_of_channels_keeps_positions_only_and_gives_memory_back() {
        let f = fixture(|c| c.limits.max_channels = 64 * 100);
        let n = 20_000;
        let mut epochs = Vec::new();
        for i in 0..n {
            let ch = format!("churn-{i}");
            let s = f.subscribe(&ch, None).unwrap();
            epochs.push(s.position.epoch);
            f.broker.unsubscribe(0, &ch, None, SubFlags::NONE);
        }
        let st = f.broker.stats();
        assert_eq!(st.channels, 0, "no channel stays live");
        // 100 idle positions per shard: the oldest were forgotten early.
        assert!(st.idle_channels <= 6400, "{}", st.idle_channels);
        assert_eq!(st.idle_evictions as usize, n - st.idle_channels);
        let peak = f.shard_capacity();
        // The newest idle channel resumes where it was: recovered.
        let last = format!("churn-{}", n - 1);
        let s = f.subscribe(&last, at(&epochs[n - 1], 0)).unwrap();
        assert_eq!(s.recovered, Some(true));
        assert_eq!(s.position.epoch, epochs[n - 1]);
        f.broker.unsubscribe(0, &last, None, SubFlags::NONE);
        // The first was forgotten (over the limit): a new epoch, lost.
        let s = f.subscribe("churn-0", at(&epochs[0], 0)).unwrap();
        assert_eq!(s.recovered, Some(false));
        assert_ne!(s.position.epoch, epochs[0]);
        f.broker.unsubscribe(0, "churn-0", None, SubFlags::NONE);
        // After the grace, a sweep forgets what expired, within its budget
        // per shard, and the tables shrink.
        f.later(IDLE_GRACE_MS);
        for _ in 0..st.idle_channels / (SHARDS * SWEEP_BUDGET) + 2 {
            f.broker.sweep();
        }
        assert_eq!(f.broker.stats().idle_channels, 0);
        assert!(
            f.shard_capacity() < peak / 8,
            "{} of {peak}",
            f.shard_capacity()
        );
    }

    #[test]
    fn an_idle_channel_within_its_grace_recovers_and_after_it_does_not() {
        let f = fixture(|_| {});
        let s = f.subscribe("quiet", None).unwrap();
        let epoch = s.position.epoch.clone();
        f.publish("quiet", 10).unwrap();
        f.broker.unsubscribe(0, "quiet", None, SubFlags::NONE);
        // History held: live; expired by age, the channel keeps only its
        // position.
        assert_eq!(f.broker.stats().channels, 1);
        f.later(300_000);
        f.broker.sweep();
        let st = f.broker.stats();
        assert_eq!((st.channels, st.idle_channels, st.history_bytes), (0, 1, 0));
        let page = {
            f.broker.history(0, "quiet", at(&epoch, 1), 10, false, to());
            match f.take().pop() {
                Some(WorkerMsg::Reply {
                    body: ReplyBody::History(Ok(p)),
                    ..
                }) => p,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!((page.position.offset, page.recovered), (1, Some(true)));
        // At the top within the grace: recovered, same epoch; behind it:
        // the expired publication is lost.
        let s = f.subscribe("quiet", at(&epoch, 1)).unwrap();
        assert_eq!((s.recovered, s.position.offset), (Some(true), 1));
        assert_eq!(s.position.epoch, epoch);
        f.broker.unsubscribe(0, "quiet", None, SubFlags::NONE);
        assert_eq!(
            f.subscribe("quiet", at(&epoch, 0)).unwrap().recovered,
            Some(false)
        );
        f.broker.unsubscribe(0, "quiet", None, SubFlags::NONE);
        f.later(IDLE_GRACE_MS);
        f.broker.sweep();
        assert_eq!(f.broker.stats().idle_channels, 0);
        let s = f.subscribe("quiet", at(&epoch, 1)).unwrap();
        assert_eq!(s.recovered, Some(false));
        assert_ne!(s.position.epoch, epoch, "forgotten: a new epoch");
    }

    #[test]
    fn the_node_holds_at_most_max_channels() {
        let f = fixture(|c| c.limits.max_channels = 3);
        for ch in ["a", "b", "c"] {
            f.subscribe(ch, None).unwrap();
        }
        assert_eq!(
            f.subscribe("d", None).map(|_| ()),
            Err(OpError::Unavailable("the node's channel limit is reached"))
        );
        assert_eq!(f.publish("d", 1).map(|_| ()).unwrap_err().code(), 10);
        // Existing channels still work.
        f.subscribe("a", None).unwrap();
        assert_eq!(f.publish("a", 1).unwrap().offset, 1);
        assert_eq!(f.broker.stats().channel_limit_refusals, 2);
        f.broker.unsubscribe(0, "c", None, SubFlags::NONE);
        f.subscribe("d", None).unwrap();
        assert_eq!(f.broker.stats().channels, 3);
    }

    #[test]
    fn the_history_budget_drops_the_oldest_publications_first() {
        // 64 KiB of history for the node; 1 KiB publications.
        let f = fixture(|c| c.limits.history_memory = 64 << 10);
        let first = f.publish("old", 1000).unwrap();
        f.later(10);
        for i in 0..200 {
            f.publish(&format!("new-{}", i % 20), 1000).unwrap();
            f.later(1);
            let st = f.broker.stats();
            assert!(st.history_bytes <= 64 << 10, "{}", st.history_bytes);
        }
        let st = f.broker.stats();
        assert!(st.history_evictions > 0);
        // "old" had the oldest history: dropped, its position kept, so a
        // recovery into it is refused whole and one at its top succeeds.
        let s = f.subscribe("old", at(&first.epoch, 0)).unwrap();
        assert_eq!((s.recovered, s.position.offset), (Some(false), 1));
        assert!(s.replay.is_empty());
        let s = f.subscribe("old", at(&first.epoch, 1)).unwrap();
        assert_eq!(s.recovered, Some(true));
        // The most recent channel still recovers.
        let p = f.publish("new-19", 1000).unwrap();
        let s = f.subscribe("new-19", at(&p.epoch, p.offset - 1)).unwrap();
        assert_eq!(
            (s.recovered, s.replay.len(), s.replay_after),
            (Some(true), 1, None)
        );
        // The counts match what is held.
        let held: usize = f
            .broker
            .shards
            .iter()
            .map(|s| {
                MemoryBroker::lock(s)
                    .live
                    .values()
                    .map(|c| c.history.bytes())
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(f.broker.stats().history_bytes, held);
    }

    #[test]
    fn replay_parts_are_bounded_and_ordered_with_publications() {
        // Parts of at most 2 KiB (half of max_queued_bytes).
        let f = fixture(|c| c.limits.max_queued_bytes = 4096);
        let p0 = f.publish("feed", 100).unwrap();
        let frame_len = {
            let s = f.subscribe("feed", at(&p0.epoch, 0)).unwrap();
            assert_eq!(
                (s.recovered, s.replay_after),
                (Some(true), None),
                "fits whole"
            );
            s.replay[0].len()
        };
        for _ in 1..100 {
            f.publish("feed", 100).unwrap();
        }
        // The answer carries the first part; the rest is asked for.
        let s = f.subscribe("feed", at(&p0.epoch, 1)).unwrap();
        let n = s.replay.len() as u64;
        assert_eq!(n, (2048 / frame_len) as u64);
        assert_eq!((s.recovered, s.replay_after), (Some(true), Some(1 + n)));
        let c = f.replay("feed", &p0.epoch, 1 + n, 3 * frame_len + 6);
        assert_eq!((c.frames.map(|v| v.len()), c.top, c.tag), (Some(3), 100, 7));
        // The last part, then a publication: it reaches the worker after it.
        f.broker.replay(
            0,
            ReplayRequest {
                channel: "feed".into(),
                epoch: p0.epoch.clone(),
                after: 90,
                max_bytes: 1 << 20,
                tag: 8,
            },
            to(),
        );
        f.broker
            .publish(0, "feed", &data(1), &PublishOptions::default(), None);
        match &f.take()[..] {
            [WorkerMsg::Reply {
                body: ReplyBody::Replay(c),
                ..
            }, WorkerMsg::Deliver { offset: 101, .. }] => {
                assert_eq!((c.frames.as_ref().map(Vec::len), c.top), (Some(10), 100));
            }
            other => panic!("{other:?}"),
        }
        // Another epoch, or trimmed history: the replay cannot go on.
        assert!(f.replay("feed", "AAAAAAAAAAA", 4, 1000).frames.is_none());
        f.later(300_000);
        assert!(f.replay("feed", &p0.epoch, 4, 1000).frames.is_none());
        assert_eq!(f.replay("feed", &p0.epoch, 101, 1000).frames, Some(vec![]));
    }
}
