//! What an op gets back ([`Reply`]) and what the server tells a client on
//! its own about a subscription ([`Notice`]), typed, before any transport
//! encodes them: a WebSocket writes [`Reply::to_json`] as a text message,
//! `POST /send` answers it with [`Reply::status`], SSE and long-poll write
//! their own events.
//!
//! The JSON is the client protocol's (README, "The gateway wire
//! contract"), the same over every transport that carries op replies.

use std::sync::Arc;

use serde_json::json;
use serde_json::value::RawValue;

use super::ops::{error_reply, history_json, ok_reply, subscribed_fields};
use super::pipeline::Asked;
use crate::base::{OpError, Position};
use crate::broker::{ReplyBody, Tag};
use crate::pubsub::presence::PresenceInfo;

/// The reply to one op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `subscribe`: where the channel stands, whether the gap after
    /// `since` was recovered (`None`: no `since`), and whether publications
    /// come as Fossil deltas (`"delta":true`).
    Subscribed {
        channel: Arc<str>,
        position: Position,
        recovered: Option<bool>,
        delta: bool,
    },
    Unsubscribed {
        channel: Arc<str>,
    },
    /// `publish`: the publication's position.
    Published(Position),
    Presence(PresenceInfo),
    /// `history`: the page's fields (`epoch`, `offset`, `recovered`,
    /// `publications`) as one JSON object ([`history_json`]).
    History(Vec<u8>),
    Pong,
    /// `refresh`: the new token's expiry (Unix seconds), if it has one.
    Refreshed {
        exp: Option<u64>,
    },
    /// `rpc`: the backend's `result.data`, compact JSON.
    Rpc(Box<str>),
    Error(OpError),
}

impl Reply {
    /// `{"id":…,"ok":true,…}` or `{"id":…,"error":{"code":…,"message":"…"}}`,
    /// the id copied byte for byte from the op.
    pub fn to_json(&self, id: Option<&RawValue>) -> Vec<u8> {
        match self {
            Reply::Subscribed {
                channel,
                position,
                recovered,
                delta,
            } => {
                let mut fields = subscribed_fields(channel, position, *recovered);
                if *delta {
                    fields["delta"] = serde_json::Value::Bool(true);
                }
                ok_reply(id, fields)
            }
            Reply::Unsubscribed { channel } => ok_reply(id, json!({ "channel": &**channel })),
            Reply::Published(pos) => {
                ok_reply(id, json!({ "epoch": pos.epoch, "offset": pos.offset }))
            }
            Reply::Presence(info) => ok_reply(id, serde_json::to_value(info).expect("serializes")),
            Reply::History(fields) => {
                // `{"id":…,"ok":true` and the page's fields after it.
                let mut out = ok_reply(id, json!({}));
                out.pop();
                if fields.len() > 2 {
                    out.push(b',');
                    out.extend_from_slice(&fields[1..]);
                } else {
                    out.push(b'}');
                }
                out
            }
            Reply::Pong => ok_reply(id, json!({ "pong": true })),
            Reply::Refreshed { exp } => ok_reply(id, json!({ "exp": exp })),
            Reply::Rpc(data) => {
                let mut out = ok_reply(id, json!({}));
                out.pop();
                out.extend_from_slice(b",\"data\":");
                out.extend_from_slice(data.as_bytes());
                out.push(b'}');
                out
            }
            Reply::Error(e) => error_reply(id, e),
        }
    }

    /// The HTTP status of this reply where a transport has one
    /// (`POST /send`): 200, or the error's.
    pub fn status(&self) -> u16 {
        match self {
            Reply::Error(e) => e.http_status(),
            _ => 200,
        }
    }

    /// The reply a broker's answer to a `publish`, `presence` or `history`
    /// makes;
    /// any other answer is given back.
    pub fn from_answer(body: ReplyBody) -> Result<Reply, ReplyBody> {
        match body {
            ReplyBody::Published(Ok(pos)) => Ok(Reply::Published(pos)),
            ReplyBody::Presence(Ok(info)) => Ok(Reply::Presence(info)),
            ReplyBody::History(Ok(page)) => Ok(Reply::History(history_json(&page))),
            ReplyBody::Published(Err(e))
            | ReplyBody::Presence(Err(e))
            | ReplyBody::History(Err(e)) => Ok(Reply::Error(e)),
            other => Err(other),
        }
    }
}

/// What the server says on its own about one of a client's subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The server ended the subscription (a refreshed token no longer
    /// grants the channel): `{"channel":…,"unsubscribed":{…}}`.
    Unsubscribed { channel: Arc<str>, error: OpError },
    /// Dropped for a slow consumer: `offset` is the last publication sent;
    /// `{"channel":…,"dropped":{"reason":"slow consumer","offset":…}}`.
    Dropped { channel: Arc<str>, offset: u64 },
}

impl Notice {
    pub fn to_json(&self) -> Vec<u8> {
        match self {
            Notice::Unsubscribed { channel, error } => {
                super::ops::unsubscribed_notice(channel, error)
            }
            Notice::Dropped { channel, offset } => {
                let v = json!({
                    "channel": &**channel,
                    "dropped": { "reason": "slow consumer", "offset": offset },
                });
                serde_json::to_vec(&v).expect("serializes")
            }
        }
    }
}

/// What became of an op handed to a session.
#[derive(Debug)]
pub enum Dispatched {
    /// Answered at once: the notices (a `refresh` that ended
    /// subscriptions), then the reply.
    Now(Vec<Notice>, Reply),
    /// Asked of the broker; its answer carries `Tag`.
    Asked(Tag, Asked, Arc<str>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: u64) -> Position {
        Position {
            epoch: "e".into(),
            offset,
        }
    }

    /// Each reply's JSON, as clients have always received it.
    #[test]
    fn json_table() {
        let id = RawValue::from_string("7".into()).unwrap();
        let id = Some(&*id);
        let cases: Vec<(Reply, &str, u16)> = vec![
            (
                Reply::Subscribed {
                    channel: "c".into(),
                    position: pos(4),
                    recovered: Some(true),
                    delta: false,
                },
                r#"{"id":7,"channel":"c","epoch":"e","offset":4,"ok":true,"recovered":true}"#,
                200,
            ),
            (
                Reply::Subscribed {
                    channel: "c".into(),
                    position: pos(4),
                    recovered: None,
                    delta: true,
                },
                r#"{"id":7,"channel":"c","delta":true,"epoch":"e","offset":4,"ok":true}"#,
                200,
            ),
            (
                Reply::Subscribed {
                    channel: "c".into(),
                    position: pos(0),
                    recovered: None,
                    delta: false,
                },
                r#"{"id":7,"channel":"c","epoch":"e","offset":0,"ok":true}"#,
                200,
            ),
            (
                Reply::Unsubscribed {
                    channel: "c".into(),
                },
                r#"{"id":7,"channel":"c","ok":true}"#,
                200,
            ),
            (
                Reply::Published(pos(9)),
                r#"{"id":7,"epoch":"e","offset":9,"ok":true}"#,
                200,
            ),
            (
                Reply::Presence(PresenceInfo::default()),
                r#"{"id":7,"clients":0,"members":[],"ok":true,"users":0}"#,
                200,
            ),
            (Reply::Pong, r#"{"id":7,"ok":true,"pong":true}"#, 200),
            (
                Reply::Refreshed { exp: Some(99) },
                r#"{"id":7,"exp":99,"ok":true}"#,
                200,
            ),
            (
                Reply::Refreshed { exp: None },
                r#"{"id":7,"exp":null,"ok":true}"#,
                200,
            ),
            (
                Reply::Error(OpError::NotSubscribed),
                r#"{"id":7,"error":{"code":7,"message":"not subscribed"}}"#,
                404,
            ),
            (
                Reply::Error(OpError::OutcomeUnknown("x")),
                r#"{"id":7,"error":{"code":13,"message":"outcome unknown: x"}}"#,
                504,
            ),
        ];
        for (reply, json, status) in cases {
            assert_eq!(
                String::from_utf8(reply.to_json(id)).unwrap(),
                json,
                "{reply:?}"
            );
            assert_eq!(reply.status(), status, "{reply:?}");
        }
        assert_eq!(Reply::Pong.to_json(None), br#"{"ok":true,"pong":true}"#);
    }

    #[test]
    fn notices() {
        let n = Notice::Dropped {
            channel: "c".into(),
            offset: 41,
        };
        assert_eq!(
            n.to_json(),
            br#"{"channel":"c","dropped":{"offset":41,"reason":"slow consumer"}}"#
        );
        let n = Notice::Unsubscribed {
            channel: "c".into(),
            error: OpError::PermissionDenied,
        };
        assert_eq!(
            n.to_json(),
            br#"{"channel":"c","unsubscribed":{"code":8,"message":"permission denied"}}"#
        );
    }

    #[test]
    fn broker_answers() {
        let r = Reply::from_answer(ReplyBody::Published(Ok(pos(3))));
        assert_eq!(r.unwrap(), Reply::Published(pos(3)));
        let r = Reply::from_answer(ReplyBody::Presence(Err(OpError::Unavailable("x"))));
        assert_eq!(r.unwrap(), Reply::Error(OpError::Unavailable("x")));
        assert!(Reply::from_answer(ReplyBody::PublishedBatch(vec![])).is_err());
    }
}
