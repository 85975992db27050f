//! The in-memory broker: a single node needs nothing else.
//!
//! Channels live in shards (a mutex each, chosen by the channel name's
//! hash). A publish locks one shard, assigns the offset, keeps the frame in
//! the history and pushes it into the inbox of every worker with a
//! subscriber, all under the lock, so every worker sees a channel's
//! publications in offset order. Wake-ups are sent after the lock is
//! released. Each worker gets its own copy of the frame, so that reference
//! counting never bounces a cache line between cores.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde_json::value::RawValue;

use super::{
    encode_event, encode_publication, new_epoch, Broker, BrokerStats, HistoryPage, Inboxes,
    ReplyBody, ReplyTo, Subscribed, WorkerMsg,
};
use crate::config::ChannelPolicy;
use crate::pubsub::history::{History, Publication, Recovery};
use crate::pubsub::presence::{Member, Presence};
use crate::pubsub::Position;

const SHARDS: usize = 64;

struct Channel {
    name: Arc<str>,
    history: History,
    /// Local subscriptions per worker.
    interest: Vec<u32>,
    presence: Presence,
    /// When the channel last became idle (no subscriber, presence or
    /// history); swept [`IDLE_GRACE_MS`] later.
    idle_since: Option<u64>,
}

impl Channel {
    fn idle(&self) -> bool {
        self.interest.iter().all(|&n| n == 0) && self.presence.is_empty() && self.history.is_empty()
    }
}

/// How long a channel with no subscriber and no history keeps its epoch and
/// offset. Clients between two long-polls, or reconnecting, hold a position
/// in it; forgetting the channel at once would change its epoch under them
/// and turn every resume into `recovered:false`.
const IDLE_GRACE_MS: u64 = 300_000;

pub struct MemoryBroker {
    shards: Vec<Mutex<HashMap<Arc<str>, Channel>>>,
    hasher: std::collections::hash_map::RandomState,
    inboxes: Arc<Inboxes>,
    policy: Arc<ChannelPolicy>,
    clock: Instant,
    publications: AtomicU64,
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
        MemoryBroker {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            inboxes,
            policy,
            clock: Instant::now(),
            publications: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    fn shard(&self, channel: &str) -> MutexGuard<'_, HashMap<Arc<str>, Channel>> {
        let i = (self.hasher.hash_one(channel) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn channel<'a>(
        &self,
        shard: &'a mut HashMap<Arc<str>, Channel>,
        name: &str,
    ) -> &'a mut Channel {
        if !shard.contains_key(name) {
            let name: Arc<str> = name.into();
            let limits = self.policy.options(&name).history_limits();
            shard.insert(
                name.clone(),
                Channel {
                    history: History::new(new_epoch().into(), limits),
                    interest: vec![0; self.inboxes.len()],
                    presence: Presence::default(),
                    idle_since: None,
                    name,
                },
            );
        }
        shard.get_mut(name).expect("inserted above")
    }

    /// Publish under the shard lock: offset, history, fan-out to workers.
    fn publish_locked(
        &self,
        ch: &mut Channel,
        data: &RawValue,
        now: u64,
        wakes: &mut Wakes,
    ) -> Position {
        let offset = ch.history.next_offset();
        let (bytes, header_len) = encode_publication(&ch.name, offset, data);
        let frame: Arc<[u8]> = Arc::from(bytes);
        super::deliver_to_workers(&ch.interest, &ch.name, offset, &frame, |w, msg| {
            if self.inboxes.push(w, msg) {
                wakes.add(w);
            }
        });
        ch.history.push(Publication {
            offset,
            at_ms: now,
            frame,
            header_len,
        });
        self.publications.fetch_add(1, Ordering::Relaxed);
        ch.history.position()
    }

    /// A presence event to every worker with subscribers (under the lock).
    fn presence_event(&self, ch: &Channel, kind: &str, m: &Member, wakes: &mut Wakes) {
        let frame = encode_event(&serde_json::json!({ "channel": &*ch.name, kind: m }));
        let published = Instant::now();
        for (w, &n) in ch.interest.iter().enumerate() {
            if n > 0 {
                let msg = WorkerMsg::Deliver {
                    channel: ch.name.clone(),
                    offset: 0,
                    frame: Arc::from(&frame[..]),
                    published,
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

impl Broker for MemoryBroker {
    fn publish(&self, from: usize, channel: &str, data: &RawValue, reply: Option<ReplyTo>) {
        let now = self.now_ms();
        let mut wakes = Wakes::default();
        {
            let mut shard = self.shard(channel);
            let ch = self.channel(&mut shard, channel);
            let pos = self.publish_locked(ch, data, now, &mut wakes);
            if let Some(to) = reply {
                self.reply(to, ReplyBody::Published(Ok(pos)), &mut wakes);
            }
        }
        wakes.fire(&self.inboxes, from);
    }

    fn publish_batch(&self, from: usize, items: &[(String, Box<RawValue>)], reply: ReplyTo) {
        let now = self.now_ms();
        let mut wakes = Wakes::default();
        let mut results = Vec::with_capacity(items.len());
        for (channel, data) in items {
            let mut shard = self.shard(channel);
            let ch = self.channel(&mut shard, channel);
            results.push(Ok(self.publish_locked(ch, data, now, &mut wakes)));
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
        reply: ReplyTo,
    ) {
        let opts = self.policy.options(&channel);
        let mut wakes = Wakes::default();
        {
            let mut shard = self.shard(&channel);
            let ch = self.channel(&mut shard, &channel);
            ch.interest[from] += 1;
            let (recovered, replay) = match &since {
                Some(pos) => match ch.history.since(pos) {
                    Recovery::Recovered(pubs) => {
                        (Some(true), pubs.into_iter().map(|p| p.frame).collect())
                    }
                    Recovery::Lost => (Some(false), Vec::new()),
                },
                None if opts.deliver_latest => (
                    None,
                    ch.history
                        .latest()
                        .map(|p| p.frame.clone())
                        .into_iter()
                        .collect(),
                ),
                None => (None, Vec::new()),
            };
            let result = Subscribed {
                position: ch.history.position(),
                recovered,
                replay,
            };
            // The answer goes first: the subscriber is in the worker's index
            // before anything published after this point reaches it.
            self.reply(
                reply,
                ReplyBody::Subscribed {
                    channel: channel.clone(),
                    client: member.as_ref().map(|m| m.client.clone()),
                    result: Ok(result),
                },
                &mut wakes,
            );
            if let Some(m) = member.filter(|_| opts.presence) {
                if ch.presence.join(&m) && opts.join_leave {
                    self.presence_event(ch, "join", &m, &mut wakes);
                }
            }
        }
        wakes.fire(&self.inboxes, from);
    }

    fn unsubscribe(&self, from: usize, channel: &str, client: Option<&str>) {
        let opts = self.policy.options(channel);
        let mut wakes = Wakes::default();
        {
            let mut shard = self.shard(channel);
            let Some(ch) = shard.get_mut(channel) else {
                return;
            };
            ch.interest[from] = ch.interest[from].saturating_sub(1);
            if let Some(m) = client.and_then(|c| ch.presence.leave(c)) {
                if opts.join_leave {
                    self.presence_event(ch, "leave", &m, &mut wakes);
                }
            }
            if ch.idle() {
                ch.idle_since.get_or_insert(self.now_ms());
            }
        }
        wakes.fire(&self.inboxes, from);
    }

    fn history(
        &self,
        from: usize,
        channel: &str,
        since: Option<Position>,
        limit: usize,
        reply: ReplyTo,
    ) {
        let mut wakes = Wakes::default();
        {
            let mut shard = self.shard(channel);
            let page = match shard.get_mut(channel) {
                None => HistoryPage {
                    // A channel never published to (or forgotten): a new epoch
                    // would be made at its first publication.
                    position: Position {
                        epoch: String::new(),
                        offset: 0,
                    },
                    recovered: since.as_ref().map(|_| false),
                    publications: Vec::new(),
                },
                Some(ch) => {
                    ch.history.trim(self.now_ms());
                    match &since {
                        Some(pos) => match ch.history.since(pos) {
                            Recovery::Recovered(mut p) => {
                                p.truncate(limit);
                                HistoryPage {
                                    position: ch.history.position(),
                                    recovered: Some(true),
                                    publications: p,
                                }
                            }
                            Recovery::Lost => HistoryPage {
                                position: ch.history.position(),
                                recovered: Some(false),
                                publications: Vec::new(),
                            },
                        },
                        None => {
                            let skip = ch.history.len().saturating_sub(limit);
                            let mut p = ch.history.after(0, usize::MAX);
                            p.drain(..skip);
                            HistoryPage {
                                position: ch.history.position(),
                                recovered: None,
                                publications: p,
                            }
                        }
                    }
                }
            };
            self.reply(reply, ReplyBody::History(Ok(page)), &mut wakes);
        }
        wakes.fire(&self.inboxes, from);
    }

    fn presence(&self, from: usize, channel: &str, reply: ReplyTo) {
        let info = {
            let shard = self.shard(channel);
            shard
                .get(channel)
                .map(|c| c.presence.info())
                .unwrap_or_default()
        };
        let mut wakes = Wakes::default();
        self.reply(reply, ReplyBody::Presence(Ok(info)), &mut wakes);
        wakes.fire(&self.inboxes, from);
    }

    fn disconnect_user(&self, user: &str) {
        self.inboxes.disconnect_user(user);
    }

    fn sweep(&self) {
        let now = self.now_ms();
        for s in &self.shards {
            let mut shard = s.lock().unwrap_or_else(|e| e.into_inner());
            shard.retain(|_, ch| {
                ch.history.trim(now);
                if !ch.idle() {
                    ch.idle_since = None;
                    return true;
                }
                let since = *ch.idle_since.get_or_insert(now);
                now.saturating_sub(since) < IDLE_GRACE_MS
            });
        }
    }

    fn stats(&self) -> BrokerStats {
        let mut st = BrokerStats {
            kind: "memory",
            healthy: true,
            publications: self.publications.load(Ordering::Relaxed),
            ..Default::default()
        };
        for s in &self.shards {
            let shard = s.lock().unwrap_or_else(|e| e.into_inner());
            st.channels += shard.len();
            st.history_publications += shard.values().map(|c| c.history.len()).sum::<usize>();
        }
        st
    }
}
