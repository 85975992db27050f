//! `/ws` without a token, with a connect proxy (issue 15 part 2b): the
//! upgrade waits for the backend's decision. The connection holds what the
//! 101 needs (the key, the subprotocol and permessage-deflate terms chosen,
//! the URL's channels) and a session without a user; the decision reaches
//! the worker's inbox with the connection's tag. The handshake deadline
//! still applies (the protocol stays in its handshake phase): a backend
//! slower than it leaves the connection closed, never opened, and the
//! late decision is dropped.
//!
//! - `Accept`: 101, the session gets the backend's user (and expiry), its
//!   first message is `{"connected":{"client","user","data"}}`, then the
//!   URL's channels and the answer's `channels` are subscribed.
//! - `Refuse`: `http_status()` with `error_json()`; a `disconnect`
//!   upgrades and closes at once with its code (so a browser sees it).
//! - The backend down, slow, bad: 503 with error 14 (never opened).

use log::debug;

use super::{Effects, Endpoint, Env, Link};
use crate::auth::Access;
use crate::broker::{HookAnswer, HookCtx, ReplyBody, ReplyTo, Tag, Then};
use crate::gateway::session::{send_json, Session};
use crate::hooks::proxy::{
    Client, ConnectDecision, ConnectRefusal, ConnectRequest, Connected, Decision, Transport,
};
use crate::proto::deflate::Params;

/// An upgrade waiting for the connect proxy.
#[derive(Debug)]
pub struct Connecting {
    pub tag: Tag,
    key: Vec<u8>,
    protocol: Option<String>,
    deflate: Option<Params>,
    channels: Vec<String>,
    delta: bool,
    session: Box<Session>,
}

/// What the upgrade needs once the backend accepts.
pub(super) struct Upgrade {
    pub key: Vec<u8>,
    pub protocol: Option<String>,
    pub deflate: Option<Params>,
    pub channels: Vec<String>,
    pub delta: bool,
    pub headers: Vec<(String, String)>,
}

/// SSE, long-poll and `POST /send` without a token, with a connect proxy:
/// refused (403) until they ask it too, never opened unjudged. True when
/// refused (the answer is queued).
pub(super) fn refuse_unjudged(
    env: &mut Env,
    link: &mut Link<'_>,
    access: &Access,
    keep: bool,
) -> bool {
    if !asks(env, access) {
        return false;
    }
    env.counts.refused += 1;
    let v = serde_json::json!({ "error": {
        "code": crate::hooks::proxy::PERMISSION_DENIED,
        "message": "a connect proxy judges connections without a token: only /ws asks it yet; use a token here",
    }});
    crate::http::respond_json(link.out, 403, &v, keep);
    true
}

/// Does this request go to the connect proxy (configured, and no token)?
pub(super) fn asks(env: &Env, access: &Access) -> bool {
    !matches!(access, Access::User(_))
        && env
            .cfg
            .gateway
            .proxy
            .as_deref()
            .is_some_and(|p| p.has(crate::hooks::proxy::Hook::Connect))
}

/// Ask the connect proxy; the connection waits (`Endpoint::Connecting`),
/// or is refused at once (503) when the call cannot be queued.
pub(super) fn ask(env: &mut Env, link: &mut Link<'_>, access: Access, up: Upgrade) -> Endpoint {
    let mut session = Box::new(env.new_session(None, access));
    session.set_hook_client(Transport::WebSocket, up.headers.clone());
    let tag = env.tags.fresh();
    let to = ReplyTo {
        worker: env.id,
        conn: link.key,
        id: None,
        tag,
    };
    let channels: Vec<&str> = up.channels.iter().map(String::as_str).collect();
    let req = ConnectRequest {
        client: Client::new(session.client(), Transport::WebSocket),
        channels: &channels,
        data: None,
        name: None,
        version: None,
    };
    let Some(proxy) = env.cfg.gateway.proxy.clone() else {
        let stopped = ConnectRefusal::Unavailable(crate::hooks::client::Failure::Stopped);
        refuse(env, link, &stopped);
        return Endpoint::Handshake(super::Handshake::kept());
    };
    let ctx = HookCtx {
        to,
        then: Then::Reply,
    };
    match proxy.connect(&req, up.headers, ctx) {
        Ok(()) => Endpoint::Connecting(Box::new(Connecting {
            tag,
            key: up.key,
            protocol: up.protocol,
            deflate: up.deflate,
            channels: up.channels,
            delta: up.delta,
            session,
        })),
        Err((_, d)) => {
            // Not queued (overloaded, stopping): 503, never opened.
            refuse(env, link, &refusal_of(d));
            Endpoint::Handshake(super::Handshake::kept())
        }
    }
}

fn refusal_of(d: Decision) -> ConnectRefusal {
    match d {
        Decision::Connect(ConnectDecision::Refuse(r)) => r,
        _ => ConnectRefusal::Unavailable(crate::hooks::client::Failure::Stopped),
    }
}

/// The refusal as an HTTP answer, then close.
fn refuse(env: &mut Env, link: &mut Link<'_>, r: &ConnectRefusal) {
    debug!("connection {:?}: connect proxy refused: {r:?}", link.key);
    env.counts.refused += 1;
    // `{"error":{"code","message"}}`.
    crate::http::respond_json(link.out, r.http_status(), &r.error_json(), false);
    link.proto.shutdown(env.now);
}

/// The connect proxy decided: open, refuse, or (not this request's) undo.
pub(super) fn decided(
    ep: &mut Endpoint,
    env: &mut Env,
    link: &mut Link<'_>,
    tag: Tag,
    body: ReplyBody,
) -> Effects {
    let Endpoint::Connecting(c) = ep else {
        env.undo(link.key, body);
        return Effects::NONE;
    };
    let decision = match body {
        ReplyBody::Hook(a) if c.tag == tag => {
            let HookAnswer { decision, .. } = *a;
            decision
        }
        other => {
            env.undo(link.key, other);
            return Effects::NONE;
        }
    };
    if link.proto.state() == crate::proto::State::Closed {
        // Closed meanwhile (the handshake deadline, a drain): never opened.
        debug!(
            "connection {:?}: connect decision after its close: dropped",
            link.key
        );
        return Effects::NONE;
    }
    let Endpoint::Connecting(c) =
        std::mem::replace(ep, Endpoint::Handshake(super::Handshake::kept()))
    else {
        unreachable!("matched above")
    };
    let c = *c;
    match decision {
        Decision::Connect(ConnectDecision::Accept(ok)) => {
            *ep = open(env, link, c, ok);
        }
        Decision::Connect(ConnectDecision::Refuse(r)) => match r.close() {
            Some((code, reason)) => {
                // Upgraded and closed at once, so that a browser sees the code.
                write_101(env, link, &c);
                let mut s = c.session;
                s.close_code.get_or_insert(code);
                link.proto.close(link.out, env.now, code, reason);
                *ep = Endpoint::Gateway(s);
            }
            None => refuse(env, link, &r),
        },
        other => {
            let r = ConnectRefusal::Unavailable(crate::hooks::client::Failure::BadAnswer(format!(
                "unexpected decision {other:?}"
            )));
            refuse(env, link, &r);
        }
    }
    Effects::REARM | Effects::DIRTY
}

fn write_101(env: &mut Env, link: &mut Link<'_>, c: &Connecting) {
    let ext = c.deflate.as_ref().map(|p| p.to_header());
    crate::proto::handshake::write_accept(link.out, &c.key, c.protocol.as_deref(), ext.as_deref());
    link.proto.accept(env.now);
    if let Some(p) = &c.deflate {
        link.proto.set_deflate(p, &env.cfg.compression);
        env.count_deflate_connection();
    }
}

/// Accepted: 101, the user, `{"connected":…}`, then the channels.
fn open(env: &mut Env, link: &mut Link<'_>, c: Connecting, ok: Connected) -> Endpoint {
    write_101(env, link, &c);
    let mut s = c.session;
    s.set_user(ok.user.filter(|u| !u.is_empty()));
    if let Some(at) = ok.expire_at.filter(|&a| a > 0) {
        let left = (at * 1000).saturating_sub(super::unix_now_ms());
        s.set_expires_at_ms(Some(env.now + left));
    }
    let connected = serde_json::json!({
        "connected": {
            "client": s.client(),
            "user": s.user().unwrap_or(""),
        }
    });
    let mut msg = serde_json::to_vec(&connected).unwrap_or_default();
    if let Some(data) = &ok.data {
        // `{"connected":{…}}` with the backend's data spliced in as is.
        msg.truncate(msg.len() - 2);
        msg.extend_from_slice(b",\"data\":");
        msg.extend_from_slice(data.get().as_bytes());
        msg.extend_from_slice(b"}}");
    }
    let channels = c
        .channels
        .into_iter()
        .chain(ok.channels.into_iter().map(|(ch, _)| ch));
    let (mut ctx, deflate) = env.ctx_deflate(link.key);
    let mut tx = link.proto.sender(link.out, deflate);
    send_json(&mut tx, ctx.counts, &msg);
    s.start(&mut ctx, channels, c.delta, &mut tx);
    Endpoint::Gateway(s)
}
