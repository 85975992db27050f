//! Issue 15's broker-level hooks with the NATS broker, where they are per
//! node (docs/hooks.md, "Part 2a"): occupancy and members reach the
//! webhooks, user presence answers for the node's own users, and publish
//! options are refused (error 3) rather than ignored. A bystander stays
//! served.

#[path = "backend_util/mod.rs"]
mod backend_util;
mod nats_util;

use std::collections::HashSet;

use backend_util::{Backend, DEADLINE, SECRET};
use nats_util::*;
use serde_json::{json, Value};
use wsgate::config::Millis;
use wsgate::hooks::config::EventKind;

fn events(backend: &Backend) -> Vec<Value> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for batch in backend.log("webhook") {
        assert_eq!(batch["signature_ok"], true, "unsigned batch: {batch}");
        for e in batch["body"]["events"].as_array().expect("events").clone() {
            if seen.insert(e["id"].as_str().expect("id").to_string()) {
                out.push(e);
            }
        }
    }
    out
}

#[test]
fn hooks_are_per_node_and_publish_options_are_refused() {
    let nats = NatsServer::start();
    let backend = Backend::start();
    let node = nats_node(&[nats.url()], |cfg| {
        cfg.webhooks.url = backend.url("webhook");
        cfg.webhooks.secret = SECRET.into();
        cfg.webhooks.events = EventKind::ALL.to_vec();
        cfg.webhooks.batch_delay = Millis(10);
    });
    let addr = node.local_addr();
    let mut bystander = Client::connect(addr, "");
    bystander.subscribe("news", None);

    let mut c = Client::connect(addr, "?user=ann");
    c.subscribe("room", None);
    for opts in [
        json!({"idempotency_key": "k"}),
        json!({"exclude_client": true}),
        json!({"skip_history": true}),
    ] {
        let mut op = json!({"op": "publish", "channel": "room", "data": 1});
        for (k, v) in opts.as_object().unwrap() {
            op[k] = v.clone();
        }
        let r = call(&mut c, op, "ann");
        assert_eq!(r["error"]["code"], 3, "{opts}: {r}");
    }
    let r = call(
        &mut c,
        json!({"op": "publish", "channel": "room", "data": 2}),
        "ann",
    );
    assert_eq!(r["offset"], 1, "a plain publish still works: {r}");

    let mut api = Api::new(addr);
    let (st, v) = api.get("/api/presence/users?user=ann&user=bob");
    assert_eq!(
        (st, v),
        (200, json!({"users": {"ann": true, "bob": false}}))
    );
    drop(c);
    wait_for(TIMEOUT, "ann offline", || {
        api.get("/api/presence/users?user=ann").1 == json!({"users": {"ann": false}})
    });
    let mut evs = Vec::new();
    backend_util::wait_for(DEADLINE, "room vacated and ann offline", || {
        evs = events(&backend);
        evs.iter()
            .any(|e| e["name"] == "channel_vacated" && e["channel"] == "room")
            && evs.iter().any(|e| e["name"] == "user_offline")
    });
    let room: Vec<&str> = evs
        .iter()
        .filter(|e| e["channel"] == "room")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        room,
        [
            "channel_occupied",
            "member_added",
            "member_removed",
            "channel_vacated"
        ]
    );
    assert_served(&mut bystander, "bystander");
}
