//! A subscribe grant's `override.presence` and `override.join_leave`
//! (Centrifugo's), applied per subscription on the memory, Redis and NATS
//! brokers, against the test backend (`tests/backend/app.py`): a member
//! not tracked is not listed and gets no `member_added` / `member_removed`;
//! its join and leave are announced or not whatever the namespace says; the
//! leave matches the join. The subscribe op's `data` reaches the subscribe
//! proxy. A bystander stays served throughout.

#[path = "backend_util/mod.rs"]
mod backend_util;
#[path = "support/bystander.rs"]
mod bystander;
#[path = "support/gateway.rs"]
mod gateway_support;
// (It re-exports tests/redis_util: the Redis server and nodes too.)
mod nats_util;

use std::net::SocketAddr;

use backend_util::{send_webhooks_to, webhook_events, Backend, DEADLINE};
use bystander::Bystander;
use gateway_support::*;
use serde_json::json;
use wsgate::config::{ChannelOverrides, Config};
use wsgate::server::Server;

/// `room:` tracks presence and does not announce joins; `lobby:` does
/// neither; both ask the subscribe proxy.
fn hooked(cfg: &mut Config, backend: &Backend) {
    cfg.proxy.subscribe = backend.url("subscribe");
    send_webhooks_to(cfg, backend);
    for (ns, presence) in [("room", true), ("lobby", false)] {
        cfg.namespaces.insert(
            ns.into(),
            ChannelOverrides {
                subscribe_proxy: Some(true),
                presence: Some(presence),
                join_leave: Some(false),
                ..Default::default()
            },
        );
    }
}

/// The next subscribe answered with `override` (and nothing else).
fn grant(backend: &Backend, presence: Option<bool>, join_leave: Option<bool>) {
    let mut o = serde_json::Map::new();
    if let Some(v) = presence {
        o.insert("presence".into(), json!({ "value": v }));
    }
    if let Some(v) = join_leave {
        o.insert("join_leave".into(), json!({ "value": v }));
    }
    backend.set(
        "subscribe",
        json!({"mode": "result", "result": {"override": o}, "count": 1}),
    );
}

/// `c`'s client id, as `/api/presence` lists it (with NATS, presence is
/// written after the subscribe reply: waited for).
fn client_id(addr: SocketAddr, c: &mut Client, probe: &str) -> String {
    // A member of a plain presence channel shows its own id.
    c.subscribe(probe);
    let mut ids = Vec::new();
    backend_util::wait_for(DEADLINE, "one member of the probe channel", || {
        ids = members(addr, probe);
        ids.len() == 1
    });
    c.call(json!({"op": "unsubscribe", "channel": probe}));
    ids.remove(0)
}

/// The client ids `/api/presence` lists for `channel`, sorted.
fn members(addr: SocketAddr, channel: &str) -> Vec<String> {
    let p = api_presence(addr, channel);
    let list = p["members"]
        .as_array()
        .unwrap_or_else(|| panic!("a member list: {p}"))
        .clone();
    let mut ids: Vec<String> = list
        .iter()
        .map(|m| m["client"].as_str().expect("client id").to_string())
        .collect();
    ids.sort();
    ids
}

/// Wait until `channel`'s members are exactly `want` (with NATS, presence
/// is written after the subscribe reply); a member that should not be
/// there keeps it from ever matching.
fn wait_members(addr: SocketAddr, channel: &str, mut want: Vec<String>) {
    want.sort();
    let mut got = Vec::new();
    let what = format!("the members of {channel} to be {want:?}");
    backend_util::wait_for(DEADLINE, &what, || {
        got = members(addr, channel);
        got == want
    });
}

/// The next message for `c`, which must be a join or leave on `channel`:
/// returns (kind, client id).
fn next_join_leave(c: &mut Client, channel: &str) -> (String, String) {
    let m = c.next();
    assert_eq!(m["channel"], channel, "a presence event: {m}");
    for kind in ["join", "leave"] {
        if let Some(who) = m.get(kind) {
            return (kind.into(), who["client"].as_str().unwrap_or("").into());
        }
    }
    panic!("expected a join or leave on {channel}: {m}")
}

fn member_events(backend: &Backend, channel: &str) -> Vec<(String, String)> {
    webhook_events(backend)
        .into_iter()
        .filter(|e| {
            (e["name"] == "member_added" || e["name"] == "member_removed")
                && e["channel"] == channel
        })
        .map(|e| {
            let name = e["name"].as_str().unwrap_or("").to_string();
            let client = e["client_id"].as_str().unwrap_or("").to_string();
            (name, client)
        })
        .collect()
}

/// The whole case, on a gateway started by `start` (memory or Redis).
fn overrides_apply_per_subscription(start: impl FnOnce(&Backend) -> Server) {
    let backend = Backend::start();
    let server = start(&backend);
    let addr = server.local_addr();
    let mut by = Bystander::connect(addr, "bystander");
    let mut watcher = Client::connect(addr, "/ws");
    let mut tracked = Client::connect(addr, "/ws?user=bea");
    let mut ghost = Client::connect(addr, "/ws?user=gus");
    let (t_id, g_id) = (
        client_id(addr, &mut tracked, "room:probe-t"),
        client_id(addr, &mut ghost, "room:probe-g"),
    );
    let w_id = client_id(addr, &mut watcher, "room:probe-w");

    // The watcher: a member of room:1, the namespace's defaults.
    watcher.subscribe("room:1");
    // Presence on (explicitly), join_leave as the namespace (off): tracked,
    // not announced.
    grant(&backend, Some(true), None);
    tracked.subscribe("room:1");
    // Presence off, join_leave on: not tracked, announced; the op's data
    // reaches the backend.
    grant(&backend, Some(false), Some(true));
    let r = ghost.call(json!({"op": "subscribe", "channel": "room:1", "data": {"invite": "x1"}}));
    assert_eq!(r["ok"], true, "{r}");
    let asked = backend.log("subscribe");
    let last = asked.last().expect("the subscribe proxy was asked");
    assert_eq!(last["body"]["data"], json!({"invite": "x1"}), "{last}");
    assert_eq!(last["body"]["channel"], "room:1");
    // Without data, none is sent.
    assert!(asked[asked.len() - 2]["body"].get("data").is_none());

    // The ghost's join is the watcher's next message (the tracked
    // client's, had it been announced, would have come first).
    assert_eq!(
        next_join_leave(&mut watcher, "room:1"),
        ("join".into(), g_id.clone())
    );
    // The ghost is not listed.
    wait_members(addr, "room:1", vec![w_id.clone(), t_id.clone()]);

    // Leaves match the joins.
    tracked.call(json!({"op": "unsubscribe", "channel": "room:1"}));
    ghost.call(json!({"op": "unsubscribe", "channel": "room:1"}));
    assert_eq!(
        next_join_leave(&mut watcher, "room:1"),
        ("leave".into(), g_id.clone())
    );
    wait_members(addr, "room:1", vec![w_id.clone()]);

    // lobby: presence and join_leave off by the namespace, both on by the
    // grant: listed and announced.
    grant(&backend, None, None);
    watcher.subscribe("lobby:1");
    grant(&backend, Some(true), Some(true));
    tracked.subscribe("lobby:1");
    assert_eq!(
        next_join_leave(&mut watcher, "lobby:1"),
        ("join".into(), t_id.clone())
    );
    wait_members(addr, "lobby:1", vec![t_id.clone()]);
    // Its connection closes: the leave is announced all the same.
    tracked.close();
    assert_eq!(
        next_join_leave(&mut watcher, "lobby:1"),
        ("leave".into(), t_id.clone())
    );
    wait_members(addr, "lobby:1", Vec::new());

    // Webhooks: member events for the tracked subscriptions only, never
    // the ghost's.
    let mut evs = Vec::new();
    backend_util::wait_for(DEADLINE, "member_removed of the lobby", || {
        evs = member_events(&backend, "lobby:1");
        evs.len() == 2
    });
    assert_eq!(
        evs,
        [
            ("member_added".to_string(), t_id.clone()),
            ("member_removed".to_string(), t_id.clone())
        ]
    );
    let room = member_events(&backend, "room:1");
    assert!(
        room.iter().all(|(_, c)| *c != g_id),
        "no member event for the ghost: {room:?}"
    );
    assert!(
        room.contains(&("member_removed".to_string(), t_id.clone())),
        "{room:?}"
    );
    watcher.assert_nothing_pending();
    ghost.assert_alive();
    by.assert_served("the overrides");
    stop_gateway(server);
}

#[test]
fn overrides_apply_per_subscription_with_the_memory_broker() {
    overrides_apply_per_subscription(|backend| start_gateway(|cfg| hooked(cfg, backend)));
}

#[test]
fn overrides_apply_per_subscription_with_the_redis_broker() {
    let redis = nats_util::RedisServer::start();
    let url = redis.url();
    overrides_apply_per_subscription(|backend| nats_util::node(&url, |cfg| hooked(cfg, backend)));
    drop(redis);
}

#[test]
fn overrides_apply_per_subscription_with_the_nats_broker() {
    let nats = nats_util::NatsServer::start();
    let url = nats.url();
    overrides_apply_per_subscription(|backend| {
        nats_util::nats_node(&[url], |cfg| hooked(cfg, backend))
    });
    drop(nats);
}
