//! Fan-out: every subscriber of a channel, on any worker, gets every
//! publication once, in offset order; client publishes, subscriptions
//! named in the URL, and personal (`?user=`) channels.

#[path = "support/gateway.rs"]
mod gateway_support;

use gateway_support::*;
use serde_json::json;

#[test]
fn api_publications_reach_every_subscriber_on_every_worker_in_order() {
    let server = start_gateway(|_| {});
    let addr = server.local_addr();

    // At least 3 subscribers, and at least one on each of the 2 workers
    // (SO_REUSEPORT spreads connections by hash: add more until it did).
    let mut subs: Vec<Client> = Vec::new();
    let mut used = [false; 2];
    while subs.len() < 3 || !used.iter().all(|&u| u) {
        assert!(
            subs.len() < 40,
            "40 connections all landed on one worker: {:?}",
            worker_connections(&server)
        );
        let before = worker_connections(&server);
        let mut c = Client::connect(addr, "/ws");
        let total: u64 = before.iter().sum::<u64>() + 1;
        wait_until(WAIT, "worker gauges to count the new connection", || {
            worker_connections(&server).iter().sum::<u64>() == total
        });
        let after = worker_connections(&server);
        let w = (0..2).find(|&i| after[i] > before[i]).expect("one grew");
        used[w] = true;
        let r = c.subscribe("chat");
        assert_eq!(r["channel"], "chat");
        assert_eq!(r["offset"], 0, "nothing published yet: {r}");
        assert!(r["epoch"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
        assert!(r.get("recovered").is_none(), "no since, no recovered: {r}");
        subs.push(c);
    }

    let mut epoch = None;
    for i in 1..=500u64 {
        let r = api_publish(addr, "chat", json!({ "n": i }));
        assert_eq!(r["offset"], i, "{r}");
        match &epoch {
            None => epoch = Some(r["epoch"].clone()),
            Some(e) => assert_eq!(&r["epoch"], e, "epoch is stable"),
        }
    }

    let mut sequences = Vec::new();
    for (k, c) in subs.iter_mut().enumerate() {
        let mut seq = Vec::with_capacity(500);
        for i in 1..=500u64 {
            let m = c.next();
            assert_eq!(
                m,
                json!({ "channel": "chat", "offset": i, "data": { "n": i } }),
                "subscriber {k}, message {i}"
            );
            seq.push(m);
        }
        sequences.push(seq);
    }
    assert!(sequences.windows(2).all(|w| w[0] == w[1]));

    // A publish op from one client: an ok reply with the offset, and every
    // subscriber (the publisher too) gets it.
    let r =
        subs[0].call(json!({ "op": "publish", "channel": "chat", "data": { "from": "client" } }));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["offset"], 501, "{r}");
    assert_eq!(&r["epoch"], epoch.as_ref().unwrap(), "{r}");
    for (k, c) in subs.iter_mut().enumerate() {
        let m = c.next();
        assert_eq!(
            m,
            json!({ "channel": "chat", "offset": 501, "data": { "from": "client" } }),
            "subscriber {k}"
        );
    }
    for c in &mut subs {
        c.assert_nothing_pending();
    }
    for c in subs {
        c.close();
    }
    stop_gateway(server);
}

#[test]
fn batch_publications_keep_their_order() {
    let server = start_gateway(|_| {});
    let addr = server.local_addr();
    let mut a = Client::connect(addr, "/ws");
    a.subscribe("batch");
    let items: Vec<_> = (1..=50)
        .map(|i| json!({ "channel": "batch", "data": i }))
        .collect();
    let results = api_batch(addr, &items);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["offset"], i as u64 + 1, "{r}");
    }
    for i in 1..=50u64 {
        assert_eq!(a.next_publication("batch"), (i, json!(i)));
    }
    a.close();
    stop_gateway(server);
}

#[test]
fn channels_named_in_the_url_are_subscribed_at_connect() {
    let server = start_gateway(|_| {});
    let addr = server.local_addr();
    let mut c = Client::connect(addr, "/ws?channel=a&channel=b");
    for ch in ["a", "b"] {
        let r = c.connect_reply(ch);
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["offset"], 0, "{r}");
    }
    api_publish(addr, "a", json!("to a"));
    api_publish(addr, "b", json!("to b"));
    api_publish(addr, "c", json!("to c (not subscribed)"));
    api_publish(addr, "a", json!("to a again"));
    assert_eq!(c.next_publication("a"), (1, json!("to a")));
    assert_eq!(c.next_publication("b"), (1, json!("to b")));
    assert_eq!(c.next_publication("a"), (2, json!("to a again")));
    // Already subscribed to "a" through the URL.
    let r = c.call(json!({ "op": "subscribe", "channel": "a" }));
    assert_eq!(r["error"]["code"], 6, "{r}");
    c.assert_alive();
    c.close();
    stop_gateway(server);
}

#[test]
fn personal_channel_reaches_every_connection_of_the_user_only() {
    let server = start_gateway(|_| {});
    let addr = server.local_addr();
    let mut alice1 = Client::connect(addr, "/ws?user=alice");
    let mut alice2 = Client::connect(addr, "/ws?user=alice");
    let mut bob = Client::connect(addr, "/ws?user=bob");
    for c in [&mut alice1, &mut alice2] {
        let r = c.connect_reply("$user:alice");
        assert_eq!(r["ok"], true, "{r}");
    }
    bob.connect_reply("$user:bob");

    let r = api_publish_user(addr, "alice", json!({ "text": "for alice" }));
    assert_eq!(r["offset"], 1, "{r}");
    // Then one for bob: if bob had got alice's, it would come first.
    api_publish_user(addr, "bob", json!({ "text": "for bob" }));
    for c in [&mut alice1, &mut alice2] {
        assert_eq!(
            c.next(),
            json!({ "channel": "$user:alice", "offset": 1, "data": { "text": "for alice" } })
        );
    }
    assert_eq!(
        bob.next(),
        json!({ "channel": "$user:bob", "offset": 1, "data": { "text": "for bob" } })
    );
    // Nothing else is pending for anyone.
    for c in [&mut alice1, &mut alice2, &mut bob] {
        c.assert_nothing_pending();
    }
    // A client cannot subscribe to someone's personal channel by name.
    let r = bob.call(json!({ "op": "subscribe", "channel": "$user:alice" }));
    assert_eq!(r["error"]["code"], 4, "{r}");
    for c in [alice1, alice2, bob] {
        c.close();
    }
    stop_gateway(server);
}
