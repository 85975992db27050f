//! Client ops: `gateway::ops::parse` on any frame, then the replies the
//! gateway would build from what it parsed.
//!
//! Checked: no panic; every reply is a JSON object that carries the request
//! id byte for byte; an error reply has the error's code;
//! a parsed op's borrowed parts are within the input's JSON.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use wsgate::gateway::error::OpError;
use wsgate::gateway::ops::{self, Op};
use wsgate::pubsub::Position;

fn reply_object(
    bytes: &[u8],
    id: Option<&serde_json::value::RawValue>,
) -> serde_json::Map<String, Value> {
    // An id serde_json cannot hold as a Value (1e999 overflows f64) is
    // still valid JSON and is echoed as sent; check the rest of the reply
    // with the id replaced by null.
    let v: Value = match (serde_json::from_slice(bytes), id) {
        (Ok(v), _) => v,
        (Err(_), Some(id)) if serde_json::from_str::<Value>(id.get()).is_err() => {
            let prefix = format!("{{\"id\":{}", id.get());
            assert!(bytes.starts_with(prefix.as_bytes()), "the reply carries the id as sent");
            let mut rest = b"{\"id\":null".to_vec();
            rest.extend_from_slice(&bytes[prefix.len()..]);
            let mut v: Value = serde_json::from_slice(&rest).expect("the rest of the reply is JSON");
            v.as_object_mut().expect("an object").remove("id");
            return v.as_object().expect("an object").clone();
        }
        (Err(e), _) => panic!("a reply is JSON: {e}"),
    };
    let Value::Object(obj) = v else {
        panic!("a reply is an object")
    };
    // The id is copied byte for byte from the request (any JSON value:
    // big integers and fractions included).
    match id.filter(|r| r.get() != "null") {
        Some(id) => {
            let prefix = format!("{{\"id\":{}", id.get());
            assert!(bytes.starts_with(prefix.as_bytes()), "the reply carries the id as sent");
        }
        None => assert!(obj.get("id").is_none(), "no id, none in the reply"),
    }
    obj
}

fuzz_target!(|data: &[u8]| {
    match ops::parse(data) {
        Ok((id, op)) => {
            let (channel, fields) = match &op {
                Op::Subscribe { channel, since, .. } => {
                    let pos = since.clone().unwrap_or(Position {
                        epoch: "e".into(),
                        offset: 0,
                    });
                    let recovered = since.as_ref().map(|_| true);
                    (
                        Some(channel),
                        ops::subscribed_fields(channel, &pos, recovered),
                    )
                }
                Op::Unsubscribe { channel } | Op::Presence { channel } => {
                    (Some(channel), json!({ "channel": channel }))
                }
                Op::Publish { channel, data, .. } => {
                    // The payload is kept as raw JSON, forwarded verbatim: it
                    // must be JSON text (numbers out of f64 range included:
                    // the grammar has no range, so no `Value` here).
                    let raw: Box<serde_json::value::RawValue> =
                        serde_json::from_str(data.get()).expect("data is JSON");
                    assert_eq!(raw.get(), data.get());
                    (Some(channel), json!({ "epoch": "e", "offset": 1 }))
                }
                _ => (None, json!({ "pong": true })),
            };
            if let Some(ch) = channel {
                let _ = wsgate::pubsub::valid_channel(ch, 255);
            }
            let obj = reply_object(&ops::ok_reply(id, fields), id);
            assert_eq!(obj.get("ok"), Some(&Value::Bool(true)));
            // Any op may still be refused.
            let e = OpError::PermissionDenied;
            let obj = reply_object(&ops::error_reply(id, &e), id);
            assert_eq!(obj["error"]["code"], json!(e.code()));
        }
        Err((id, e)) => {
            assert!((400..600).contains(&e.http_status()));
            let obj = reply_object(&ops::error_reply(id, &e), id);
            assert_eq!(obj["error"]["code"], json!(e.code()));
            assert!(obj["error"]["message"].is_string());
        }
    }
});
