//! A client's session: its identity, its channels, what it does with each
//! op and each broker answer. It writes through a [`Sink`] and knows no
//! transport.
//!
//! Two ways to use one:
//!
//! - **ops** (a `/ws` connection): every op gets exactly one reply, in the
//!   order the ops were sent, with the effects they would have had one at
//!   a time ([`Session::on_message`], [`Session::on_reply`]; see
//!   [`super::pipeline`]); `POST /send` dispatches a single op
//!   ([`Session::dispatch`]).
//! - **listening** (an SSE or long-poll stream): channels subscribed at
//!   the start, their answers taken as they come ([`Session::joined`],
//!   [`Session::begin_replay`]); the stream writes them its own way.
//!
//! Every broker answer is matched to its request by its [`Tag`]; an answer
//! this session does not expect is handed back (the `Err` of
//! [`Session::on_reply`] and [`Session::joined`]), and the caller undoes it.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::channel_rate::ChannelRate;
use super::error::OpError;
use super::ops::{self, Op};
use super::pipeline::{must_wait, Asked, Piece, Pipeline};
use super::replay::{Begin, Replays, Step};
use super::reply::{Dispatched, Notice, Reply};
use super::sink::{ReplySink, Sink};
use super::GatewayConfig;
use crate::auth::Access;
use crate::base::counters::Counters;
use crate::base::state::{StateError, StateReader, StateWriter};
use crate::base::{Bucket, ClientName, ConnKey};
use crate::broker::{
    Broker, HookAnswer, HookCtx, ReplayChunk, ReplayRequest, ReplyBody, ReplyTo, SubFlags,
    Subscribed, Tag, Tags, Then,
};
use crate::config::DeltaMode;
use crate::delta::{DeltaChannels, DeltaCursor};
use crate::hooks::proxy::{
    Client, Decision, Disconnect, Hook, Json, PublishDecision, PublishRequest, RpcAnswer,
    RpcRequest, SubscribeDecision, SubscribeRequest, Transport,
};
use crate::pubsub::presence::Member;
use crate::pubsub::topics::Topics;
use crate::pubsub::{user_channel, valid_channel, valid_user, Frame, Position};

/// Where a subscription stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubState {
    /// Asked; the broker's answer carries this tag.
    Pending(Tag),
    /// Answered and in the worker's [`Topics`], but its reply waits behind
    /// an earlier one: publications reaching it go into its reply's slot.
    Answered(Tag),
    /// Replied to; publications go straight out.
    Active,
}

/// One subscription, in 24 bytes (a session holds one per channel, up to
/// `limits.max_channels_per_connection`): the channel's name, shared with
/// the worker's index ([`Topics::intern`]) and the other sessions of the
/// worker, and its state packed in one word: the [`SubState`] kind in the
/// low two bits, whether it was granted Fossil deltas in the third, the
/// subscribe grant's [`SubFlags`] in the next four, the state's tag above.
/// Tags count up from 1 per worker, so 2^57 of them are never used up. A delta subscription's cursor lives beside, in the
/// session's rarely allocated part.
#[derive(Debug)]
pub struct Sub {
    pub channel: Arc<str>,
    word: u64,
}

const KIND_PENDING: u64 = 0;
const KIND_ANSWERED: u64 = 1;
const KIND_ACTIVE: u64 = 2;
const KIND_MASK: u64 = 3;
const DELTA_BIT: u64 = 4;
const FLAGS_SHIFT: u32 = 3;
const FLAGS_MASK: u64 = ((1 << SubFlags::BITS) - 1) << FLAGS_SHIFT;
const TAG_SHIFT: u32 = FLAGS_SHIFT + SubFlags::BITS;

impl Sub {
    fn new(channel: Arc<str>, tag: Tag, delta: bool) -> Sub {
        let mut sub = Sub {
            channel,
            word: if delta { DELTA_BIT } else { 0 },
        };
        sub.set_state(SubState::Pending(tag));
        sub
    }

    /// Where it stands.
    pub fn state(&self) -> SubState {
        let tag = Tag(self.word >> TAG_SHIFT);
        match self.word & KIND_MASK {
            KIND_PENDING => SubState::Pending(tag),
            KIND_ANSWERED => SubState::Answered(tag),
            _ => SubState::Active,
        }
    }

    fn set_state(&mut self, state: SubState) {
        let (kind, tag) = match state {
            SubState::Pending(t) => (KIND_PENDING, t.0),
            SubState::Answered(t) => (KIND_ANSWERED, t.0),
            SubState::Active => (KIND_ACTIVE, 0),
        };
        debug_assert!(tag < 1 << (64 - TAG_SHIFT), "tags count up from 1");
        self.word = tag << TAG_SHIFT | self.word & (DELTA_BIT | FLAGS_MASK) | kind;
    }

    /// The subscribe grant's overrides (its leave matches its join).
    pub fn flags(&self) -> SubFlags {
        SubFlags::from_bits(((self.word & FLAGS_MASK) >> FLAGS_SHIFT) as u8)
    }

    fn set_flags(&mut self, f: SubFlags) {
        self.word = self.word & !FLAGS_MASK | u64::from(f.bits()) << FLAGS_SHIFT;
    }

    /// Granted Fossil deltas (its cursor is in the session's `cursors`).
    pub fn delta(&self) -> bool {
        self.word & DELTA_BIT != 0
    }
}

/// A session's subscriptions: exactly as many as it has, in 24 bytes of
/// the session. The first lives in the session itself (a session on one
/// channel, the common case, has no block for it: issue 13 part 4); none,
/// or two and more, are one exact `Box<[Sub]>` (empty: no allocation),
/// which fits beside the channel pointer's niche. Adding or removing one
/// reallocates: subscribes are paced (`limits.channel_rate`) and bounded
/// (`max_channels_per_connection`), fan-out only reads.
#[derive(Debug)]
pub enum Subs {
    One(Sub),
    /// None, or two and more.
    Many(Box<[Sub]>),
}

impl Default for Subs {
    fn default() -> Subs {
        Subs::Many(Box::default())
    }
}

impl Subs {
    fn push(&mut self, sub: Sub) {
        *self = match std::mem::take(self) {
            Subs::Many(none) if none.is_empty() => Subs::One(sub),
            Subs::One(first) => Subs::Many(Box::new([first, sub])),
            Subs::Many(many) => {
                let mut v = Vec::from(many);
                v.reserve_exact(1);
                v.push(sub);
                Subs::Many(v.into_boxed_slice())
            }
        };
    }

    /// Remove subscription `i`, the last one taking its place.
    fn swap_remove(&mut self, i: usize) -> Sub {
        match std::mem::take(self) {
            Subs::One(only) => {
                assert_eq!(i, 0, "swap_remove: index out of bounds");
                only
            }
            Subs::Many(many) => {
                let mut v = Vec::from(many);
                let sub = v.swap_remove(i);
                *self = match v.pop() {
                    Some(last) if v.is_empty() => Subs::One(last),
                    Some(last) => {
                        v.push(last);
                        Subs::Many(v.into_boxed_slice())
                    }
                    None => Subs::default(),
                };
                sub
            }
        }
    }
}

impl std::ops::Deref for Subs {
    type Target = [Sub];
    fn deref(&self) -> &[Sub] {
        match self {
            Subs::One(sub) => std::slice::from_ref(sub),
            Subs::Many(many) => many,
        }
    }
}

impl std::ops::DerefMut for Subs {
    fn deref_mut(&mut self) -> &mut [Sub] {
        match self {
            Subs::One(sub) => std::slice::from_mut(sub),
            Subs::Many(many) => many,
        }
    }
}

/// The parts of a session most never use, allocated with the first that
/// is: a token's grants and expiry, the message rate, delta cursors (8
/// bytes in every session instead of 96).
#[derive(Debug, Default)]
struct Rare {
    /// What the connection's token allows, when not everything (open
    /// mode: [`Access::Open`], with no `Rare` for it).
    access: Option<Access>,
    /// When the token expires, on the worker's clock (ms).
    expires_at_ms: Option<u64>,
    /// Messages per second (admission control), when limited.
    bucket: Option<Bucket>,
    /// Per subscription granted Fossil deltas: where it stands in the
    /// worker's [`DeltaChannels`] (joined when asked, left when removed).
    cursors: Vec<(Arc<str>, DeltaCursor)>,
    /// How the client is connected, for the backend hooks (`None`: a
    /// WebSocket).
    transport: Option<Transport>,
    /// The request headers the hooks forward (`proxy.forward_headers`,
    /// `forward_cookies`), picked once when the connection opened; kept
    /// only when there are any.
    hook_headers: Vec<(String, String)>,
    /// `data` a subscribe proxy granted, for the subscribe reply, until
    /// the broker answers (by tag).
    granted: Vec<(Tag, Json)>,
    /// A backend hook answered `disconnect`: the endpoint closes the
    /// connection with this code and reason.
    disconnect: Option<Disconnect>,
    /// The connect proxy's `meta`: sent with every later hook call of this
    /// connection, never shown to clients.
    meta: Option<Json>,
    /// The connect answer's `subs`: each channel's `chan_info`, taken when
    /// the channel is subscribed.
    chan_infos: Vec<(String, Json)>,
    /// `expires_at_ms` is the connect proxy's `expire_at` (not a token's):
    /// the refresh proxy, when configured, renews it.
    proxy_expiry: bool,
    /// A refresh proxy call waits for its decision (this tag).
    refreshing: Option<Tag>,
    /// Subscriptions a subscribe proxy granted until a time (Unix ms):
    /// each ends then ([`Session::expire_subs`]).
    sub_expiry: Vec<(Arc<str>, u64)>,
    /// Subscriptions asked again after a live handoff, by tag, until
    /// answered ([`Session::thawed`]).
    resuming: Vec<Tag>,
    /// The reason of the close frame [`Session::close_code`] came with,
    /// for `client_disconnected` (kept only when not empty).
    close_reason: Option<Box<str>>,
    /// Ops not yet replied to (WebSocket), only while there are any.
    pipeline: Option<Box<Pipeline>>,
    /// Replays still being read, paced by the out queue.
    replays: Replays,
}

impl Rare {
    /// Holds nothing: the session frees it ([`Session::tidy_rare`]).
    /// Every field is named, so that a new one must say what empty is.
    fn is_unused(&self) -> bool {
        let Rare {
            access,
            expires_at_ms,
            bucket,
            cursors,
            transport,
            hook_headers,
            granted,
            disconnect,
            meta,
            chan_infos,
            proxy_expiry,
            refreshing,
            sub_expiry,
            resuming,
            close_reason,
            pipeline,
            replays,
        } = self;
        access.is_none()
            && expires_at_ms.is_none()
            && bucket.is_none()
            && cursors.is_empty()
            && transport.is_none()
            && hook_headers.is_empty()
            && granted.is_empty()
            && disconnect.is_none()
            && meta.is_none()
            && chan_infos.is_empty()
            && !proxy_expiry
            && refreshing.is_none()
            && sub_expiry.is_empty()
            && resuming.is_empty()
            && close_reason.is_none()
            && pipeline.is_none()
            && replays.is_empty()
    }
}

/// A client's session. Boxed in its connection's endpoint; its size is
/// pinned by `session_state_is_small` (docs/density.md).
#[derive(Debug)]
pub struct Session {
    /// This connection's id (presence identity when there is no user) and
    /// its user, if any (a valid user id: [`valid_user`]): one allocation,
    /// shared with the presence of every channel the session is in.
    me: Member,
    pub subs: Subs,
    /// Grants, expiry, the message rate's bucket, delta cursors, and the
    /// ops and replays in flight, when there are any (freed when it holds
    /// nothing again: [`Session::tidy_rare`]).
    rare: Option<Box<Rare>>,
    /// Subscribes per second (`limits.channel_rate`).
    channel_rate: ChannelRate,
    /// A `refresh` op replaced the token: the worker re-arms the expiry.
    pub refreshed: bool,
    /// Over the message rate: the worker closes the connection (1008).
    pub rate_exceeded: bool,
    /// A long-lived connection (WebSocket, SSE): counted in its user's
    /// presence ([`Session::announce`]), `client_disconnected` at its end.
    /// Not a long-poll request nor a `POST /send` one.
    connection: bool,
    /// Counted in the user presence now.
    online: bool,
    /// The close code of the connection's end, when known (the client's
    /// close frame, or the server's); `client_disconnected` says 1006
    /// otherwise. Set by [`Session::note_close`] (the first one counts).
    pub close_code: Option<u16>,
}

/// A `history` op's `limit` when it gives none.
pub const HISTORY_LIMIT: usize = 100;
/// The most publications a `history` op answers with (a larger `limit` is
/// cut to it: page on with `since`).
pub const MAX_HISTORY_LIMIT: usize = 1000;

/// What a session needs from its worker.
pub struct Ctx<'a> {
    pub worker: usize,
    pub conn: ConnKey,
    pub broker: &'a dyn Broker,
    pub topics: &'a mut Topics,
    pub cfg: &'a GatewayConfig,
    /// The worker's counters.
    pub counts: &'a mut Counters,
    /// The worker's request tags.
    pub tags: &'a mut Tags,
    /// The worker's delta state (issue 16).
    pub deltas: &'a mut DeltaChannels,
}

impl Ctx<'_> {
    /// Where the answer to a new request goes, and its tag.
    pub fn reply_to(&mut self, id: Option<&RawValue>) -> (ReplyTo, Tag) {
        let tag = self.tags.fresh();
        let to = ReplyTo {
            worker: self.worker,
            conn: self.conn,
            id: id.map(|r| r.to_owned()),
            tag,
        };
        (to, tag)
    }
}

/// Send one JSON message (counted).
pub fn send_json<O: ReplySink + ?Sized>(out: &mut O, counts: &mut Counters, json: &[u8]) {
    out.message(json);
    counts.messages_out += 1;
}

/// A subscribe of a listening session answered (see [`Session::joined`]).
#[derive(Debug)]
pub enum Joined {
    Subscribed {
        channel: Arc<str>,
        answer: Box<Subscribed>,
    },
    Refused {
        channel: Arc<str>,
        error: OpError,
    },
    /// The subscribe proxy allowed it: the broker's answer comes next.
    Asked,
}

/// What a backend hook's refusal becomes for the client: its own code
/// (400..=1999), 8 for an HTTP 401/403, or 14. The one mapping.
pub fn refusal_error(r: crate::hooks::proxy::OpRefusal) -> OpError {
    use crate::hooks::proxy::OpRefusal;
    match r {
        OpRefusal::Backend(e) => OpError::Backend {
            // 400..=1999, checked when the answer was decoded.
            code: u16::try_from(e.code).unwrap_or(crate::hooks::proxy::BACKEND_UNAVAILABLE),
            message: e.message,
            temporary: e.temporary,
        },
        OpRefusal::Denied(_) => OpError::PermissionDenied,
        OpRefusal::Unavailable(f) => OpError::BackendUnavailable(f.to_string()),
    }
}

/// A decision given back at once by a call that could not be queued (the
/// queue full, the node stopping): always a refusal.
fn refused_at_once(d: Decision) -> OpError {
    match d {
        Decision::Subscribe(SubscribeDecision::Refuse(r))
        | Decision::Publish(PublishDecision::Refuse(r))
        | Decision::Rpc(RpcAnswer::Refuse(r)) => refusal_error(r),
        other => OpError::BackendUnavailable(format!("unexpected decision {other:?}")),
    }
}

/// What a hook decided for a publish or an rpc, applied (shared by `/ws`
/// sessions and `POST /send`, which keeps no session).
pub enum Applied {
    /// The op's reply.
    Reply(Reply),
    /// The op went on to the broker with the same tag: its answer replies.
    Broker,
    /// Close the connection (WebSocket) or answer with its status.
    Disconnect(Disconnect),
}

/// Apply a publish or rpc proxy's decision for the op of `tag`.
pub fn apply_hook(
    ctx: &mut Ctx<'_>,
    tag: Tag,
    id: Option<&RawValue>,
    answer: HookAnswer,
) -> Applied {
    let HookAnswer { decision, then } = answer;
    let refused = |r| Applied::Reply(Reply::Error(refusal_error(r)));
    match decision {
        Decision::Rpc(RpcAnswer::Data(data)) => Applied::Reply(Reply::Rpc(data.get().into())),
        Decision::Publish(PublishDecision::Allow {
            skip_history,
            idempotency_key,
        }) => publish_allowed(ctx, tag, id, then, None, skip_history, idempotency_key),
        Decision::Publish(PublishDecision::Replace {
            data,
            skip_history,
            idempotency_key,
        }) => publish_allowed(
            ctx,
            tag,
            id,
            then,
            Some(data),
            skip_history,
            idempotency_key,
        ),
        Decision::Rpc(RpcAnswer::Refuse(r))
        | Decision::Publish(PublishDecision::Refuse(r))
        | Decision::Subscribe(SubscribeDecision::Refuse(r)) => refused(r),
        Decision::Rpc(RpcAnswer::Disconnect(d))
        | Decision::Publish(PublishDecision::Disconnect(d))
        | Decision::Subscribe(SubscribeDecision::Disconnect(d)) => Applied::Disconnect(d),
        other => {
            log::warn!("a hook decision its op did not ask for: {other:?}");
            Applied::Reply(Reply::Error(OpError::BackendUnavailable(
                "unexpected decision".into(),
            )))
        }
    }
}

/// The publish proxy allowed a publish: to the broker, with the backend's
/// data (compact, `max_message` checked) or the client's, and its options.
fn publish_allowed(
    ctx: &mut Ctx<'_>,
    tag: Tag,
    id: Option<&RawValue>,
    then: Then,
    replace: Option<Json>,
    skip_history: bool,
    idempotency_key: Option<String>,
) -> Applied {
    let Then::Publish {
        channel,
        data,
        mut opts,
        from: _,
    } = then
    else {
        return Applied::Reply(Reply::Error(OpError::BackendUnavailable(
            "unexpected decision".into(),
        )));
    };
    let data: &RawValue = match &replace {
        Some(j) => &j.0,
        None => &data,
    };
    if data.get().len() > ctx.cfg.max_message {
        return Applied::Reply(Reply::Error(OpError::TooBig(ctx.cfg.max_message)));
    }
    opts.skip_history |= skip_history;
    if let Some(k) = idempotency_key {
        if let Err(e) = ops::valid_idempotency_key(&k) {
            return Applied::Reply(Reply::Error(e));
        }
        opts.idempotency_key = Some(k);
    }
    let to = ReplyTo {
        worker: ctx.worker,
        conn: ctx.conn,
        id: id.map(ToOwned::to_owned),
        tag,
    };
    // Its `client_event` (`opts.event_from`) comes from the broker, once
    // published.
    ctx.broker
        .publish(ctx.worker, &channel, data, &opts, Some(to));
    Applied::Broker
}

/// What became of an op.
enum Outcome {
    /// Its reply (and whatever comes with it), known now.
    Ready(Vec<Piece>),
    /// The broker answers it.
    Waiting(Tag, Asked, Arc<str>),
}

/// What [`Session::divert`] did with a publication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Divert {
    /// Not for a subscription whose reply waits: write it as usual.
    No,
    /// Kept behind the subscription's reply.
    Held,
    /// It would pass the out-queue cap: a slow consumer.
    Full,
}

/// The user a request names: the token's verified `sub`, or in open mode
/// `?user=` (empty: none). Refused unless it is a valid user id.
pub fn user_of(
    access: &Access,
    query_user: Option<String>,
    max_channel_length: usize,
) -> Result<Option<String>, OpError> {
    let user = match access {
        Access::User(g) => Some(g.user().to_string()),
        Access::Open => query_user.filter(|u| !u.is_empty()),
        Access::Anonymous => None,
    };
    if let Some(u) = &user {
        valid_user(u, max_channel_length).map_err(OpError::BadChannel)?;
    }
    Ok(user)
}

impl Session {
    pub fn new(client: String, user: Option<String>) -> Session {
        Session {
            me: Member::new(&client, user.as_deref()),
            subs: Subs::default(),
            refreshed: false,
            rare: None,
            rate_exceeded: false,
            channel_rate: ChannelRate::default(),
            connection: false,
            online: false,
            close_code: None,
        }
    }

    /// The connection counts in its user's presence from now on (a
    /// WebSocket or SSE connection with a user; a long-poll request does
    /// not: it comes and goes between polls). Undone by
    /// [`Session::close`].
    pub fn announce(&mut self, ctx: &Ctx<'_>) {
        self.connection = true;
        if let (false, Some(u)) = (self.online, self.me.user()) {
            self.online = true;
            ctx.broker.user_up(ctx.worker, u);
        }
    }

    /// How the client is connected and the headers the backend hooks
    /// forward (kept only when not a WebSocket's defaults).
    pub fn set_hook_client(&mut self, transport: Transport, headers: Vec<(String, String)>) {
        if transport == Transport::WebSocket && headers.is_empty() {
            return;
        }
        let rare = self.rare();
        rare.transport = Some(transport);
        rare.hook_headers = headers;
    }

    fn hook_client(&self) -> Client<'_> {
        let t = self.rare.as_ref().and_then(|r| r.transport);
        Client::new(self.me.client(), t.unwrap_or(Transport::WebSocket))
    }

    fn hook_headers(&self) -> Vec<(String, String)> {
        self.rare
            .as_ref()
            .map(|r| r.hook_headers.clone())
            .unwrap_or_default()
    }

    /// A backend hook asked to close the connection (its code and reason).
    pub fn take_disconnect(&mut self) -> Option<Disconnect> {
        self.rare.as_mut()?.disconnect.take()
    }

    /// The proxy, if `hook` is configured and `on` (the namespace asks).
    fn proxied<'c>(ctx: &Ctx<'c>, hook: Hook, on: bool) -> Option<&'c crate::broker::HookProxy> {
        let p: &'c crate::broker::HookProxy = ctx.cfg.proxy.as_deref()?;
        (on && p.has(hook)).then_some(p)
    }

    /// What the connect proxy attached to the connection: its `info` and
    /// `meta`, and whether the expiry it gave is renewed by the refresh
    /// proxy (issue 15).
    pub fn set_connected(&mut self, ok: &crate::hooks::proxy::Connected, proxy_expiry: bool) {
        if let Some(info) = &ok.info {
            self.set_info(info.clone());
        }
        let chan_infos: Vec<(String, Json)> = ok
            .channels
            .iter()
            .filter_map(|(c, i)| Some((c.clone(), i.clone()?)))
            .collect();
        if ok.meta.is_none() && chan_infos.is_empty() && !proxy_expiry {
            return;
        }
        let rare = self.rare();
        rare.meta = ok.meta.clone();
        rare.chan_infos = chan_infos;
        rare.proxy_expiry = proxy_expiry;
    }

    /// The connect answer's `chan_info` for `channel`, once.
    fn take_chan_info(&mut self, channel: &str) -> Option<Json> {
        let infos = &mut self.rare.as_mut()?.chan_infos;
        let i = infos.iter().position(|(c, _)| c == channel)?;
        Some(infos.swap_remove(i).1)
    }

    /// This connection as a channel's presence shows it: with the
    /// channel's `chan_info` when a hook gave one.
    fn member(&self, chan_info: Option<Json>) -> Member {
        match chan_info {
            Some(i) => self.me.with_chan_info(i.0),
            None => self.me.clone(),
        }
    }

    /// The connect proxy's `meta`, for every later hook call.
    fn meta(&self) -> Option<&RawValue> {
        self.rare.as_ref()?.meta.as_ref().map(|j| &*j.0)
    }

    /// The connection's `info` from the connect (or refresh) proxy: its
    /// `conn_info` in presence.
    pub fn info(&self) -> Option<&RawValue> {
        self.me.info()?.conn.as_deref()
    }

    /// The connect or refresh proxy's `info`: presence shows it from the
    /// next subscription on (entries taken before keep the one they were
    /// taken with, as they keep the user).
    pub fn set_info(&mut self, info: Json) {
        let mut infos = self.me.info().cloned().unwrap_or_default();
        infos.conn = Some(info.0);
        self.me = self.me.with_infos(Some(Box::new(infos)));
    }

    /// Is the expiry the connect proxy's (renewed by the refresh proxy)?
    pub fn proxy_expiry(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.proxy_expiry)
    }

    /// A token replaced the connection's identity (a `refresh` op): its
    /// expiry is the token's from now on, renewed by the client.
    pub fn end_proxy_expiry(&mut self) {
        if let Some(r) = self.rare.as_mut() {
            r.proxy_expiry = false;
        }
    }

    /// The tag of the refresh call waiting for its decision, if any.
    pub fn refreshing(&self) -> Option<Tag> {
        self.rare.as_ref()?.refreshing
    }

    pub fn set_refreshing(&mut self, tag: Option<Tag>) {
        if tag.is_some() || self.rare.is_some() {
            self.rare().refreshing = tag;
        }
    }

    /// Ask the refresh proxy about this connection; its decision comes back
    /// with the returned tag (`Err`: not queued, with the reason).
    pub fn ask_refresh(
        &self,
        ctx: &mut Ctx<'_>,
        proxy: &crate::broker::HookProxy,
    ) -> Result<Tag, Decision> {
        let (to, tag) = ctx.reply_to(None);
        let req = crate::hooks::proxy::RefreshRequest {
            client: self.hook_client(),
            user: self.user().unwrap_or(""),
            meta: self.meta(),
        };
        let then = Then::Reply;
        proxy
            .refresh(&req, self.hook_headers(), HookCtx { to, then })
            .map(|()| tag)
            .map_err(|(_, d)| d)
    }

    /// The user a connect proxy gave (before the session starts: nothing
    /// holds its identity yet).
    pub fn set_user(&mut self, user: Option<String>) {
        self.me = self.me.with_user(user.as_deref());
    }

    /// This connection's id.
    pub fn client(&self) -> ClientName<'_> {
        self.me.client()
    }

    /// The authenticated user, if any.
    pub fn user(&self) -> Option<&str> {
        self.me.user()
    }

    fn find(&self, channel: &str) -> Option<usize> {
        self.subs.iter().position(|s| &*s.channel == channel)
    }

    /// The delta cursor of the subscription to `channel`, if it was
    /// granted deltas (for the worker's fan-out).
    pub fn delta_cursor(&mut self, channel: &str) -> Option<&mut DeltaCursor> {
        let rare = self.rare.as_mut()?;
        rare.cursors
            .iter_mut()
            .find(|(c, _)| &**c == channel)
            .map(|(_, d)| d)
    }

    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Default::default)
    }

    /// The connection's end: the first close frame sent or received, with
    /// its code and reason, is what `client_disconnected` reports.
    pub fn note_close(&mut self, code: u16, reason: &str) {
        if self.close_code.is_none() {
            self.close_code = Some(code);
            if !reason.is_empty() {
                self.rare().close_reason = Some(reason.into());
            }
        }
    }

    /// What the connection's token allows (open mode: everything).
    pub fn access(&self) -> &Access {
        static OPEN: Access = Access::Open;
        self.rare
            .as_ref()
            .and_then(|r| r.access.as_ref())
            .unwrap_or(&OPEN)
    }

    pub fn set_access(&mut self, access: Access) {
        if matches!(access, Access::Open) && self.rare.is_none() {
            return;
        }
        self.rare().access = Some(access);
    }

    /// When the token expires, on the worker's clock (ms).
    pub fn expires_at_ms(&self) -> Option<u64> {
        self.rare.as_ref().and_then(|r| r.expires_at_ms)
    }

    pub fn set_expires_at_ms(&mut self, at: Option<u64>) {
        if at.is_none() && self.rare.is_none() {
            return;
        }
        self.rare().expires_at_ms = at;
    }

    /// Add a subscription ([`Subs`] grows by exactly one).
    fn push_sub(&mut self, channel: Arc<str>, tag: Tag, delta: Option<DeltaCursor>) {
        if let Some(d) = delta {
            self.rare().cursors.push((channel.clone(), d));
        }
        self.subs.push(Sub::new(channel, tag, delta.is_some()));
    }

    /// Take subscription `i` out ([`Subs`] gives its room back at once;
    /// its expiry goes too, if it had one).
    fn take_sub(&mut self, i: usize) -> Sub {
        let sub = self.subs.swap_remove(i);
        if let Some(r) = self.rare.as_mut() {
            r.sub_expiry.retain(|(c, _)| *c != sub.channel);
        }
        sub
    }

    /// Remove subscription `i`, and its place in the delta state.
    fn remove_sub(&mut self, ctx: &mut Ctx<'_>, i: usize) -> Sub {
        let sub = self.take_sub(i);
        if sub.delta() {
            ctx.deltas.leave(&sub.channel);
            if let Some(rare) = self.rare.as_mut() {
                rare.cursors.retain(|(c, _)| *c != sub.channel);
            }
        }
        sub
    }

    fn pipe(&mut self) -> &mut Pipeline {
        self.rare().pipeline.get_or_insert_with(Default::default)
    }

    /// The ops in flight, if any.
    fn pipeline(&self) -> Option<&Pipeline> {
        self.rare.as_ref()?.pipeline.as_deref()
    }

    /// The pipeline is done with: none, and no `Rare` if that held nothing
    /// else.
    fn end_pipeline(&mut self) -> Option<Box<Pipeline>> {
        let p = self.rare.as_mut()?.pipeline.take();
        self.tidy_rare();
        p
    }

    /// Back to no `Rare` once it holds nothing (an op, a replay ended):
    /// an idle session on the defaults keeps 8 bytes for it, not a block.
    fn tidy_rare(&mut self) {
        if self.rare.as_ref().is_some_and(|r| r.is_unused()) {
            self.rare = None;
        }
    }

    /// Are replays still being read (asked for as the queue drains)?
    pub fn replaying(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| !r.replays.is_empty())
    }

    /// The next replay part to ask for, if one is due
    /// ([`Replays::next_request`]).
    pub fn next_replay_request(&mut self, queued: usize, cap: usize) -> Option<ReplayRequest> {
        self.rare.as_mut()?.replays.next_request(queued, cap)
    }

    /// A replay part arrived ([`Replays::on_chunk`]): stale when no
    /// replay is being read.
    pub fn replay_chunk<S: Sink + ?Sized>(
        &mut self,
        chunk: ReplayChunk,
        cap: usize,
        sink: &mut S,
    ) -> Step {
        let Some(r) = self.rare.as_mut() else {
            return Step::Stale;
        };
        let step = r.replays.on_chunk(chunk, cap, sink);
        self.tidy_rare();
        step
    }

    /// Ops not yet replied to (held or at the broker), or replies not yet
    /// written: the connection still owes its client something.
    pub fn has_pending(&self) -> bool {
        self.pipeline().is_some()
    }

    /// Over the bounds of unanswered ops: the worker stops reading the
    /// connection until replies drain.
    pub fn backlogged(&self, cfg: &GatewayConfig) -> bool {
        self.pipeline()
            .is_some_and(|p| p.ops() >= cfg.max_pending_ops || p.bytes() >= cfg.max_queued_bytes)
    }

    /// Does a subscription's reply wait behind an earlier one (so that its
    /// publications must go through [`Session::divert`])?
    pub fn holding(&self) -> bool {
        self.subs
            .iter()
            .any(|s| matches!(s.state(), SubState::Answered(_)))
    }

    /// The tag of the first request still at the broker (`POST /send`).
    pub fn waiting_tag(&self) -> Option<Tag> {
        self.pipeline()?.waiting_tag()
    }

    /// Subscribe to the user's personal channel (at connect, SSE and
    /// long-poll; a `/ws` session does it in [`Session::start`]).
    pub fn join_personal(&mut self, ctx: &mut Ctx<'_>, since: Option<Position>) -> bool {
        self.subscribe_personal(ctx, since).is_some()
    }

    fn subscribe_personal(&mut self, ctx: &mut Ctx<'_>, since: Option<Position>) -> Option<Tag> {
        let ch = ctx.topics.intern(&user_channel(self.user()?));
        if self.find(&ch).is_some() {
            return None;
        }
        let (to, tag) = ctx.reply_to(None);
        self.push_sub(ch.clone(), tag, None);
        ctx.broker
            .subscribe(ctx.worker, ch, since, None, SubFlags::NONE, to);
        Some(tag)
    }

    /// A `/ws` session begins: its personal channel, then each channel
    /// named in the URL (`?channel=a&channel=b`), each answered by a reply
    /// without id, in that order, before the reply to any op. `delta`
    /// (`&delta=fossil`) asks deltas for the URL's channels.
    pub fn start<O: ReplySink + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_>,
        channels: impl Iterator<Item = String>,
        delta: bool,
        out: &mut O,
    ) {
        self.announce(ctx);
        if let Some(tag) = self.subscribe_personal(ctx, None) {
            let ch = self.subs.last().expect("just pushed").channel.clone();
            self.place(ctx, Outcome::Waiting(tag, Asked::Subscribe, ch), out);
        }
        for ch in channels {
            let o = match self.subscribe_tagged(ctx, &ch, None, None, delta, None) {
                Ok(tag) => Outcome::Waiting(tag, Asked::Subscribe, ch.into()),
                Err(e) => self.error(ctx, None, &e),
            };
            self.place(ctx, o, out);
        }
    }

    /// A message from the client.
    pub fn on_message<O: ReplySink + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_>,
        text: bool,
        data: &[u8],
        out: &mut O,
    ) {
        let rate = ctx.cfg.messages_per_second;
        if rate > 0 {
            if self.rate_exceeded {
                return; // closing: the rest is ignored
            }
            let now = coarse_now_ms();
            let b = self
                .rare()
                .bucket
                .get_or_insert_with(|| Bucket::full(rate * 2, now));
            if !b.take(now, rate, rate * 2) {
                self.rate_exceeded = true;
                return;
            }
        }
        if self.pipeline().is_some_and(|p| p.has_held()) {
            // Behind an op that waits: in order, after it.
            self.pipe().hold(text, data);
            return;
        }
        if !self.run(ctx, text, data, out) {
            self.pipe().hold(text, data);
        }
        self.flush(ctx, out);
    }

    /// Dispatch one op and place its reply; false (and nothing done) if it
    /// must wait for an earlier one.
    fn run<O: ReplySink + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_>,
        text: bool,
        data: &[u8],
        out: &mut O,
    ) -> bool {
        let outcome = if !text {
            let e = OpError::BadRequest("ops are JSON text frames".into());
            self.error(ctx, None, &e)
        } else {
            match ops::parse(data) {
                Err((id, e)) => self.error(ctx, id, &e),
                Ok((id, op)) => {
                    let p = self.pipeline();
                    if p.is_some_and(|p| must_wait(p, &op, self.subs.len(), ctx.cfg.max_channels)) {
                        return false;
                    }
                    let newly_user = matches!(op, Op::Refresh { .. }) && self.user().is_none();
                    let o = match self.apply(ctx, id, op) {
                        Ok(Dispatched::Now(notices, reply)) => {
                            let mut pieces: Vec<Piece> =
                                notices.iter().map(|n| Piece::Json(n.to_json())).collect();
                            pieces.push(Piece::Json(reply.to_json(id)));
                            Outcome::Ready(pieces)
                        }
                        Ok(Dispatched::Asked(tag, asked, channel)) => {
                            Outcome::Waiting(tag, asked, channel)
                        }
                        Err(e) => self.error(ctx, id, &e),
                    };
                    if newly_user && self.user().is_some() {
                        // An anonymous connection logged in: it has a
                        // personal channel now (answered after the refresh).
                        self.place(ctx, o, out);
                        if self.connection {
                            self.announce(ctx);
                        }
                        if let Some(tag) = self.subscribe_personal(ctx, None) {
                            let ch = self.subs.last().expect("just pushed").channel.clone();
                            self.place(ctx, Outcome::Waiting(tag, Asked::Subscribe, ch), out);
                        }
                        return true;
                    }
                    o
                }
            }
        };
        self.place(ctx, outcome, out);
        true
    }

    /// Queue a reply behind the earlier ones, or write it if there are none.
    fn place<O: ReplySink + ?Sized>(&mut self, ctx: &mut Ctx<'_>, o: Outcome, out: &mut O) {
        match o {
            Outcome::Ready(pieces) if !self.pipeline().is_some_and(|p| p.has_slots()) => {
                for piece in pieces {
                    match piece {
                        Piece::Json(j) => send_json(out, ctx.counts, &j),
                        Piece::Frame(f) => out.publication(&f),
                        // Only a broker answer begins a replay.
                        Piece::Replay(..) => {}
                    }
                }
            }
            Outcome::Ready(pieces) => self.pipe().push_answered(pieces),
            Outcome::Waiting(tag, asked, ch) => self.pipe().push_waiting(tag, asked, ch),
        }
    }

    /// An error reply (counted and logged).
    fn error(&self, ctx: &mut Ctx<'_>, id: Option<&RawValue>, e: &OpError) -> Outcome {
        self.count_error(ctx, e);
        Outcome::Ready(vec![Piece::Json(ops::error_reply(id, e))])
    }

    fn count_error(&self, ctx: &mut Ctx<'_>, e: &OpError) {
        log::debug!("client {}: {e}", self.client());
        ctx.counts.op_errors += 1;
    }

    /// One op, typed, outside the order of a WebSocket's replies (`POST
    /// /send`: one op per request): its reply now, an error included, or
    /// the tag of the broker's answer.
    pub fn dispatch(&mut self, ctx: &mut Ctx<'_>, id: Option<&RawValue>, op: Op<'_>) -> Dispatched {
        self.apply(ctx, id, op).unwrap_or_else(|e| {
            self.count_error(ctx, &e);
            Dispatched::Now(Vec::new(), Reply::Error(e))
        })
    }

    fn apply(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: Option<&RawValue>,
        op: Op<'_>,
    ) -> Result<Dispatched, OpError> {
        let now = |reply| Ok(Dispatched::Now(Vec::new(), reply));
        match op {
            Op::Subscribe {
                channel,
                since,
                delta,
                data,
            } => {
                let tag = self.subscribe_tagged(ctx, &channel, since, id, delta, data)?;
                Ok(Dispatched::Asked(tag, Asked::Subscribe, (*channel).into()))
            }
            Op::Unsubscribe { channel } => {
                let i = self.find(&channel).ok_or(OpError::NotSubscribed)?;
                self.leave(ctx, i);
                now(Reply::Unsubscribed {
                    channel: (*channel).into(),
                })
            }
            Op::Publish {
                channel,
                data,
                opts,
            } => {
                self.may_publish(ctx, &channel, data)?;
                let opts = crate::broker::PublishOptions {
                    idempotency_key: opts.idempotency_key.map(Into::into),
                    exclude_client: opts.exclude_self.then(|| (&*self.client()).into()),
                    skip_history: opts.skip_history,
                    event_from: self.event_from(ctx, &channel),
                };
                let hooked = ctx.cfg.policy.options(&channel).publish_proxy;
                if let Some(proxy) = Self::proxied(ctx, Hook::Publish, hooked) {
                    let (to, tag) = ctx.reply_to(id);
                    let req = PublishRequest {
                        client: self.hook_client(),
                        user: self.user().unwrap_or(""),
                        channel: &channel,
                        data,
                        meta: self.meta(),
                    };
                    let then = Then::Publish {
                        channel: (*channel).into(),
                        data: data.to_owned(),
                        opts,
                        from: self.me.clone(),
                    };
                    proxy
                        .publish(&req, self.hook_headers(), HookCtx { to, then })
                        .map_err(|(_, d)| refused_at_once(d))?;
                    return Ok(Dispatched::Asked(
                        tag,
                        Asked::HookPublish,
                        (*channel).into(),
                    ));
                }
                let (to, tag) = ctx.reply_to(id);
                ctx.broker
                    .publish(ctx.worker, &channel, data, &opts, Some(to));
                Ok(Dispatched::Asked(tag, Asked::Publish, (*channel).into()))
            }
            Op::History {
                channel,
                since,
                limit,
                reverse,
            } => {
                // Whoever may subscribe may read what subscribing recovers.
                self.check_channel(ctx, &channel)?;
                self.may_read(ctx, &channel)?;
                let limit = limit.unwrap_or(HISTORY_LIMIT).min(MAX_HISTORY_LIMIT);
                let (to, tag) = ctx.reply_to(id);
                ctx.broker
                    .history(ctx.worker, &channel, since, limit, reverse, to);
                Ok(Dispatched::Asked(tag, Asked::History, (*channel).into()))
            }
            Op::Presence { channel } => {
                self.check_channel(ctx, &channel)?;
                if !ctx.cfg.policy.options(&channel).presence {
                    return Err(OpError::PermissionDenied);
                }
                self.may_read(ctx, &channel)?;
                let (to, tag) = ctx.reply_to(id);
                ctx.broker.presence(ctx.worker, &channel, to);
                Ok(Dispatched::Asked(tag, Asked::Presence, (*channel).into()))
            }
            Op::Refresh { token } => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let access = ctx
                    .cfg
                    .auth
                    .refresh(self.access(), &token, now)
                    .map_err(|e| e.op_error())?;
                let exp = access.exp();
                let notices = self.narrow(ctx, &access);
                if let (None, Some(u)) = (self.user(), access.user()) {
                    // Presence entries taken before keep the identity they
                    // joined with (they hold the old one).
                    self.me = self.me.with_user(Some(u));
                }
                self.set_access(access);
                self.refreshed = true;
                Ok(Dispatched::Now(notices, Reply::Refreshed { exp }))
            }
            Op::Ping => now(Reply::Pong),
            Op::Rpc { method, data } => {
                // Without an rpc proxy the op does not exist (README).
                let proxy = Self::proxied(ctx, Hook::Rpc, true)
                    .ok_or_else(|| OpError::UnknownOp("rpc".into()))?;
                let null = RawValue::NULL;
                let data = data.unwrap_or(null);
                if data.get().len() > ctx.cfg.max_message {
                    return Err(OpError::TooBig(ctx.cfg.max_message));
                }
                let (to, tag) = ctx.reply_to(id);
                let req = RpcRequest {
                    client: self.hook_client(),
                    user: self.user().unwrap_or(""),
                    method: &method,
                    data,
                    meta: self.meta(),
                };
                proxy
                    .rpc(
                        &req,
                        self.hook_headers(),
                        HookCtx {
                            to,
                            then: Then::Reply,
                        },
                    )
                    .map_err(|(_, d)| refused_at_once(d))?;
                Ok(Dispatched::Asked(tag, Asked::Rpc, "".into()))
            }
        }
    }

    /// A refreshed token's grants replace the old ones at once: every
    /// subscription the new token does not allow ends, each with an
    /// `unsubscribed` notice (code 8), before the refresh's reply. (No
    /// subscribe is pending then: a refresh waits for every earlier op.)
    fn narrow(&mut self, ctx: &mut Ctx<'_>, access: &Access) -> Vec<Notice> {
        let mut notices = Vec::new();
        let mut i = 0;
        while i < self.subs.len() {
            if ctx.cfg.auth.may_subscribe(access, &self.subs[i].channel) {
                i += 1;
                continue;
            }
            let channel = self.subs[i].channel.clone();
            self.leave(ctx, i);
            log::debug!(
                "client {}: refreshed token does not grant {channel:?}: unsubscribed",
                self.client()
            );
            notices.push(Notice::Unsubscribed {
                channel,
                error: OpError::PermissionDenied,
            });
        }
        notices
    }

    /// The publisher a publication's `client_event` names, in namespaces
    /// with `client_events = true`: the broker sends it once the
    /// publication is accepted (`PublishOptions::event_from`).
    fn event_from(&self, ctx: &Ctx<'_>, channel: &str) -> Option<Member> {
        ctx.cfg
            .policy
            .options(channel)
            .client_events
            .then(|| self.me.clone())
    }

    fn may_publish(&self, ctx: &Ctx<'_>, channel: &str, data: &RawValue) -> Result<(), OpError> {
        self.check_channel(ctx, channel)?;
        if !ctx.cfg.policy.options(channel).client_publish
            || !ctx.cfg.auth.may_publish(self.access(), channel)
        {
            return Err(OpError::PermissionDenied);
        }
        if data.get().len() > ctx.cfg.max_message {
            return Err(OpError::TooBig(ctx.cfg.max_message));
        }
        Ok(())
    }

    /// May this connection read `channel`'s history or presence? As it
    /// may subscribe; in a `subscribe_proxy` namespace only once the
    /// backend allowed its subscription (the backend decides who reads).
    fn may_read(&self, ctx: &Ctx<'_>, channel: &str) -> Result<(), OpError> {
        let hooked = ctx.cfg.policy.options(channel).subscribe_proxy;
        let allowed = if Self::proxied(ctx, Hook::Subscribe, hooked).is_some() {
            self.find(channel).is_some()
        } else {
            ctx.cfg.auth.may_subscribe(self.access(), channel)
        };
        if allowed {
            Ok(())
        } else {
            Err(OpError::PermissionDenied)
        }
    }

    fn check_channel(&self, ctx: &Ctx<'_>, channel: &str) -> Result<(), OpError> {
        valid_channel(channel, ctx.cfg.max_channel_length).map_err(OpError::BadChannel)
    }

    /// A listening session subscribes to a channel of its URL (its answer
    /// comes to [`Session::joined`]).
    pub fn subscribe(
        &mut self,
        ctx: &mut Ctx<'_>,
        channel: &str,
        since: Option<Position>,
    ) -> Result<(), OpError> {
        self.subscribe_tagged(ctx, channel, since, None, false, None)
            .map(|_| ())
    }

    /// Ask the subscribe proxy about `channel` (its namespace has
    /// `subscribe_proxy`), with the op's `data`; the decision comes back
    /// with `tag`.
    #[allow(clippy::too_many_arguments)]
    fn ask_subscribe(
        &mut self,
        ctx: &mut Ctx<'_>,
        proxy: &crate::broker::HookProxy,
        channel: &str,
        since: Option<Position>,
        id: Option<&RawValue>,
        delta: bool,
        data: Option<&RawValue>,
    ) -> Result<Tag, OpError> {
        let (to, tag) = ctx.reply_to(id);
        let req = SubscribeRequest {
            client: self.hook_client(),
            user: self.user().unwrap_or(""),
            channel,
            data,
            meta: self.meta(),
        };
        let then = Then::Subscribe { since };
        proxy
            .subscribe(&req, self.hook_headers(), HookCtx { to, then })
            .map_err(|(_, d)| refused_at_once(d))?;
        let ch = ctx.topics.intern(channel);
        let delta = (delta && ctx.cfg.policy.options(channel).delta == DeltaMode::Fossil)
            .then(|| ctx.deltas.join(&ch));
        // Pending from now on: an unsubscribe waits for it, a close drops
        // the decision (its connection is gone).
        self.push_sub(ch, tag, delta);
        Ok(tag)
    }

    fn subscribe_tagged(
        &mut self,
        ctx: &mut Ctx<'_>,
        channel: &str,
        since: Option<Position>,
        id: Option<&RawValue>,
        delta: bool,
        data: Option<&RawValue>,
    ) -> Result<Tag, OpError> {
        self.check_channel(ctx, channel)?;
        let proxy = Self::proxied(
            ctx,
            Hook::Subscribe,
            ctx.cfg.policy.options(channel).subscribe_proxy,
        );
        // In a subscribe-proxy namespace the backend decides, for token
        // and anonymous connections alike (docs/hooks.md, "JWT and
        // proxies"); elsewhere the token's patterns.
        if proxy.is_none() && !ctx.cfg.auth.may_subscribe(self.access(), channel) {
            return Err(OpError::PermissionDenied);
        }
        if self.find(channel).is_some() {
            return Err(OpError::AlreadySubscribed);
        }
        if self.subs.len() >= ctx.cfg.max_channels {
            return Err(OpError::TooManyChannels(ctx.cfg.max_channels));
        }
        let (rate, burst) = (ctx.cfg.channel_rate, ctx.cfg.max_channels);
        self.channel_rate
            .take(rate, burst, coarse_now_ms(), ctx.counts, &self.me.client())?;
        if let Some(proxy) = proxy {
            return self.ask_subscribe(ctx, proxy, channel, since, id, delta, data);
        }
        let ch = ctx.topics.intern(channel);
        let (to, tag) = ctx.reply_to(id);
        // Deltas where the namespace allows them; elsewhere whole
        // publications, and a reply without `"delta":true` (as Centrifugo).
        let delta = (delta && ctx.cfg.policy.options(channel).delta == DeltaMode::Fossil)
            .then(|| ctx.deltas.join(&ch));
        self.push_sub(ch.clone(), tag, delta);
        let info = self.take_chan_info(channel);
        let member = Some(self.member(info));
        ctx.broker
            .subscribe(ctx.worker, ch, since, member, SubFlags::NONE, to);
        Ok(tag)
    }

    /// Leave subscription `i`.
    fn leave(&mut self, ctx: &mut Ctx<'_>, i: usize) {
        let sub = self.remove_sub(ctx, i);
        if let Some(r) = self.rare.as_mut() {
            r.replays.stop(&sub.channel);
            self.tidy_rare();
        }
        match sub.state() {
            // Its answer, when it comes, is this session's no more: the
            // worker undoes it (presence included).
            SubState::Pending(_) => {}
            SubState::Answered(_) | SubState::Active => {
                ctx.topics.remove(&sub.channel, ctx.conn);
                ctx.broker
                    .unsubscribe(ctx.worker, &sub.channel, Some(&self.me), sub.flags());
            }
        }
    }

    /// A publication (or presence event) for `channel` while
    /// [`Session::holding`]: kept behind its subscription's reply if that
    /// reply waits, within `room` bytes.
    pub fn divert(&mut self, channel: &str, frame: &Frame, room: usize) -> Divert {
        let Some(SubState::Answered(tag)) = self.find(channel).map(|i| self.subs[i].state()) else {
            return Divert::No;
        };
        let p = self.pipe();
        if p.bytes() + frame.len() > room {
            return Divert::Full;
        }
        if p.append(tag, Piece::Frame(frame.clone())) {
            Divert::Held
        } else {
            Divert::No
        }
    }

    /// The server drops a channel for this connection (drop policy): the
    /// notice telling the client the last offset it was sent, so that it
    /// can resubscribe with `since` and recover. `None` when there is
    /// nothing to write now: not subscribed, or the notice went behind the
    /// subscription's reply, which still waits.
    pub fn drop_channel(&mut self, ctx: &mut Ctx<'_>, channel: &str, last: u64) -> Option<Notice> {
        let i = self.find(channel)?;
        let state = self.subs[i].state();
        let channel = self.subs[i].channel.clone();
        self.leave(ctx, i);
        let notice = Notice::Dropped {
            channel,
            offset: last,
        };
        match state {
            // After the subscription's reply, which still waits.
            SubState::Answered(tag) => {
                self.pipe().append(tag, Piece::Json(notice.to_json()));
                None
            }
            _ => Some(notice),
        }
    }

    /// A subscribe proxy granted subscription `i` until `at` (Unix s).
    fn grant_until(&mut self, i: usize, at: Option<u64>) {
        if let Some(at) = at {
            let ch = self.subs[i].channel.clone();
            self.rare().sub_expiry.push((ch, at.saturating_mul(1000)));
        }
    }

    /// When the first granted subscription ends (Unix ms), if any does.
    pub fn next_sub_expiry(&self) -> Option<u64> {
        let r = self.rare.as_ref()?;
        r.sub_expiry.iter().map(|(_, at)| *at).min()
    }

    /// End the subscriptions whose grant ran out by `now` (Unix ms): each
    /// is left, with an `unsubscribed` notice (code 8: the backend's
    /// permission lapsed; subscribing again asks it again). A notice whose
    /// subscription's reply still waits goes after that reply; the others
    /// are returned, to be written now.
    pub fn expire_subs(&mut self, ctx: &mut Ctx<'_>, now: u64) -> Vec<Notice> {
        let mut due = Vec::new();
        if let Some(r) = self.rare.as_mut() {
            r.sub_expiry.retain(|(c, at)| {
                if *at <= now {
                    due.push(c.clone());
                }
                *at > now
            });
        }
        let mut now_notices = Vec::new();
        for channel in due {
            let Some(i) = self.find(&channel) else {
                continue;
            };
            let state = self.subs[i].state();
            self.leave(ctx, i);
            log::debug!(
                "client {}: the subscribe proxy's grant of {channel:?} ran out",
                self.client()
            );
            let notice = Notice::Unsubscribed {
                channel,
                error: OpError::PermissionDenied,
            };
            match state {
                SubState::Answered(tag) => {
                    self.pipe().append(tag, Piece::Json(notice.to_json()));
                }
                _ => now_notices.push(notice),
            }
        }
        now_notices
    }

    /// The subscription whose subscribe waits for the answer `tag`.
    fn waiting_for(&self, tag: Tag) -> Option<usize> {
        self.subs
            .iter()
            .position(|s| s.state() == SubState::Pending(tag))
    }

    /// A listening session's subscribe answered: `Err` gives back an answer
    /// that is not one this session waits for (the caller undoes it).
    pub fn joined(
        &mut self,
        ctx: &mut Ctx<'_>,
        tag: Tag,
        body: ReplyBody,
    ) -> Result<Joined, ReplyBody> {
        let body = match body {
            ReplyBody::Hook(answer) => return self.joined_hook(ctx, tag, answer),
            body => body,
        };
        let ReplyBody::Subscribed {
            channel,
            client,
            flags,
            result,
        } = body
        else {
            return Err(body);
        };
        let Some(i) = self.waiting_for(tag) else {
            return Err(ReplyBody::Subscribed {
                channel,
                client,
                flags,
                result,
            });
        };
        let channel = self.subs[i].channel.clone();
        Ok(match result {
            Ok(answer) => {
                self.subs[i].set_state(SubState::Active);
                Joined::Subscribed {
                    channel,
                    answer: Box::new(answer),
                }
            }
            Err(error) => {
                self.take_sub(i);
                Joined::Refused { channel, error }
            }
        })
    }

    /// The subscribe proxy decided a listening session's subscribe: on to
    /// the broker, or refused. A `disconnect` refuses the channel with its
    /// code (a stream has no close code to give).
    fn joined_hook(
        &mut self,
        ctx: &mut Ctx<'_>,
        tag: Tag,
        answer: Box<HookAnswer>,
    ) -> Result<Joined, ReplyBody> {
        let Some(i) = self.waiting_for(tag) else {
            return Err(ReplyBody::Hook(answer));
        };
        let HookAnswer { decision, then } = *answer;
        let error = match (decision, then) {
            (Decision::Subscribe(SubscribeDecision::Allow(grant)), Then::Subscribe { since }) => {
                self.grant_until(i, grant.expire_at);
                self.subs[i].set_flags(SubFlags::new(grant.presence, grant.join_leave));
                self.subscribe_allowed(ctx, i, tag, None, since, grant.info);
                return Ok(Joined::Asked);
            }
            (Decision::Subscribe(SubscribeDecision::Refuse(r)), _) => refusal_error(r),
            (Decision::Subscribe(SubscribeDecision::Disconnect(d)), _) => OpError::Backend {
                code: d.code,
                message: d.reason,
                temporary: d.code < 4500,
            },
            (other, _) => OpError::BackendUnavailable(format!("unexpected decision {other:?}")),
        };
        let channel = self.remove_sub(ctx, i).channel;
        Ok(Joined::Refused { channel, error })
    }

    /// The subscribe proxy allowed subscription `i`: on to the broker with
    /// the same tag (its answer is matched as any subscribe's), present
    /// with the grant's `info` (else the connect answer's for it).
    fn subscribe_allowed(
        &mut self,
        ctx: &mut Ctx<'_>,
        i: usize,
        tag: Tag,
        id: Option<&RawValue>,
        since: Option<Position>,
        info: Option<Json>,
    ) {
        let to = ReplyTo {
            worker: ctx.worker,
            conn: ctx.conn,
            id: id.map(ToOwned::to_owned),
            tag,
        };
        let ch = self.subs[i].channel.clone();
        let info = info.or_else(|| self.take_chan_info(&ch));
        let member = Some(self.member(info));
        let flags = self.subs[i].flags();
        ctx.broker
            .subscribe(ctx.worker, ch, since, member, flags, to);
    }

    /// A backend hook's decision for an op of the pipeline: `None` when
    /// the op went on to the broker (its slot still waits), else its
    /// reply's pieces.
    fn on_hook(
        &mut self,
        ctx: &mut Ctx<'_>,
        tag: Tag,
        id: Option<&RawValue>,
        answer: HookAnswer,
    ) -> Option<Vec<Piece>> {
        if let Some(i) = self.waiting_for(tag) {
            // A subscribe (its subscription pending since it was asked).
            let HookAnswer { decision, then } = answer;
            match (decision, then) {
                (
                    Decision::Subscribe(SubscribeDecision::Allow(grant)),
                    Then::Subscribe { since },
                ) => {
                    if let Some(data) = grant.data {
                        self.rare().granted.push((tag, data));
                    }
                    self.grant_until(i, grant.expire_at);
                    self.subs[i].set_flags(SubFlags::new(grant.presence, grant.join_leave));
                    self.subscribe_allowed(ctx, i, tag, id, since, grant.info);
                    return None;
                }
                (decision, then) => {
                    self.remove_sub(ctx, i);
                    let applied = apply_hook(ctx, tag, id, HookAnswer { decision, then });
                    return self.applied(ctx, id, applied);
                }
            }
        }
        let applied = apply_hook(ctx, tag, id, answer);
        if matches!(applied, Applied::Broker) {
            self.pipe().reask(tag, Asked::Publish);
        }
        self.applied(ctx, id, applied)
    }

    fn applied(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: Option<&RawValue>,
        a: Applied,
    ) -> Option<Vec<Piece>> {
        match a {
            Applied::Broker => None,
            Applied::Reply(Reply::Error(e)) => Some(self.ready_error(ctx, id, &e)),
            Applied::Reply(r) => Some(vec![Piece::Json(r.to_json(id))]),
            Applied::Disconnect(d) => {
                log::info!(
                    "client {}: the backend disconnects it ({} {})",
                    self.client(),
                    d.code,
                    d.reason
                );
                self.rare().disconnect = Some(d);
                Some(Vec::new())
            }
        }
    }

    /// Queue a subscribe answer's replay as room allows (`paced`: the rest
    /// is read as the queue drains; otherwise a long-poll takes what fits,
    /// [`Begin::Cut`]). The subscriber joins the worker's index once its
    /// replay is live.
    pub fn begin_replay<S: Sink + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_>,
        channel: &Arc<str>,
        answer: &Subscribed,
        paced: bool,
        sink: &mut S,
    ) -> Begin {
        let cap = ctx.cfg.max_queued_bytes;
        // No `Rare` for a replay that ends at once (the usual case).
        let mut replays = match self.rare.as_mut() {
            Some(r) => std::mem::take(&mut r.replays),
            None => Replays::default(),
        };
        let begin = replays.begin(channel, answer, cap, paced, sink);
        if !replays.is_empty() {
            self.rare().replays = replays;
        }
        if begin == Begin::Live {
            ctx.topics.add(channel, ctx.conn);
        }
        begin
    }

    /// A broker answer for this connection. `Err` gives back an answer that
    /// is not this session's (for a request it no longer waits for): the
    /// worker undoes it.
    pub fn on_reply<O: ReplySink + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_>,
        tag: Tag,
        id: Option<&RawValue>,
        body: ReplyBody,
        out: &mut O,
    ) -> Result<(), ReplyBody> {
        let pieces = match body {
            ReplyBody::Subscribed {
                channel,
                client,
                flags,
                result,
            } => {
                let Some(i) = self.waiting_for(tag) else {
                    return Err(ReplyBody::Subscribed {
                        channel,
                        client,
                        flags,
                        result,
                    });
                };
                let channel = self.subs[i].channel.clone();
                match result {
                    Ok(s) => {
                        self.subs[i].set_state(SubState::Answered(tag));
                        let reply = Reply::Subscribed {
                            channel: channel.clone(),
                            position: s.position.clone(),
                            recovered: s.recovered,
                            delta: self.subs[i].delta(),
                        };
                        let mut json = reply.to_json(id);
                        if let Some(data) = self.take_granted(tag) {
                            // The subscribe proxy's `data`, in the reply.
                            json.pop();
                            json.extend_from_slice(b",\"data\":");
                            json.extend_from_slice(data.get().as_bytes());
                            json.push(b'}');
                        }
                        let mut pieces = vec![Piece::Json(json)];
                        if s.replay_after.is_none() {
                            // The whole gap (at most half the out-queue cap)
                            // is here: in the index now, so that nothing
                            // published after the answer's position is
                            // missed; written (reply, replay, then what
                            // arrived meanwhile) in its turn.
                            ctx.topics.add(&channel, ctx.conn);
                            pieces.extend(s.replay.into_iter().map(Piece::Frame));
                        } else {
                            // A long gap: read from the history a part at a
                            // time once the reply is written, paced by the
                            // out queue (gateway::replay); in the index once
                            // it has caught up.
                            pieces.push(Piece::Replay(channel, Box::new(s)));
                        }
                        pieces
                    }
                    Err(e) => {
                        self.take_granted(tag);
                        self.remove_sub(ctx, i);
                        self.ready_error(ctx, id, &e)
                    }
                }
            }
            ReplyBody::Hook(answer) if self.waits_for(tag) => {
                match self.on_hook(ctx, tag, id, *answer) {
                    Some(pieces) => pieces,
                    // On to the broker: the slot waits for its answer.
                    None => return Ok(()),
                }
            }
            body @ (ReplyBody::Published(_) | ReplyBody::Presence(_) | ReplyBody::History(_))
                if self.waits_for(tag) =>
            {
                match Reply::from_answer(body)? {
                    Reply::Error(e) => self.ready_error(ctx, id, &e),
                    reply => vec![Piece::Json(reply.to_json(id))],
                }
            }
            other => return Err(other),
        };
        let answered = self.pipe().answer(tag, pieces);
        debug_assert!(answered, "a slot waits for every tag asked");
        self.flush(ctx, out);
        self.resume(ctx, out);
        Ok(())
    }

    fn take_granted(&mut self, tag: Tag) -> Option<Json> {
        let g = &mut self.rare.as_mut()?.granted;
        let i = g.iter().position(|(t, _)| *t == tag)?;
        Some(g.swap_remove(i).1)
    }

    fn waits_for(&self, tag: Tag) -> bool {
        self.pipeline().is_some_and(|p| p.waits_for(tag))
    }

    fn ready_error(&self, ctx: &mut Ctx<'_>, id: Option<&RawValue>, e: &OpError) -> Vec<Piece> {
        match self.error(ctx, id, e) {
            Outcome::Ready(p) => p,
            Outcome::Waiting(..) => Vec::new(),
        }
    }

    /// Write the answered slots at the head, in order.
    fn flush<O: ReplySink + ?Sized>(&mut self, ctx: &mut Ctx<'_>, out: &mut O) {
        let Some(rare) = self.rare.as_deref_mut() else {
            return;
        };
        let Some(p) = rare.pipeline.as_mut() else {
            return;
        };
        while let Some((tag, pieces)) = p.pop_answered() {
            for piece in pieces {
                match piece {
                    Piece::Json(j) => send_json(out, ctx.counts, &j),
                    // Compressed for the connection when permessage-deflate is on.
                    Piece::Frame(f) => out.publication(&f),
                    Piece::Replay(channel, s) => {
                        // Borrows beside the pipeline: `begin_replay`'s body.
                        let cap = ctx.cfg.max_queued_bytes;
                        if rare.replays.begin(&channel, &s, cap, true, out) == Begin::Live {
                            ctx.topics.add(&channel, ctx.conn);
                        }
                    }
                }
            }
            if let Some(s) = tag.and_then(|t| {
                self.subs
                    .iter_mut()
                    .find(|s| s.state() == SubState::Answered(t))
            }) {
                s.set_state(SubState::Active);
            }
        }
        if p.is_empty() {
            self.end_pipeline();
        }
    }

    /// Dispatch the held ops whose turn has come.
    fn resume<O: ReplySink + ?Sized>(&mut self, ctx: &mut Ctx<'_>, out: &mut O) {
        while let Some(op) = self
            .rare
            .as_mut()
            .and_then(|r| r.pipeline.as_mut())
            .and_then(|p| p.take_held())
        {
            if !self.run(ctx, op.text, &op.data, out) {
                self.pipe().unhold(op);
                break;
            }
        }
        self.flush(ctx, out);
    }

    /// The connection is gone: publishes it sent that were still held go to
    /// the broker (they were accepted; nobody waits for their replies),
    /// except in a `publish_proxy` namespace: the backend never judged
    /// them, and a publish waiting at the proxy is dropped with its
    /// connection too (as Centrifugo drops it with its client). Every
    /// channel is left.
    pub fn close(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(p) = self.end_pipeline() {
            for op in p.into_held() {
                if let Ok((
                    _,
                    Op::Publish {
                        channel,
                        data,
                        opts,
                    },
                )) = ops::parse(&op.data)
                {
                    let hooked = ctx.cfg.policy.options(&channel).publish_proxy;
                    if Self::proxied(ctx, Hook::Publish, hooked).is_some() {
                        log::debug!(
                            "client {}: closed with a publish to {channel:?} the publish proxy \
                             never judged: dropped",
                            self.client()
                        );
                        continue;
                    }
                    if op.text && self.may_publish(ctx, &channel, data).is_ok() {
                        let opts = crate::broker::PublishOptions {
                            idempotency_key: opts.idempotency_key.map(Into::into),
                            // Its connection is gone: nobody to exclude.
                            exclude_client: None,
                            skip_history: opts.skip_history,
                            event_from: self.event_from(ctx, &channel),
                        };
                        ctx.broker.publish(ctx.worker, &channel, data, &opts, None);
                    }
                }
            }
        }
        while !self.subs.is_empty() {
            self.leave(ctx, self.subs.len() - 1);
        }
        // A long-poll request ends; its client has not disconnected.
        if self.connection {
            // No close frame seen or sent: abnormal closure (RFC 6455 §7.1.5).
            let code = self.close_code.unwrap_or(1006);
            let reason = self
                .rare
                .as_ref()
                .and_then(|r| r.close_reason.as_deref())
                .unwrap_or("");
            ctx.broker
                .events()
                .disconnected(&self.client(), self.user(), code, reason);
        }
        if std::mem::take(&mut self.online) {
            if let Some(u) = self.user() {
                ctx.broker.user_down(ctx.worker, u);
            }
        }
    }
}

// --- the live handoff (issue 17) ---

/// A `/ws` session read back from its frozen state, before a worker
/// takes it ([`Session::thawed`]).
#[derive(Debug)]
pub struct FrozenSession {
    transport: Transport,
    client: String,
    user: Option<String>,
    access: Access,
    /// Milliseconds left until the token expires (0: expired meanwhile).
    expires_in_ms: Option<u64>,
    hook_headers: Vec<(String, String)>,
    /// Each subscription and where it stood.
    subs: Vec<(String, Position)>,
}

impl Session {
    /// Write the session for the next process, or say why it stays. It
    /// moves only at rest: no op unanswered, no replay being read, every
    /// subscription answered and live, none with Fossil deltas (their
    /// cursors are the worker's), and each channel's position known
    /// (`topics`). A rate bucket and the subscribe rate start afresh.
    pub fn freeze(
        &self,
        position: &dyn Fn(&str) -> Option<Position>,
        now: u64,
        w: &mut StateWriter<'_>,
    ) -> Result<(), &'static str> {
        if self.pipeline().is_some() {
            return Err("ops unanswered");
        }
        if self.replaying() {
            return Err("a replay is being read");
        }
        if let Some(r) = &self.rare {
            if r.disconnect.is_some() || !r.granted.is_empty() {
                return Err("a backend decision is being applied");
            }
            if !r.cursors.is_empty() {
                return Err("a subscription with Fossil deltas");
            }
            // What the connect, refresh and subscribe proxies gave this
            // session is not in the frozen layout yet: such a session
            // stays (drained with 4000) rather than move without it.
            if r.meta.is_some()
                || !r.chan_infos.is_empty()
                || r.proxy_expiry
                || r.refreshing.is_some()
                || !r.sub_expiry.is_empty()
            {
                return Err("state from a backend proxy");
            }
        }
        if self.me.info().is_some() {
            return Err("state from a backend proxy");
        }
        let transport = self
            .rare
            .as_ref()
            .and_then(|r| r.transport)
            .unwrap_or(Transport::WebSocket);
        if !matches!(transport, Transport::WebSocket | Transport::Sse) {
            return Err("not a long-lived connection's session");
        }
        if !self.connection {
            return Err("not a connection's session");
        }
        let mut subs = Vec::with_capacity(self.subs.len());
        for s in self.subs.iter() {
            if s.state() != SubState::Active {
                return Err("a subscription not answered yet");
            }
            // A subscribe grant's overrides are not in the frozen layout
            // either: moved without them, the subscription's leave would
            // not match its join.
            if s.flags() != SubFlags::NONE {
                return Err("state from a backend proxy");
            }
            let p = position(&s.channel).ok_or("a subscription whose position is not known")?;
            subs.push((&*s.channel, p));
        }
        w.u8(match transport {
            Transport::Sse => 1,
            _ => 0,
        });
        w.str(&self.me.client());
        w.opt_str(self.me.user());
        match self.access() {
            Access::Open => w.u8(0),
            Access::Anonymous => w.u8(1),
            Access::User(g) => {
                w.u8(2);
                w.str(g.user());
                w.u64(g.exp());
                for list in [g.subs().collect::<Vec<_>>(), g.pubs().collect()] {
                    w.u32(list.len() as u32);
                    for p in list {
                        w.str(p);
                    }
                }
            }
        }
        w.opt_u64(self.expires_at_ms().map(|at| at.saturating_sub(now)));
        let headers = self.hook_headers();
        w.u32(headers.len() as u32);
        for (k, v) in &headers {
            w.str(k);
            w.str(v);
        }
        w.positions(subs.iter().map(|(c, p)| (*c, p)));
        Ok(())
    }

    /// Read what [`Session::freeze`] wrote (bounded: each count is
    /// checked against the bytes left).
    pub fn thaw(r: &mut StateReader<'_>) -> Result<FrozenSession, StateError> {
        let transport = match r.u8()? {
            0 => Transport::WebSocket,
            1 => Transport::Sse,
            _ => return Err(StateError::Invalid("transport")),
        };
        let client = r.string()?;
        let user = r.opt_string()?;
        let access = match r.u8()? {
            0 => Access::Open,
            1 => Access::Anonymous,
            2 => {
                let user = r.string()?;
                let exp = r.u64()?;
                let mut lists = [Vec::new(), Vec::new()];
                for list in &mut lists {
                    let n = r.u32()? as usize;
                    if n > r.0.len() / 4 {
                        return Err(StateError::Truncated);
                    }
                    for _ in 0..n {
                        list.push(r.string()?);
                    }
                }
                let [subs, pubs] = lists;
                Access::User(crate::auth::Grants::new(&user, exp, &subs, &pubs))
            }
            _ => return Err(StateError::Invalid("access")),
        };
        let expires_in_ms = r.opt_u64()?;
        let n = r.u32()? as usize;
        if n > r.0.len() / 8 {
            return Err(StateError::Truncated);
        }
        let mut hook_headers = Vec::with_capacity(n);
        for _ in 0..n {
            hook_headers.push((r.string()?, r.string()?));
        }
        let subs = r.positions()?;
        Ok(FrozenSession {
            transport,
            client,
            user,
            access,
            expires_in_ms,
            hook_headers,
            subs,
        })
    }

    /// The session in the worker that took its connection: counted in its
    /// user's presence again, and each subscription asked again from its
    /// position (joining presence again), so that what was published
    /// meanwhile comes as the recovered gap, neither lost nor doubled.
    /// Those answers are the session's own ([`Session::resumed`]), not a
    /// reply the client waits for.
    pub fn thawed(f: FrozenSession, ctx: &mut Ctx<'_>, now: u64) -> Session {
        let mut s = Session::new(f.client, f.user);
        s.set_access(f.access);
        s.set_expires_at_ms(f.expires_in_ms.map(|d| now + d));
        s.set_hook_client(f.transport, f.hook_headers);
        s.announce(ctx);
        for (channel, since) in f.subs {
            let ch = ctx.topics.intern(&channel);
            let tag = ctx.tags.fresh();
            s.push_sub(ch.clone(), tag, None);
            s.rare().resuming.push(tag);
            let to = ReplyTo {
                worker: ctx.worker,
                conn: ctx.conn,
                id: None,
                tag,
            };
            ctx.broker.subscribe(
                ctx.worker,
                ch,
                Some(since),
                Some(s.me.clone()),
                SubFlags::NONE,
                to,
            );
        }
        s
    }

    /// Is `tag` the answer to a subscription asked again after a handoff?
    pub fn resuming(&self, tag: Tag) -> bool {
        self.rare
            .as_ref()
            .is_some_and(|r| r.resuming.contains(&tag))
    }

    /// The answer to a subscription asked again after a handoff
    /// ([`Session::resuming`]): as a listening session's ([`Session::joined`]).
    pub fn resumed(
        &mut self,
        ctx: &mut Ctx<'_>,
        tag: Tag,
        body: ReplyBody,
    ) -> Result<Joined, ReplyBody> {
        if let Some(r) = self.rare.as_mut() {
            r.resuming.retain(|t| *t != tag);
        }
        self.joined(ctx, tag, body)
    }

    /// The connection moved to the next process: forget the session here
    /// without a word to the broker (no leave, no presence change, no
    /// `client_disconnected`): only this worker's index lets it go.
    pub fn forget(&mut self, ctx: &mut Ctx<'_>) {
        for s in std::mem::take(&mut self.subs).iter() {
            ctx.topics.remove(&s.channel, ctx.conn);
        }
        self.online = false;
        self.connection = false;
    }
}

/// Milliseconds on a process-wide monotonic clock (for rate limits).
fn coarse_now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-session and per-subscription state docs/density.md counts:
    /// a regression in either fails here.
    #[test]
    fn session_state_is_small() {
        let sizes = [
            ("Session", std::mem::size_of::<Session>()),
            ("Sub", std::mem::size_of::<Sub>()),
            ("ChannelRate", std::mem::size_of::<ChannelRate>()),
            ("Replays", std::mem::size_of::<Replays>()),
            ("Access", std::mem::size_of::<Access>()),
            ("Member", std::mem::size_of::<Member>()),
            ("Subs", std::mem::size_of::<Subs>()),
            ("Rare", std::mem::size_of::<Rare>()),
        ];
        eprintln!("{sizes:?}");
        assert_eq!(std::mem::size_of::<Sub>(), 24, "{sizes:?}");
        assert_eq!(std::mem::size_of::<ChannelRate>(), 8, "{sizes:?}");
        assert_eq!(std::mem::size_of::<Replays>(), 8, "{sizes:?}");
        assert_eq!(std::mem::size_of::<Member>(), 8, "{sizes:?}");
        // The first subscription inline (issue 13 part 4).
        assert_eq!(std::mem::size_of::<Subs>(), 24, "{sizes:?}");
        // 56 bytes with the first subscription in it (issue 13 part 5: the
        // pipeline and the replays moved into `Rare`): malloc's chunk is 64
        // (8 B header, 16-byte rounding), where 64 or 72 bytes take an
        // 80-byte chunk (part 4's 72 B fails here).
        assert!(std::mem::size_of::<Session>() <= 56, "{sizes:?}");
    }

    /// One subscription lives inline, more in one exact block; removals
    /// in any order keep the rest (swap_remove's order) and go back
    /// inline at one.
    #[test]
    fn subs_hold_one_inline_and_more_in_a_block() {
        let sub = |name: &str| Sub::new(name.into(), Tag(1), false);
        let names = |s: &Subs| s.iter().map(|s| s.channel.to_string()).collect::<Vec<_>>();
        let mut s = Subs::default();
        assert!(s.is_empty());
        s.push(sub("a"));
        assert!(matches!(s, Subs::One(_)), "{s:?}");
        s.push(sub("b"));
        s.push(sub("c"));
        assert_eq!(names(&s), ["a", "b", "c"]);
        assert_eq!(&*s.swap_remove(0).channel, "a");
        assert_eq!(names(&s), ["c", "b"]);
        s[1].set_state(SubState::Active);
        assert_eq!(&*s.swap_remove(0).channel, "c");
        assert!(matches!(s, Subs::One(_)), "{s:?}");
        assert_eq!(
            (names(&s), s[0].state()),
            (vec!["b".to_string()], SubState::Active)
        );
        assert_eq!(&*s.swap_remove(0).channel, "b");
        assert!(s.is_empty());
        assert!(matches!(&s, Subs::Many(m) if m.is_empty()));
        s.push(sub("d"));
        assert_eq!(names(&s), ["d"]);
    }

    #[test]
    fn a_sub_keeps_its_state_tag_and_delta_flag() {
        let ch: Arc<str> = "chat".into();
        for delta in [false, true] {
            let big = Tag((1 << 57) - 1);
            let mut s = Sub::new(ch.clone(), big, delta);
            assert_eq!((s.state(), s.delta()), (SubState::Pending(big), delta));
            s.set_state(SubState::Answered(Tag(7)));
            assert_eq!((s.state(), s.delta()), (SubState::Answered(Tag(7)), delta));
            s.set_state(SubState::Active);
            assert_eq!((s.state(), s.delta()), (SubState::Active, delta));
            s.set_state(SubState::Pending(Tag(1)));
            assert_eq!((s.state(), s.delta()), (SubState::Pending(Tag(1)), delta));
            // A grant's overrides beside them, kept across state changes.
            let f = SubFlags::new(Some(false), Some(true));
            s.set_flags(f);
            s.set_state(SubState::Pending(big));
            assert_eq!(
                (s.state(), s.delta(), s.flags()),
                (SubState::Pending(big), delta, f)
            );
            s.set_state(SubState::Active);
            assert_eq!(
                (s.state(), s.delta(), s.flags()),
                (SubState::Active, delta, f)
            );
        }
    }

    /// A subscription holding a grant's overrides keeps its session in the
    /// old process (drained with 4000) in a live handoff: the frozen layout
    /// has no place for them, and moved without them its leave would not
    /// match its join.
    #[test]
    fn a_session_with_a_grants_overrides_stays_in_a_handoff() {
        let position = |_: &str| {
            Some(Position {
                epoch: "e".into(),
                offset: 3,
            })
        };
        let at_rest = |flags: SubFlags| {
            let mut s = Session::new("c1".into(), None);
            s.connection = true;
            let mut sub = Sub::new("chat".into(), Tag(1), false);
            sub.set_state(SubState::Active);
            sub.set_flags(flags);
            s.subs.push(sub);
            let mut out = Vec::new();
            s.freeze(&position, 0, &mut StateWriter(&mut out))
                .map(|()| out.len())
        };
        assert!(matches!(at_rest(SubFlags::NONE), Ok(n) if n > 0));
        for f in [
            SubFlags::new(Some(false), None),
            SubFlags::new(None, Some(true)),
        ] {
            assert_eq!(at_rest(f), Err("state from a backend proxy"), "{f:?}");
        }
    }
}
