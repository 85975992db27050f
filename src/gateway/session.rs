//! A `/ws` connection's session: its identity, its channels, and what it
//! does with each op and each broker answer.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use mio::Token;
use serde_json::json;
use serde_json::value::RawValue;

use super::channel_rate::ChannelRate;
use super::error::OpError;
use super::ops::{self, Op};
use super::replay::{Begin, Replays, StreamSink, WsSink};
use super::GatewayConfig;
use crate::auth::Access;
use crate::broker::{Broker, ReplyBody, ReplyTo};
use crate::http::metrics::Stats;
use crate::http::stream::{Kind, StreamState};
use crate::proto::Output;
use crate::pubsub::presence::Member;
use crate::pubsub::topics::Topics;
use crate::pubsub::{user_channel, valid_channel, Position};
use crate::server::admission::Bucket;

/// One subscription: `active` once the broker's answer was handled (from
/// then on the connection is in the worker's [`Topics`]).
#[derive(Debug)]
pub struct Sub {
    pub channel: Arc<str>,
    pub active: bool,
}

#[derive(Debug)]
pub struct Session {
    /// This connection's id (presence identity when there is no user).
    pub client: String,
    /// The authenticated user, if any.
    pub user: Option<String>,
    pub subs: Vec<Sub>,
    /// SSE and long-poll sessions write differently (none for WebSocket).
    pub stream: Option<Box<StreamState>>,
    /// What the connection's token allows (open mode: everything).
    pub access: Access,
    /// A `refresh` op replaced the token: the worker re-arms the expiry.
    pub refreshed: bool,
    /// When the token expires, on the worker's clock (ms).
    pub expires_at_ms: Option<u64>,
    /// Messages per second (admission control), when limited.
    bucket: Option<Bucket>,
    /// Over the message rate: the worker closes the connection (1008).
    pub rate_exceeded: bool,
    /// Subscribes per second (`limits.channel_rate`).
    channel_rate: ChannelRate,
    /// Replays still being read, paced by the out queue.
    pub replays: Replays,
}

/// What a session needs from its worker.
pub struct Ctx<'a> {
    pub worker: usize,
    pub token: Token,
    pub broker: &'a dyn Broker,
    pub topics: &'a mut Topics,
    pub cfg: &'a GatewayConfig,
    pub stats: &'a Stats,
}

impl Ctx<'_> {
    fn reply_to(&self, id: Option<&RawValue>) -> ReplyTo {
        ReplyTo {
            worker: self.worker,
            token: self.token,
            id: id.map(|r| r.to_owned()),
        }
    }
}

/// Send a JSON text frame.
pub fn send_json<O: Output + ?Sized>(out: &mut O, stats: &Stats, json: &[u8]) {
    // Compressed when the connection negotiated permessage-deflate and
    // `out` is its `proto::Sender`.
    out.put_message(true, json);
    stats.messages_out.fetch_add(1, Ordering::Relaxed);
}

impl Session {
    pub fn new(client: String, user: Option<String>) -> Session {
        Session {
            client,
            user,
            subs: Vec::new(),
            stream: None,
            access: Access::Open,
            refreshed: false,
            expires_at_ms: None,
            bucket: None,
            rate_exceeded: false,
            channel_rate: ChannelRate::default(),
            replays: Replays::default(),
        }
    }

    fn member(&self) -> Member {
        Member {
            client: self.client.clone(),
            user: self.user.clone(),
        }
    }

    fn find(&self, channel: &str) -> Option<usize> {
        self.subs.iter().position(|s| &*s.channel == channel)
    }

    /// Subscribe to the user's personal channel (done at connect).
    pub fn join_personal(&mut self, ctx: &mut Ctx<'_>, since: Option<Position>) -> bool {
        if let Some(u) = &self.user {
            let ch: Arc<str> = user_channel(u).into();
            self.subs.push(Sub {
                channel: ch.clone(),
                active: false,
            });
            ctx.broker
                .subscribe(ctx.worker, ch, since, None, ctx.reply_to(None));
            return true;
        }
        false
    }

    /// A message from the client.
    pub fn on_message<O: Output + ?Sized>(
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
                .bucket
                .get_or_insert_with(|| Bucket::full(rate * 2, now));
            if !b.take(now, rate, rate * 2) {
                self.rate_exceeded = true;
                return;
            }
        }
        if !text {
            let e = OpError::BadRequest("ops are JSON text frames".into());
            return self.fail(ctx, None, &e, out);
        }
        match ops::parse(data) {
            Ok((id, op)) => {
                if let Err(e) = self.on_op(ctx, id, op, out) {
                    self.fail(ctx, id, &e, out);
                }
            }
            Err((id, e)) => self.fail(ctx, id, &e, out),
        }
    }

    fn fail<O: Output + ?Sized>(
        &self,
        ctx: &Ctx<'_>,
        id: Option<&RawValue>,
        e: &OpError,
        out: &mut O,
    ) {
        log::debug!("client {}: {e}", self.client);
        ctx.stats.op_errors.fetch_add(1, Ordering::Relaxed);
        send_json(out, ctx.stats, &ops::error_reply(id, e));
    }

    fn on_op<O: Output + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: Option<&RawValue>,
        op: Op<'_>,
        out: &mut O,
    ) -> Result<(), OpError> {
        match op {
            Op::Subscribe { channel, since } => self.subscribe(ctx, &channel, since, id),
            Op::Unsubscribe { channel } => {
                let i = self.find(&channel).ok_or(OpError::NotSubscribed)?;
                self.leave(ctx, i);
                send_json(
                    out,
                    ctx.stats,
                    &ops::ok_reply(id, json!({ "channel": &*channel })),
                );
                Ok(())
            }
            Op::Publish { channel, data } => {
                self.check_channel(ctx, &channel)?;
                if !ctx.cfg.policy.options(&channel).client_publish
                    || !ctx.cfg.auth.may_publish(&self.access, &channel)
                {
                    return Err(OpError::PermissionDenied);
                }
                if data.get().len() > ctx.cfg.max_message {
                    return Err(OpError::TooBig(ctx.cfg.max_message));
                }
                ctx.broker
                    .publish(ctx.worker, &channel, data, Some(ctx.reply_to(id)));
                Ok(())
            }
            Op::Presence { channel } => {
                self.check_channel(ctx, &channel)?;
                if !ctx.cfg.policy.options(&channel).presence
                    || !ctx.cfg.auth.may_subscribe(&self.access, &channel)
                {
                    return Err(OpError::PermissionDenied);
                }
                ctx.broker.presence(ctx.worker, &channel, ctx.reply_to(id));
                Ok(())
            }
            Op::Refresh { token } => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let access = ctx
                    .cfg
                    .auth
                    .refresh(&self.access, &token, now)
                    .map_err(|e| e.op_error())?;
                let exp = access.exp();
                if self.user.is_none() {
                    self.user = access.user().map(str::to_string);
                }
                self.access = access;
                self.refreshed = true;
                send_json(out, ctx.stats, &ops::ok_reply(id, json!({ "exp": exp })));
                Ok(())
            }
            Op::Ping => {
                send_json(out, ctx.stats, &ops::ok_reply(id, json!({ "pong": true })));
                Ok(())
            }
        }
    }

    fn check_channel(&self, ctx: &Ctx<'_>, channel: &str) -> Result<(), OpError> {
        valid_channel(channel, ctx.cfg.max_channel_length).map_err(OpError::BadChannel)
    }

    /// Subscribe (from an op, or from `?channel=` at connect).
    pub fn subscribe(
        &mut self,
        ctx: &mut Ctx<'_>,
        channel: &str,
        since: Option<Position>,
        id: Option<&RawValue>,
    ) -> Result<(), OpError> {
        self.check_channel(ctx, channel)?;
        if !ctx.cfg.auth.may_subscribe(&self.access, channel) {
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
            .take(rate, burst, coarse_now_ms(), ctx.stats, &self.client)?;
        let ch: Arc<str> = channel.into();
        self.subs.push(Sub {
            channel: ch.clone(),
            active: false,
        });
        let member = Some(self.member());
        ctx.broker
            .subscribe(ctx.worker, ch, since, member, ctx.reply_to(id));
        Ok(())
    }

    /// Leave subscription `i`.
    fn leave(&mut self, ctx: &mut Ctx<'_>, i: usize) {
        let sub = self.subs.swap_remove(i);
        self.replays.stop(&sub.channel);
        if sub.active {
            ctx.topics.remove(&sub.channel, ctx.token);
        }
        // A pending subscription is undone when its answer arrives.
        if sub.active {
            ctx.broker
                .unsubscribe(ctx.worker, &sub.channel, Some(&self.client));
        }
    }

    /// The server drops a channel for this connection (drop policy): tell
    /// the client the last offset it was sent, so it can resubscribe with
    /// `since` and recover.
    pub fn drop_channel<O: Output + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_>,
        channel: &str,
        last: u64,
        out: &mut O,
    ) {
        if let Some(i) = self.find(channel) {
            self.leave(ctx, i);
            let notice = json!({ "channel": channel, "dropped": { "reason": "slow consumer", "offset": last } });
            send_json(
                out,
                ctx.stats,
                &serde_json::to_vec(&notice).expect("serializes"),
            );
        }
    }

    /// A broker answer for this connection.
    pub fn on_reply<O: Output + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: Option<&RawValue>,
        body: ReplyBody,
        out: &mut O,
    ) {
        match body {
            ReplyBody::Subscribed {
                channel, result, ..
            } => {
                let Some(i) = self.find(&channel).filter(|&i| !self.subs[i].active) else {
                    // Unsubscribed (or gone) while pending: undo.
                    if result.is_ok() {
                        ctx.broker
                            .unsubscribe(ctx.worker, &channel, Some(&self.client));
                    }
                    return;
                };
                let cap = ctx.cfg.max_queued_bytes;
                if let Some(st) = self.stream.as_mut() {
                    match result {
                        Ok(s) => {
                            self.subs[i].active = true;
                            st.on_subscribed(&channel, &s.position, s.recovered, out);
                            let paced = st.kind == Kind::Sse;
                            let mut sink = StreamSink { st, out };
                            match self.replays.begin(&channel, &s, cap, paced, &mut sink) {
                                Begin::Live => {
                                    ctx.topics.add(&channel, ctx.token);
                                }
                                Begin::Paced => {}
                                // A long-poll answers with what fits.
                                Begin::Cut => sink.st.cut(),
                            }
                        }
                        Err(e) => {
                            self.subs.swap_remove(i);
                            st.on_error(&channel, &e, out);
                        }
                    }
                    return;
                }
                match result {
                    Ok(s) => {
                        self.subs[i].active = true;
                        let fields = ops::subscribed_fields(&channel, &s.position, s.recovered);
                        send_json(out, ctx.stats, &ops::ok_reply(id, fields));
                        // The replay follows the reply, paced by the queue.
                        let mut sink = WsSink(out);
                        if self.replays.begin(&channel, &s, cap, true, &mut sink) == Begin::Live {
                            ctx.topics.add(&channel, ctx.token);
                        }
                    }
                    Err(e) => {
                        self.subs.swap_remove(i);
                        self.fail(ctx, id, &e, out);
                    }
                }
            }
            ReplyBody::Published(r) => match r {
                Ok(pos) => {
                    let fields = json!({ "epoch": pos.epoch, "offset": pos.offset });
                    send_json(out, ctx.stats, &ops::ok_reply(id, fields));
                }
                Err(e) => self.fail(ctx, id, &e, out),
            },
            ReplyBody::Presence(r) => match r {
                Ok(info) => {
                    let fields = serde_json::to_value(info).expect("serializes");
                    send_json(out, ctx.stats, &ops::ok_reply(id, fields));
                }
                Err(e) => self.fail(ctx, id, &e, out),
            },
            // Replay parts are the worker's (it knows the out queue).
            ReplyBody::History(_) | ReplyBody::PublishedBatch(_) | ReplyBody::Replay(_) => {
                log::warn!("unexpected broker answer for a WebSocket session");
            }
        }
    }

    /// The connection is gone: leave every channel.
    pub fn close(&mut self, ctx: &mut Ctx<'_>) {
        while !self.subs.is_empty() {
            self.leave(ctx, self.subs.len() - 1);
        }
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
