//! Issue 15's broker-level hooks with the Redis broker, two nodes on one
//! `redis-server`: `channel_occupied` / `channel_vacated` decided once for
//! the cluster (a killed node's channels vacated within the TTL),
//! idempotency keys shared by the nodes, `exclude_client` and
//! `skip_history` across nodes, the `history` op, user presence that spans
//! the nodes (a killed node's users offline within the TTL), what happened
//! while Redis was down sent when it is back, and `client_event` only for
//! publications Redis accepted.

#[path = "backend_util/mod.rs"]
mod backend_util;
mod redis_util;

use std::collections::HashSet;
use std::time::Duration;

use backend_util::{send_webhooks_to, webhook_events, Backend, DEADLINE};
use redis_util::*;
use serde_json::{json, Value};

fn count(evs: &[Value], name: &str, field: &str, value: &str) -> usize {
    evs.iter()
        .filter(|e| e["name"] == name && e[field] == value)
        .count()
}

/// The reply to op `id`, skipping anything else.
fn reply(c: &mut Client, id: u64) -> Value {
    loop {
        let v = c.next();
        if v["id"] == json!(id) {
            return v;
        }
    }
}

fn call(c: &mut Client, op: Value) -> Value {
    let id = c.send(op);
    reply(c, id)
}

/// A ping answered next: nothing else was pending for `c`.
fn nothing_pending(c: &mut Client) {
    let id = c.send(json!({"op": "ping"}));
    let v = c.next();
    assert_eq!(v["id"], json!(id), "expected only the pong, got {v}");
}

/// Every webhook to `backend`; `chat:` channels send `client_event`.
fn webhooks_and_client_events(c: &mut wsgate::config::Config, backend: &Backend) {
    send_webhooks_to(c, backend);
    c.namespaces.insert(
        "chat".into(),
        wsgate::config::ChannelOverrides {
            client_events: Some(true),
            ..Default::default()
        },
    );
}

#[test]
fn occupancy_is_decided_once_for_the_cluster() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    let a = node(&redis.url(), |c| send_webhooks_to(c, &backend));
    let b = node(&redis.url(), |c| send_webhooks_to(c, &backend));
    let mut bystander = Client::connect(a.local_addr(), "");
    bystander.subscribe("news", None);

    for round in 1..=2 {
        let mut ca = Client::connect(a.local_addr(), "");
        let mut cb = Client::connect(b.local_addr(), "");
        ca.subscribe("room", None);
        cb.subscribe("room", None);
        drop(ca);
        // One node still has a subscriber: not vacated.
        nothing_pending(&mut cb);
        drop(cb);
        let mut evs = Vec::new();
        backend_util::wait_for(DEADLINE, "room vacated", || {
            evs = webhook_events(&backend);
            count(&evs, "channel_vacated", "channel", "room") == round
        });
        assert_eq!(
            count(&evs, "channel_occupied", "channel", "room"),
            round,
            "one occupied per round, whichever node came first: {evs:#?}"
        );
        let first = evs.iter().position(|e| e["name"] == "channel_occupied");
        let last = evs.iter().rposition(|e| e["name"] == "channel_vacated");
        assert!(first < last);
    }
    nothing_pending(&mut bystander);
}

#[test]
fn idempotency_keys_and_publish_options_hold_across_nodes() {
    let redis = RedisServer::start();
    let a = node(&redis.url(), |_| {});
    let b = node(&redis.url(), |_| {});
    let mut pub_a = Client::connect(a.local_addr(), "");
    let mut sub_a = Client::connect(a.local_addr(), "");
    let mut sub_b = Client::connect(b.local_addr(), "");
    let mut pub_b = Client::connect(b.local_addr(), "");
    for c in [&mut pub_a, &mut sub_a, &mut sub_b] {
        c.subscribe("orders", None);
    }
    // The same key through both nodes, pipelined on each.
    let mut ids = Vec::new();
    for i in 0..10 {
        let op = json!({"op": "publish", "channel": "orders", "data": i, "idempotency_key": "k1"});
        ids.push((0, pub_a.send(op.clone())));
        ids.push((1, pub_b.send(op)));
    }
    let mut offsets = HashSet::new();
    for (n, id) in ids {
        let c = if n == 0 { &mut pub_a } else { &mut pub_b };
        let r = reply(c, id);
        assert_eq!(r["ok"], true, "{r}");
        offsets.insert(r["offset"].as_u64().unwrap());
    }
    assert_eq!(offsets, HashSet::from([1]), "one publication for the key");
    let mut api_b = Api::new(b.local_addr());
    let (st, v) = api_b
        .try_request(
            "POST",
            "/api/publish",
            &json!({"channel": "orders", "data": "again", "idempotency_key": "k1"}).to_string(),
        )
        .unwrap();
    assert_eq!((st, v["offset"].clone()), (200, json!(1)), "{v}");
    for c in [&mut sub_a, &mut sub_b] {
        let got = c.collect_until(TIMEOUT, |e| offsets_of(e).contains(&1));
        assert_eq!(offsets_of(&got), [1]);
    }

    // exclude_client: not the publisher's connection, on any node.
    let r = call(
        &mut pub_a,
        json!({"op": "publish", "channel": "orders", "data": "ex", "exclude_client": true}),
    );
    assert_eq!(r["offset"], 2, "{r}");
    for c in [&mut sub_a, &mut sub_b] {
        let got = c.collect_until(TIMEOUT, |e| offsets_of(e).contains(&2));
        assert_eq!(offsets_of(&got), [2]);
    }
    // skip_history: live on both nodes, no offset, nothing kept.
    let r = call(
        &mut pub_b,
        json!({"op": "publish", "channel": "orders", "data": "live", "skip_history": true}),
    );
    assert_eq!(
        (r["ok"].clone(), r["offset"].clone()),
        (json!(true), json!(2)),
        "{r}"
    );
    for c in [&mut sub_a, &mut sub_b, &mut pub_a] {
        assert_eq!(c.next(), json!({"channel": "orders", "data": "live"}));
    }
    // pub_a got neither its excluded publication nor anything else.
    nothing_pending(&mut pub_a);
    let (_, h) = Api::new(a.local_addr()).get("/api/history?channel=orders");
    assert_eq!(h["publications"].as_array().unwrap().len(), 2, "{h}");

    // The history op, through node A.
    let r = call(
        &mut sub_a,
        json!({"op": "history", "channel": "orders", "limit": 5, "reverse": true}),
    );
    let offs: Vec<u64> = r["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offs, [2, 1]);
    let r = call(
        &mut sub_a,
        json!({"op": "history", "channel": "orders", "limit": 0}),
    );
    assert_eq!(
        (r["publications"].clone(), r["offset"].clone()),
        (json!([]), json!(2)),
        "{r}"
    );
}

fn offsets_of(events: &[Event]) -> Vec<u64> {
    offsets(events)
}

fn online(api: &mut Api, users: &[&str]) -> Value {
    let q: Vec<String> = users.iter().map(|u| format!("user={u}")).collect();
    let (st, v) = api.get(&format!("/api/presence/users?{}", q.join("&")));
    assert_eq!(st, 200, "{v}");
    v["users"].clone()
}

#[test]
fn user_presence_spans_nodes_and_a_killed_nodes_users_go_offline_within_the_ttl() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    let a = node(&redis.url(), |c| send_webhooks_to(c, &backend));
    let mut p = Process::start(&node_config(&redis.url()));
    let mut api = Api::new(a.local_addr());
    let mut bystander = Client::connect(a.local_addr(), "");
    bystander.subscribe("news", None);

    let mut ann = Client::connect(a.local_addr(), "?user=ann");
    let mut bob = Client::connect(p.addr, "?user=bob");
    let mut bob_a = Client::connect(a.local_addr(), "?user=bob");
    for c in [&mut ann, &mut bob, &mut bob_a] {
        nothing_pending_after_connect(c);
    }
    wait_for(TIMEOUT, "both users online as node A sees it", || {
        online(&mut api, &["ann", "bob", "cid"]) == json!({"ann": true, "bob": true, "cid": false})
    });
    // An explicit disconnect: offline at once (no TTL to wait for).
    drop(ann);
    wait_for(TIMEOUT, "ann offline", || {
        online(&mut api, &["ann"]) == json!({"ann": false})
    });
    // Bob still has a connection on the process node.
    drop(bob_a);
    nothing_pending(&mut bystander);
    assert_eq!(online(&mut api, &["bob"]), json!({"bob": true}));
    let t0 = std::time::Instant::now();
    p.sigkill();
    drop(bob);
    wait_for(
        Duration::from_secs(20),
        "bob offline once his node's entry expired",
        || online(&mut api, &["bob"]) == json!({"bob": false}),
    );
    let took = t0.elapsed();
    println!("bob offline {took:?} after his node died (presence_ttl 2 s)");
    let mut evs = Vec::new();
    backend_util::wait_for(DEADLINE, "user_offline of ann and bob", || {
        evs = webhook_events(&backend);
        count(&evs, "user_offline", "user_id", "bob") == 1
            && count(&evs, "user_offline", "user_id", "ann") == 1
    });
    assert_eq!(count(&evs, "user_online", "user_id", "ann"), 1, "{evs:#?}");
    nothing_pending(&mut bystander);
}

/// The personal channel's subscribe reply comes first.
fn nothing_pending_after_connect(c: &mut Client) {
    let v = c.next();
    assert_eq!(v["ok"], true, "personal channel: {v}");
    nothing_pending(c);
}

/// The occupancy events of `channel`, in order.
fn names_of(evs: &[Value], channel: &str) -> Vec<String> {
    evs.iter()
        .filter(|e| e["channel"] == channel)
        .map(|e| e["name"].as_str().unwrap().to_string())
        .filter(|n| n.starts_with("channel_"))
        .collect()
}

/// A ping answered: `c` is served (after a Redis restart a subscriber
/// gets a `resync` notice first, which this skips).
fn served(c: &mut Client) {
    let r = call(c, json!({"op": "ping"}));
    assert!(r.get("error").is_none(), "{r}");
}

/// Two nodes sending their webhooks to `backend`: one in this process
/// (the survivor) and one in a process of its own (to be killed).
fn survivor_and_victim(
    redis: &RedisServer,
    backend: &Backend,
) -> (wsgate::server::Server, Process) {
    let a = node(&redis.url(), |c| send_webhooks_to(c, backend));
    let mut cfg = node_config(&redis.url());
    send_webhooks_to(&mut cfg, backend);
    (a, Process::start(&cfg))
}

#[test]
fn a_killed_nodes_channels_are_vacated_once_within_the_ttl() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    let (a, mut p) = survivor_and_victim(&redis, &backend);
    let mut bystander = Client::connect(a.local_addr(), "");
    bystander.subscribe("news", None);

    // dead:1 and dead:2 only on the process node; shared on both.
    let mut on_p = Client::connect(p.addr, "");
    on_p.subscribe("dead:1", None);
    on_p.subscribe("dead:2", None);
    on_p.subscribe("shared", None);
    let mut on_a = Client::connect(a.local_addr(), "");
    on_a.subscribe("shared", None);
    backend_util::wait_for(DEADLINE, "three channels occupied", || {
        let evs = webhook_events(&backend);
        ["dead:1", "dead:2", "shared"]
            .iter()
            .all(|c| count(&evs, "channel_occupied", "channel", c) == 1)
    });

    let t0 = std::time::Instant::now();
    p.sigkill();
    drop(on_p);
    let mut evs = Vec::new();
    backend_util::wait_for(
        Duration::from_secs(20),
        "the killed node's channels vacated",
        || {
            evs = webhook_events(&backend);
            count(&evs, "channel_vacated", "channel", "dead:1") >= 1
                && count(&evs, "channel_vacated", "channel", "dead:2") >= 1
        },
    );
    println!(
        "channel_vacated {:?} after the node died (presence_ttl 2 s, refresh 0.5 s)",
        t0.elapsed()
    );
    // Node A swept them once; shared keeps A's subscriber.
    for c in ["dead:1", "dead:2"] {
        assert_eq!(
            names_of(&evs, c),
            ["channel_occupied", "channel_vacated"],
            "{c}"
        );
    }
    assert_eq!(names_of(&evs, "shared"), ["channel_occupied"]);
    nothing_pending(&mut bystander);
    nothing_pending(&mut on_a);

    // The channel lives again on A: occupied, then vacated, in pairs.
    let mut again = Client::connect(a.local_addr(), "");
    again.subscribe("dead:1", None);
    drop(again);
    drop(on_a);
    backend_util::wait_for(DEADLINE, "dead:1 and shared vacated", || {
        evs = webhook_events(&backend);
        count(&evs, "channel_vacated", "channel", "dead:1") == 2
            && count(&evs, "channel_vacated", "channel", "shared") == 1
    });
    assert_eq!(
        names_of(&evs, "dead:1"),
        [
            "channel_occupied",
            "channel_vacated",
            "channel_occupied",
            "channel_vacated"
        ]
    );
    nothing_pending(&mut bystander);
}

#[test]
fn occupancy_and_user_presence_changed_while_redis_was_down_are_sent_when_it_is_back() {
    let mut redis = RedisServer::start();
    let backend = Backend::start();
    let a = node(&redis.url(), |c| send_webhooks_to(c, &backend));
    let mut api = Api::new(a.local_addr());
    let mut bystander = Client::connect(a.local_addr(), "");
    bystander.subscribe("news", None);
    let mut ann = Client::connect(a.local_addr(), "?user=ann");
    ann.subscribe("before", None);
    backend_util::wait_for(DEADLINE, "before occupied, ann online", || {
        let evs = webhook_events(&backend);
        count(&evs, "channel_occupied", "channel", "before") == 1
            && count(&evs, "user_online", "user_id", "ann") == 1
    });

    // Redis dies, and restarts empty: what the nodes registered is lost.
    redis.kill();
    wait_for(TIMEOUT, "node A degraded", || api.get("/healthz").0 == 503);
    // Meanwhile: ann leaves (before vacated, ann offline), bob comes and
    // subscribes (during occupied, bob online); the bystander is served.
    drop(ann);
    let mut bob = Client::connect(a.local_addr(), "?user=bob");
    bob.subscribe("during", None);
    nothing_pending(&mut bystander);
    redis.restart();
    wait_for(TIMEOUT, "node A healthy", || api.get("/healthz").0 == 200);

    let mut evs = Vec::new();
    backend_util::wait_for(DEADLINE, "the outage's transitions", || {
        evs = webhook_events(&backend);
        count(&evs, "channel_vacated", "channel", "before") == 1
            && count(&evs, "user_offline", "user_id", "ann") == 1
            && count(&evs, "channel_occupied", "channel", "during") == 1
            && count(&evs, "user_online", "user_id", "bob") == 1
    });
    assert_eq!(
        names_of(&evs, "before"),
        ["channel_occupied", "channel_vacated"]
    );
    assert_eq!(names_of(&evs, "during"), ["channel_occupied"]);
    // Bob is online as the cluster sees it (re-asserted into the empty
    // Redis), ann is not.
    assert_eq!(
        online(&mut api, &["ann", "bob"]),
        json!({"ann": false, "bob": true})
    );
    // And nothing more: bob leaves, during is vacated once.
    drop(bob);
    backend_util::wait_for(DEADLINE, "during vacated, bob offline", || {
        evs = webhook_events(&backend);
        count(&evs, "channel_vacated", "channel", "during") == 1
            && count(&evs, "user_offline", "user_id", "bob") == 1
    });
    assert_eq!(
        names_of(&evs, "during"),
        ["channel_occupied", "channel_vacated"]
    );
    assert_eq!(count(&evs, "user_online", "user_id", "bob"), 1, "{evs:#?}");
    served(&mut bystander);
}

#[test]
fn client_event_is_sent_only_for_publications_redis_accepted() {
    let mut redis = RedisServer::start();
    let backend = Backend::start();
    let a = node(&redis.url(), |c| webhooks_and_client_events(c, &backend));
    let mut api = Api::new(a.local_addr());
    let mut bystander = Client::connect(a.local_addr(), "");
    bystander.subscribe("news", None);
    let mut c = Client::connect(a.local_addr(), "?user=ann");
    let r = call(
        &mut c,
        json!({"op": "publish", "channel": "chat:1", "data": "first"}),
    );
    assert_eq!(r["ok"], true, "{r}");

    redis.kill();
    wait_for(TIMEOUT, "node A degraded", || api.get("/healthz").0 == 503);
    // Not published (Redis unreachable: code 10; or 13 when it was sent
    // as the connection died, and Redis never ran it): no event.
    let r = call(
        &mut c,
        json!({"op": "publish", "channel": "chat:1", "data": "refused"}),
    );
    assert!(r["error"]["code"] == 10 || r["error"]["code"] == 13, "{r}");
    nothing_pending(&mut bystander);
    redis.restart();
    wait_for(TIMEOUT, "node A healthy", || api.get("/healthz").0 == 200);
    let r = call(
        &mut c,
        json!({"op": "publish", "channel": "chat:1", "data": "last"}),
    );
    assert_eq!(r["ok"], true, "{r}");
    let mut evs = Vec::new();
    backend_util::wait_for(DEADLINE, "the last client_event", || {
        evs = webhook_events(&backend);
        evs.iter()
            .any(|e| e["name"] == "client_event" && e["data"] == "last")
    });
    let data: Vec<&Value> = evs
        .iter()
        .filter(|e| e["name"] == "client_event")
        .map(|e| &e["data"])
        .collect();
    assert_eq!(data, [&json!("first"), &json!("last")], "{evs:#?}");
    served(&mut bystander);
}

/// The users `channel`'s presence lists, as node `api` reads it, sorted.
fn present(api: &mut Api, channel: &str) -> Vec<String> {
    let (status, v) = api.get(&format!("/api/presence?channel={channel}"));
    assert_eq!(status, 200, "{v}");
    let mut users: Vec<String> = v["members"]
        .as_array()
        .unwrap_or_else(|| panic!("members: {v}"))
        .iter()
        .map(|m| m["user"].as_str().unwrap_or("").to_string())
        .collect();
    users.sort();
    users
}

/// The member and occupancy events of `channel`, in order.
fn member_names_of(evs: &[Value], channel: &str) -> Vec<String> {
    evs.iter()
        .filter(|e| e["channel"] == channel)
        .map(|e| e["name"].as_str().unwrap().to_string())
        .filter(|n| n.starts_with("channel_") || n.starts_with("member_"))
        .collect()
}

#[test]
fn a_killed_nodes_members_are_removed_once_within_the_ttl() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    let (a, mut p) = survivor_and_victim(&redis, &backend);
    let mut api = Api::new(a.local_addr());
    // The bystander is a member of `room` on the survivor.
    let mut bystander = Client::connect(a.local_addr(), "?user=by");
    nothing_pending_after_connect(&mut bystander);
    bystander.subscribe("room", None);

    // ann and bob on the process node: in room (shared) and solo (theirs).
    let mut on_p = Vec::new();
    for u in ["ann", "bob"] {
        let mut c = Client::connect(p.addr, &format!("?user={u}"));
        nothing_pending_after_connect(&mut c);
        c.subscribe("room", None);
        c.subscribe("solo", None);
        on_p.push(c);
    }
    wait_for(TIMEOUT, "three members of room, two of solo", || {
        present(&mut api, "room") == ["ann", "bob", "by"]
            && present(&mut api, "solo") == ["ann", "bob"]
    });
    backend_util::wait_for(DEADLINE, "member_added of ann and bob", || {
        let evs = webhook_events(&backend);
        count(&evs, "member_added", "user_id", "ann") == 2
            && count(&evs, "member_added", "user_id", "bob") == 2
    });

    let t0 = std::time::Instant::now();
    p.sigkill();
    drop(on_p);
    wait_for(
        Duration::from_secs(20),
        "the killed node's members gone from presence",
        || present(&mut api, "room") == ["by"] && present(&mut api, "solo").is_empty(),
    );
    println!(
        "members gone from presence {:?} after their node died (presence_ttl 2 s, refresh 0.5 s)",
        t0.elapsed()
    );
    let mut evs = Vec::new();
    backend_util::wait_for(
        Duration::from_secs(20),
        "member_removed of ann and bob",
        || {
            evs = webhook_events(&backend);
            count(&evs, "member_removed", "user_id", "ann") >= 2
                && count(&evs, "member_removed", "user_id", "bob") >= 2
                && count(&evs, "channel_vacated", "channel", "solo") >= 1
        },
    );
    served(&mut bystander);
    // Later events come after any repeat a sweep would have sent: a
    // member of solo on A joins and leaves (occupied, vacated again) once
    // more than a TTL has passed since the removal.
    let removed_at = std::time::Instant::now();
    wait_for(TIMEOUT, "a TTL since the removal", || {
        present(&mut api, "room") == ["by"] && removed_at.elapsed() > Duration::from_secs(3)
    });
    let mut marker = Client::connect(a.local_addr(), "?user=cid");
    nothing_pending_after_connect(&mut marker);
    marker.subscribe("solo", None);
    drop(marker);
    backend_util::wait_for(DEADLINE, "solo vacated again", || {
        evs = webhook_events(&backend);
        count(&evs, "channel_vacated", "channel", "solo") == 2
    });
    for u in ["ann", "bob"] {
        assert_eq!(
            count(&evs, "member_removed", "user_id", u),
            2,
            "{u}: {evs:#?}"
        );
        assert_eq!(
            count(&evs, "member_added", "user_id", u),
            2,
            "{u}: {evs:#?}"
        );
    }
    assert_eq!(
        count(&evs, "member_removed", "user_id", "by"),
        0,
        "{evs:#?}"
    );
    // solo: both removed before it is vacated (whichever sweep came
    // first), then cid's pair.
    let solo = member_names_of(&evs, "solo");
    assert_eq!(solo.len(), 10, "{solo:?}");
    assert_eq!(
        &solo[3..6],
        ["member_removed", "member_removed", "channel_vacated"].as_slice(),
        "{solo:?}"
    );
    assert_eq!(names_of(&evs, "room"), ["channel_occupied"]);
    // The bystander is still a member, and served.
    assert_eq!(present(&mut api, "room"), ["by"]);
    served(&mut bystander);
}

/// A publish repeating an idempotency key, on the node that made the
/// first or on another, is answered with the first result and sends no
/// second `client_event` (the publish script tells a repeat).
#[test]
fn a_repeated_idempotency_key_sends_one_client_event_across_nodes() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    let a = node(&redis.url(), |c| webhooks_and_client_events(c, &backend));
    let b = node(&redis.url(), |c| webhooks_and_client_events(c, &backend));
    let mut bystander = Client::connect(a.local_addr(), "");
    bystander.subscribe("news", None);
    let mut ca = Client::connect(a.local_addr(), "?user=ann");
    let mut cb = Client::connect(b.local_addr(), "?user=bob");
    let op = |data: &str| json!({"op": "publish", "channel": "chat:1", "data": data, "idempotency_key": "k-1"});
    let first = call(&mut ca, op("first"));
    assert_eq!(first["ok"], true, "{first}");
    for (c, data) in [(&mut ca, "again"), (&mut cb, "from b")] {
        let r = call(c, op(data));
        assert_eq!(
            (&r["epoch"], &r["offset"]),
            (&first["epoch"], &first["offset"]),
            "the first result: {r}"
        );
    }
    // A marker from each node: a node's events reach the backend in order,
    // so once both markers are in, any repeat's event would be too.
    for (c, data) in [(&mut ca, "marker a"), (&mut cb, "marker b")] {
        let r = call(
            c,
            json!({"op": "publish", "channel": "chat:1", "data": data}),
        );
        assert_eq!(r["ok"], true, "{r}");
    }
    let mut data: Vec<String> = Vec::new();
    backend_util::wait_for(DEADLINE, "both markers' client_events", || {
        data = webhook_events(&backend)
            .iter()
            .filter(|e| e["name"] == "client_event")
            .map(|e| e["data"].as_str().unwrap_or("").to_string())
            .collect();
        data.iter().filter(|d| d.starts_with("marker")).count() == 2
    });
    data.sort();
    assert_eq!(data, ["first", "marker a", "marker b"]);
    served(&mut bystander);
}
