//! `/ws`: a gateway session over WebSocket. Ops arrive as text frames;
//! the session's replies, notices and publications go out through the
//! connection's `proto::Sender` (compressed when permessage-deflate is on),
//! which is the session's [`ReplySink`].

use log::warn;
use serde_json::value::RawValue;

use super::{failed, Effects, Env, Link};
use crate::auth::Access;
use crate::base::query::Query;
use crate::base::Frame;
use crate::broker::{ReplayChunk, ReplyBody, Tag};
use crate::gateway::replay::Step;
use crate::gateway::session::{send_json, Joined, Session};
use crate::gateway::sink::{Discard, ReplySink, Sink};
use crate::proto::{Event, Output, Sender};

impl<O: Output + ?Sized> Sink for Sender<'_, O> {
    fn queued(&self) -> usize {
        Output::queued(self)
    }

    fn frame(&mut self, _channel: &str, frame: &Frame) {
        self.put_frame(frame);
    }
}

impl<O: Output + ?Sized> ReplySink for Sender<'_, O> {
    fn message(&mut self, json: &[u8]) {
        self.send(true, json);
    }

    fn publication(&mut self, frame: &Frame) {
        self.put_frame(frame);
    }
}

/// The upgrade is answered: a session, its personal channel, and the
/// channels named in the URL (`?channel=a&channel=b`).
pub(super) fn open(
    env: &mut Env,
    link: &mut Link<'_>,
    query: Query<'_>,
    access: Access,
    user: Option<String>,
    hook_headers: Vec<(String, String)>,
) -> super::Endpoint {
    let mut s = Box::new(env.new_session(user, access));
    s.set_hook_client(crate::hooks::proxy::Transport::WebSocket, hook_headers);
    let (mut ctx, deflate) = env.ctx_deflate(link.key);
    let mut tx = link.proto.sender(link.out, deflate);
    // `&delta=fossil` was checked with the request (400 otherwise).
    let delta = crate::gateway::ops::delta_asked(query.value("delta").as_deref()).unwrap_or(false);
    s.start(&mut ctx, query.values("channel"), delta, &mut tx);
    super::Endpoint::Gateway(s)
}

/// Frames from the client: each whole text message is an op.
pub(super) fn handle_bytes(
    s: &mut Session,
    env: &mut Env,
    link: &mut Link<'_>,
    data: &mut [u8],
) -> (usize, Effects) {
    let now = env.now;
    let limits = env.cfg.limits;
    let (mut ctx, engine) = env.ctx_deflate(link.key);
    let result = link
        .proto
        .decode_with(data, now, &limits, engine, link.out, &mut |ev, tx| {
            if let Event::Close { code, reason } = &ev {
                // No code in the client's close frame: 1005 (RFC 6455 §7.1.5).
                s.note_close(code.unwrap_or(1005), reason);
            }
            if let Event::Message { text, data } = ev {
                ctx.counts.messages_in += 1;
                s.on_message(&mut ctx, text, data, tx);
            }
        });
    let used = match result {
        Ok(used) => used,
        Err(e) => {
            // The close frame `failed` sends (when the connection is still
            // open: else the earlier close counts), for
            // `client_disconnected`.
            if let (Some(code), true) = (e.close_code(), link.proto.is_open()) {
                s.note_close(code, e.reason());
            }
            failed(link, now, ctx.counts, e, data.len())
        }
    };
    if s.rate_exceeded {
        s.rate_exceeded = false;
        ctx.counts.rate_limited += 1;
        warn!(
            "connection {:?}: message rate exceeded: close 1008",
            link.key
        );
        s.note_close(crate::proto::error::code::POLICY, "message rate exceeded");
        link.proto.close(
            link.out,
            now,
            crate::proto::error::code::POLICY,
            "message rate exceeded",
        );
    }
    (used, refreshed(s, env))
}

/// A `refresh` op replaced the token: a new expiry, so the timer moves.
fn refreshed(s: &mut Session, env: &Env) -> Effects {
    if !s.refreshed {
        return Effects::NONE;
    }
    s.refreshed = false;
    s.end_proxy_expiry();
    s.set_expires_at_ms(env.expiry_of(s.access()));
    Effects::REARM
}

/// A broker answer. Nothing goes out after our close frame; the session
/// still takes the answer. An answer it does not wait for is undone.
pub(super) fn handle_reply(
    s: &mut Session,
    env: &mut Env,
    link: &mut Link<'_>,
    tag: Tag,
    id: Option<&RawValue>,
    body: ReplyBody,
) -> Effects {
    if s.resuming(tag) {
        return resumed(s, env, link, tag, body);
    }
    // A subscribe's answer: its epoch and offset, noted once the
    // subscription is live (a position for the live handoff).
    let noted = match &body {
        ReplyBody::Subscribed {
            channel,
            result: Ok(a),
            ..
        } => Some((channel.clone(), a.position.epoch.clone(), a.position.offset)),
        _ => None,
    };
    let (mut ctx, deflate) = env.ctx_deflate(link.key);
    let result = if link.proto.is_open() {
        // Replies and replays compressed when permessage-deflate is on.
        let mut tx = link.proto.sender(link.out, deflate);
        s.on_reply(&mut ctx, tag, id, body, &mut tx)
    } else {
        s.on_reply(&mut ctx, tag, id, body, &mut Discard)
    };
    if let Err(body) = result {
        env.undo(link.key, body);
    } else if let Some((channel, epoch, offset)) = noted {
        env.topics.answered(&channel, &epoch, offset);
    }
    if let Some(d) = s.take_disconnect() {
        // A backend hook's `disconnect`: closed with its code (4000-4999).
        s.note_close(d.code, &d.reason);
        link.proto.close(link.out, env.now, d.code, &d.reason);
    }
    // A subscribe proxy's grant may end at a time: the timer moves.
    let granted = if s.next_sub_expiry().is_some() {
        Effects::REARM
    } else {
        Effects::NONE
    };
    Effects::DIRTY | Effects::RESUME | refreshed(s, env) | granted
}

/// The answer to a subscription asked again after a live handoff: no
/// reply (the client has its subscribe's), the recovered gap goes out as
/// publications, then the live ones. A gap that cannot be recovered (the
/// history lost it, or another epoch: the memory broker's history did not
/// move) is told as the `resync` event a broken stream gets (README), and
/// the subscription goes on live from the new position. A channel refused
/// now: close 4000 (the client reconnects and is told by its subscribe).
fn resumed(
    s: &mut Session,
    env: &mut Env,
    link: &mut Link<'_>,
    tag: Tag,
    body: ReplyBody,
) -> Effects {
    let (mut ctx, deflate) = env.ctx_deflate(link.key);
    match s.resumed(&mut ctx, tag, body) {
        Ok(Joined::Subscribed { channel, answer }) => {
            if link.proto.is_open() {
                let mut tx = link.proto.sender(link.out, deflate);
                if answer.recovered != Some(true) {
                    warn!(
                        "connection {:?}: moved, but {channel:?} could not be recovered: resync",
                        link.key
                    );
                    let resync = serde_json::json!({
                        "channel": &*channel,
                        "resync": {
                            "epoch": answer.position.epoch,
                            "offset": answer.position.offset,
                        },
                    });
                    send_json(&mut tx, ctx.counts, resync.to_string().as_bytes());
                }
                s.begin_replay(&mut ctx, &channel, &answer, true, &mut tx);
                ctx.topics
                    .answered(&channel, &answer.position.epoch, answer.position.offset);
            }
            Effects::DIRTY
        }
        Ok(Joined::Refused { channel, error }) => {
            warn!(
                "connection {:?}: moved, but {channel:?} was refused ({error:?}): close 4000",
                link.key
            );
            let code = crate::gateway::close_code::SHUTDOWN;
            s.close_code.get_or_insert(code);
            link.proto.close(link.out, env.now, code, "reconnect");
            Effects::REARM | Effects::DIRTY
        }
        Ok(Joined::Asked) => Effects::NONE,
        Err(body) => {
            env.undo(link.key, body);
            Effects::NONE
        }
    }
}

/// A part of one of the session's replays.
pub(super) fn replay_part(
    s: &mut Session,
    env: &mut Env,
    link: &mut Link<'_>,
    chunk: ReplayChunk,
) -> Step {
    let cap = env.cfg.gateway.max_queued_bytes;
    let mut tx = link.proto.sender(link.out, &mut env.deflate);
    s.replay_chunk(chunk, cap, &mut tx)
}

/// The session's token expired: close 4003 (the client reconnects with a
/// new token).
pub(super) fn expired(s: &mut Session, env: &mut Env, link: &mut Link<'_>) -> Effects {
    s.note_close(crate::auth::close_code::TOKEN_EXPIRED, "token expired");
    link.proto.close(
        link.out,
        env.now,
        crate::auth::close_code::TOKEN_EXPIRED,
        "token expired",
    );
    Effects::REARM | Effects::DIRTY
}

/// The drop policy took a channel from a slow subscriber: the notice,
/// unless it waits behind the subscription's reply.
pub(super) fn drop_channel(
    s: &mut Session,
    env: &mut Env,
    link: &mut Link<'_>,
    channel: &str,
    last: u64,
) {
    let mut ctx = env.ctx(link.key);
    if let Some(notice) = s.drop_channel(&mut ctx, channel, last) {
        // Past the cap, as a control frame would be.
        send_json(&mut Plain(link.out), ctx.counts, &notice.to_json());
    }
}

/// Subscriptions whose subscribe proxy grant ran out by `now` (Unix ms):
/// left, each with its `unsubscribed` notice.
pub(super) fn expire_subs(s: &mut Session, env: &mut Env, link: &mut Link<'_>, now: u64) {
    let mut ctx = env.ctx(link.key);
    for notice in s.expire_subs(&mut ctx, now) {
        if link.proto.is_open() {
            send_json(&mut Plain(link.out), ctx.counts, &notice.to_json());
        }
    }
}

/// An out queue as a reply sink without compression.
struct Plain<'a, O: Output + ?Sized>(&'a mut O);

impl<O: Output + ?Sized> Sink for Plain<'_, O> {
    fn queued(&self) -> usize {
        self.0.queued()
    }

    fn frame(&mut self, _: &str, frame: &Frame) {
        self.0.put(frame);
    }
}

impl<O: Output + ?Sized> ReplySink for Plain<'_, O> {
    fn message(&mut self, json: &[u8]) {
        self.0.put_message(true, json);
    }

    fn publication(&mut self, frame: &Frame) {
        self.0.put(frame);
    }
}
