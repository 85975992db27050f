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
use crate::gateway::session::{apply_hook, Applied};
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
        Route::Send => {
            let (action, tag) = send_op(env, link, head, query, body);
            wait = tag;
            action
        }
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
    let action = match (action, wait) {
        (api::Action::Pending, Some(tag)) => {
            *ep = Endpoint::Http {
                tag,
                keep,
                send: route == Route::Send,
            };
            return Ok(Effects::NONE);
        }
        // Every broker request has a tag; without one no answer could ever
        // be matched to this request.
        (api::Action::Pending, None) => {
            warn!("{}: a broker request without a tag: 503", head.path());
            api::Action::error(&OpError::Unavailable("no answer to wait for"))
        }
        (a, _) => a,
    };
    respond(link, action, keep);
    Ok(finish(ep, env, link, keep) | Effects::DIRTY)
}

/// `POST /send`: one client op over plain HTTP (publish, presence, ping),
/// parsed once. Returns the action and, when the broker answers, its
/// request's tag.
fn send_op(
    env: &mut Env,
    link: &mut Link<'_>,
    head: &Head<'_>,
    query: Query<'_>,
    body: &[u8],
) -> (api::Action, Option<Tag>) {
    let (id, op) = match parse(body) {
        Ok((id, Op::Subscribe { .. } | Op::Unsubscribe { .. })) => {
            let e = OpError::BadRequest("subscribe through /sse or /poll".into());
            return (api::send_reply(id, &Reply::Error(e)), None);
        }
        Err((id, e)) => return (api::send_reply(id, &Reply::Error(e)), None),
        Ok(op) => op,
    };
    let access = match env.authenticate(head) {
        Ok(a) => a,
        Err(e) => return (api::Action::error(&e.op_error()), None),
    };
    if super::connect::asks(env, &access) {
        let e = OpError::PermissionDenied;
        return (
            api::Action::json(
                403,
                &serde_json::json!({ "error": {
                    "code": e.code(),
                    "message": "a connect proxy judges connections without a token: only /ws asks it yet; use a token here",
                }}),
            ),
            None,
        );
    }
    let user = match env.user_of(query, &access) {
        Ok(u) => u,
        Err(e) => return (api::Action::error(&e), None),
    };
    let mut s = env.new_session(user, access);
    s.set_hook_client(crate::hooks::proxy::Transport::Send, env.hook_headers(head));
    let mut ctx = env.ctx(link.key);
    match s.dispatch(&mut ctx, id, op) {
        // The broker answers.
        Dispatched::Asked(tag, ..) => (api::Action::Pending, Some(tag)),
        // Answered at once (ping, or an error).
        Dispatched::Now(_, reply) => (api::send_reply(id, &reply), None),
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
