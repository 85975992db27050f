//! What a connection is for, and everything it does with what it is given.
//!
//! Each connection of a worker holds one [`Endpoint`], which carries its
//! own data: a request being read ([`Endpoint::Handshake`]), an `/echo`
//! WebSocket, a `/ws` session, an SSE or long-poll stream, or a plain HTTP
//! request waiting for the broker. The worker (`server`) is an I/O shell
//! around it: it reads into its buffer and hands the bytes over
//! ([`Endpoint::handle_bytes`]), hands over broker answers, timers,
//! deliveries, drain and disconnect orders (the other `handle_*` methods),
//! and writes what was queued. Each method returns [`Effects`] (re-arm the
//! timer, flush, a long-poll's answer is due, process what waits in the
//! spill, reading may resume) instead of setting flags the shell reads
//! back; closing frames and HTTP answers are written by the endpoint
//! itself, through the connection's `proto::Conn` and out queue ([`Link`]).
//!
//! One file per kind: [`handshake`] (request head → router decision →
//! upgrade, HTTP answer or stream), [`echo`], [`gateway`] (a `/ws`
//! session), [`stream`] (SSE, long-poll), [`http`] (plain requests, and one
//! waiting for the broker). Beside them what the shell and the endpoints
//! share: [`config`], [`shared`], [`admission`], [`outbuf`], and [`Env`],
//! a worker's services.

pub mod admission;
pub mod config;
mod connect;
mod direct;
mod echo;
mod freeze;
mod gateway;
mod handshake;
mod http;
pub mod outbuf;
mod refresh;
pub mod shared;
mod stream;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use log::debug;
use serde_json::value::RawValue;

pub use config::{Admission, OriginCheck, ServerConfig};
pub use direct::{write as write_direct, DirectEcho};
pub use freeze::{Stays, Thawed};
pub use outbuf::{Flush, OutPool, OutQueue};
pub use shared::Shared;

use crate::auth::Access;
use crate::base::counters::{Counters, DeflateCounts};
use crate::base::{Bucket, ConnKey, Frame};
use crate::broker::{Broker, Inboxes, ReplayChunk, ReplyBody, Tag, Tags};
use crate::config::SlowConsumer;
use crate::delta::{self, DeltaChannels, Form};
use crate::gateway::close_code;
use crate::gateway::session::{Ctx, Divert, Session};
use crate::proto::deflate::Engine;
use crate::proto::{Conn, State};
use crate::pubsub::topics::Topics;

pub use handshake::{refuse_per_ip, Handshake};
pub use stream::Stream;

/// What a connection is for, with its own data. 16 bytes: a tag and a
/// box, or the few bytes of a request being read or waiting.
#[derive(Debug)]
pub enum Endpoint {
    /// Reading a request: a new connection, or one kept alive between its
    /// requests.
    Handshake(Handshake),
    /// `/echo`: every message comes back.
    Echo,
    /// `/ws`: a gateway session.
    Gateway(Box<Session>),
    /// `/ws` without a token, waiting for the connect proxy's decision
    /// before the upgrade is answered.
    Connecting(Box<connect::Connecting>),
    /// `/sse` or `/poll`.
    Stream(Box<Stream>),
    /// A plain HTTP request waiting for the broker's answer (`tag`); what
    /// the client sends meanwhile waits in the spill (HTTP/1.1 pipelining).
    Http {
        tag: Tag,
        /// The connection stays open for a next request.
        keep: bool,
        /// A `POST /send` op: the answer is the op's reply.
        send: bool,
    },
}

/// What the shell must do after an endpoint handled something.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct Effects(u8);

impl Effects {
    pub const NONE: Effects = Effects(0);
    /// The connection's deadline may have moved: re-arm its timer.
    pub const REARM: Effects = Effects(1);
    /// Something was queued or the connection ended: flush it.
    pub const DIRTY: Effects = Effects(2);
    /// A long-poll's answer is due ([`Endpoint::handle_due`], once the
    /// inbox is drained, so that everything that arrived is in it).
    pub const DUE: Effects = Effects(4);
    /// A request was answered and the connection kept: requests that
    /// waited in the spill are processed now.
    pub const AGAIN: Effects = Effects(8);
    /// Unanswered ops were answered: reading may resume (when the out
    /// queue and the backlog allow).
    pub const RESUME: Effects = Effects(16);

    pub fn has(self, e: Effects) -> bool {
        self.0 & e.0 == e.0 && e.0 != 0
    }
}

impl std::ops::BitOr for Effects {
    type Output = Effects;

    fn bitor(self, e: Effects) -> Effects {
        Effects(self.0 | e.0)
    }
}

impl std::ops::BitOrAssign for Effects {
    fn bitor_assign(&mut self, e: Effects) {
        self.0 |= e.0;
    }
}

/// What a timer did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    /// Drop the connection now (the reason is for the log).
    Drop(&'static str),
    Fired(Effects),
}

/// What to do with bytes the connection sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// Hand them to [`Endpoint::handle_bytes`].
    Read,
    /// Keep them (spilled) until the request before them is answered:
    /// HTTP/1.1 pipelining behind a request waiting for the broker or a
    /// held long-poll.
    Defer,
    /// Throw them away (after the close handshake, or under an SSE
    /// stream, whose client has nothing to say).
    Discard,
}

/// One publication (or event) of a channel on its way to the local
/// subscribers.
#[derive(Clone, Copy, Debug)]
pub struct Fanout<'a> {
    pub channel: &'a str,
    pub frame: &'a Frame,
    /// The out-queue cap (`limits.max_queued_bytes`).
    pub cap: usize,
}

/// What became of a fan-out's frame at one subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Not for this connection (closing, or not reading publications).
    Skipped,
    /// Held behind a subscription's reply (written with it).
    Held,
    /// Queued.
    Queued,
    /// Queued compressed (permessage-deflate).
    Compressed,
    /// Queued, and a long-poll's answer is now due.
    Due,
    /// It does not fit under the out-queue cap: a slow consumer.
    Full,
}

/// The parts of a connection an endpoint works with: its key, its
/// protocol state and its out queue (and, for the request phase, what
/// admission needs).
pub struct Link<'a> {
    pub key: ConnKey,
    pub proto: &'a mut Conn,
    pub out: &'a mut OutQueue,
    /// The client IP's key in the per-IP count (0: not counted).
    pub ip_key: &'a mut u32,
    /// The peer's address, when the request's `X-Forwarded-For` is to be
    /// read (a trusted proxy, without PROXY v2, not yet counted).
    pub peer: Option<IpAddr>,
    /// Where `/echo` records the echoes to be written straight from the
    /// bytes handed over ([`DirectEcho`]); None: every echo is queued (TLS,
    /// or a caller that does not write them).
    pub direct: Option<&'a mut Vec<DirectEcho>>,
}

/// permessage-deflate counts the engine does not keep.
#[derive(Debug, Default)]
struct DeflateTally {
    /// Connections that negotiated it.
    connections: u64,
    /// Fan-out's shared frames: compressions, and compressed deliveries.
    shared_compressions: u64,
    shared_deliveries: u64,
    /// The counts last stored in this worker's gauges.
    published: DeflateCounts,
}

/// A worker's services, lent to its endpoints: everything of a worker but
/// its connections and their I/O.
pub struct Env {
    pub id: usize,
    /// The worker's clock (ms since it started).
    pub now: u64,
    pub cfg: Arc<ServerConfig>,
    pub shared: Arc<Shared>,
    pub broker: Arc<dyn Broker>,
    /// Every worker's inbox (this one's waker wakes this loop).
    pub inboxes: Arc<Inboxes>,
    /// This worker's index of local subscribers.
    pub topics: Topics,
    /// Every request handed to the broker gets a tag; its answer is matched
    /// to the request by it.
    pub tags: Tags,
    /// permessage-deflate: the worker's compressors and decompressor,
    /// shared by its connections (and its compress-once cache for
    /// publications).
    pub deflate: Engine,
    /// This worker's counters since it started: plain integers on the hot
    /// path, copied into its slot (`publish_counts`), summed at a scrape
    /// (`Shared::stats`).
    pub counts: Counters,
    /// What of `counts` was last copied into this worker's slot.
    counts_published: Counters,
    tally: DeflateTally,
    /// Fossil deltas (issue 16): each channel's previous publication, for
    /// the channels with delta subscribers here.
    pub deltas: DeltaChannels,
    /// Their counts last stored in this worker's gauges.
    delta_published: [u64; 9],
    /// Client ids: `<prefix><n>`.
    client_prefix: String,
    next_client: u64,
    /// This worker's share of the handshake rate.
    handshakes: Bucket,
}

impl Env {
    pub fn new(
        id: usize,
        cfg: Arc<ServerConfig>,
        shared: Arc<Shared>,
        broker: Arc<dyn Broker>,
        inboxes: Arc<Inboxes>,
    ) -> Env {
        let handshakes = Bucket::full(
            (cfg.admission.handshake_rate / cfg.workers.max(1) as u32).max(1),
            0,
        );
        let cfg_delta_limits = cfg.gateway.delta_limits;
        let client_prefix = format!("{}{id}-", &crate::broker::new_epoch()[..6]);
        // The worker's ids become numbers in its members (no allocation for
        // an anonymous session's identity); unregistered, they stay strings.
        if crate::base::client_id::ClientPrefix::register(&client_prefix).is_none() {
            log::debug!("worker {id}: client ids kept as strings (prefix table full)");
        }
        Env {
            id,
            now: 0,
            deflate: Engine::new(cfg.compression),
            client_prefix,
            cfg,
            shared,
            broker,
            inboxes,
            topics: Topics::default(),
            tags: Tags::default(),
            counts: Counters::default(),
            counts_published: Counters::default(),
            tally: DeflateTally::default(),
            deltas: DeltaChannels::new(cfg_delta_limits),
            delta_published: [0; 9],
            next_client: 0,
            handshakes,
        }
    }

    /// A session's context for connection `conn`.
    pub fn ctx(&mut self, conn: ConnKey) -> Ctx<'_> {
        self.ctx_deflate(conn).0
    }

    /// A session's context, and the permessage-deflate engine (for a
    /// `Sender`) borrowed beside it.
    pub fn ctx_deflate(&mut self, conn: ConnKey) -> (Ctx<'_>, &mut Engine) {
        let ctx = Ctx {
            worker: self.id,
            conn,
            broker: &*self.broker,
            topics: &mut self.topics,
            cfg: &self.cfg.gateway,
            counts: &mut self.counts,
            tags: &mut self.tags,
            deltas: &mut self.deltas,
        };
        (ctx, &mut self.deflate)
    }

    /// Is the server draining (no connection kept for a next request)?
    pub fn draining(&self) -> bool {
        self.shared.draining.load(Ordering::Relaxed)
    }

    /// An answer nobody waits for any more (the connection, its session or
    /// its request is gone): a successful subscribe is undone in full, its
    /// presence included; anything else is dropped.
    pub fn undo(&self, conn: ConnKey, body: ReplyBody) {
        match body {
            ReplyBody::Subscribed {
                channel,
                client,
                flags,
                result: Ok(_),
            } => {
                debug!("late subscribe answer for {conn:?}: {channel:?} undone");
                // (A member not tracked is announced leaving by its client
                // id alone: its user went with its session.)
                let member = client.map(|c| crate::pubsub::presence::Member::new(&c, None));
                self.broker
                    .unsubscribe(self.id, &channel, member.as_ref(), flags);
            }
            other => debug!("answer for {conn:?} dropped: {other:?}"),
        }
    }

    /// A session for `access` and its `user` (see
    /// [`crate::gateway::session::user_of`]), with its token's expiry on
    /// this worker's clock.
    fn new_session(&mut self, user: Option<String>, access: Access) -> Session {
        self.next_client += 1;
        let client = format!("{}{}", self.client_prefix, self.next_client);
        let mut s = Session::new(client, user);
        s.set_expires_at_ms(self.expiry_of(&access));
        s.set_access(access);
        s
    }

    /// Store this worker's permessage-deflate counts for `/metrics`, when
    /// they moved: plain counters on the hot path, a few relaxed stores per
    /// loop iteration here.
    pub fn publish_deflate_counts(&mut self) {
        let e = &self.deflate.stats;
        let t = &self.tally;
        let now = DeflateCounts {
            connections: t.connections,
            messages_in: e.inflated,
            in_wire_bytes: e.inflated_from_bytes,
            in_payload_bytes: e.inflated_bytes,
            // The engine counts compressions: a message sent to one
            // connection is one, but a publication's shared frame is
            // compressed once and delivered to many.
            messages_out: e.compressed - t.shared_compressions + t.shared_deliveries,
            out_payload_bytes: e.raw_bytes,
            out_wire_bytes: e.deflated_bytes,
        };
        if now != t.published {
            self.shared.workers[self.id].deflate.store(&now);
            self.tally.published = now;
        }
        let now = self.deltas.gauge_values();
        if now != self.delta_published {
            self.shared.workers[self.id].delta.store(now);
            self.delta_published = now;
        }
    }

    /// A connection negotiated permessage-deflate.
    pub fn count_deflate_connection(&mut self) {
        self.tally.connections += 1;
    }

    /// A fan-out's compressions (all of the shared frame's) and compressed
    /// deliveries, for the permessage-deflate counts.
    pub fn count_shared_frame(&mut self, compressions: u64, deliveries: u64) {
        self.tally.shared_compressions += compressions;
        self.tally.shared_deliveries += deliveries;
    }

    /// Add this worker's counters to the totals.
    pub fn publish_counts(&mut self) {
        self.counts.publish(
            &self.shared.workers[self.id].counts,
            &mut self.counts_published,
        );
    }

    /// One token of this worker's share of the handshake rate (the TLS
    /// listener takes it at accept, before the TLS handshake is spent).
    pub fn take_handshake(&mut self) -> bool {
        let rate = self.cfg.admission.handshake_rate;
        if rate == 0 {
            return true;
        }
        let share = (rate / self.inboxes.len() as u32).max(1);
        self.handshakes.take(self.now, share, share)
    }
}

impl Endpoint {
    /// A new connection: reading its first request.
    pub fn new() -> Endpoint {
        Endpoint::Handshake(Handshake::default())
    }

    /// What to do with the bytes the client sends now.
    pub fn input(&self, proto: &Conn) -> Input {
        if proto.state() == State::Closed {
            return Input::Discard;
        }
        match self {
            Endpoint::Http { .. } | Endpoint::Connecting(_) => Input::Defer,
            Endpoint::Stream(s) if s.is_poll() => Input::Defer,
            Endpoint::Stream(_) => Input::Discard,
            _ => Input::Read,
        }
    }

    /// Is the request phase still reading this connection's first request
    /// (told to leave only once it is answered)?
    pub fn is_first_request(&self, proto: &Conn) -> bool {
        matches!(self, Endpoint::Handshake(h) if h.is_first()) && proto.state() == State::Handshake
    }

    /// Does its `X-Forwarded-For` name its client (a trusted proxy's
    /// request, without PROXY v2: the shell then passes the peer's address
    /// in the [`Link`])?
    pub fn reads_forwarded_for(&self, env: &Env) -> bool {
        matches!(self, Endpoint::Handshake(h) if h.reads_forwarded_for(env))
    }

    /// Bytes the client sent: consume what can be consumed (request heads
    /// and bodies, then frames); returns the bytes used (the rest is an
    /// incomplete head or frame, or requests waiting their turn).
    pub fn handle_bytes(
        &mut self,
        env: &mut Env,
        link: &mut Link<'_>,
        data: &mut [u8],
    ) -> (usize, Effects) {
        let mut consumed = 0;
        let mut fx = Effects::NONE;
        // Requests, one after the other while each is answered at once (a
        // kept-alive connection goes back to this phase).
        while let Endpoint::Handshake(h) = self {
            if link.proto.state() != State::Handshake {
                break;
            }
            let h = *h;
            match handshake::step(self, h, env, link, &data[consumed..]) {
                (0, f) => return (consumed, fx | f),
                (used, f) => {
                    consumed += used;
                    fx |= f;
                }
            }
        }
        let rest = &mut data[consumed..];
        if rest.is_empty() || link.proto.state() == State::Closed {
            // What follows a closing connection stays spilled until it goes.
            return (consumed, fx);
        }
        match self {
            // An SSE stream does not end to answer what follows it.
            Endpoint::Stream(s) if !s.is_poll() => (data.len(), fx),
            // What follows a pending request or a held long-poll stays
            // spilled until it is answered.
            Endpoint::Stream(_)
            | Endpoint::Http { .. }
            | Endpoint::Connecting(_)
            | Endpoint::Handshake(_) => (consumed, fx),
            Endpoint::Echo => (consumed + echo::handle_bytes(env, link, rest, consumed), fx),
            Endpoint::Gateway(s) => {
                let (used, f) = gateway::handle_bytes(s, env, link, rest);
                (consumed + used, fx | f)
            }
        }
    }

    /// The connection's timer fired.
    pub fn handle_timeout(&mut self, env: &mut Env, link: &mut Link<'_>) -> Timeout {
        let closed = link.proto.state() == State::Closed;
        let granted = self.session().and_then(Session::next_sub_expiry);
        // (The wall clock is read only for a connection with such a grant.)
        if let Some(now_unix) = granted
            .map(|at| (at, unix_now_ms()))
            .filter(|&(at, now)| !closed && at <= now)
            .map(|(_, now)| now)
        {
            // A subscribe proxy's grant ran out.
            let mut fx = Effects::REARM | Effects::DIRTY;
            match self {
                Endpoint::Gateway(s) => gateway::expire_subs(s, env, link, now_unix),
                Endpoint::Stream(s) => {
                    s.expire_subs(env, link, now_unix);
                    if s.is_poll() {
                        // Answered with the notice among its errors.
                        fx |= Effects::DUE;
                    }
                }
                _ => {}
            }
            return Timeout::Fired(fx);
        }
        if !closed && self.expires_at().is_some_and(|e| e <= env.now) {
            // The connect proxy's expiry: the refresh proxy decides.
            if let Some(fx) = refresh::due(self, env, link) {
                return Timeout::Fired(fx);
            }
            // The token expired and no `refresh` replaced it.
            if let Some(s) = self.session_mut() {
                s.set_expires_at_ms(None);
            }
            env.counts.timeouts += 1;
            debug!("connection {:?}: token expired", link.key);
            return Timeout::Fired(match self {
                Endpoint::Stream(s) => s.expired(env, link),
                Endpoint::Gateway(s) => gateway::expired(s, env, link),
                _ => {
                    link.proto.shutdown(env.now);
                    Effects::REARM | Effects::DIRTY
                }
            });
        }
        if let Endpoint::Stream(s) = self {
            if !closed {
                return Timeout::Fired(s.handle_timeout(env, link));
            }
        }
        match link
            .proto
            .handle_timeout(env.now, &env.cfg.timeouts, link.out)
        {
            crate::proto::TimerAction::Drop(why) => {
                env.counts.timeouts += 1;
                Timeout::Drop(why)
            }
            crate::proto::TimerAction::Continue => {
                let dirty = if link.out.is_empty() {
                    Effects::NONE
                } else {
                    Effects::DIRTY
                };
                Timeout::Fired(Effects::REARM | dirty)
            }
        }
    }

    /// When the timer must fire next, if ever: the stream's deadline or the
    /// protocol's, and the token's expiry while the connection is in use.
    pub fn deadline(&self, proto: &Conn, env: &Env) -> Option<u64> {
        let closed = proto.state() == State::Closed;
        let at = match self {
            Endpoint::Stream(s) if !closed => Some(s.deadline()),
            _ => proto.next_timeout(env.now, &env.cfg.timeouts),
        };
        let grants = self.session().and_then(Session::next_sub_expiry).map(|at| {
            // Unix ms to the worker's clock.
            env.now + at.saturating_sub(unix_now_ms())
        });
        let expiry = match (self.expires_at(), grants) {
            (Some(a), Some(g)) => Some(a.min(g)),
            (a, g) => a.or(g),
        }
        .filter(|_| !closed);
        match (at, expiry) {
            (Some(a), Some(e)) => Some(a.min(e)),
            (a, e) => a.or(e),
        }
    }

    /// When the connection's token expires (worker clock), if it has one.
    fn expires_at(&self) -> Option<u64> {
        self.session().and_then(|s| s.expires_at_ms())
    }

    pub fn session(&self) -> Option<&Session> {
        match self {
            Endpoint::Gateway(s) => Some(s),
            Endpoint::Stream(s) => Some(&s.session),
            _ => None,
        }
    }

    /// The server closes the connection with `code` and `reason`: its
    /// session's `client_disconnected` webhook says so.
    fn closing(&mut self, code: u16, reason: &str) {
        if let Some(s) = self.session_mut() {
            s.note_close(code, reason);
        }
    }

    fn session_mut(&mut self) -> Option<&mut Session> {
        match self {
            Endpoint::Gateway(s) => Some(s),
            Endpoint::Stream(s) => Some(&mut s.session),
            _ => None,
        }
    }

    /// Does the connection still owe its client replies (ops at the broker
    /// or held), so that a half-closed client still gets them?
    pub fn owes_replies(&self) -> bool {
        self.session().is_some_and(|s| s.has_pending())
    }

    /// Too many ops unanswered to read on.
    pub fn backlogged(&self, env: &Env) -> bool {
        self.session()
            .is_some_and(|s| s.backlogged(&env.cfg.gateway))
    }

    /// Does a subscription's reply wait behind an earlier one, so that
    /// publications must go through [`Endpoint::deliver`]'s slow path?
    pub fn holds_publications(&self) -> bool {
        matches!(self, Endpoint::Gateway(s) if s.holding())
    }

    /// A broker answer for this connection: `tag` and `id` are the
    /// request's.
    pub fn handle_reply(
        &mut self,
        env: &mut Env,
        link: &mut Link<'_>,
        tag: Tag,
        id: Option<&RawValue>,
        body: ReplyBody,
    ) -> Effects {
        // The refresh proxy's decision (the session keeps its tag).
        // (Matched by reference first: any other answer goes on unmoved.)
        let body = match body {
            ReplyBody::Hook(a)
                if matches!(a.decision, crate::hooks::proxy::Decision::Refresh(_)) =>
            {
                if let crate::hooks::proxy::Decision::Refresh(d) = a.decision {
                    return refresh::decided(self, env, link, tag, d);
                }
                return Effects::NONE; // the guard matched a refresh decision
            }
            body => body,
        };
        // A subscribe of an earlier session on this connection (a poll
        // answered before all its subscribes were, the connection kept for
        // other requests): not this session's, nor an HTTP request's
        // answer. Undone like a closed connection's.
        if let ReplyBody::Subscribed { client, .. } = &body {
            let mine = self
                .session()
                .is_some_and(|s| client.as_deref().is_none_or(|c| s.client() == c));
            if !mine {
                debug!("stale subscribe answer for {:?}: undone", link.key);
                env.undo(link.key, body);
                return Effects::NONE;
            }
        }
        match self {
            Endpoint::Connecting(_) => connect::decided(self, env, link, tag, body),
            Endpoint::Gateway(s) => gateway::handle_reply(s, env, link, tag, id, body),
            Endpoint::Stream(s) => s.handle_reply(env, link, tag, body),
            Endpoint::Http {
                tag: waited,
                keep,
                send,
            } if *waited == tag => {
                let (keep, send) = (*keep, *send);
                http::answer(self, env, link, id, body, keep, send)
            }
            _ => {
                env.undo(link.key, body);
                Effects::DIRTY
            }
        }
    }

    /// A part of a replay (`gateway::replay`): queue what fits, join the
    /// live stream at the top, or apply the slow-consumer policy if the
    /// history lost the rest.
    pub fn handle_replay(
        &mut self,
        env: &mut Env,
        link: &mut Link<'_>,
        chunk: ReplayChunk,
    ) -> Effects {
        let step = match self {
            Endpoint::Gateway(s) if link.proto.is_open() => {
                gateway::replay_part(s, env, link, chunk)
            }
            Endpoint::Stream(s) if link.proto.state() != State::Closed => {
                s.replay_part(env, link, chunk)
            }
            _ => return Effects::NONE,
        };
        match step {
            crate::gateway::replay::Step::Live(channel) => {
                env.topics.add(&channel, link.key);
            }
            crate::gateway::replay::Step::Lost { channel, after } => {
                debug!(
                    "connection {:?}: the replay of {channel:?} lost its history after {after}",
                    link.key
                );
                // As if offset after + 1 did not fit: the client recovers
                // from `after` (and is told `recovered:false`).
                return Effects::DIRTY | self.handle_slow(env, link, &channel, after + 1);
            }
            _ => {}
        }
        self.pull_replay(env, link.key, link.proto, link.out.len(), false);
        Effects::DIRTY
    }

    /// Ask for the connection's next replay part, if one is due. `wake`:
    /// the answer of a broker that answers at once lands in this worker's
    /// own inbox outside its drain, so the loop must not sleep on it.
    pub fn pull_replay(
        &mut self,
        env: &mut Env,
        key: ConnKey,
        proto: &Conn,
        queued: usize,
        wake: bool,
    ) {
        let s = match self {
            Endpoint::Gateway(s) if proto.is_open() => &mut **s,
            Endpoint::Stream(s) if !s.is_poll() && proto.state() != State::Closed => &mut s.session,
            _ => return,
        };
        if !s.replaying() {
            return;
        }
        let cap = env.cfg.gateway.max_queued_bytes;
        if let Some(req) = s.next_replay_request(queued, cap) {
            let reply = crate::broker::ReplyTo {
                worker: env.id,
                conn: key,
                id: None,
                tag: env.tags.fresh(),
            };
            env.broker.replay(env.id, req, reply);
            if wake {
                env.inboxes.wake(env.id);
            }
        }
    }

    /// Are replays still being read (asked for as the queue drains)?
    pub fn replaying(&self) -> bool {
        self.session().is_some_and(|s| s.replaying())
    }

    /// A publication or event of `channel` for this subscriber (the
    /// fan-out's hot path: a match on the kind and a push of the shared
    /// frame). `shared` is the fan-out's frame, compressed once per worker
    /// for the connections with permessage-deflate; `hold`: its session may
    /// hold publications behind a reply ([`Endpoint::holds_publications`]).
    /// The out queue is taken from `outs` when needed; over `cap`, the
    /// shell's `make_room` writes what the socket takes before the
    /// subscriber is called slow.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn deliver(
        &mut self,
        deflate: &mut Engine,
        proto: &mut Conn,
        out: &mut Option<Box<OutQueue>>,
        outs: &mut OutPool,
        fan: &Fanout<'_>,
        forms: &mut delta::Fanout<'_>,
        hold: bool,
        make_room: impl FnOnce(&mut OutQueue),
    ) -> Delivery {
        match self {
            Endpoint::Gateway(s) if proto.is_open() => {
                // Whole, or its delta form for a delta subscription
                // positioned on the previous publication (queued below, or
                // the subscription or connection ends: `delta::Fanout::pick`).
                let form = if forms.has_deltas() {
                    forms.pick(s.delta_cursor(fan.channel))
                } else {
                    Form::Whole
                };
                if hold {
                    // Its subscription's reply still waits behind an
                    // earlier one: the publication goes after that reply.
                    let room = fan.cap.saturating_sub(out.as_ref().map_or(0, |o| o.len()));
                    let held = match form {
                        Form::Whole => s.divert(fan.channel, fan.frame, room),
                        Form::Delta => {
                            let f = forms.plain(form);
                            let f = Frame::new(
                                f.clone(),
                                server_header_len(f),
                                fan.frame.kind(),
                                fan.frame.offset(),
                            );
                            s.divert(fan.channel, &f, room)
                        }
                    };
                    match held {
                        Divert::No => {}
                        Divert::Held => return Delivery::Held,
                        Divert::Full => return Delivery::Full,
                    }
                }
                let f = forms.for_conn(form, proto, deflate);
                let out = out.get_or_insert_with(|| outs.pop());
                if !fits(out, f.len(), fan.cap, make_room) {
                    return Delivery::Full;
                }
                let compressed = !Arc::ptr_eq(&f, forms.plain(form));
                out.push_shared(f);
                if compressed {
                    Delivery::Compressed
                } else {
                    Delivery::Queued
                }
            }
            Endpoint::Stream(s) if proto.state() != State::Closed => {
                let out = out.get_or_insert_with(|| outs.pop());
                if !fits(out, fan.frame.len(), fan.cap, make_room) {
                    return Delivery::Full;
                }
                s.deliver(&mut **out, fan.channel, fan.frame)
            }
            _ => Delivery::Skipped,
        }
    }

    /// A subscriber's out queue is full: apply the configured policy.
    /// Control frames (the close, the notice) are queued past the cap.
    pub fn handle_slow(
        &mut self,
        env: &mut Env,
        link: &mut Link<'_>,
        channel: &str,
        offset: u64,
    ) -> Effects {
        match env.cfg.gateway.slow_consumer {
            SlowConsumer::Close => {
                log::warn!(
                    "closing slow consumer {:?} ({} bytes queued)",
                    link.key,
                    link.out.len()
                );
                env.counts.slow_consumer_closes += 1;
                if let Endpoint::Stream(_) = self {
                    // A stream has no close frame: it ends; EventSource
                    // reconnects with its Last-Event-ID and recovers.
                    link.proto.shutdown(env.now);
                } else {
                    self.closing(close_code::SLOW_CONSUMER, "slow consumer");
                    link.proto.close(
                        link.out,
                        env.now,
                        close_code::SLOW_CONSUMER,
                        "slow consumer",
                    );
                }
                Effects::REARM | Effects::DIRTY
            }
            SlowConsumer::Drop => {
                env.counts.dropped += 1;
                // The last publication it was sent: the one before this, or,
                // when this is a presence event, the channel's latest.
                let last = if offset > 0 {
                    offset - 1
                } else {
                    env.topics.last_offset(channel)
                };
                match self {
                    Endpoint::Gateway(s) => gateway::drop_channel(s, env, link, channel, last),
                    Endpoint::Stream(s) => s.drop_channel(env, link, channel, last),
                    _ => {}
                }
                Effects::DIRTY
            }
        }
    }

    /// An operator disconnects `user`: `None` if this is not one of its
    /// connections. WebSocket connections get close 4000 (reconnect),
    /// streams end, polls answer.
    pub fn handle_disconnect(
        &mut self,
        env: &mut Env,
        link: &mut Link<'_>,
        user: &str,
    ) -> Option<Effects> {
        if self.session()?.user() != Some(user) {
            return None;
        }
        Some(match self {
            Endpoint::Stream(s) if s.is_poll() => Effects::DUE,
            Endpoint::Stream(_) => {
                link.proto.shutdown(env.now);
                Effects::REARM | Effects::DIRTY
            }
            _ => {
                self.closing(close_code::SHUTDOWN, "disconnected by operator");
                link.proto.close(
                    link.out,
                    env.now,
                    close_code::SHUTDOWN,
                    "disconnected by operator",
                );
                Effects::REARM | Effects::DIRTY
            }
        })
    }

    /// The server drains: ask the connection to go elsewhere. `None` when it
    /// cannot be told yet: its first request has not been read (it is asked
    /// again at the next drain step; the handshake deadline bounds the
    /// wait).
    pub fn handle_drain(&mut self, env: &mut Env, link: &mut Link<'_>) -> Option<Effects> {
        if self.is_first_request(link.proto) {
            return None;
        }
        Some(match self {
            Endpoint::Stream(s) if s.is_poll() => Effects::DUE,
            Endpoint::Http { keep, .. } if link.proto.state() == State::Handshake => {
                // Answered by the broker shortly; close after that response.
                *keep = false;
                Effects::NONE
            }
            _ => {
                if link.proto.state() == State::Open {
                    self.closing(close_code::SHUTDOWN, "server shutting down");
                    link.proto.close(
                        link.out,
                        env.now,
                        close_code::SHUTDOWN,
                        "server shutting down",
                    );
                } else {
                    link.proto.shutdown(env.now);
                }
                Effects::REARM | Effects::DIRTY
            }
        })
    }

    /// A long-poll's answer is due: write it and end the stream; the
    /// connection goes back to reading requests (keep-alive) or closes.
    pub fn handle_due(&mut self, env: &mut Env, link: &mut Link<'_>) -> Effects {
        match self {
            Endpoint::Stream(s) if s.is_poll() => {
                let keep = s.keep && !env.draining();
                let Some(body) = s.answer() else {
                    return Effects::NONE;
                };
                crate::http::respond(link.out, 200, "application/json", &body, keep);
                s.session.close(&mut env.ctx(link.key));
                let fx = http::finish(self, env, link, keep) | Effects::DIRTY;
                if keep {
                    // Requests that arrived while it was held.
                    fx | Effects::AGAIN
                } else {
                    fx
                }
            }
            _ => Effects::NONE,
        }
    }

    /// The connection is gone: publishes it sent that were still held go to
    /// the broker, and every channel is left.
    pub fn close(&mut self, env: &mut Env, key: ConnKey) {
        match self {
            Endpoint::Gateway(s) => s.close(&mut env.ctx(key)),
            Endpoint::Stream(s) => s.session.close(&mut env.ctx(key)),
            _ => {}
        }
    }
}

impl Default for Endpoint {
    fn default() -> Self {
        Endpoint::new()
    }
}

/// Wall-clock time (token expiries are Unix times).
fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// May `len` more bytes go into `out` under `cap`? The queue holds what
/// this burst queued so far, not yet written: the socket gets a chance
/// (`make_room`) before the subscriber is called slow. A reader's kernel
/// buffer takes it; a client that does not read stays over the cap.
#[inline]
fn fits(out: &mut OutQueue, len: usize, cap: usize, make_room: impl FnOnce(&mut OutQueue)) -> bool {
    if out.len() + len <= cap {
        return true;
    }
    make_room(out);
    out.len() + len <= cap
}

impl Env {
    /// Count a connection for client `ip` (its key goes to `ip_key`),
    /// unless that IP is at its limit.
    pub fn admit_ip(&mut self, ip_key: &mut u32, ip: IpAddr) -> bool {
        let limit = self.cfg.admission.per_ip;
        if limit == 0 || *ip_key != 0 {
            return true;
        }
        let key = admission::ip_key(ip);
        if self.shared.per_ip.acquire(key, limit) {
            *ip_key = key;
            true
        } else {
            self.counts.refused_per_ip += 1;
            false
        }
    }

    /// The request's access: its token verified, or open mode.
    /// The request headers the backend hooks forward, picked once when a
    /// connection opens (none without a proxy, or when nothing is
    /// forwarded).
    fn hook_headers(&self, head: &crate::proto::handshake::Head<'_>) -> Vec<(String, String)> {
        let Some(p) = self.cfg.gateway.proxy.as_deref() else {
            return Vec::new();
        };
        let rules = p.header_rules();
        if rules.forwards_nothing() {
            return Vec::new();
        }
        rules.select(head.headers().iter().map(|h| (h.name, h.value)))
    }

    fn authenticate(
        &self,
        head: &crate::proto::handshake::Head<'_>,
    ) -> Result<Access, crate::auth::AuthError> {
        let now = unix_now_ms() / 1000;
        let token = crate::auth::token_from_head(head);
        self.cfg.gateway.auth.authenticate(token.as_ref(), now)
    }

    /// The user a request names (its token's `sub`, or `?user=` in open
    /// mode), refused unless it is a valid user id.
    fn user_of(
        &self,
        query: crate::base::query::Query<'_>,
        access: &Access,
    ) -> Result<Option<String>, crate::base::OpError> {
        let named = query.value("user");
        crate::gateway::session::user_of(access, named, self.cfg.gateway.max_channel_length)
    }

    /// A refreshed token's new expiry, on this worker's clock.
    fn expiry_of(&self, access: &Access) -> Option<u64> {
        self.cfg
            .gateway
            .auth
            .expires_in_ms(access, unix_now_ms())
            .map(|left| self.now + left)
    }
}

/// A frame or message the connection sent broke the protocol: fail it
/// (close frame with the error's code if it may still send one); the rest
/// of `len` bytes is discarded.
fn failed(
    link: &mut Link<'_>,
    now: u64,
    counts: &mut Counters,
    e: crate::proto::Error,
    len: usize,
) -> usize {
    debug!("connection {:?}: {e}", link.key);
    counts.protocol_errors += 1;
    link.proto.fail(link.out, now, e);
    len
}

/// The header length of an unmasked server frame (RFC 6455 §5.2: a 7-bit
/// length, or 126 and 16 bits, or 127 and 64 bits).
fn server_header_len(frame: &[u8]) -> u8 {
    match frame.get(1).map(|b| b & 0x7F) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    }
}
