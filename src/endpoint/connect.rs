//! A connection without a token, with a connect proxy (issue 15): the
//! backend decides before anything is opened. A `/ws` upgrade, an SSE or
//! long-poll request and a `POST /send` wait alike
//! (`Endpoint::Connecting`): the connection holds what its opening needs
//! ([`After`]: the 101's key, subprotocol and permessage-deflate terms; a
//! stream's channels and position; a `/send` op's body) and a session
//! without a user; the decision reaches the worker's inbox with the
//! connection's tag. The request phase's deadline still applies (the
//! protocol stays in its handshake phase): a backend slower than it
//! leaves the connection closed, never opened, and the late decision is
//! dropped; what the client sends meanwhile waits unread.
//!
//! - `Accept`: the session gets the backend's user, expiry (renewed by the
//!   refresh proxy: [`super::refresh`]), `info` and `meta`; a WebSocket
//!   gets 101 and a first message `{"connected":{"client","user","data"}}`
//!   (SSE a first `event: connected`, a poll its answer's first message),
//!   then the URL's channels and the answer's `channels` are subscribed
//!   (a stream's too); a `/send` op runs.
//! - `Refuse`: `http_status()` with `error_json()`; a `disconnect`
//!   upgrades a WebSocket and closes it at once with its code (so a
//!   browser sees it), and is its HTTP status elsewhere.
//! - The backend down, slow, bad: 503 with error 14 (never opened).
//!
//! The request's query may carry what Centrifugo's connect command does
//! (as its unidirectional transports take it): `name`, `version` (each at
//! most [`MAX_CLIENT_NAME`] bytes) and `data` (JSON, at most
//! [`MAX_CONNECT_DATA`] bytes), forwarded in the connect request; a bad
//! one is 400 (error 3), never asked about.

use log::debug;

use super::stream::StreamStart;
use super::{Effects, Endpoint, Env, Link};
use crate::auth::Access;
use crate::base::query::Query;
use crate::base::OpError;
use crate::broker::{HookAnswer, HookCtx, ReplyBody, ReplyTo, Tag, Then};
use crate::gateway::session::{send_json, Session};
use crate::hooks::proxy::{
    Client, ConnectDecision, ConnectRefusal, ConnectRequest, Connected, Decision, Transport,
};
use crate::http::stream::Kind;
use crate::proto::deflate::Params;

/// A connection waiting for the connect proxy.
#[derive(Debug)]
pub struct Connecting {
    pub tag: Tag,
    session: Box<Session>,
    after: After,
}

/// What opens once the backend accepts.
#[derive(Debug)]
pub(super) enum After {
    /// A `/ws` upgrade: its 101.
    Upgrade(Upgrade),
    /// `/sse` or `/poll`.
    Stream(StreamStart),
    /// `POST /send`: its op (the request's body), and whether the
    /// connection is kept for a next request.
    Send { body: Vec<u8>, keep: bool },
}

impl After {
    fn transport(&self) -> Transport {
        match self {
            After::Upgrade(_) => Transport::WebSocket,
            After::Stream(s) if s.kind == Kind::Sse => Transport::Sse,
            After::Stream(_) => Transport::Poll,
            After::Send { .. } => Transport::Send,
        }
    }

    /// The channels the client asked for in the URL.
    fn channels(&self) -> &[String] {
        match self {
            After::Upgrade(u) => &u.channels,
            After::Stream(s) => &s.channels,
            After::Send { .. } => &[],
        }
    }
}

/// What the upgrade needs once the backend accepts.
#[derive(Debug)]
pub(super) struct Upgrade {
    pub key: Vec<u8>,
    pub protocol: Option<String>,
    pub deflate: Option<Params>,
    pub channels: Vec<String>,
    pub delta: bool,
}

/// Longest `data` a connection request carries for the connect proxy.
pub const MAX_CONNECT_DATA: usize = 4096;
/// Longest `name` or `version` a connection request carries.
pub const MAX_CLIENT_NAME: usize = 256;

/// What the client said of itself in its connection request's query.
#[derive(Debug, Default)]
struct ClientSays {
    name: Option<String>,
    version: Option<String>,
    data: Option<Box<serde_json::value::RawValue>>,
}

impl ClientSays {
    /// `name`, `version` and `data` (each the first given); a `data` that
    /// is not JSON or is too long, a `name` or `version` too long: a bad
    /// request.
    fn read(query: Query<'_>) -> Result<ClientSays, OpError> {
        let short = |what: &'static str| -> Result<Option<String>, OpError> {
            match query.value(what) {
                Some(v) if v.len() > MAX_CLIENT_NAME => Err(OpError::BadRequest(format!(
                    "{what} is longer than {MAX_CLIENT_NAME} bytes"
                ))),
                v => Ok(v),
            }
        };
        let data = match query.value("data") {
            None => None,
            Some(d) if d.len() > MAX_CONNECT_DATA => {
                return Err(OpError::BadRequest(format!(
                    "data is longer than {MAX_CONNECT_DATA} bytes"
                )))
            }
            Some(d) => Some(
                serde_json::value::RawValue::from_string(d)
                    .map_err(|e| OpError::BadRequest(format!("data is not JSON: {e}")))?,
            ),
        };
        Ok(ClientSays {
            name: short("name")?,
            version: short("version")?,
            data,
        })
    }
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

/// Ask the connect proxy, with what the client said of itself in
/// `query`; the connection waits (`Endpoint::Connecting`), or is refused
/// at once: 400 for a bad `name`, `version` or `data`, 503 when the call
/// cannot be queued.
pub(super) fn ask(
    env: &mut Env,
    link: &mut Link<'_>,
    access: Access,
    after: After,
    headers: Vec<(String, String)>,
    query: Query<'_>,
) -> Endpoint {
    let says = match ClientSays::read(query) {
        Ok(s) => s,
        Err(e) => {
            log::info!("connection {:?}: connect request refused: {e}", link.key);
            env.counts.refused += 1;
            let v = serde_json::json!({ "error": crate::gateway::error::error_json(&e) });
            crate::http::respond_json(link.out, e.http_status(), &v, false);
            link.proto.shutdown(env.now);
            return Endpoint::Handshake(super::Handshake::kept());
        }
    };
    let transport = after.transport();
    let mut session = Box::new(env.new_session(None, access));
    session.set_hook_client(transport, headers.clone());
    let tag = env.tags.fresh();
    let to = ReplyTo {
        worker: env.id,
        conn: link.key,
        id: None,
        tag,
    };
    let channels: Vec<&str> = after.channels().iter().map(String::as_str).collect();
    let req = ConnectRequest {
        client: Client::new(session.client(), transport),
        channels: &channels,
        data: says.data.as_deref(),
        name: says.name.as_deref(),
        version: says.version.as_deref(),
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
    match proxy.connect(&req, headers, ctx) {
        Ok(()) => Endpoint::Connecting(Box::new(Connecting {
            tag,
            session,
            after,
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
    let Connecting { session, after, .. } = *c;
    match decision {
        Decision::Connect(ConnectDecision::Accept(ok)) => opened(ep, env, link, session, after, ok),
        Decision::Connect(ConnectDecision::Refuse(r)) => match (r.close(), after) {
            (Some((code, reason)), After::Upgrade(up)) => {
                // Upgraded and closed at once, so that a browser sees the code.
                write_101(env, link, &up);
                let mut s = session;
                s.close_code.get_or_insert(code);
                link.proto.close(link.out, env.now, code, reason);
                *ep = Endpoint::Gateway(s);
                Effects::REARM | Effects::DIRTY
            }
            _ => {
                refuse(env, link, &r);
                Effects::REARM | Effects::DIRTY
            }
        },
        other => {
            let r = ConnectRefusal::Unavailable(crate::hooks::client::Failure::BadAnswer(format!(
                "unexpected decision {other:?}"
            )));
            refuse(env, link, &r);
            Effects::REARM | Effects::DIRTY
        }
    }
}

/// The backend accepted: the session takes what it gave, then the
/// connection opens as its request asked.
fn opened(
    ep: &mut Endpoint,
    env: &mut Env,
    link: &mut Link<'_>,
    mut s: Box<Session>,
    after: After,
    ok: Connected,
) -> Effects {
    s.set_user(ok.user.clone().filter(|u| !u.is_empty()));
    let expiry = ok.expire_at.filter(|&a| a > 0).map(|at| {
        let left = (at.saturating_mul(1000)).saturating_sub(super::unix_now_ms());
        env.now + left
    });
    s.set_expires_at_ms(expiry);
    s.set_connected(&ok, expiry.is_some());
    match after {
        After::Upgrade(up) => {
            *ep = open(env, link, up, s, ok);
            Effects::REARM | Effects::DIRTY
        }
        After::Stream(mut st) => {
            st.connected = Some(connected_message(&s, &ok));
            for (ch, _) in ok.channels {
                if !st.channels.contains(&ch) {
                    st.channels.push(ch);
                }
            }
            super::stream::start(ep, env, link, *s, st)
        }
        After::Send { body, keep } => super::http::send_judged(ep, env, link, s, &body, keep),
    }
}

fn write_101(env: &mut Env, link: &mut Link<'_>, up: &Upgrade) {
    let ext = up.deflate.as_ref().map(|p| p.to_header());
    crate::proto::handshake::write_accept(
        link.out,
        &up.key,
        up.protocol.as_deref(),
        ext.as_deref(),
    );
    link.proto.accept(env.now);
    if let Some(p) = &up.deflate {
        link.proto.set_deflate(p, &env.cfg.compression);
        env.count_deflate_connection();
    }
}

/// `{"connected":{"client","user","data"}}`: the first message of a
/// connection the connect proxy accepted (a WebSocket's first message,
/// SSE's first event, a poll answer's first message), with the backend's
/// `data` spliced in as is.
fn connected_message(s: &Session, ok: &Connected) -> Vec<u8> {
    let connected = serde_json::json!({
        "connected": {
            "client": s.client(),
            "user": s.user().unwrap_or(""),
        }
    });
    let mut msg = serde_json::to_vec(&connected).unwrap_or_default();
    if let Some(data) = &ok.data {
        msg.truncate(msg.len() - 2);
        msg.extend_from_slice(b",\"data\":");
        msg.extend_from_slice(data.get().as_bytes());
        msg.extend_from_slice(b"}}");
    }
    msg
}

/// A WebSocket accepted: 101, `{"connected":…}`, then the channels.
fn open(
    env: &mut Env,
    link: &mut Link<'_>,
    up: Upgrade,
    mut s: Box<Session>,
    ok: Connected,
) -> Endpoint {
    write_101(env, link, &up);
    let msg = connected_message(&s, &ok);
    let channels = up
        .channels
        .into_iter()
        .chain(ok.channels.into_iter().map(|(ch, _)| ch));
    let (mut ctx, deflate) = env.ctx_deflate(link.key);
    let mut tx = link.proto.sender(link.out, deflate);
    send_json(&mut tx, ctx.counts, &msg);
    s.start(&mut ctx, channels, up.delta, &mut tx);
    Endpoint::Gateway(s)
}
