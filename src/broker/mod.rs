//! Where channels live: offsets, history, presence, and the routing of each
//! publication to the workers that have subscribers for it.
//!
//! Workers call a [`Broker`]; every answer and every publication comes back
//! to them as a [`WorkerMsg`] in their [`Inboxes`] entry (a queue plus a
//! `mio::Waker`). The workers never learn which broker is in use: the
//! in-memory one ([`memory::MemoryBroker`], the default) answers from the
//! calling thread; a networked one answers from its own thread.
//!
//! Ordering: a broker pushes a channel's publications into each worker's
//! inbox in offset order, and pushes a subscribe answer before any
//! publication that the answer does not already cover. A worker adds the
//! subscriber to its local index when it handles the answer, so the client
//! sees replay, then live publications, with no gap and no duplicate.

pub use crate::base::compact;
pub mod memory;
pub mod nats;
pub mod redis;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::value::RawValue;

use crate::base::{ConnKey, FrameKind, OpError};
use crate::hooks::events::Events;
use crate::pubsub::history::Publication;
use crate::pubsub::presence::{Member, PresenceInfo};
use crate::pubsub::{Frame, Position};

pub use crate::proto::frame::text_frame;

/// Which request an answer belongs to. A worker gives every request it
/// hands a broker a tag of its own ([`Tags`]), and matches each answer to
/// its request by this tag alone: never by channel name, since one
/// connection may have several requests on one channel in flight
/// (`subscribe r`, `unsubscribe r`, `subscribe r` in one write), and a
/// connection may have moved on to another request (HTTP keep-alive) by the
/// time an answer to an earlier one arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tag(pub u64);

/// A worker's source of [`Tag`]s: distinct for the life of the worker.
#[derive(Debug, Default)]
pub struct Tags(u64);

impl Tags {
    pub fn fresh(&mut self) -> Tag {
        self.0 += 1;
        Tag(self.0)
    }
}

/// Where an answer goes: a worker, a connection of it, the request's id,
/// and the tag that matches it to its request.
#[derive(Debug)]
pub struct ReplyTo {
    pub worker: usize,
    pub conn: ConnKey,
    /// The client's request id, as raw JSON, echoed in the reply.
    pub id: Option<Box<RawValue>>,
    pub tag: Tag,
}

/// A successful subscribe.
#[derive(Debug)]
pub struct Subscribed {
    pub position: Position,
    /// `Some(true)`: the gap after `since` is in `replay`; `Some(false)`: it
    /// could not be recovered; `None`: no `since` was given.
    pub recovered: Option<bool>,
    /// Frames to send before any live publication (the start of the
    /// recovered gap, or the latest publication for `deliver_latest`
    /// channels).
    pub replay: Vec<Frame>,
    /// `Some(offset)`: the rest of the recovered gap, `(offset,
    /// position.offset]`, is still held and is read with
    /// [`Broker::replay`], a part at a time, as the connection's out queue
    /// drains; the subscriber joins the live stream once a part reaches
    /// the top. `None`: nothing more to replay.
    pub replay_after: Option<u64>,
}

impl Subscribed {
    /// Keep in `replay` only the start of a recovered gap that follows
    /// `since`: frames up to `max_bytes` (at least one); the rest is left
    /// to [`Broker::replay`] (`replay_after`).
    pub fn keep_first(&mut self, since: u64, max_bytes: usize) {
        let mut bytes = 0;
        let keep = self
            .replay
            .iter()
            .position(|f| {
                bytes += f.len();
                bytes > max_bytes
            })
            .map_or(self.replay.len(), |i| i.max(1));
        if keep < self.replay.len() {
            self.replay.truncate(keep);
            self.replay_after = Some(since + keep as u64);
        }
    }
}

/// The next part of a replay: the publications of `channel` after `after`
/// in `epoch`, as many as fit in `max_bytes` (at least one).
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    pub channel: Arc<str>,
    pub epoch: String,
    pub after: u64,
    pub max_bytes: usize,
    /// Chosen by the connection, echoed in the answer (a late answer to a
    /// replay the connection has since given up is recognised).
    pub tag: u64,
}

/// The answer to a [`ReplayRequest`].
#[derive(Debug)]
pub struct ReplayChunk {
    pub channel: Arc<str>,
    pub tag: u64,
    /// `Some(frames)`: the publications after `after`, in offset order
    /// (offsets `after + 1 ..`); `None`: the publication after `after` is no
    /// longer held (trimmed, evicted, or another epoch): the replay cannot
    /// go on.
    pub frames: Option<Vec<Frame>>,
    /// The last offset the broker had delivered to the workers when it read
    /// the part: once the part reaches it, every later publication comes
    /// to the worker after this answer, live.
    pub top: u64,
}

/// How one publication is made (`POST /api/publish` and the `publish` op).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// A second publish to the channel with the same key within
    /// [`IDEMPOTENCY_WINDOW_MS`] is not published again: it is answered
    /// with the first one's position (cluster-wide with Redis).
    pub idempotency_key: Option<String>,
    /// The client id of a connection not to deliver to (the publisher's).
    pub exclude_client: Option<Arc<str>>,
    /// Delivered live, never kept in the history: the publication has no
    /// offset (`"offset"` absent) and the channel's position does not move.
    pub skip_history: bool,
    /// The publishing client, when its publication raises `client_event`
    /// (a namespace with `client_events = true`). The broker emits it once
    /// the publication has its position ([`client_event`]): a refused or
    /// failed publish, or one whose outcome is unknown, raises none.
    pub event_from: Option<Member>,
}

/// `client_event` for a publication the broker accepted (`result` is its
/// position), when its options ask for one; none for a `repeat` (an
/// idempotency key seen before: answered with the first publication's
/// position, which had its event).
pub fn client_event(
    events: &Events,
    channel: &str,
    data: &RawValue,
    opts: &PublishOptions,
    result: &Result<Position, OpError>,
    repeat: bool,
) {
    if repeat {
        return;
    }
    if let (Some(m), Ok(_)) = (&opts.event_from, result) {
        events.client_event(channel, &m.client(), m.user(), data);
    }
}

/// How long an idempotency key is remembered (Centrifugo's 5 minutes).
pub const IDEMPOTENCY_WINDOW_MS: u64 = 300_000;
/// Longest idempotency key accepted (bytes).
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// A page of history for the API.
#[derive(Debug)]
pub struct HistoryPage {
    pub position: Position,
    pub recovered: Option<bool>,
    pub publications: Vec<Publication>,
}

impl HistoryPage {
    /// Newest first when `reverse`.
    pub fn reversed(mut self, reverse: bool) -> HistoryPage {
        if reverse {
            self.publications.reverse();
        }
        self
    }
}

/// A subscription's overrides of its namespace's `presence` and
/// `join_leave` (a subscribe proxy's grant, Centrifugo's `override`):
/// unset, off or on, each in two bits. They travel with the subscription
/// (the session's `Sub` keeps them) so that its leave matches its join.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubFlags(u8);

const PRESENCE_SET: u8 = 1;
const PRESENCE_ON: u8 = 2;
const JOIN_LEAVE_SET: u8 = 4;
const JOIN_LEAVE_ON: u8 = 8;

impl SubFlags {
    /// No override: the namespace decides.
    pub const NONE: SubFlags = SubFlags(0);
    /// Bits [`SubFlags::bits`] uses.
    pub const BITS: u32 = 4;

    pub fn new(presence: Option<bool>, join_leave: Option<bool>) -> SubFlags {
        let two = |v: Option<bool>, set: u8, on: u8| match v {
            None => 0,
            Some(false) => set,
            Some(true) => set | on,
        };
        SubFlags(
            two(presence, PRESENCE_SET, PRESENCE_ON)
                | two(join_leave, JOIN_LEAVE_SET, JOIN_LEAVE_ON),
        )
    }

    /// Is the member tracked in presence (`namespace`: the namespace's
    /// `presence`)?
    pub fn presence(self, namespace: bool) -> bool {
        self.pick(namespace, PRESENCE_SET, PRESENCE_ON)
    }

    /// Are this member's join and leave announced?
    pub fn join_leave(self, namespace: bool) -> bool {
        self.pick(namespace, JOIN_LEAVE_SET, JOIN_LEAVE_ON)
    }

    fn pick(self, namespace: bool, set: u8, on: u8) -> bool {
        if self.0 & set == 0 {
            namespace
        } else {
            self.0 & on != 0
        }
    }

    /// The flags in the low [`SubFlags::BITS`] bits.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Back from [`SubFlags::bits`] (higher bits ignored).
    pub fn from_bits(b: u8) -> SubFlags {
        SubFlags(b & 0xf)
    }
}

/// Answers to requests.
#[derive(Debug)]
pub enum ReplyBody {
    Published(Result<Position, OpError>),
    PublishedBatch(Vec<Result<Position, OpError>>),
    Subscribed {
        channel: Arc<str>,
        /// The member that joined presence, so that an answer arriving after
        /// its connection closed can be undone in full.
        client: Option<String>,
        /// The subscription's overrides, as given to [`Broker::subscribe`]
        /// (the undo's leave matches the join).
        flags: SubFlags,
        result: Result<Subscribed, OpError>,
    },
    History(Result<HistoryPage, OpError>),
    Presence(Result<PresenceInfo, OpError>),
    /// Each user asked, in order, and whether it is online.
    Users(Result<Vec<(String, bool)>, OpError>),
    Replay(ReplayChunk),
    /// A backend hook's decision for a pending op (issue 15): it reaches
    /// the worker's inbox like a broker answer and is matched by its tag.
    Hook(Box<HookAnswer>),
}

/// A backend hook's decision, and what its op does next when allowed: the
/// call carries the op's remainder, so the session keeps nothing while the
/// backend decides (bounded by the proxy's queue limits).
#[derive(Debug)]
pub struct HookAnswer {
    pub decision: crate::hooks::proxy::Decision,
    pub then: Then,
}

/// What an op asked of a backend hook does once allowed.
#[derive(Debug)]
pub enum Then {
    /// Its reply is the decision (rpc).
    Reply,
    /// Subscribe at the broker, from `since`.
    Subscribe { since: Option<Position> },
    /// Publish at the broker (the data unless the backend replaces it).
    Publish {
        channel: Arc<str>,
        data: Box<RawValue>,
        opts: PublishOptions,
        /// The publisher (its `client_event`, when the namespace asks for
        /// one, rides in `opts.event_from`).
        from: Member,
    },
}

/// The context of a hook call: where its decision goes, and its op's
/// remainder.
#[derive(Debug)]
pub struct HookCtx {
    pub to: ReplyTo,
    pub then: Then,
}

/// The proxies as the sessions call them: decisions go to the calling
/// worker's inbox as [`ReplyBody::Hook`].
pub type HookProxy = crate::hooks::proxy::Proxy<HookCtx>;

/// Start the proxies of `cfg` with decisions delivered to `inboxes`
/// (`None` when no proxy is configured).
pub fn start_proxy(
    cfg: &crate::hooks::config::ProxyConfig,
    inboxes: Arc<Inboxes>,
) -> std::io::Result<Option<Arc<HookProxy>>> {
    let any = [
        &cfg.connect,
        &cfg.refresh,
        &cfg.subscribe,
        &cfg.publish,
        &cfg.rpc,
    ]
    .iter()
    .any(|u| !u.is_empty());
    if !any {
        return Ok(None);
    }
    let proxy = HookProxy::start(cfg, move |ctx: HookCtx, decision| {
        let worker = ctx.to.worker;
        let body = ReplyBody::Hook(Box::new(HookAnswer {
            decision,
            then: ctx.then,
        }));
        inboxes.send(worker, WorkerMsg::Reply { to: ctx.to, body });
    })?;
    Ok(Some(Arc::new(proxy)))
}

/// What a worker finds in its inbox.
#[derive(Debug)]
pub enum WorkerMsg {
    /// A frame for every local subscriber of `channel`: a publication
    /// (`offset` > 0) or a presence event (`offset` = 0).
    Deliver {
        channel: Arc<str>,
        offset: u64,
        frame: Frame,
        published: Instant,
        /// A client id not to deliver to (`exclude_client`), if any.
        exclude: Option<Arc<str>>,
    },
    Reply {
        to: ReplyTo,
        body: ReplyBody,
    },
    /// An operator asked to disconnect every connection of a user.
    Disconnect {
        user: String,
    },
}

/// One queue per worker, and the means to wake it.
pub struct Inbox {
    queue: Mutex<Vec<WorkerMsg>>,
    waker: mio::Waker,
}

/// Every worker's inbox, indexed by worker id.
pub struct Inboxes {
    boxes: Vec<Inbox>,
}

impl Inboxes {
    pub fn new(wakers: Vec<mio::Waker>) -> Inboxes {
        Inboxes {
            boxes: wakers
                .into_iter()
                .map(|waker| Inbox {
                    queue: Mutex::new(Vec::new()),
                    waker,
                })
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.boxes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.boxes.is_empty()
    }

    /// Queue a message; returns true if the worker needs waking (its queue
    /// was empty). Wake it with [`Inboxes::wake`] after releasing any lock.
    pub fn push(&self, worker: usize, msg: WorkerMsg) -> bool {
        let mut q = self.boxes[worker]
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        q.push(msg);
        q.len() == 1
    }

    pub fn wake(&self, worker: usize) {
        if let Err(e) = self.boxes[worker].waker.wake() {
            log::error!("cannot wake worker {worker}: {e}");
        }
    }

    /// Tell every worker to disconnect `user`.
    pub fn disconnect_user(&self, user: &str) {
        for w in 0..self.len() {
            self.send(w, WorkerMsg::Disconnect { user: user.into() });
        }
    }

    /// Push and wake at once (when no broker lock is held).
    pub fn send(&self, worker: usize, msg: WorkerMsg) {
        if self.push(worker, msg) {
            self.wake(worker);
        }
    }

    /// Take everything queued for `worker` (swapping with `into`, which must
    /// be empty, so that allocations are reused).
    pub fn drain(&self, worker: usize, into: &mut Vec<WorkerMsg>) {
        let mut q = self.boxes[worker]
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *q, into);
    }
}

/// Figures for `/api/stats` and `/metrics`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct BrokerStats {
    pub kind: &'static str,
    pub healthy: bool,
    pub channels: usize,
    pub history_publications: usize,
    pub publications: u64,
    /// Gaps seen in a channel's live stream from another node (Redis).
    pub gaps: u64,
    /// `resync` events sent: a gap that could not be filled, or a channel
    /// whose history was lost (Redis).
    pub resyncs: u64,
    /// Idle channels whose position (epoch, offset) is kept for their
    /// grace, at a few bytes each (memory).
    pub idle_channels: usize,
    /// Frame bytes of history held on this node (memory: the histories;
    /// Redis: the node's tails of recent deliveries).
    pub history_bytes: usize,
    /// `limits.history_memory`.
    pub history_limit: usize,
    /// Publications dropped from history before their age because the
    /// node's history budget was full.
    pub history_evictions: u64,
    /// Idle channel positions forgotten before their grace ended (more
    /// idle channels than `limits.max_channels`).
    pub idle_evictions: u64,
    /// Subscribes and publishes refused because the node held
    /// `limits.max_channels` channels.
    pub channel_limit_refusals: u64,
}

/// The broker the configuration asks for: memory (the default), Redis or
/// NATS.
pub fn new_broker(
    cfg: &crate::config::BrokerConfig,
    inboxes: Arc<Inboxes>,
    policy: Arc<crate::config::ChannelPolicy>,
    events: Events,
) -> std::io::Result<Arc<dyn Broker>> {
    Ok(match cfg.kind {
        crate::config::BrokerKind::Memory => {
            Arc::new(memory::MemoryBroker::with_events(inboxes, policy, events))
        }
        crate::config::BrokerKind::Redis => {
            Arc::new(self::redis::HubBroker::redis(cfg, inboxes, policy, events)?)
        }
        crate::config::BrokerKind::Nats => {
            Arc::new(self::redis::HubBroker::nats(cfg, inboxes, policy, events)?)
        }
    })
}

/// Webhooks off: what a broker without [`Broker::events`] of its own
/// answers.
static NO_EVENTS: Events = Events::OFF;

/// The channel engine, seen from a worker.
pub trait Broker: Send + Sync {
    /// Publish raw JSON `data` to `channel`. The answer (if `reply`) is
    /// [`ReplyBody::Published`].
    fn publish(
        &self,
        from: usize,
        channel: &str,
        data: &RawValue,
        opts: &PublishOptions,
        reply: Option<ReplyTo>,
    );

    /// Publish several; one [`ReplyBody::PublishedBatch`] answer.
    fn publish_batch(&self, from: usize, items: &[(String, Box<RawValue>)], reply: ReplyTo);

    /// Subscribe a connection of worker `from`; the answer is
    /// [`ReplyBody::Subscribed`]. `member` joins the presence set if the
    /// channel tracks presence, and its join is announced if the channel
    /// announces joins (`flags` override both for this subscription).
    fn subscribe(
        &self,
        from: usize,
        channel: Arc<str>,
        since: Option<Position>,
        member: Option<Member>,
        flags: SubFlags,
        reply: ReplyTo,
    );

    /// A connection of worker `from` left `channel` (no answer); `flags`
    /// are its subscription's (the leave matches the join), `member` the
    /// one that subscribed (its leave announced without presence).
    fn unsubscribe(&self, from: usize, channel: &str, member: Option<&Member>, flags: SubFlags);

    /// Publications after `since` (or the last `limit` if `since` is none),
    /// in offset order, or newest first when `reverse`.
    fn history(
        &self,
        from: usize,
        channel: &str,
        since: Option<Position>,
        limit: usize,
        reverse: bool,
        reply: ReplyTo,
    );

    /// The channel's members.
    fn presence(&self, from: usize, channel: &str, reply: ReplyTo);

    /// The next part of a subscriber's replay (see
    /// [`Subscribed::replay_after`]); the answer is [`ReplyBody::Replay`],
    /// ordered with the channel's publications as a subscribe answer is.
    fn replay(&self, from: usize, req: ReplayRequest, reply: ReplyTo);

    /// An operator disconnects `user`: every worker of every node gets
    /// [`WorkerMsg::Disconnect`] (this node's at once, other nodes' through
    /// the shared broker, if there is one and it is reachable).
    fn disconnect_user(&self, user: &str);

    /// Housekeeping (trim history by age, forget idle channels); called
    /// about once a second by worker 0. Its cost grows with what expired,
    /// not with the number of channels.
    fn sweep(&self);

    fn stats(&self) -> BrokerStats;

    /// The node's webhooks (the sessions emit `client_disconnected` and
    /// `client_event` through them).
    fn events(&self) -> &Events {
        &NO_EVENTS
    }

    /// A connection of `user` opened on worker `from` (user presence:
    /// `user_online` when it is the user's first anywhere).
    fn user_up(&self, _from: usize, _user: &str) {}

    /// A connection of `user` ended (`user_offline` when it was the last
    /// anywhere).
    fn user_down(&self, _from: usize, _user: &str) {}

    /// Which of `users` are online; the answer is [`ReplyBody::Users`].
    fn users_online(&self, from: usize, users: Vec<String>, reply: ReplyTo);

    /// A live handoff (issue 17) takes the channels' state to the next
    /// process: seal (from now on refuse what would change it: a publish
    /// gets error 10, `unavailable`) and return it in the format of
    /// [`memory::snapshot`]. `None`: nothing to move, the state lives
    /// outside this process (Redis, NATS: the default), nothing sealed.
    fn seal(&self) -> Option<Vec<u8>> {
        None
    }

    /// The handoff failed after [`Broker::seal`]: serve on as before
    /// (nothing was accepted meanwhile, so nothing is lost).
    fn unseal(&self) {}

    /// Take the previous process's channels, before any worker starts.
    /// A broker that keeps its channels elsewhere refuses them (the
    /// configured broker changed across the handoff: the channels would
    /// be lost, so the handoff is refused and the old process serves on).
    fn restore(&self, _state: memory::snapshot::State) -> Result<(), String> {
        Err(
            "the configured broker keeps no channels in memory: the previous process's \
             in-memory channels cannot move to it (restart to change brokers)"
                .into(),
        )
    }
}

/// A frame for every worker with local interest in `channel`
/// (`interest[w]` subscribers on worker `w`): one copy per worker, so that
/// the refcount of a frame never bounces between cores; `push` queues each
/// message (and notes the worker to wake).
pub fn deliver_to_workers(
    interest: &[u32],
    channel: &Arc<str>,
    offset: u64,
    frame: &Frame,
    exclude: &Option<Arc<str>>,
    mut push: impl FnMut(usize, WorkerMsg),
) {
    let published = std::time::Instant::now();
    let mut first = true;
    for (w, &n) in interest.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let copy = if first { frame.clone() } else { frame.copy() };
        first = false;
        push(
            w,
            WorkerMsg::Deliver {
                channel: channel.clone(),
                offset,
                frame: copy,
                published,
                exclude: exclude.clone(),
            },
        );
    }
}

/// Encode a publication once: the WebSocket text frame whose payload is
/// `{"channel":…,"offset":…,"data":…}`, with `data` in its compact form
/// ([`compact`]: every transport, history and recovery carry these bytes,
/// and none of them is a line break), as the [`Frame`] every transport
/// shares.
pub fn publication_frame(channel: &str, offset: u64, data: &RawValue) -> Frame {
    let (bytes, header_len) = encode_publication(channel, offset, data);
    Frame::publication(bytes, header_len, offset)
}

/// The bytes of [`publication_frame`]'s frame, and its header length.
pub fn encode_publication(channel: &str, offset: u64, data: &RawValue) -> (Vec<u8>, u8) {
    let mut payload = Vec::with_capacity(channel.len() + data.get().len() + 48);
    payload.extend_from_slice(b"{\"channel\":");
    serde_json::to_writer(&mut payload, channel).expect("string serializes");
    payload.extend_from_slice(b",\"offset\":");
    payload.extend_from_slice(offset.to_string().as_bytes());
    payload.extend_from_slice(b",\"data\":");
    compact::write_compact(&mut payload, data.get().as_bytes());
    payload.push(b'}');
    text_frame(&payload)
}

/// Encode a publication kept out of the history (`skip_history`): the
/// frame of [`encode_publication`] without `"offset"`. It has no position,
/// so it travels as a channel event ([`FrameKind::Event`]): never taken for
/// a duplicate, never a delta base.
pub fn encode_unsaved(channel: &str, data: &RawValue) -> Frame {
    let mut payload = Vec::with_capacity(channel.len() + data.get().len() + 32);
    payload.extend_from_slice(b"{\"channel\":");
    serde_json::to_writer(&mut payload, channel).expect("string serializes");
    payload.extend_from_slice(b",\"data\":");
    compact::write_compact(&mut payload, data.get().as_bytes());
    payload.push(b'}');
    let (bytes, header_len) = text_frame(&payload);
    Frame::event(bytes, header_len, FrameKind::Event)
}

/// Encode an event for subscribers that is not a publication (presence,
/// or with [`FrameKind::Resync`] a resync).
pub fn encode_event(json: &serde_json::Value, kind: FrameKind) -> Frame {
    let payload = serde_json::to_vec(json).expect("value serializes");
    let (bytes, header_len) = text_frame(&payload);
    Frame::event(bytes, header_len, kind)
}

/// A broker URL for the logs: `user:password@` (or a token) hidden.
pub fn without_credentials(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let sep = if scheme.is_empty() { "" } else { "://" };
    let hidden = if rest.contains('@') { "***@" } else { "" };
    format!("{scheme}{sep}{hidden}{host}")
}

/// A fresh epoch: 11 random-looking base64url characters.
pub fn new_epoch() -> String {
    crate::pubsub::history::Epoch(new_epoch_bits()).to_string()
}

/// A fresh epoch's 64 bits.
pub fn new_epoch_bits() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEED: AtomicU64 = AtomicU64::new(0);
    if SEED.load(Ordering::Relaxed) == 0 {
        let mut b = [0u8; 8];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            let _ = std::io::Read::read_exact(&mut f, &mut b);
        }
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let _ = SEED.compare_exchange(
            0,
            u64::from_ne_bytes(b) ^ t | 1,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
    // splitmix64 over a shared counter: distinct per call, unpredictable
    // enough to tell one channel lifetime from another.
    let mut z = SEED.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each override replaces its namespace's value; unset leaves it;
    /// the bits come back as they went.
    #[test]
    fn sub_flags_override_the_namespace_each_on_its_own() {
        let all = [None, Some(false), Some(true)];
        for p in all {
            for j in all {
                let f = SubFlags::new(p, j);
                assert_eq!(SubFlags::from_bits(f.bits()), f);
                assert!(u32::from(f.bits()) < 1 << SubFlags::BITS);
                for ns in [false, true] {
                    assert_eq!(f.presence(ns), p.unwrap_or(ns), "{p:?} {j:?} {ns}");
                    assert_eq!(f.join_leave(ns), j.unwrap_or(ns), "{p:?} {j:?} {ns}");
                }
            }
        }
        assert_eq!(SubFlags::NONE, SubFlags::new(None, None));
    }

    #[test]
    fn publication_is_one_frame_of_the_documented_json() {
        let data = RawValue::from_string(r#"{"text":"hi \"there\""}"#.into()).unwrap();
        let frame = publication_frame("chat", 42, &data);
        let v: serde_json::Value = serde_json::from_slice(frame.payload()).unwrap();
        assert_eq!((frame.kind(), frame.offset()), (FrameKind::Publication, 42));
        assert_eq!(
            v,
            serde_json::json!({"channel":"chat","offset":42,"data":{"text":"hi \"there\""}})
        );
        assert_eq!(frame[0], 0x81);
    }

    #[test]
    fn publication_data_is_compact_whatever_whitespace_it_was_given() {
        let data =
            RawValue::from_string("{\r\n \"text\" :\t\"a b\",\r\"n\": [1,\n2]\n}".into()).unwrap();
        let frame = publication_frame("chat", 7, &data);
        let hl = frame.header_len();
        assert_eq!(
            frame.payload(),
            br#"{"channel":"chat","offset":7,"data":{"text":"a b","n":[1,2]}}"#
        );
        // The header announces the compact length.
        let (again, _) = text_frame(&frame[hl..]);
        assert_eq!(again, &frame[..]);
    }

    #[test]
    fn logged_urls_hide_credentials() {
        assert_eq!(
            without_credentials("nats://ws:secret@10.0.0.1:4222"),
            "nats://***@10.0.0.1:4222"
        );
        assert_eq!(
            without_credentials("redis://:pw@h:6379/0"),
            "redis://***@h:6379/0"
        );
        assert_eq!(without_credentials("nats://tok@h:1"), "nats://***@h:1");
        assert_eq!(without_credentials("nats://h:1"), "nats://h:1");
        assert_eq!(without_credentials("h:1"), "h:1");
    }

    #[test]
    fn a_long_replay_keeps_its_first_part() {
        let frame = |n: usize| -> Frame { Frame::publication(vec![0u8; n], 2, 1) };
        let mut s = Subscribed {
            position: Position {
                epoch: "e".into(),
                offset: 14,
            },
            recovered: Some(true),
            replay: vec![frame(40), frame(40), frame(40), frame(40)],
            replay_after: None,
        };
        s.keep_first(10, 100);
        assert_eq!((s.replay.len(), s.replay_after), (2, Some(12)));
        s.keep_first(10, 1000);
        assert_eq!(
            (s.replay.len(), s.replay_after),
            (2, Some(12)),
            "fits: unchanged"
        );
        s.replay = vec![frame(500)];
        s.replay_after = None;
        s.keep_first(13, 100);
        assert_eq!((s.replay.len(), s.replay_after), (1, None), "at least one");
    }

    #[test]
    fn epochs_differ() {
        let a = new_epoch();
        let b = new_epoch();
        assert_ne!(a, b);
        assert!(a.len() >= 10);
    }
}
