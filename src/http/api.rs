//! The backend API and the other plain-HTTP routes: `POST /api/publish`,
//! `GET /api/history`, `GET /api/presence`, `GET /api/stats`, `GET /metrics`,
//! `GET /healthz`.
//!
//! A route either answers at once or hands the request to the broker, whose
//! answer comes back through the worker's inbox and is rendered by
//! [`render_reply`].

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::broker::{Broker, PublishOptions, ReplyBody, ReplyTo};
use crate::gateway::error::{error_json, OpError};
use crate::gateway::reply::Reply;
use crate::gateway::GatewayConfig;
use crate::proto::handshake::Head;
use crate::pubsub::{user_channel, valid_channel, valid_user, Position, USER_PREFIX};

use super::Query;

/// What the worker does with a request.
#[derive(Debug)]
pub enum Action {
    /// Answer now.
    Respond {
        status: u16,
        content_type: &'static str,
        body: Vec<u8>,
    },
    /// The broker will answer through the inbox.
    Pending,
}

impl Action {
    pub fn json(status: u16, v: &Value) -> Action {
        let mut body = serde_json::to_vec(v).expect("serializes");
        body.push(b'\n');
        Action::Respond {
            status,
            content_type: "application/json",
            body,
        }
    }

    pub fn error(e: &OpError) -> Action {
        Action::json(e.http_status(), &json!({ "error": error_json(e) }))
    }
}

/// Is this path served by [`handle`]?
pub fn is_api_path(path: &str) -> bool {
    path.starts_with("/api/")
}

/// Compare secrets without an early exit.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Does the request carry the API key (`Authorization: Bearer KEY` or
/// `X-API-Key: KEY`)?
pub fn authorized(head: &Head<'_>, key: Option<&str>) -> bool {
    let Some(key) = key else {
        return true;
    };
    let bearer = head
        .header("authorization")
        .and_then(|v| v.strip_prefix(b"Bearer ").map(|t| t.trim_ascii()));
    let header = head.header("x-api-key").map(|v| v.trim_ascii());
    [bearer, header]
        .into_iter()
        .flatten()
        .any(|v| same_secret(v, key.as_bytes()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishReq<'a> {
    #[serde(default, borrow)]
    channel: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    user: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default, borrow)]
    idempotency_key: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    exclude_client: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    skip_history: bool,
}

/// Most users one `GET /api/presence/users` asks about.
pub const MAX_USERS_ASKED: usize = 1000;

impl PublishReq<'_> {
    /// The publish options, checked.
    fn options(&self) -> Result<PublishOptions, OpError> {
        if let Some(k) = &self.idempotency_key {
            crate::gateway::ops::valid_idempotency_key(k)?;
        }
        if let Some(c) = &self.exclude_client {
            let m = crate::pubsub::presence::Member::new(c, None);
            if !m.valid() {
                return Err(OpError::BadRequest(
                    "exclude_client must be a client id (as presence shows it)".into(),
                ));
            }
        }
        Ok(PublishOptions {
            idempotency_key: self.idempotency_key.as_deref().map(Into::into),
            exclude_client: self.exclude_client.as_deref().map(Into::into),
            skip_history: self.skip_history,
            event_from: None,
        })
    }

    /// The target channel: a named one, or a user's personal channel.
    fn target(&self, cfg: &GatewayConfig) -> Result<String, OpError> {
        match (&self.channel, &self.user) {
            (Some(c), None) => {
                valid_channel(c, cfg.max_channel_length).map_err(OpError::BadChannel)?;
                Ok(c.to_string())
            }
            (None, Some(u)) => {
                valid_user(u, cfg.max_channel_length).map_err(OpError::BadChannel)?;
                Ok(user_channel(u))
            }
            _ => Err(OpError::BadRequest(
                "give exactly one of \"channel\" and \"user\"".into(),
            )),
        }
    }
}

/// Serve an `/api/*` request (`query`: its checked query string).
pub fn handle(
    head: &Head<'_>,
    query: Query<'_>,
    body: &[u8],
    cfg: &GatewayConfig,
    broker: &dyn Broker,
    reply: ReplyTo,
    stats_json: impl FnOnce() -> Value,
) -> Action {
    if !authorized(head, cfg.api_key.as_deref()) {
        return Action::error(&OpError::Unauthorized);
    }
    let worker = reply.worker;
    match (head.method, head.path()) {
        ("POST", "/api/publish") => {
            let trimmed = body.trim_ascii_start();
            if trimmed.first() == Some(&b'[') {
                // Batch: an array of publish requests, answered in order.
                let reqs: Vec<PublishReq<'_>> = match serde_json::from_slice(body) {
                    Ok(r) => r,
                    Err(e) if e.is_data() => {
                        return Action::error(&OpError::BadRequest(e.to_string()))
                    }
                    Err(e) => return Action::error(&OpError::Malformed(e.to_string())),
                };
                let mut items = Vec::with_capacity(reqs.len());
                for r in &reqs {
                    if r.options() != Ok(PublishOptions::default()) {
                        return Action::error(&OpError::BadRequest(
                            "publish options are for single publishes, not batches".into(),
                        ));
                    }
                    match r.target(cfg) {
                        Ok(ch) => items.push((ch, r.data.to_owned())),
                        Err(e) => return Action::error(&e),
                    }
                }
                broker.publish_batch(worker, &items, reply);
                return Action::Pending;
            }
            let req: PublishReq<'_> = match serde_json::from_slice(body) {
                Ok(r) => r,
                Err(e) if e.is_data() => return Action::error(&OpError::BadRequest(e.to_string())),
                Err(e) => return Action::error(&OpError::Malformed(e.to_string())),
            };
            match req.target(cfg).and_then(|ch| Ok((ch, req.options()?))) {
                Ok((ch, opts)) => {
                    broker.publish(worker, &ch, req.data, &opts, Some(reply));
                    Action::Pending
                }
                Err(e) => Action::error(&e),
            }
        }
        ("GET", "/api/history") => {
            let channel = match channel_param(query, cfg) {
                Ok(c) => c,
                Err(e) => return Action::error(&e),
            };
            let limit = match query.value("limit").map(|v| v.parse::<usize>()) {
                None => 100,
                Some(Ok(n)) => n.min(10_000),
                Some(Err(_)) => {
                    return Action::error(&OpError::BadRequest(
                        "limit must be a whole number".into(),
                    ))
                }
            };
            let since = match (query.value("since"), query.value("epoch")) {
                (Some(o), Some(epoch)) => match o.parse() {
                    Ok(offset) => Some(Position { epoch, offset }),
                    Err(_) => {
                        return Action::error(&OpError::BadRequest(
                            "since must be an offset".into(),
                        ))
                    }
                },
                (None, None) => None,
                _ => {
                    return Action::error(&OpError::BadRequest(
                        "give since and epoch together".into(),
                    ))
                }
            };
            broker.history(worker, &channel, since, limit, false, reply);
            Action::Pending
        }
        ("GET", "/api/presence/users") => {
            let mut users = Vec::new();
            for u in query.values("user") {
                if let Err(e) = valid_user(&u, cfg.max_channel_length) {
                    return Action::error(&OpError::BadChannel(e));
                }
                if users.len() == MAX_USERS_ASKED {
                    return Action::error(&OpError::BadRequest(format!(
                        "at most {MAX_USERS_ASKED} users per request"
                    )));
                }
                users.push(u);
            }
            if users.is_empty() {
                return Action::error(&OpError::BadRequest("missing user".into()));
            }
            broker.users_online(worker, users, reply);
            Action::Pending
        }
        ("GET", "/api/presence") => match channel_param(query, cfg) {
            Ok(c) => {
                broker.presence(worker, &c, reply);
                Action::Pending
            }
            Err(e) => Action::error(&e),
        },
        ("GET", "/api/stats") => Action::json(200, &stats_json()),
        _ => Action::error(&OpError::NotFound),
    }
}

fn channel_param(query: Query<'_>, cfg: &GatewayConfig) -> Result<String, OpError> {
    let c = query
        .value("channel")
        .ok_or(OpError::BadRequest("missing channel".into()))?;
    // A personal channel is named by its user id, which must be valid.
    match c.strip_prefix(USER_PREFIX) {
        Some(user) => valid_user(user, cfg.max_channel_length),
        None => valid_channel(&c, cfg.max_channel_length),
    }
    .map_err(OpError::BadChannel)?;
    Ok(c)
}

/// The answer to a `POST /send` op: the reply's JSON (the same a
/// WebSocket client gets) with the reply's status.
pub fn send_reply(id: Option<&RawValue>, reply: &Reply) -> Action {
    let mut body = reply.to_json(id);
    body.push(b'\n');
    Action::Respond {
        status: reply.status(),
        content_type: "application/json",
        body,
    }
}

/// A broker's answer to a `POST /send` op.
pub fn render_send_answer(id: Option<&RawValue>, body: ReplyBody) -> Action {
    let reply = Reply::from_answer(body).unwrap_or_else(|other| {
        log::warn!("an answer to /send that is not a publish's or presence's: {other:?}");
        Reply::Error(OpError::BadRequest("unexpected answer".into()))
    });
    send_reply(id, &reply)
}

/// Render a broker answer to an API request.
pub fn render_reply(body: ReplyBody) -> Action {
    match body {
        ReplyBody::Published(Ok(pos)) => {
            Action::json(200, &json!({ "epoch": pos.epoch, "offset": pos.offset }))
        }
        ReplyBody::PublishedBatch(results) => {
            let items: Vec<Value> = results
                .into_iter()
                .map(|r| match r {
                    Ok(pos) => json!({ "epoch": pos.epoch, "offset": pos.offset }),
                    Err(e) => json!({ "error": error_json(&e) }),
                })
                .collect();
            Action::json(200, &Value::Array(items))
        }
        ReplyBody::History(Ok(page)) => {
            // The stored publications are already JSON: spliced in.
            let mut body = crate::gateway::ops::history_json(&page);
            body.push(b'\n');
            Action::Respond {
                status: 200,
                content_type: "application/json",
                body,
            }
        }
        ReplyBody::Presence(Ok(info)) => {
            Action::json(200, &serde_json::to_value(info).expect("serializes"))
        }
        ReplyBody::Users(Ok(users)) => {
            let users: serde_json::Map<String, Value> = users
                .into_iter()
                .map(|(u, online)| (u, Value::Bool(online)))
                .collect();
            Action::json(200, &json!({ "users": users }))
        }
        ReplyBody::Published(Err(e))
        | ReplyBody::History(Err(e))
        | ReplyBody::Presence(Err(e))
        | ReplyBody::Users(Err(e)) => Action::error(&e),
        ReplyBody::Subscribed { .. } | ReplyBody::Replay(_) | ReplyBody::Hook(_) => {
            Action::error(&OpError::BadRequest("unexpected answer".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_checks() {
        let h = |extra: &str| format!("GET /api/stats HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
        let ok = |req: &str, key: Option<&str>| {
            authorized(&Head::parse(req.as_bytes(), 8192).unwrap().unwrap(), key)
        };
        assert!(ok(&h(""), None));
        assert!(!ok(&h(""), Some("k1")));
        assert!(ok(&h("Authorization: Bearer k1\r\n"), Some("k1")));
        assert!(ok(&h("X-API-Key: k1\r\n"), Some("k1")));
        assert!(!ok(&h("Authorization: Bearer k2\r\n"), Some("k1")));
        assert!(!ok(&h("X-API-Key: k\r\n"), Some("k1")));
    }
}
