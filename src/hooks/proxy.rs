//! The proxy protocol: what wsgate sends the backend when a client
//! connects, is refreshed, subscribes, publishes or calls `rpc`, what the
//! backend may answer, and the decision the session gets out of it.
//!
//! The JSON is Centrifugo's HTTP proxy protocol (its `ConnectRequest`,
//! `SubscribeResult`, … as documented in Centrifugo's "Proxy events to the
//! backend"), so that a backend written for it works unchanged. Every
//! field, and what wsgate does with it, is in `docs/hooks.md`; the short
//! form:
//!
//! - Every request: `client` (the connection's client id), `transport`
//!   (`websocket`, `sse`, `poll`, `send`), `protocol` and `encoding`
//!   (always `"json"`), then per hook: `user`, `channel`, `data`, `method`,
//!   `channels`, `meta`.
//! - Every answer is one of `{"result":{…}}`, `{"error":{"code","message"}}`
//!   or `{"disconnect":{"code","reason"}}` (checked in that order:
//!   `disconnect` wins, then `error`). `error.code` must be within
//!   400..=1999 and `disconnect.code` within 4000..=4999 (the ranges
//!   Centrifugo reserves for applications), else the answer is bad.
//! - An HTTP 401 or 403 answer refuses (as nchan's
//!   `nchan_authorize_request` reads it); any other status but 200..=299 is
//!   a failure.
//! - A failure (the backend down, slow, 5xx, bad JSON, an answer over
//!   `proxy.max_answer`, the queue full) refuses an op with error code 14
//!   [`BACKEND_UNAVAILABLE`] (HTTP 502; the connection stays open) and a
//!   connection with HTTP 503: never silently opened.
//! - Binary payloads (`b64data`, `b64info`) are refused as a bad answer:
//!   wsgate speaks JSON only, and ignoring them would publish or show
//!   something other than what the backend meant.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::base::ClientName;
use serde_json::value::RawValue;

use super::client::{BackendClient, Done, Failure, Job, Settings, StatsByLabel};
use super::config::ProxyConfig;

/// The error code of an op refused because the backend could not decide
/// it (down, timed out, 5xx, a bad answer, too many calls waiting): the
/// next free code after 13. The op was not applied by wsgate (no
/// subscription, no publication); an `rpc` may have run on the backend
/// when the failure came after it was sent ([`Failure::maybe_received`]).
pub const BACKEND_UNAVAILABLE: u16 = 14;
/// Its name in the error table.
pub const BACKEND_UNAVAILABLE_NAME: &str = "backend_unavailable";
/// Its HTTP status (`POST /send`): 502 Bad Gateway, the status of an
/// upstream that failed (503 with code 10 is the broker's).
pub const BACKEND_UNAVAILABLE_STATUS: u16 = 502;
/// The HTTP status of a connection refused because the connect proxy
/// failed (the client should retry later).
pub const CONNECT_UNAVAILABLE_STATUS: u16 = 503;
/// The code an op gets when the backend answered HTTP 401 or 403
/// (`permission_denied`, as a token's patterns refuse).
pub const PERMISSION_DENIED: u16 = 8;

/// Longest `info` kept per connection or subscription (it is held in
/// memory and shown in presence): a larger one is a bad answer.
pub const MAX_INFO: usize = 4096;
/// Longest `meta` kept per connection.
pub const MAX_META: usize = 4096;
/// Longest close reason: a close frame's payload is at most 125 bytes, two
/// of them the code (RFC 6455 §5.5).
pub const MAX_REASON: usize = 123;
/// Longest error message passed on to a client.
pub const MAX_MESSAGE: usize = 256;
/// Most channels a connect answer may subscribe to.
pub const MAX_CHANNELS: usize = 1024;
/// Longest channel name or user id accepted from the backend (the
/// configured `limits.max_channel_length` is checked again when applied).
const MAX_NAME: usize = 255;

/// JSON from the backend in the one form wsgate stores and sends
/// (`broker::compact`): the value as sent, without the whitespace between
/// its tokens, so that no raw line break reaches an SSE field or a
/// presence list, and a replaced publication is stored like any other.
/// Compared by its text.
#[derive(Clone, Debug)]
pub struct Json(pub Box<RawValue>);

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        match crate::base::compact::compact(&raw) {
            std::borrow::Cow::Borrowed(_) => Ok(Json(raw)),
            std::borrow::Cow::Owned(c) => RawValue::from_string(c)
                .map(Json)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl Json {
    pub fn get(&self) -> &str {
        self.0.get()
    }

    pub fn null() -> Json {
        Json(RawValue::NULL.to_owned())
    }

    /// `s` if it is JSON.
    pub fn parse(s: &str) -> Result<Json, serde_json::Error> {
        RawValue::from_string(s.to_owned()).map(Json)
    }
}

impl PartialEq for Json {
    fn eq(&self, o: &Json) -> bool {
        self.get() == o.get()
    }
}

impl Eq for Json {}

/// The hooks, also the client's counter labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    Connect = 0,
    Refresh = 1,
    Subscribe = 2,
    Publish = 3,
    Rpc = 4,
}

impl Hook {
    pub const ALL: [Hook; 5] = [
        Hook::Connect,
        Hook::Refresh,
        Hook::Subscribe,
        Hook::Publish,
        Hook::Rpc,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Refresh => "refresh",
            Hook::Subscribe => "subscribe",
            Hook::Publish => "publish",
            Hook::Rpc => "rpc",
        }
    }

    /// The client's counter label.
    pub fn label(self) -> usize {
        self as usize
    }
}

/// How the client is connected (`transport` in every request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[serde(rename = "websocket")]
    WebSocket,
    Sse,
    /// Long-poll.
    Poll,
    /// One op over `POST /send`.
    Send,
}

/// The fields every request carries.
#[derive(Clone, Debug, Serialize)]
pub struct Client<'a> {
    /// The connection's client id (as in presence).
    pub client: ClientName<'a>,
    pub transport: Transport,
    /// Always `"json"` (Centrifugo's protocol name).
    pub protocol: &'static str,
    /// Always `"json"`.
    pub encoding: &'static str,
}

impl<'a> Client<'a> {
    pub fn new(client: impl Into<ClientName<'a>>, transport: Transport) -> Client<'a> {
        Client {
            client: client.into(),
            transport,
            protocol: "json",
            encoding: "json",
        }
    }
}

/// `POST <connect>`: a client connects without a token.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectRequest<'a> {
    #[serde(flatten)]
    pub client: Client<'a>,
    /// The channels the client asked for in the URL (`?channel=`): the
    /// backend answers with those it allows (`result.channels`).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub channels: &'a [&'a str],
    /// Data the client sent with its connection, when it sent some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
    /// The client's name and version, when it said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<&'a str>,
}

/// `POST <refresh>`: a connection whose `expire_at` has come.
#[derive(Clone, Debug, Serialize)]
pub struct RefreshRequest<'a> {
    #[serde(flatten)]
    pub client: Client<'a>,
    pub user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a RawValue>,
}

/// `POST <subscribe>`: a subscribe in a namespace with `subscribe_proxy`.
#[derive(Clone, Debug, Serialize)]
pub struct SubscribeRequest<'a> {
    #[serde(flatten)]
    pub client: Client<'a>,
    pub user: &'a str,
    pub channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a RawValue>,
}

/// `POST <publish>`: a client's publish in a namespace with
/// `publish_proxy`.
#[derive(Clone, Debug, Serialize)]
pub struct PublishRequest<'a> {
    #[serde(flatten)]
    pub client: Client<'a>,
    pub user: &'a str,
    pub channel: &'a str,
    pub data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a RawValue>,
}

/// `POST <rpc>`: the `rpc` op.
#[derive(Clone, Debug, Serialize)]
pub struct RpcRequest<'a> {
    #[serde(flatten)]
    pub client: Client<'a>,
    pub user: &'a str,
    pub method: &'a str,
    pub data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a RawValue>,
}

/// `{"error":{…}}`: the backend refuses, with a code of its own that the
/// client receives as is.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct BackendError {
    /// 400..=1999.
    pub code: u32,
    #[serde(default)]
    pub message: String,
    /// Centrifugo's flag: the client may retry. Passed on to the client.
    #[serde(default)]
    pub temporary: bool,
}

impl BackendError {
    /// The status of this error on `POST /send`: the code itself when it
    /// is an HTTP error status, else 400.
    pub fn http_status(&self) -> u16 {
        match self.code {
            c @ 400..=599 => c as u16,
            _ => 400,
        }
    }
}

/// `{"disconnect":{…}}`: close the connection with this code.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Disconnect {
    /// 4000..=4499: the client should reconnect; 4500..=4999: it should
    /// not (the JavaScript client stops).
    pub code: u16,
    #[serde(default)]
    pub reason: String,
}

impl Disconnect {
    /// The HTTP status when the connection cannot be closed with a code
    /// (a refused upgrade, an SSE or long-poll request, `/send`): 503
    /// (retry) for 4000..=4499, 403 for 4500..=4999.
    pub fn http_status(&self) -> u16 {
        if self.code < 4500 {
            503
        } else {
            403
        }
    }
}

/// An op the backend did not allow: what the client's error reply says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpRefusal {
    /// `{"error":…}`: the backend's code and message.
    Backend(BackendError),
    /// HTTP 401 or 403: code 8 `permission_denied`.
    Denied(u16),
    /// The backend could not decide: code 14 `backend_unavailable`.
    Unavailable(Failure),
}

impl OpRefusal {
    pub fn code(&self) -> u32 {
        match self {
            OpRefusal::Backend(e) => e.code,
            OpRefusal::Denied(_) => PERMISSION_DENIED as u32,
            OpRefusal::Unavailable(_) => BACKEND_UNAVAILABLE as u32,
        }
    }

    pub fn message(&self) -> String {
        match self {
            OpRefusal::Backend(e) => e.message.clone(),
            OpRefusal::Denied(s) => format!("permission denied (backend answered HTTP {s})"),
            OpRefusal::Unavailable(f) => f.to_string(),
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            OpRefusal::Backend(e) => e.http_status(),
            OpRefusal::Denied(_) => 403,
            OpRefusal::Unavailable(_) => BACKEND_UNAVAILABLE_STATUS,
        }
    }

    /// Whether the client may retry the same op (Centrifugo's `temporary`).
    pub fn temporary(&self) -> bool {
        match self {
            OpRefusal::Backend(e) => e.temporary,
            OpRefusal::Denied(_) => false,
            OpRefusal::Unavailable(_) => true,
        }
    }
}

/// A connection the backend accepted.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Connected {
    /// The user; `None` for an anonymous connection (`"user":""`).
    pub user: Option<String>,
    /// Unix seconds; the refresh proxy is asked then (or, without one, the
    /// connection is closed 4501). `None`: never.
    pub expire_at: Option<u64>,
    /// Shown in presence and join/leave for this connection.
    pub info: Option<Json>,
    /// Sent to the client when it is connected.
    pub data: Option<Json>,
    /// Channels to subscribe at once (`channels` and the keys of `subs`,
    /// in order, without repeats), each with its own `info` from `subs`.
    pub channels: Vec<(String, Option<Json>)>,
    /// Kept with the connection, never shown to clients; sent back in every
    /// later request of this connection.
    pub meta: Option<Json>,
}

/// Why a connection was refused: the HTTP status, and for WebSocket the
/// close code when the backend asked for one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// `{"error":…}`.
    Backend(BackendError),
    /// `{"disconnect":…}`: a WebSocket is upgraded, then closed with it.
    Disconnect(Disconnect),
    /// HTTP 401 or 403 from the backend: the same status.
    Denied(u16),
    /// The backend could not decide: 503.
    Unavailable(Failure),
}

impl ConnectRefusal {
    /// The status of the refused request. An `error` code that is an HTTP
    /// client error (400..=499: 401, 403, 429, …) is used as is; a server
    /// error (500..=599) becomes 503; an application code (600..=1999)
    /// becomes 403.
    pub fn http_status(&self) -> u16 {
        match self {
            ConnectRefusal::Backend(e) => match e.code {
                c @ 400..=499 => c as u16,
                500..=599 => CONNECT_UNAVAILABLE_STATUS,
                _ => 403,
            },
            ConnectRefusal::Disconnect(d) => d.http_status(),
            ConnectRefusal::Denied(s) => *s,
            ConnectRefusal::Unavailable(_) => CONNECT_UNAVAILABLE_STATUS,
        }
    }

    /// The close code for a WebSocket that may be upgraded then closed
    /// (only when the backend asked for one).
    pub fn close(&self) -> Option<(u16, &str)> {
        match self {
            ConnectRefusal::Disconnect(d) => Some((d.code, d.reason.as_str())),
            _ => None,
        }
    }

    /// The body of the refused request: `{"error":{"code","message"}}`.
    pub fn error_json(&self) -> serde_json::Value {
        let (code, message) = match self {
            ConnectRefusal::Backend(e) => (e.code, e.message.clone()),
            ConnectRefusal::Disconnect(d) => (d.code as u32, d.reason.clone()),
            ConnectRefusal::Denied(s) => (*s as u32, format!("backend answered HTTP {s}")),
            ConnectRefusal::Unavailable(f) => (BACKEND_UNAVAILABLE as u32, f.to_string()),
        };
        serde_json::json!({ "error": { "code": code, "message": message } })
    }
}

/// What the connect proxy decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectDecision {
    Accept(Connected),
    Refuse(ConnectRefusal),
}

/// What the refresh proxy decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshDecision {
    /// Keep the connection until `expire_at` (`None`: for good); replace
    /// its `info` when given.
    Prolong {
        expire_at: Option<u64>,
        info: Option<Json>,
    },
    /// `"expired":true`: close with 4501.
    Expired,
    /// Close with this code.
    Disconnect(Disconnect),
    /// The backend could not decide (or answered `error`, which Centrifugo
    /// ignores for refresh): keep the connection and ask again later.
    Retry(Failure),
}

/// A subscription the backend allowed.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SubscribeGrant {
    /// This connection's info in the channel's presence.
    pub info: Option<Json>,
    /// Sent to the client in the subscribe reply.
    pub data: Option<Json>,
    /// Unix seconds at which the subscription ends (an `unsubscribed`
    /// notice, code 8).
    pub expire_at: Option<u64>,
    /// Per-connection overrides of the namespace's `presence` and
    /// `join_leave`.
    pub presence: Option<bool>,
    pub join_leave: Option<bool>,
}

/// What the subscribe proxy decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscribeDecision {
    Allow(SubscribeGrant),
    Refuse(OpRefusal),
    Disconnect(Disconnect),
}

/// What the publish proxy decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishDecision {
    /// Publish the client's data.
    Allow {
        skip_history: bool,
        idempotency_key: Option<String>,
    },
    /// Publish this instead of the client's data.
    Replace {
        data: Json,
        skip_history: bool,
        idempotency_key: Option<String>,
    },
    Refuse(OpRefusal),
    Disconnect(Disconnect),
}

/// What the rpc proxy answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RpcAnswer {
    /// The reply's `data` (`null` when the result had none).
    Data(Json),
    Refuse(OpRefusal),
    Disconnect(Disconnect),
}

/// Any hook's decision, as the sink receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Connect(ConnectDecision),
    Refresh(RefreshDecision),
    Subscribe(SubscribeDecision),
    Publish(PublishDecision),
    Rpc(RpcAnswer),
}

impl Decision {
    /// The decision when the backend could not decide.
    pub fn failed(hook: Hook, f: Failure) -> Decision {
        match hook {
            Hook::Connect => {
                Decision::Connect(ConnectDecision::Refuse(ConnectRefusal::Unavailable(f)))
            }
            Hook::Refresh => Decision::Refresh(RefreshDecision::Retry(f)),
            Hook::Subscribe => {
                Decision::Subscribe(SubscribeDecision::Refuse(OpRefusal::Unavailable(f)))
            }
            Hook::Publish => Decision::Publish(PublishDecision::Refuse(OpRefusal::Unavailable(f))),
            Hook::Rpc => Decision::Rpc(RpcAnswer::Refuse(OpRefusal::Unavailable(f))),
        }
    }

    /// The decision when the backend answered HTTP 401 or 403.
    fn denied(hook: Hook, status: u16) -> Decision {
        match hook {
            Hook::Connect => {
                Decision::Connect(ConnectDecision::Refuse(ConnectRefusal::Denied(status)))
            }
            Hook::Refresh => Decision::Refresh(RefreshDecision::Expired),
            Hook::Subscribe => {
                Decision::Subscribe(SubscribeDecision::Refuse(OpRefusal::Denied(status)))
            }
            Hook::Publish => Decision::Publish(PublishDecision::Refuse(OpRefusal::Denied(status))),
            Hook::Rpc => Decision::Rpc(RpcAnswer::Refuse(OpRefusal::Denied(status))),
        }
    }
}

// ------------------------------------------------------------- answers --

/// `{"result":…}`, `{"error":…}` or `{"disconnect":…}`. Unknown fields are
/// ignored (newer Centrifugo fields wsgate does not use).
#[derive(Deserialize)]
struct Answer<R> {
    result: Option<R>,
    error: Option<BackendError>,
    disconnect: Option<Disconnect>,
}

/// What the backend said, checked.
enum Said<R> {
    Result(R),
    Error(BackendError),
    Disconnect(Disconnect),
}

fn bad(why: impl Into<String>) -> Failure {
    Failure::BadAnswer(why.into())
}

/// Parse an answer of a 2xx status; `disconnect` wins over `error`, which
/// wins over `result`.
fn said<'de, R: Deserialize<'de>>(body: &'de [u8]) -> Result<Said<R>, Failure> {
    let a: Answer<R> = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    if let Some(d) = a.disconnect {
        if !(4000..=4999).contains(&d.code) {
            return Err(bad(format!(
                "disconnect code {} outside 4000..=4999",
                d.code
            )));
        }
        if d.reason.len() > MAX_REASON {
            return Err(bad(format!("disconnect reason over {MAX_REASON} bytes")));
        }
        return Ok(Said::Disconnect(d));
    }
    if let Some(mut e) = a.error {
        if !(400..=1999).contains(&e.code) {
            return Err(bad(format!("error code {} outside 400..=1999", e.code)));
        }
        truncate(&mut e.message, MAX_MESSAGE);
        return Ok(Said::Error(e));
    }
    match a.result {
        Some(r) => Ok(Said::Result(r)),
        None => Err(bad("none of result, error, disconnect")),
    }
}

/// Cut `s` to at most `max` bytes, on a character boundary.
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}

/// A 2xx status is an answer; 401 and 403 refuse; anything else fails.
fn status_says(hook: Hook, status: u16) -> Result<Option<Decision>, Failure> {
    match status {
        200..=299 => Ok(None),
        401 | 403 => Ok(Some(Decision::denied(hook, status))),
        s => Err(Failure::Status(s)),
    }
}

fn no_binary(b64: &Option<serde::de::IgnoredAny>, field: &str) -> Result<(), Failure> {
    match b64 {
        Some(_) => Err(bad(format!(
            "{field} (binary payloads) is not supported: wsgate speaks JSON"
        ))),
        None => Ok(()),
    }
}

fn sized(v: Option<Json>, max: usize, what: &str) -> Result<Option<Json>, Failure> {
    match v {
        Some(v) if v.get().len() > max => Err(bad(format!("{what} over {max} bytes"))),
        v => Ok(v),
    }
}

/// `0` or absent: never.
fn expiry(t: Option<u64>) -> Option<u64> {
    t.filter(|&t| t > 0)
}

#[derive(Deserialize)]
struct BoolValue {
    value: bool,
}

#[derive(Deserialize, Default)]
struct Override {
    presence: Option<BoolValue>,
    join_leave: Option<BoolValue>,
}

#[derive(Deserialize)]
struct SubOptions {
    info: Option<Json>,
    b64info: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct ConnectResult {
    user: String,
    expire_at: Option<u64>,
    info: Option<Json>,
    b64info: Option<serde::de::IgnoredAny>,
    data: Option<Json>,
    b64data: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    subs: BTreeMap<String, SubOptions>,
    meta: Option<Json>,
}

/// Decode a connect proxy's answer.
pub fn decode_connect(status: u16, body: &[u8]) -> Result<Decision, Failure> {
    if let Some(d) = status_says(Hook::Connect, status)? {
        return Ok(d);
    }
    let r = match said::<ConnectResult>(body)? {
        Said::Result(r) => r,
        Said::Error(e) => {
            return Ok(Decision::Connect(ConnectDecision::Refuse(
                ConnectRefusal::Backend(e),
            )))
        }
        Said::Disconnect(d) => {
            return Ok(Decision::Connect(ConnectDecision::Refuse(
                ConnectRefusal::Disconnect(d),
            )))
        }
    };
    no_binary(&r.b64info, "b64info")?;
    no_binary(&r.b64data, "b64data")?;
    let user = if r.user.is_empty() {
        None
    } else {
        crate::pubsub::valid_user(&r.user, MAX_NAME).map_err(bad)?;
        Some(r.user)
    };
    if let Some(m) = &r.meta {
        if !m.get().starts_with('{') {
            return Err(bad("meta is not a JSON object"));
        }
    }
    let mut channels: Vec<(String, Option<Json>)> = Vec::new();
    let subs = r.subs.into_iter().map(|(c, o)| (c, Some(o)));
    for (c, opts) in r.channels.into_iter().map(|c| (c, None)).chain(subs) {
        crate::pubsub::valid_channel(&c, MAX_NAME).map_err(bad)?;
        let info = match opts {
            Some(o) => {
                no_binary(&o.b64info, "subs.b64info")?;
                sized(o.info, MAX_INFO, "subs.info")?
            }
            None => None,
        };
        match channels.iter_mut().find(|(n, _)| *n == c) {
            Some(e) => e.1 = info.or(e.1.take()),
            None => channels.push((c, info)),
        }
        if channels.len() > MAX_CHANNELS {
            return Err(bad(format!("over {MAX_CHANNELS} channels")));
        }
    }
    Ok(Decision::Connect(ConnectDecision::Accept(Connected {
        user,
        expire_at: expiry(r.expire_at),
        info: sized(r.info, MAX_INFO, "info")?,
        data: r.data,
        channels,
        meta: sized(r.meta, MAX_META, "meta")?,
    })))
}

#[derive(Deserialize)]
struct RefreshResult {
    #[serde(default)]
    expired: bool,
    expire_at: Option<u64>,
    info: Option<Json>,
    b64info: Option<serde::de::IgnoredAny>,
}

/// Decode a refresh proxy's answer.
pub fn decode_refresh(status: u16, body: &[u8]) -> Result<Decision, Failure> {
    if let Some(d) = status_says(Hook::Refresh, status)? {
        return Ok(d);
    }
    Ok(Decision::Refresh(match said::<RefreshResult>(body)? {
        Said::Result(r) if r.expired => RefreshDecision::Expired,
        Said::Result(r) => {
            no_binary(&r.b64info, "b64info")?;
            RefreshDecision::Prolong {
                expire_at: expiry(r.expire_at),
                info: sized(r.info, MAX_INFO, "info")?,
            }
        }
        Said::Error(e) => RefreshDecision::Retry(bad(format!(
            "refresh answered error {} (ignored, as Centrifugo does)",
            e.code
        ))),
        Said::Disconnect(d) => RefreshDecision::Disconnect(d),
    }))
}

#[derive(Deserialize)]
struct SubscribeResult {
    info: Option<Json>,
    b64info: Option<serde::de::IgnoredAny>,
    data: Option<Json>,
    b64data: Option<serde::de::IgnoredAny>,
    expire_at: Option<u64>,
    #[serde(default)]
    r#override: Override,
}

/// Decode a subscribe proxy's answer.
pub fn decode_subscribe(status: u16, body: &[u8]) -> Result<Decision, Failure> {
    if let Some(d) = status_says(Hook::Subscribe, status)? {
        return Ok(d);
    }
    Ok(Decision::Subscribe(match said::<SubscribeResult>(body)? {
        Said::Result(r) => {
            no_binary(&r.b64info, "b64info")?;
            no_binary(&r.b64data, "b64data")?;
            SubscribeDecision::Allow(SubscribeGrant {
                info: sized(r.info, MAX_INFO, "info")?,
                data: r.data,
                expire_at: expiry(r.expire_at),
                presence: r.r#override.presence.map(|b| b.value),
                join_leave: r.r#override.join_leave.map(|b| b.value),
            })
        }
        Said::Error(e) => SubscribeDecision::Refuse(OpRefusal::Backend(e)),
        Said::Disconnect(d) => SubscribeDecision::Disconnect(d),
    }))
}

#[derive(Deserialize)]
struct PublishResult {
    data: Option<Json>,
    b64data: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    skip_history: bool,
    idempotency_key: Option<String>,
}

/// Decode a publish proxy's answer.
pub fn decode_publish(status: u16, body: &[u8]) -> Result<Decision, Failure> {
    if let Some(d) = status_says(Hook::Publish, status)? {
        return Ok(d);
    }
    Ok(Decision::Publish(match said::<PublishResult>(body)? {
        Said::Result(r) => {
            no_binary(&r.b64data, "b64data")?;
            let idempotency_key = r.idempotency_key.filter(|k| !k.is_empty());
            if idempotency_key.as_ref().is_some_and(|k| k.len() > MAX_NAME) {
                return Err(bad(format!("idempotency_key over {MAX_NAME} bytes")));
            }
            match r.data {
                Some(data) => PublishDecision::Replace {
                    data,
                    skip_history: r.skip_history,
                    idempotency_key,
                },
                None => PublishDecision::Allow {
                    skip_history: r.skip_history,
                    idempotency_key,
                },
            }
        }
        Said::Error(e) => PublishDecision::Refuse(OpRefusal::Backend(e)),
        Said::Disconnect(d) => PublishDecision::Disconnect(d),
    }))
}

#[derive(Deserialize)]
struct RpcResult {
    data: Option<Json>,
    b64data: Option<serde::de::IgnoredAny>,
}

/// Decode an rpc proxy's answer.
pub fn decode_rpc(status: u16, body: &[u8]) -> Result<Decision, Failure> {
    if let Some(d) = status_says(Hook::Rpc, status)? {
        return Ok(d);
    }
    Ok(Decision::Rpc(match said::<RpcResult>(body)? {
        Said::Result(r) => {
            no_binary(&r.b64data, "b64data")?;
            RpcAnswer::Data(r.data.unwrap_or_else(Json::null))
        }
        Said::Error(e) => RpcAnswer::Refuse(OpRefusal::Backend(e)),
        Said::Disconnect(d) => RpcAnswer::Disconnect(d),
    }))
}

fn decoder(hook: Hook) -> super::client::Decode<Decision> {
    match hook {
        Hook::Connect => decode_connect,
        Hook::Refresh => decode_refresh,
        Hook::Subscribe => decode_subscribe,
        Hook::Publish => decode_publish,
        Hook::Rpc => decode_rpc,
    }
}

// ------------------------------------------------------------- headers --

/// Which of a client's request headers go to the backend: those named in
/// `proxy.forward_headers` (matched without regard to case), and of its
/// `Cookie` headers only the cookies named in `proxy.forward_cookies`
/// (unless `Cookie` itself is forwarded whole). Values that are not UTF-8
/// are left out. The result, with `proxy.static_headers` first, is what a
/// [`Job`] carries.
#[derive(Clone, Debug, Default)]
pub struct HeaderRules {
    names: Vec<String>,
    cookies: Vec<String>,
    statics: Vec<(String, String)>,
}

impl HeaderRules {
    pub fn new(cfg: &ProxyConfig) -> HeaderRules {
        HeaderRules {
            names: cfg
                .forward_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            cookies: cfg.forward_cookies.clone(),
            statics: cfg
                .static_headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Nothing to forward: a connection need not keep its headers.
    pub fn forwards_nothing(&self) -> bool {
        self.names.is_empty() && self.cookies.is_empty()
    }

    /// The headers to send for a request with these `headers` (name,
    /// value bytes), static ones first.
    pub fn select<'a>(
        &self,
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Vec<(String, String)> {
        let mut out = self.statics.clone();
        let mut cookies: Vec<&str> = Vec::new();
        for (name, value) in headers {
            let Ok(value) = std::str::from_utf8(value) else {
                continue;
            };
            let lower = name.to_ascii_lowercase();
            if self.names.contains(&lower) {
                out.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
                out.push((name.to_owned(), value.to_owned()));
            } else if lower == "cookie" && !self.cookies.is_empty() {
                for pair in value.split(';') {
                    let pair = pair.trim();
                    let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
                    if self.cookies.iter().any(|c| c == name) {
                        cookies.push(pair);
                    }
                }
            }
        }
        if !cookies.is_empty() {
            out.retain(|(k, _)| !k.eq_ignore_ascii_case("cookie"));
            out.push(("Cookie".into(), cookies.join("; ")));
        }
        out
    }
}

// --------------------------------------------------------------- proxy --

/// The proxies of one node: the configured URL of each hook, one
/// [`BackendClient`] shared by every worker, and the header rules. Each
/// call encodes its request on the caller's thread (small), queues it, and
/// its [`Decision`] reaches the sink with the caller's context, on a client
/// thread.
pub struct Proxy<C: Send + 'static> {
    urls: [Option<Arc<str>>; 5],
    headers: HeaderRules,
    client: BackendClient<(C, Hook), Decision>,
    /// `proxy.timeout`: every call has its decision within it.
    timeout: std::time::Duration,
}

impl<C: Send + 'static> std::fmt::Debug for Proxy<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("urls", &self.urls).finish()
    }
}

/// A call that could not be queued: its context and the decision to apply
/// at once (a refusal with [`BACKEND_UNAVAILABLE`], or for connect 503).
pub type Refused<C> = (C, Decision);

impl<C: Send + 'static> Proxy<C> {
    /// Start the client threads. `sink` gets every decision (see
    /// [`BackendClient::start`]).
    pub fn start(
        cfg: &ProxyConfig,
        sink: impl Fn(C, Decision) + Send + Sync + 'static,
    ) -> std::io::Result<Proxy<C>> {
        let url = |u: &str| (!u.is_empty()).then(|| Arc::<str>::from(u));
        let settings = Settings {
            concurrency: cfg.concurrency,
            timeout: std::time::Duration::from_millis(cfg.timeout.0),
            queue_size: cfg.queue_size,
            queue_bytes: cfg.queue_bytes,
            max_answer: cfg.max_answer as u64,
            name: "wsgate-proxy".into(),
        };
        let client = BackendClient::start(settings, move |d: Done<(C, Hook), Decision>| {
            let (ctx, hook) = d.ctx;
            sink(ctx, d.result.unwrap_or_else(|f| Decision::failed(hook, f)));
        })?;
        Ok(Proxy {
            urls: [
                url(&cfg.connect),
                url(&cfg.refresh),
                url(&cfg.subscribe),
                url(&cfg.publish),
                url(&cfg.rpc),
            ],
            headers: HeaderRules::new(cfg),
            client,
            timeout: std::time::Duration::from_millis(cfg.timeout.0),
        })
    }

    /// `proxy.timeout`: a call's decision comes within it of the call,
    /// queueing included.
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
    }

    /// How long a connection whose refresh could not be decided (the
    /// backend down, slow, 5xx, a bad answer, an `error`) is kept before
    /// the refresh proxy is asked again: twice `proxy.timeout`, at most
    /// 10 s, and always longer than one call (so that a call is decided
    /// before the next is due). Centrifugo gives such a connection one
    /// more minute; a shorter wait ends a connection the backend refuses
    /// sooner once it is back.
    pub fn refresh_retry(&self) -> std::time::Duration {
        let t = self.timeout;
        (t * 2)
            .min(std::time::Duration::from_secs(10))
            .max(t + std::time::Duration::from_millis(100))
    }

    /// Is this hook configured?
    pub fn has(&self, hook: Hook) -> bool {
        self.urls[hook.label()].is_some()
    }

    /// The header rules (to pick a request's headers once, at connect).
    pub fn header_rules(&self) -> &HeaderRules {
        &self.headers
    }

    pub fn connect(
        &self,
        req: &ConnectRequest<'_>,
        headers: Vec<(String, String)>,
        ctx: C,
    ) -> Result<(), Refused<C>> {
        self.call(Hook::Connect, req, headers, ctx)
    }

    pub fn refresh(
        &self,
        req: &RefreshRequest<'_>,
        headers: Vec<(String, String)>,
        ctx: C,
    ) -> Result<(), Refused<C>> {
        self.call(Hook::Refresh, req, headers, ctx)
    }

    pub fn subscribe(
        &self,
        req: &SubscribeRequest<'_>,
        headers: Vec<(String, String)>,
        ctx: C,
    ) -> Result<(), Refused<C>> {
        self.call(Hook::Subscribe, req, headers, ctx)
    }

    pub fn publish(
        &self,
        req: &PublishRequest<'_>,
        headers: Vec<(String, String)>,
        ctx: C,
    ) -> Result<(), Refused<C>> {
        self.call(Hook::Publish, req, headers, ctx)
    }

    pub fn rpc(
        &self,
        req: &RpcRequest<'_>,
        headers: Vec<(String, String)>,
        ctx: C,
    ) -> Result<(), Refused<C>> {
        self.call(Hook::Rpc, req, headers, ctx)
    }

    /// Queue a call of `hook`. A hook without a URL is refused at once
    /// (a caller's mistake: check [`Proxy::has`] first).
    fn call(
        &self,
        hook: Hook,
        req: &impl Serialize,
        headers: Vec<(String, String)>,
        ctx: C,
    ) -> Result<(), Refused<C>> {
        let Some(url) = &self.urls[hook.label()] else {
            return Err((
                ctx,
                Decision::failed(hook, bad(format!("no {} proxy configured", hook.name()))),
            ));
        };
        // Serializing these types cannot fail: strings, raw JSON, numbers.
        let body = serde_json::to_vec(req).unwrap_or_default();
        let headers = if headers.is_empty() {
            self.headers.statics.clone()
        } else {
            headers
        };
        self.client
            .submit(Job {
                url: url.clone(),
                headers,
                body,
                label: hook.label(),
                decode: decoder(hook),
                ctx: (ctx, hook),
            })
            .map_err(|(job, f)| (job.ctx.0, Decision::failed(hook, f)))
    }

    /// Counters per hook, indexed by [`Hook::label`].
    pub fn stats(&self) -> StatsByLabel {
        self.client.stats()
    }

    /// Calls waiting for a thread.
    pub fn queued(&self) -> usize {
        self.client.queued()
    }

    /// Fail what waits, finish what is in flight, join the threads.
    pub fn stop(&mut self) {
        self.client.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Json {
        Json::parse(s).unwrap()
    }

    fn connect(body: &str) -> Result<ConnectDecision, Failure> {
        match decode_connect(200, body.as_bytes())? {
            Decision::Connect(d) => Ok(d),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn requests_are_centrifugo_shaped() {
        let data = raw(r#"{"input":"hello"}"#);
        let req = PublishRequest {
            client: Client::new("c1", Transport::WebSocket),
            user: "56",
            channel: "chat:index",
            data: &data.0,
            meta: None,
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"client":"c1","transport":"websocket","protocol":"json","encoding":"json","user":"56","channel":"chat:index","data":{"input":"hello"}}"#
        );
        let req = ConnectRequest {
            client: Client::new("c2", Transport::Poll),
            channels: &["a", "b"],
            data: None,
            name: None,
            version: None,
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"client":"c2","transport":"poll","protocol":"json","encoding":"json","channels":["a","b"]}"#
        );
    }

    #[test]
    fn connect_answers() {
        let d = connect(
            r#"{"result":{"user":"56","expire_at":1900000000,"info":{"name":"Ann"},
                "channels":["news","chat"],"subs":{"chat":{"info":{"r":1}},"x:y":{}},
                "meta":{"k":"v"},"data":{"hello":1},"future_field":3}}"#,
        )
        .unwrap();
        let ConnectDecision::Accept(c) = d else {
            panic!("{d:?}")
        };
        assert_eq!(c.user.as_deref(), Some("56"));
        assert_eq!(c.expire_at, Some(1_900_000_000));
        assert_eq!(c.info.unwrap().get(), r#"{"name":"Ann"}"#);
        assert_eq!(c.meta.unwrap().get(), r#"{"k":"v"}"#);
        let names: Vec<_> = c.channels.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["news", "chat", "x:y"], "in order, without repeats");
        assert_eq!(c.channels[1].1.as_ref().unwrap().get(), r#"{"r":1}"#);
        // Anonymous, no expiry.
        let d = connect(r#"{"result":{"user":"","expire_at":0}}"#).unwrap();
        assert_eq!(d, ConnectDecision::Accept(Connected::default()));
    }

    #[test]
    fn refusals_and_their_statuses() {
        let e = |code: u32| {
            let body = format!(r#"{{"error":{{"code":{code},"message":"no"}}}}"#);
            match connect(&body).unwrap() {
                ConnectDecision::Refuse(r) => r,
                d => panic!("{d:?}"),
            }
        };
        assert_eq!(e(401).http_status(), 401);
        assert_eq!(e(403).http_status(), 403);
        assert_eq!(e(429).http_status(), 429);
        assert_eq!(e(500).http_status(), 503);
        assert_eq!(e(1000).http_status(), 403);
        assert_eq!(e(1000).close(), None);
        let d =
            connect(r#"{"disconnect":{"code":4501,"reason":"unauthorized"},"error":{"code":403}}"#)
                .unwrap();
        let ConnectDecision::Refuse(r) = d else {
            panic!()
        };
        assert_eq!(r.close(), Some((4501, "unauthorized")), "disconnect wins");
        assert_eq!(r.http_status(), 403);
        let d = connect(r#"{"disconnect":{"code":4000,"reason":"later"}}"#).unwrap();
        let ConnectDecision::Refuse(r) = d else {
            panic!()
        };
        assert_eq!(r.http_status(), 503, "4000..=4499: retry");
        // HTTP statuses.
        for s in [401, 403] {
            assert_eq!(
                decode_connect(s, b"whatever").unwrap(),
                Decision::Connect(ConnectDecision::Refuse(ConnectRefusal::Denied(s)))
            );
        }
        assert_eq!(decode_connect(500, b"{}"), Err(Failure::Status(500)));
        assert_eq!(decode_connect(302, b""), Err(Failure::Status(302)));
        let f = Decision::failed(Hook::Connect, Failure::Timeout);
        let Decision::Connect(ConnectDecision::Refuse(r)) = f else {
            panic!()
        };
        assert_eq!(r.http_status(), 503);
        assert_eq!(r.error_json()["error"]["code"], 14);
    }

    #[test]
    fn bad_answers_are_failures() {
        for body in [
            "",
            "{",
            "[]",
            "{}",
            r#"{"result":null}"#,
            r#"{"result":{"user":"a b"}}"#,
            r#"{"result":{"user":"u","channels":["bad channel"]}}"#,
            r#"{"result":{"user":"u","b64info":"AAAA"}}"#,
            r#"{"result":{"user":"u","meta":[1]}}"#,
            r#"{"result":{"user":7}}"#,
            r#"{"error":{"code":8,"message":"impersonates wsgate's codes"}}"#,
            r#"{"error":{"code":2000}}"#,
            r#"{"disconnect":{"code":1000,"reason":"x"}}"#,
            r#"{"disconnect":{"code":70000}}"#,
        ] {
            assert!(
                matches!(
                    decode_connect(200, body.as_bytes()),
                    Err(Failure::BadAnswer(_))
                ),
                "{body:?}"
            );
        }
        let long = format!(
            r#"{{"disconnect":{{"code":4500,"reason":"{}"}}}}"#,
            "r".repeat(MAX_REASON + 1)
        );
        assert!(decode_connect(200, long.as_bytes()).is_err());
        let info = format!(
            r#"{{"result":{{"user":"u","info":"{}"}}}}"#,
            "i".repeat(MAX_INFO)
        );
        assert!(decode_connect(200, info.as_bytes()).is_err());
        assert!(matches!(
            decode_publish(200, br#"{"result":{"b64data":"AAAA"}}"#),
            Err(Failure::BadAnswer(_))
        ));
        assert!(matches!(
            decode_rpc(200, br#"{"result":{"data":1,"b64data":"AA"}}"#),
            Err(Failure::BadAnswer(_))
        ));
    }

    #[test]
    fn subscribe_publish_rpc_refresh_answers() {
        assert_eq!(
            decode_subscribe(200, br#"{"result":{}}"#).unwrap(),
            Decision::Subscribe(SubscribeDecision::Allow(SubscribeGrant::default()))
        );
        let Decision::Subscribe(SubscribeDecision::Allow(g)) = decode_subscribe(
            200,
            br#"{"result":{"info":{"role":"mod"},"data":[1],"override":{"join_leave":{"value":true}}}}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(g.info.unwrap().get(), r#"{"role":"mod"}"#);
        assert_eq!((g.join_leave, g.presence), (Some(true), None));
        let Decision::Subscribe(SubscribeDecision::Refuse(r)) = decode_subscribe(
            200,
            br#"{"error":{"code":403,"message":"permission denied","temporary":false}}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.code(), r.http_status(), r.temporary()),
            (403, 403, false)
        );
        let Decision::Subscribe(SubscribeDecision::Refuse(r)) = decode_subscribe(403, b"").unwrap()
        else {
            panic!()
        };
        assert_eq!((r.code(), r.http_status()), (8, 403));

        assert_eq!(
            decode_publish(200, br#"{"result":{}}"#).unwrap(),
            Decision::Publish(PublishDecision::Allow {
                skip_history: false,
                idempotency_key: None
            })
        );
        let Decision::Publish(PublishDecision::Replace {
            data, skip_history, ..
        }) = decode_publish(
            200,
            br#"{"result":{"data":{"text":"***"},"skip_history":true}}"#,
        )
        .unwrap()
        else {
            panic!()
        };
        assert_eq!((data.get(), skip_history), (r#"{"text":"***"}"#, true));
        let Decision::Publish(PublishDecision::Refuse(r)) =
            decode_publish(200, br#"{"error":{"code":1001,"message":"spam"}}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (r.code(), r.message(), r.http_status()),
            (1001, "spam".into(), 400)
        );

        assert_eq!(
            decode_rpc(200, br#"{"result":{"data":{"answer":"2019"}}}"#).unwrap(),
            Decision::Rpc(RpcAnswer::Data(raw(r#"{"answer":"2019"}"#)))
        );
        assert_eq!(
            decode_rpc(200, br#"{"result":{}}"#).unwrap(),
            Decision::Rpc(RpcAnswer::Data(raw("null")))
        );
        assert_eq!(
            decode_rpc(200, br#"{"disconnect":{"code":4500,"reason":"bye"}}"#).unwrap(),
            Decision::Rpc(RpcAnswer::Disconnect(Disconnect {
                code: 4500,
                reason: "bye".into()
            }))
        );
        let f = Decision::failed(Hook::Rpc, Failure::Status(500));
        let Decision::Rpc(RpcAnswer::Refuse(r)) = f else {
            panic!()
        };
        assert_eq!((r.code(), r.http_status()), (14, 502));
        assert!(r.message().contains("500"));

        assert_eq!(
            decode_refresh(200, br#"{"result":{"expire_at":1900000000}}"#).unwrap(),
            Decision::Refresh(RefreshDecision::Prolong {
                expire_at: Some(1_900_000_000),
                info: None
            })
        );
        assert_eq!(
            decode_refresh(200, br#"{"result":{"expired":true}}"#).unwrap(),
            Decision::Refresh(RefreshDecision::Expired)
        );
        assert!(matches!(
            decode_refresh(200, br#"{"error":{"code":500}}"#).unwrap(),
            Decision::Refresh(RefreshDecision::Retry(_))
        ));
    }

    #[test]
    fn backend_json_is_kept_compact() {
        let Decision::Publish(PublishDecision::Replace { data, .. }) = decode_publish(
            200,
            b"{\"result\": {\"data\": {\"text\" :\r\n \"a  b\",\t\"n\": 1.50}}}",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            data.get(),
            r#"{"text":"a  b","n":1.50}"#,
            "strings and numbers as sent"
        );
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let body = format!(
            r#"{{"error":{{"code":400,"message":"{}"}}}}"#,
            "é".repeat(200)
        );
        let Decision::Rpc(RpcAnswer::Refuse(OpRefusal::Backend(e))) =
            decode_rpc(200, body.as_bytes()).unwrap()
        else {
            panic!()
        };
        assert!(e.message.len() <= MAX_MESSAGE && e.message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn forwarded_headers_and_cookies() {
        let cfg = ProxyConfig {
            forward_headers: vec!["Authorization".into(), "X-Request-Id".into()],
            forward_cookies: vec!["session".into(), "lang".into()],
            static_headers: [("X-Gateway-Key".to_owned(), "k".to_owned())].into(),
            ..ProxyConfig::default()
        };
        let rules = HeaderRules::new(&cfg);
        let h = rules.select([
            ("authorization", &b"Bearer t"[..]),
            ("User-Agent", &b"ua"[..]),
            ("Cookie", &b"a=1; session=s3cr3t; lang=en"[..]),
            ("Cookie", &b"other=2"[..]),
            ("X-Request-Id", &b"\xff\xfe"[..]),
        ]);
        assert_eq!(
            h,
            [
                ("X-Gateway-Key".to_owned(), "k".to_owned()),
                ("authorization".to_owned(), "Bearer t".to_owned()),
                ("Cookie".to_owned(), "session=s3cr3t; lang=en".to_owned()),
            ],
            "static first; names without case; only the named cookies; non-UTF-8 left out"
        );
        assert!(HeaderRules::new(&ProxyConfig::default()).forwards_nothing());
    }
}
