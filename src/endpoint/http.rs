//! Plain HTTP requests: answered at once (health, metrics, the demo's
//! files, refusals), or handed to the broker ([`Endpoint::Http`] waits for
//! its answer: the API, `POST /send`, `POST /api/disconnect`). After the
//! answer the connection reads its next request (keep-alive) or closes.

use log::warn;

use super::handshake::Handshake;
use super::{Effects, Endpoint, Env, Link};
use crate::base::query::Query;
use crate::base::OpError;
use crate::broker::{ReplyBody, ReplyTo, Tag};
use crate::gateway::ops::{parse, Op};
use crate::gateway::reply::{Dispatched, Reply};
use crate::gateway::session::{apply_hook, Applied, Session};
use crate::http::api;
use crate::http::router::Route;
use crate::proto::handshake::Head;
use crate::proto::{Conn, Error};
use serde_json::value::RawValue;

/// A whole request (head and body) of a plain HTTP route.
#[allow(clippy::too_many_arguments)]
pub(super) fn request(
    ep: &mut Endpoint,
    env: &mut Env,
    link: &mut Link<'_>,
    head: &Head<'_>,
    query: Query<'_>,
    body: &[u8],
    route: Route,
    keep: bool,
) -> Result<Effects, Error> {
    // The tag of the broker request the answer waits for, if any.
    let mut wait = None;
    let action = match route {
        Route::Health => {
            // 503 while draining, so that a load balancer polling on a
            // kept-alive connection takes this node out.
            let b = env.broker.stats();
            let (status, state) = if env.draining() {
                (503, "draining")
            } else if b.healthy {
                (200, "ok")
            } else {
                (503, "degraded")
            };
            api::Action::json(
                status,
                &serde_json::json!({ "status": state, "broker": b.kind }),
            )
        }
        Route::Send => match send_op(env, link, head, query, body) {
            SendOp::Done(action, tag) => {
                wait = tag;
                action
            }
            SendOp::Judge(access) => {
                // No token, and a connect proxy: the op runs once it accepts.
                let headers = env.hook_headers(head);
                let after = super::connect::After::Send {
                    body: body.to_vec(),
                    keep,
                };
                *ep = super::connect::ask(env, link, access, after, headers, query);
                return Ok(Effects::REARM | Effects::DIRTY);
            }
        },
        Route::Disconnect => disconnect_request(env, head, body),
        Route::Static(content_type, body) => api::Action::Respond {
            status: 200,
            content_type,
            body: body.to_vec(),
        },
        Route::Metrics => api::Action::Respond {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: {
                let mut m = crate::http::metrics::render(
                    &env.shared.stats(),
                    &env.shared.workers,
                    &env.broker.stats(),
                );
                if let Some(p) = env.cfg.gateway.proxy.as_deref() {
                    crate::http::metrics::render_proxy(&mut m, &p.stats());
                }
                m.into_bytes()
            },
        },
        Route::Api => {
            let tag = env.tags.fresh();
            wait = Some(tag);
            let reply = ReplyTo {
                worker: env.id,
                conn: link.key,
                id: None,
                tag,
            };
            let shared = env.shared.clone();
            let broker = env.broker.clone();
            api::handle(
                head,
                query,
                body,
                &env.cfg.gateway,
                &*env.broker,
                reply,
                move || {
                    crate::http::metrics::stats_json(
                        shared
                            .connections
                            .load(std::sync::atomic::Ordering::Relaxed),
                        &shared.stats(),
                        &shared.workers,
                        &broker.stats(),
                        broker.events().stats_json(),
                    )
                },
            )
        }
        Route::NotFound | Route::Upgrade(_) | Route::Sse | Route::Poll => {
            return Err(Error::NotFound)
        }
    };
    Ok(settle(
        ep,
        env,
        link,
        head.path(),
        action,
        wait,
        route == Route::Send,
        keep,
    ))
}

/// A request's action: wait for the broker's (or a hook's) answer of
/// `wait`, or respond now.
#[allow(clippy::too_many_arguments)]
fn settle(
    ep: &mut Endpoint,
    env: &mut Env,
    link: &mut Link<'_>,
    path: &str,
    action: api::Action,
    wait: Option<Tag>,
    send: bool,
    keep: bool,
) -> Effects {
    let action = match (action, wait) {
        (api::Action::Pending, Some(tag)) => {
            *ep = Endpoint::Http { tag, keep, send };
            return Effects::NONE;
        }
        // Every broker request has a tag; without one no answer could ever
        // be matched to this request.
        (api::Action::Pending, None) => {
            warn!("{path}: a broker request without a tag: 503");
            api::Action::error(&OpError::Unavailable("no answer to wait for"))
        }
        (a, _) => a,
    };
    respond(link, action, keep);
    finish(ep, env, link, keep) | Effects::DIRTY
}

/// What `POST /send` does with its op.
enum SendOp {
    /// Its action, and the tag its answer comes with.
    Done(api::Action, Option<Tag>),
    /// No token, and a connect proxy: it decides first.
    Judge(crate::auth::Access),
}

/// `POST /send`: one client op over plain HTTP (publish, presence, ping,
/// rpc), parsed once. Returns the action and, when the broker answers,
/// its request's tag; or, without a token under a connect proxy, that the
/// backend decides first.
fn send_op(
    env: &mut Env,
    link: &mut Link<'_>,
    head: &Head<'_>,
    query: Query<'_>,
    body: &[u8],
) -> SendOp {
    let (id, op) = match send_parse(body) {
        Ok(op) => op,
        Err(action) => return SendOp::Done(action, None),
    };
    let access = match env.authenticate(head) {
        Ok(a) => a,
        Err(e) => return SendOp::Done(api::Action::error(&e.op_error()), None),
    };
    if super::connect::asks(env, &access) {
        return SendOp::Judge(access);
    }
    let user = match env.user_of(query, &access) {
        Ok(u) => u,
        Err(e) => return SendOp::Done(api::Action::error(&e), None),
    };
    let mut s = env.new_session(user, access);
    s.set_hook_client(crate::hooks::proxy::Transport::Send, env.hook_headers(head));
    let (action, tag) = send_dispatch(env, link, &mut s, id, op);
    SendOp::Done(action, tag)
}

/// A `/send` body as an op, or the error's action.
fn send_parse(body: &[u8]) -> Result<(Option<&RawValue>, Op<'_>), api::Action> {
    match parse(body) {
        Ok((id, Op::Subscribe { .. } | Op::Unsubscribe { .. })) => {
            let e = OpError::BadRequest("subscribe through /sse or /poll".into());
            Err(api::send_reply(id, &Reply::Error(e)))
        }
        Err((id, e)) => Err(api::send_reply(id, &Reply::Error(e))),
        Ok(op) => Ok(op),
    }
}

fn send_dispatch(
    env: &mut Env,
    link: &mut Link<'_>,
    s: &mut Session,
    id: Option<&RawValue>,
    op: Op<'_>,
) -> (api::Action, Option<Tag>) {
    let mut ctx = env.ctx(link.key);
    match s.dispatch(&mut ctx, id, op) {
        // The broker answers.
        Dispatched::Asked(tag, ..) => (api::Action::Pending, Some(tag)),
        // Answered at once (ping, or an error).
        Dispatched::Now(_, reply) => (api::send_reply(id, &reply), None),
    }
}

/// The connect proxy accepted a `/send` request: its op runs with the
/// session it judged (`super::connect`).
pub(super) fn send_judged(
    ep: &mut Endpoint,
    env: &mut Env,
    link: &mut Link<'_>,
    mut s: Box<Session>,
    body: &[u8],
    keep: bool,
) -> Effects {
    let keep = keep && !env.draining();
    let (action, wait) = match send_parse(body) {
        Ok((id, op)) => send_dispatch(env, link, &mut s, id, op),
        Err(action) => (action, None),
    };
    let fx = settle(ep, env, link, "/send", action, wait, true, keep);
    if keep && !matches!(ep, Endpoint::Http { .. }) {
        // Requests that arrived while it waited.
        fx | Effects::AGAIN
    } else {
        fx | Effects::DIRTY
    }
}

/// `POST /api/disconnect {"user":"…"}`: every worker of every node closes
/// that user's connections.
fn disconnect_request(env: &mut Env, head: &Head<'_>, body: &[u8]) -> api::Action {
    if !api::authorized(head, env.cfg.gateway.api_key.as_deref()) {
        return api::Action::error(&OpError::Unauthorized);
    }
    #[derive(serde::Deserialize)]
    struct Req {
        user: String,
    }
    match serde_json::from_slice::<Req>(body) {
        Ok(r) => {
            match crate::base::channel::valid_user(&r.user, env.cfg.gateway.max_channel_length) {
                Ok(()) => {
                    env.broker.disconnect_user(&r.user);
                    api::Action::json(200, &serde_json::json!({ "ok": true }))
                }
                Err(e) => api::Action::error(&OpError::BadChannel(e)),
            }
        }
        Err(e) => api::Action::error(&OpError::BadRequest(e.to_string())),
    }
}

/// The broker answered the request [`Endpoint::Http`] waits for.
pub(super) fn answer(
    ep: &mut Endpoint,
    env: &mut Env,
    link: &mut Link<'_>,
    id: Option<&RawValue>,
    body: ReplyBody,
    keep: bool,
    send: bool,
) -> Effects {
    let keep = keep && !env.draining();
    let action = match body {
        // A publish or rpc proxy's decision for this `/send` op.
        ReplyBody::Hook(answer) if send => {
            let Endpoint::Http { tag, .. } = ep else {
                return Effects::NONE;
            };
            let tag = *tag;
            match apply_hook(&mut env.ctx(link.key), tag, id, *answer) {
                // On to the broker with the same tag: wait for its answer.
                Applied::Broker => return Effects::NONE,
                Applied::Reply(r) => api::send_reply(id, &r),
                Applied::Disconnect(d) => api::Action::json(
                    d.http_status(),
                    &serde_json::json!({"error": {"code": d.code, "message": d.reason}}),
                ),
            }
        }
        body if send => api::render_send_answer(id, body),
        body => api::render_reply(body),
    };
    respond(link, action, keep);
    let fx = finish(ep, env, link, keep) | Effects::DIRTY;
    if keep {
        // Requests that arrived meanwhile.
        fx | Effects::AGAIN
    } else {
        fx
    }
}

/// Queue an action's response (a `Pending` one has none).
fn respond(link: &mut Link<'_>, action: api::Action, keep: bool) {
    if let api::Action::Respond {
        status,
        content_type,
        body,
    } = action
    {
        crate::http::respond(link.out, status, content_type, &body, keep);
    }
}

/// An HTTP response is queued: wait for the next request, or close.
pub(super) fn finish(ep: &mut Endpoint, env: &mut Env, link: &mut Link<'_>, keep: bool) -> Effects {
    // A draining server keeps no connection for a next request.
    if keep && !env.draining() {
        // A new request phase: its deadline bounds the idle time between
        // requests.
        *link.proto = Conn::server(env.now);
    } else {
        link.proto.shutdown(env.now);
    }
    *ep = Endpoint::Handshake(Handshake::kept());
    Effects::REARM
}
