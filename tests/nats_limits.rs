//! A flood of new channel names on the NATS broker: each channel is a
//! JetStream stream, so the NATS servers' account limit on streams bounds
//! them. Beyond it, new channels' subscribes are answered without recovery
//! and their publishes fail with 503 / error 10, while the channels that
//! exist, and their clients, go on (SECURITY.md, "channel streams on NATS").

mod nats_util;

use nats_util::*;
use serde_json::json;

#[test]
fn channels_beyond_the_stream_limit_fail_cleanly_and_others_go_on() {
    // An account allowed 4 streams.
    let nats = NatsServer::start_with_config(
        "accounts {\n  WS {\n    jetstream { max_streams: 4, max_mem: 64MB, max_file: 64MB }\n    \
         users [ { user: ws, password: ws } ]\n  }\n}\n",
        "ws:ws@",
    );
    let a = nats_node(&[nats.url()], |_| {});
    let mut api = Api::new(a.local_addr());
    // A bystander's channel exists before the flood.
    let mut bystander = Client::connect(a.local_addr(), "");
    let (v, _) = bystander.subscribe("keep", None);
    let epoch = v["epoch"].as_str().unwrap().to_owned();
    assert!(!epoch.is_empty(), "{v}");

    // The flood: one client subscribes to 12 new channels.
    let mut flood = Client::connect(a.local_addr(), "");
    let mut positioned = 0;
    for i in 0..12 {
        let (v, _) = flood.subscribe(&format!("flood-{i}"), None);
        assert_eq!(v["ok"], json!(true), "a subscribe is always answered: {v}");
        if !v["epoch"].as_str().unwrap_or_default().is_empty() {
            positioned += 1;
        }
    }
    // 4 streams: "keep", the presence bucket, and two of the flood's.
    assert_eq!(positioned, 2, "two more streams fit the account's 4");
    // Publishing to a channel beyond the limit: 503 / error 10, at once.
    let (status, v) = api
        .try_request("POST", "/api/publish", r#"{"channel":"flood-11","data":1}"#)
        .unwrap();
    assert_eq!(
        (status, v["error"]["code"].as_u64()),
        (503, Some(10)),
        "{v}"
    );
    let op = json!({ "op": "publish", "channel": "flood-10", "data": 1 });
    let v = call(&mut flood, op, "the flooding client");
    assert_eq!(v["error"]["code"], json!(10), "{v}");

    // The existing channel goes on, and the node is not "degraded": NATS
    // answers, it refuses the new streams.
    let (e, off) = api.publish("keep", json!("still here")).unwrap();
    assert_eq!((e.as_str(), off), (epoch.as_str(), 1));
    let ev = bystander.collect_until(TIMEOUT, |e| !offsets(e).is_empty());
    assert_eq!(ev, vec![Event::Pub(1, json!("still here"))]);
    assert_eq!(api.get("/healthz").0, 200);
    assert_served(&mut bystander, "the bystander");
    assert_served(&mut flood, "the flooding client (it broke no rule)");
    a.stop().unwrap();
}
