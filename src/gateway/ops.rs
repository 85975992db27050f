//! Client ops: JSON text frames from a WebSocket (or a `POST /send` body),
//! parsed without copying the payload, and the JSON the gateway answers.
//!
//! ```json
//! {"id":1,"op":"subscribe","channel":"chat","since":{"epoch":"…","offset":41}}
//! {"id":2,"op":"unsubscribe","channel":"chat"}
//! {"id":3,"op":"publish","channel":"chat","data":{"text":"hi"}}
//! {"id":4,"op":"presence","channel":"chat"}
//! {"id":5,"op":"ping"}
//! {"id":6,"op":"publish","channel":"chat","data":{},"idempotency_key":"k1","exclude_client":true,"skip_history":true}
//! {"id":7,"op":"history","channel":"chat","since":{"epoch":"…","offset":41},"limit":50}
//! {"id":8,"op":"history","channel":"chat","limit":20,"reverse":true}
//! {"id":9,"op":"rpc","method":"getPrice","data":{"symbol":"X"}}
//! ```

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::error::{error_json, OpError};
use crate::broker::{HistoryPage, MAX_IDEMPOTENCY_KEY};
use crate::pubsub::Position;

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(default)]
    since: Option<Position>,
    /// `"data": null` is data (the JSON `null`), as on the API; only a
    /// missing field is missing.
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
    /// `"fossil"`: the subscription asks for Fossil deltas.
    #[serde(borrow, default)]
    delta: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    idempotency_key: Option<Cow<'a, str>>,
    #[serde(default)]
    exclude_client: bool,
    #[serde(default)]
    skip_history: bool,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    reverse: bool,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
}

/// The options of a `publish` op.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PublishOpts<'a> {
    /// See [`crate::broker::PublishOptions::idempotency_key`].
    pub idempotency_key: Option<Cow<'a, str>>,
    /// Not delivered to this connection.
    pub exclude_self: bool,
    pub skip_history: bool,
}

/// Is `key` an idempotency key: 1..=[`MAX_IDEMPOTENCY_KEY`] visible ASCII
/// characters (it becomes part of a Redis key name)?
pub fn valid_idempotency_key(key: &str) -> Result<(), OpError> {
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(OpError::BadRequest(format!(
            "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        )));
    }
    Ok(())
}

/// A field that is present, whatever its value (`null` included): plain
/// `Option` would read `null` as absent.
fn present<'de, D>(d: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&RawValue>::deserialize(d).map(Some)
}

/// A parsed op.
#[derive(Debug)]
pub enum Op<'a> {
    Subscribe {
        channel: Cow<'a, str>,
        since: Option<Position>,
        /// `"delta":"fossil"`: deltas asked for (granted where the
        /// namespace allows them, else whole publications).
        delta: bool,
        /// For the subscribe proxy (Centrifugo's subscribe `data`);
        /// bounded by the message size, ignored without the proxy.
        data: Option<&'a RawValue>,
    },
    Unsubscribe {
        channel: Cow<'a, str>,
    },
    Publish {
        channel: Cow<'a, str>,
        data: &'a RawValue,
        opts: PublishOpts<'a>,
    },
    /// A page of the channel's history (ACL-checked as a subscribe).
    History {
        channel: Cow<'a, str>,
        since: Option<Position>,
        /// At most this many (`None`: the server's default).
        limit: Option<usize>,
        /// Newest first.
        reverse: bool,
    },
    Presence {
        channel: Cow<'a, str>,
    },
    Ping,
    /// A new token for the connection (before the current one expires).
    Refresh {
        token: Cow<'a, str>,
    },
    /// A call answered by the backend's rpc proxy (`proxy.rpc`; without
    /// it, `unknown_op`).
    Rpc {
        method: Cow<'a, str>,
        /// `null` when absent.
        data: Option<&'a RawValue>,
    },
}

/// Parse an op; on error, the request id (if it could be read) comes back
/// with the error so the reply can carry it.
#[allow(clippy::type_complexity)]
pub fn parse(text: &[u8]) -> Result<(Option<&RawValue>, Op<'_>), (Option<&RawValue>, OpError)> {
    let raw: Raw<'_> = serde_json::from_slice(text).map_err(|e| {
        if e.is_data() {
            // Valid JSON of the wrong shape: the id may still be readable,
            // and the reply should carry it.
            #[derive(Deserialize)]
            struct IdOnly<'a> {
                #[serde(borrow, default)]
                id: Option<&'a RawValue>,
            }
            let id = serde_json::from_slice::<IdOnly<'_>>(text)
                .ok()
                .and_then(|i| i.id);
            (id, OpError::BadRequest(e.to_string()))
        } else {
            (None, OpError::Malformed(e.to_string()))
        }
    })?;
    let id = raw.id;
    fn need<'a, 'b>(
        id: Option<&'b RawValue>,
        c: Option<Cow<'a, str>>,
    ) -> Result<Cow<'a, str>, (Option<&'b RawValue>, OpError)> {
        c.ok_or((id, OpError::BadRequest("missing \"channel\"".into())))
    }
    let need_channel = |c| need(id, c);
    let op = match raw.op.as_deref() {
        Some("subscribe") => Op::Subscribe {
            channel: need_channel(raw.channel)?,
            since: raw.since,
            delta: delta_asked(raw.delta.as_deref()).map_err(|e| (id, e))?,
            data: raw.data,
        },
        Some("unsubscribe") => Op::Unsubscribe {
            channel: need_channel(raw.channel)?,
        },
        Some("publish") => Op::Publish {
            channel: need_channel(raw.channel)?,
            data: raw
                .data
                .ok_or((id, OpError::BadRequest("missing \"data\"".into())))?,
            opts: {
                if let Some(k) = &raw.idempotency_key {
                    valid_idempotency_key(k).map_err(|e| (id, e))?;
                }
                PublishOpts {
                    idempotency_key: raw.idempotency_key,
                    exclude_self: raw.exclude_client,
                    skip_history: raw.skip_history,
                }
            },
        },
        Some("history") => {
            if raw.reverse && raw.since.is_some() {
                return Err((
                    id,
                    OpError::BadRequest("reverse pages from the newest: no \"since\"".into()),
                ));
            }
            Op::History {
                channel: need_channel(raw.channel)?,
                since: raw.since,
                limit: raw.limit,
                reverse: raw.reverse,
            }
        }
        Some("presence") => Op::Presence {
            channel: need_channel(raw.channel)?,
        },
        Some("ping") => Op::Ping,
        Some("refresh") => Op::Refresh {
            token: raw
                .token
                .ok_or((id, OpError::BadRequest("missing \"token\"".into())))?,
        },
        Some("rpc") => Op::Rpc {
            method: raw
                .method
                .ok_or((id, OpError::BadRequest("missing \"method\"".into())))?,
            data: raw.data,
        },
        Some(other) => return Err((id, OpError::UnknownOp(other.to_string()))),
        None => return Err((id, OpError::BadRequest("missing \"op\"".into()))),
    };
    Ok((id, op))
}

/// A subscribe's `delta` (the op's field, or `delta=` on a `/ws` URL):
/// absent or empty, none; `"fossil"`, Fossil deltas; anything else is a
/// bad request (error 3).
pub fn delta_asked(delta: Option<&str>) -> Result<bool, OpError> {
    match delta {
        None | Some("") => Ok(false),
        Some("fossil") => Ok(true),
        Some(other) => Err(OpError::BadRequest(format!(
            "unknown delta type {other:?} (the one known is \"fossil\")"
        ))),
    }
}

/// `{"id":…,"ok":true, …fields}`.
pub fn ok_reply(id: Option<&RawValue>, fields: Value) -> Vec<u8> {
    let mut obj = serde_json::Map::new();
    obj.insert("ok".into(), Value::Bool(true));
    if let Value::Object(f) = fields {
        obj.extend(f);
    }
    with_raw_id(id, obj)
}

/// The object with `"id"` first, copied byte for byte from the request, so
/// that any id (a big integer, a float, a string) comes back unchanged.
fn with_raw_id(id: Option<&RawValue>, obj: serde_json::Map<String, Value>) -> Vec<u8> {
    let body = serde_json::to_vec(&Value::Object(obj)).expect("value serializes");
    let Some(id) = id.filter(|r| r.get() != "null") else {
        return body;
    };
    let mut out = Vec::with_capacity(body.len() + id.get().len() + 6);
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.get().as_bytes());
    if body.len() > 2 {
        out.push(b',');
    }
    out.extend_from_slice(&body[1..]);
    out
}

/// `{"id":…,"error":{"code":…,"message":"…"}}`.
pub fn error_reply(id: Option<&RawValue>, e: &OpError) -> Vec<u8> {
    let mut obj = serde_json::Map::new();
    obj.insert("error".into(), error_json(e));
    with_raw_id(id, obj)
}

/// `{"channel":…,"unsubscribed":{"code":…,"message":"…"}}`: the server
/// ended a subscription (a refreshed token no longer grants the channel).
pub fn unsubscribed_notice(channel: &str, e: &OpError) -> Vec<u8> {
    let v = json!({ "channel": channel, "unsubscribed": error_json(e) });
    serde_json::to_vec(&v).expect("value serializes")
}

/// `{"epoch","offset","recovered"?,"publications":[…]}`: a page of
/// history as `GET /api/history` answers it, the stored publications
/// spliced in as they are (each `{"channel","offset","data"}`).
pub fn history_json(page: &HistoryPage) -> Vec<u8> {
    let size: usize = page.publications.iter().map(|p| p.json().len() + 1).sum();
    let mut body = Vec::with_capacity(64 + size);
    body.extend_from_slice(b"{\"epoch\":");
    serde_json::to_writer(&mut body, &page.position.epoch).expect("serializes");
    body.extend_from_slice(format!(",\"offset\":{}", page.position.offset).as_bytes());
    if let Some(r) = page.recovered {
        body.extend_from_slice(format!(",\"recovered\":{r}").as_bytes());
    }
    body.extend_from_slice(b",\"publications\":[");
    for (i, p) in page.publications.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(p.json());
    }
    body.extend_from_slice(b"]}");
    body
}

/// `{"id":…,"ok":true,"epoch",…,"publications":[…]}`: a `history` op's
/// answer (WebSocket and `POST /send`), [`history_json`]'s fields.
pub fn history_reply(id: Option<&RawValue>, page: &HistoryPage) -> Vec<u8> {
    let fields = history_json(page);
    let mut out = ok_reply(id, json!({}));
    out.pop(); // its closing brace: the page's fields follow
    out.push(b',');
    out.extend_from_slice(&fields[1..]);
    out
}

/// The fields of a subscribe answer.
pub fn subscribed_fields(channel: &str, pos: &Position, recovered: Option<bool>) -> Value {
    let mut v = json!({ "channel": channel, "epoch": pos.epoch, "offset": pos.offset });
    if let Some(r) = recovered {
        v["recovered"] = Value::Bool(r);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> u16 {
        parse(text.as_bytes()).unwrap_err().1.code()
    }

    #[test]
    fn parse_table() {
        let (id, op) = parse(
            br#"{"id":1,"op":"subscribe","channel":"chat","since":{"epoch":"e","offset":41}}"#,
        )
        .unwrap();
        assert_eq!(id.map(|r| r.get()), Some("1"));
        let want = Some(Position {
            epoch: "e".into(),
            offset: 41,
        });
        assert!(
            matches!(op, Op::Subscribe { channel, since, delta: false, data: None } if channel == "chat" && since == want)
        );
        let (id, op) =
            parse(br#"{"op":"publish","channel":"c","data":{"a":[1,2]},"id":"x"}"#).unwrap();
        assert_eq!(id.map(|r| r.get()), Some("\"x\""));
        assert!(matches!(op, Op::Publish { data, .. } if data.get() == r#"{"a":[1,2]}"#));
        assert!(matches!(parse(br#"{"op":"ping"}"#).unwrap().1, Op::Ping));
        assert_eq!(code("{"), 1);
        assert_eq!(code("[1]"), 3);
        assert_eq!(code(r#"{"op":"dance"}"#), 2);
        assert_eq!(code(r#"{"id":1}"#), 3);
        assert_eq!(code(r#"{"op":"subscribe"}"#), 3);
        // Deltas: "fossil" or none; another type, or not a string, is 3.
        for (delta, want) in [(r#""fossil""#, true), (r#""""#, false), ("null", false)] {
            let text = format!(r#"{{"op":"subscribe","channel":"c","delta":{delta}}}"#);
            let (_, op) = parse(text.as_bytes()).unwrap();
            assert!(
                matches!(op, Op::Subscribe { delta, .. } if delta == want),
                "{text}"
            );
        }
        for bad in [r#""xdelta""#, r#""Fossil""#, "true", "1", r#"["fossil"]"#] {
            let text = format!(r#"{{"id":9,"op":"subscribe","channel":"c","delta":{bad}}}"#);
            let (id, e) = parse(text.as_bytes()).unwrap_err();
            assert_eq!((id.map(|r| r.get()), e.code()), (Some("9"), 3), "{text}");
        }
        assert_eq!(code(r#"{"op":"publish","channel":"c"}"#), 3);
        // `null` is data, as on the API (and `"id": null` is no id).
        for text in [
            r#"{"op":"publish","channel":"c","data":null}"#,
            r#"{"op":"publish","channel":"c","data" :  null ,"id":null}"#,
        ] {
            let (id, op) = parse(text.as_bytes()).unwrap();
            assert!(id.is_none_or(|i| i.get() == "null"));
            assert!(
                matches!(op, Op::Publish { data, .. } if data.get() == "null"),
                "{text}"
            );
        }
        assert_eq!(
            code(r#"{"op":"subscribe","channel":"c","since":{"offset":"x"}}"#),
            3
        );
        let (id, e) = parse(br#"{"id":10,"op":"subscribe","channel":5}"#).unwrap_err();
        assert_eq!(
            (id.map(|r| r.get()), e.code()),
            (Some("10"), 3),
            "wrong types keep the id"
        );
        let (id, e) = parse(br#"{"id":7,"op":"dance"}"#).unwrap_err();
        assert_eq!((id.map(|r| r.get()), e.code()), (Some("7"), 2));
    }

    #[test]
    fn replies() {
        let id = RawValue::from_string("7".into()).unwrap();
        let v: Value = serde_json::from_slice(&ok_reply(Some(&id), json!({"x":1}))).unwrap();
        assert_eq!(v, json!({"id":7,"ok":true,"x":1}));
        let big = RawValue::from_string("122222222222222222222.5".into()).unwrap();
        let r = ok_reply(Some(&big), json!({}));
        assert_eq!(
            r, br#"{"id":122222222222222222222.5,"ok":true}"#,
            "id echoed byte for byte"
        );
        let v: Value = serde_json::from_slice(&error_reply(None, &OpError::NotSubscribed)).unwrap();
        assert_eq!(v, json!({"error":{"code":7,"message":"not subscribed"}}));
    }
}
