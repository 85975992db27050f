//! Issue 15's broker-level hooks with the NATS broker, where they are per
//! node (docs/hooks.md, "Part 2a"): occupancy and members reach the
//! webhooks, user presence answers for the node's own users, and publish
//! options are refused (error 3) rather than ignored. A bystander stays
//! served.

#[path = "backend_util/mod.rs"]
mod backend_util;
mod nats_util;

use backend_util::{send_webhooks_to, webhook_events, Backend, DEADLINE};
use nats_util::*;
use serde_json::json;

#[test]
fn hooks_are_per_node_and_publish_options_are_refused() {
    let nats = NatsServer::start();
    let backend = Backend::start();
    let node = nats_node(&[nats.url()], |cfg| {
        send_webhooks_to(cfg, &backend);
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
        evs = webhook_events(&backend);
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
