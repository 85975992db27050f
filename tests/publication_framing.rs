//! Every publication reaches every transport intact, whatever whitespace its
//! JSON holds: raw CR, LF, CRLF and tabs between tokens are legal JSON, and
//! used to end an SSE `data:` field in the middle of a publication (the SSE
//! reader got invalid JSON; the JavaScript client dropped it while its
//! position moved past it).
//!
//! The gateway stores and sends `data` in one compact form: the same bytes
//! on WebSocket, SSE, long-poll, history and through Redis. The SSE stream is
//! read by the WHATWG algorithm (what EventSource runs). Bystanders on
//! another channel, on WebSocket and SSE, must be served throughout.

mod redis_util;
mod stream_util;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use redis_util::{node, Api, Client, RedisServer, TIMEOUT};
use serde_json::{json, Value};
use stream_util::{get_json, Poller, SseReader};
use wsgate::config::Config;
use wsgate::server::{Server, ServerConfig};

/// `data` as a publisher may send it, and the compact form every reader
/// must get.
const CASES: &[(&str, &str)] = &[
    (
        "{\r\n  \"text\": \"hi there\",\r\n  \"n\": [1,\n 2]\r\n}",
        r#"{"text":"hi there","n":[1,2]}"#,
    ),
    // Bare CRs, two in a row: an empty line, which dispatched a broken event.
    ("[\"a\",\r\r\"b\"]", r#"["a","b"]"#),
    (
        "{\"x\":\n\n{\"y\":\t\"tab\\tinside\"}}",
        r#"{"x":{"y":"tab\tinside"}}"#,
    ),
    // Escaped line breaks in a string stay escaped: one field still.
    (
        "\"data: forged\\n\\nid: x\\r\\nevent: resync\"",
        r#""data: forged\n\nid: x\r\nevent: resync""#,
    ),
    (
        "{\"emoji\" : \"é 😀\",\r\n\"z\"\t:\tnull, \"a\": true}",
        r#"{"emoji":"é 😀","z":null,"a":true}"#,
    ),
    ("[\r\n]", "[]"),
    ("{\"n\": -1.50e+3 }", r#"{"n":-1.50e+3}"#),
];

fn memory_node() -> Server {
    let cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        ..Config::default()
    };
    Server::start(ServerConfig::from_config(&cfg)).expect("node starts")
}

/// The next SSE event of `kind`, skipping others.
fn next_of(r: &mut SseReader, kind: &str) -> stream_util::SseEvent {
    let end = Instant::now() + TIMEOUT;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let ev = r
            .next_event(left)
            .unwrap_or_else(|e| panic!("waiting for an SSE {kind} event: {e}"));
        if ev.kind == kind {
            return ev;
        }
    }
}

/// Publish every case through `publisher`, then a marker; readers on
/// `reader`: WebSocket (byte for byte), SSE (by the WHATWG algorithm),
/// long-poll, history; bystanders on another channel.
fn every_transport_gets_every_case(publisher: SocketAddr, reader: SocketAddr, ch: &str) {
    let mut ws = Client::connect(reader, "");
    ws.subscribe(ch, None);
    let mut sse = SseReader::open(reader, &format!("/sse?channel={ch}"), None);
    let sub = next_of(&mut sse, "subscribed");
    let start: Value = serde_json::from_str(&sub.data).unwrap();
    let base = start["offset"].as_u64().unwrap();
    let mut poller = Poller::new(reader, &[ch]);
    poller.poll(0).expect("a short poll to learn the position");

    // Bystanders on another channel: a WebSocket subscriber and an SSE one.
    let mut by_ws = Client::connect(reader, "");
    by_ws.subscribe("bystander", None);
    let mut by_sse = SseReader::open(reader, "/sse?channel=bystander", None);
    next_of(&mut by_sse, "subscribed");

    let mut api = Api::new(publisher);
    let mut expected = Vec::new();
    for (i, (raw, compact)) in CASES.iter().enumerate() {
        // Whitespace around the fields too, CRLF-separated.
        let body = format!("{{\r\n\"channel\": \"{ch}\",\r\n\"data\":\r\n{raw}\r\n}}");
        let (status, v) = api.try_request("POST", "/api/publish", &body).unwrap();
        assert_eq!(status, 200, "case {i}: {v}");
        let offset = v["offset"].as_u64().unwrap();
        assert_eq!(offset, base + 1 + i as u64, "case {i}");
        expected.push(format!(
            r#"{{"channel":"{ch}","offset":{offset},"data":{compact}}}"#
        ));
    }
    // A marker after them: the stream is still framed after every case.
    let (_, last) = api.publish(ch, json!("marker")).unwrap();
    api.publish("bystander", json!({"still": "served"}))
        .unwrap();

    // WebSocket: the compact bytes.
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(&ws.try_next_text(TIMEOUT).unwrap(), want, "ws case {i}");
    }
    assert_eq!(ws.next()["data"], json!("marker"));
    // SSE: one event per publication, whose data is those same bytes, with
    // an id (the position a reconnect resumes from).
    for (i, want) in expected.iter().enumerate() {
        let ev = next_of(&mut sse, "message");
        assert_eq!(&ev.data, want, "sse case {i}");
        assert!(!ev.last_event_id.is_empty(), "sse case {i} has an id");
        let parsed: Value = serde_json::from_str(&ev.data).expect("SSE data is JSON");
        let original: Value = serde_json::from_str(CASES[i].0).unwrap();
        assert_eq!(parsed["data"], original, "sse case {i}: the same value");
    }
    let marker = next_of(&mut sse, "message");
    let v: Value = serde_json::from_str(&marker.data).unwrap();
    assert_eq!(
        (v["offset"].as_u64(), &v["data"]),
        (Some(last), &json!("marker"))
    );
    // Long-poll: the same values.
    let mut got = Vec::new();
    let end = Instant::now() + TIMEOUT;
    while got.len() < expected.len() + 1 {
        assert!(Instant::now() < end, "long-poll got {got:?}");
        got.extend(poller.poll(5).expect("poll"));
    }
    for (i, want) in expected.iter().enumerate() {
        let want: Value = serde_json::from_str(want).unwrap();
        assert_eq!(got[i], want, "poll case {i}");
    }
    assert_eq!(got[expected.len()]["data"], json!("marker"));
    // History: the same values, and no raw line break in its body.
    let (status, h) = get_json(
        publisher,
        &format!("/api/history?channel={ch}&limit=100"),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(status, 200, "{h}");
    let pubs = h["publications"].as_array().unwrap();
    for (i, want) in expected.iter().enumerate() {
        let want: Value = serde_json::from_str(want).unwrap();
        assert!(pubs.contains(&want), "history lacks case {i}: {h}");
    }
    // Bystanders were served.
    assert_eq!(by_ws.next()["data"], json!({"still": "served"}));
    let ev = next_of(&mut by_sse, "message");
    assert_eq!(
        serde_json::from_str::<Value>(&ev.data).unwrap()["data"],
        json!({"still": "served"})
    );
}

#[test]
fn whitespace_in_publications_reaches_every_transport_intact_memory_broker() {
    let n = memory_node();
    every_transport_gets_every_case(n.local_addr(), n.local_addr(), "framing");
    // The WebSocket publish op and POST /send compact too.
    let mut c = Client::connect(n.local_addr(), "");
    c.subscribe("op", None);
    c.send_raw("{\"id\":1,\"op\":\"publish\",\"channel\":\"op\",\"data\":{\r\n\"a\": [1,\r\n2]}}");
    let mut texts = vec![
        c.try_next_text(TIMEOUT).unwrap(),
        c.try_next_text(TIMEOUT).unwrap(),
    ];
    texts.sort();
    assert!(texts[0].contains(r#""data":{"a":[1,2]}"#), "{texts:?}");
    n.stop().unwrap();
}

#[test]
fn whitespace_in_publications_reaches_every_transport_intact_through_redis() {
    let redis = RedisServer::start();
    let a = node(&redis.url(), |_| {});
    let b = node(&redis.url(), |_| {});
    // Published on a, read on b: through the Redis script, stream and
    // pub/sub message (`OFFSET:EPOCH:DATA`).
    every_transport_gets_every_case(a.local_addr(), b.local_addr(), "framing");
    // What Redis holds is the compact form too.
    let mut con = redis.con();
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("wsgate:history:{framing}")
        .arg("-")
        .arg("+")
        .query(&mut con)
        .unwrap();
    let stored: Vec<&str> = entries
        .iter()
        .filter_map(|(_, f)| f.iter().find(|(k, _)| k == "d").map(|(_, v)| v.as_str()))
        .collect();
    for (raw, compact) in CASES {
        assert!(stored.contains(compact), "{raw:?} stored as {stored:?}");
    }
    a.stop().unwrap();
    b.stop().unwrap();
}
