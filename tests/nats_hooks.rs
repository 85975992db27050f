//! Issue 15's broker-level hooks with the NATS broker, where they are per
//! node (docs/hooks.md, "Part 2a"): occupancy and members reach the
//! webhooks, user presence answers for the node's own users, an
//! idempotency key is JetStream's deduplication (a repeat sends no second
//! `client_event`), and the other publish options are refused (error 3)
//! rather than ignored. A bystander stays served.

#[path = "backend_util/mod.rs"]
mod backend_util;
mod nats_util;

use backend_util::{send_webhooks_to, webhook_events, Backend, DEADLINE};
use nats_util::*;
use serde_json::json;

#[test]
fn hooks_are_per_node_idempotency_keys_dedupe_and_other_options_are_refused() {
    let nats = NatsServer::start();
    let backend = Backend::start();
    let node = nats_node(&[nats.url()], |cfg| {
        send_webhooks_to(cfg, &backend);
        cfg.namespaces.insert(
            "chat".into(),
            wsgate::config::ChannelOverrides {
                client_events: Some(true),
                ..Default::default()
            },
        );
    });
    let addr = node.local_addr();
    let mut bystander = Client::connect(addr, "");
    bystander.subscribe("news", None);

    let mut c = Client::connect(addr, "?user=ann");
    c.subscribe("room", None);
    for opts in [
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

    // An idempotency key (JetStream's Nats-Msg-Id): a repeat is answered
    // with the first result and sends no second client_event.
    let keyed = |data: &str| json!({"op": "publish", "channel": "chat:1", "data": data, "idempotency_key": "k-1"});
    let first = call(&mut c, keyed("first"), "ann");
    assert_eq!(first["offset"], 1, "{first}");
    let again = call(&mut c, keyed("again"), "ann");
    assert_eq!(
        (&again["epoch"], &again["offset"]),
        (&first["epoch"], &first["offset"]),
        "the first result: {again}"
    );
    let r = call(
        &mut c,
        json!({"op": "publish", "channel": "chat:1", "data": "marker"}),
        "ann",
    );
    assert_eq!(r["offset"], 2, "the repeat was not stored: {r}");
    let mut data = Vec::new();
    backend_util::wait_for(DEADLINE, "the marker's client_event", || {
        data = webhook_events(&backend)
            .iter()
            .filter(|e| e["name"] == "client_event")
            .map(|e| e["data"].clone())
            .collect();
        data.contains(&json!("marker"))
    });
    assert_eq!(data, [json!("first"), json!("marker")]);

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
