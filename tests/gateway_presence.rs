//! Presence: who is subscribed to a channel (the `presence` op and
//! `GET /api/presence`), join/leave events where the namespace asks for
//! them, and members leaving when their connection goes.

#[path = "support/gateway.rs"]
mod gateway_support;

use std::net::SocketAddr;

use gateway_support::*;
use serde_json::{json, Value};
use wsgate::config::ChannelOverrides;

/// (client, user) pairs of a presence answer, checked for shape.
fn members(info: &Value) -> Vec<(String, Option<String>)> {
    let list = info["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members array: {info}"));
    list.iter()
        .map(|m| {
            let client = m["client"]
                .as_str()
                .unwrap_or_else(|| panic!("member without a client id: {m}"))
                .to_string();
            assert!(!client.is_empty(), "{m}");
            let user = m.get("user").map(|u| {
                u.as_str()
                    .unwrap_or_else(|| panic!("user is not a string: {m}"))
                    .to_string()
            });
            (client, user)
        })
        .collect()
}

fn count(info: &Value, field: &str) -> u64 {
    info[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} count: {info}"))
}

fn wait_presence_clients(addr: SocketAddr, channel: &str, n: u64) -> Value {
    let mut last = Value::Null;
    wait_until(
        WAIT,
        &format!("presence of {channel} to hold {n} clients"),
        || {
            last = api_presence(addr, channel);
            last["clients"] == n
        },
    );
    last
}

#[test]
fn presence_lists_clients_and_users_and_counts_them() {
    let server = start_gateway(|_| {});
    let addr = server.local_addr();

    let mut a1 = Client::connect(addr, "/ws?user=alice");
    let mut a2 = Client::connect(addr, "/ws?user=alice");
    let mut anon = Client::connect(addr, "/ws");
    let mut bystander = Client::connect(addr, "/ws?user=carol");
    for c in [&mut a1, &mut a2, &mut anon] {
        c.subscribe("room");
    }
    bystander.subscribe("elsewhere");

    let info = a1.call(json!({ "op": "presence", "channel": "room" }));
    assert_eq!(info["ok"], true, "{info}");
    assert_eq!(count(&info, "clients"), 3, "{info}");
    assert_eq!(
        count(&info, "users"),
        2,
        "alice (twice) and one anonymous: {info}"
    );
    let m = members(&info);
    assert_eq!(m.len(), 3, "{info}");
    let mut clients: Vec<&str> = m.iter().map(|(c, _)| c.as_str()).collect();
    clients.sort_unstable();
    clients.dedup();
    assert_eq!(clients.len(), 3, "client ids are distinct: {info}");
    let mut users: Vec<Option<&str>> = m.iter().map(|(_, u)| u.as_deref()).collect();
    users.sort_unstable();
    assert_eq!(users, vec![None, Some("alice"), Some("alice")], "{info}");

    // The API says the same (without the op's id and ok).
    let api = api_presence(addr, "room");
    assert_eq!(api["members"], info["members"], "{api}");
    assert_eq!((count(&api, "clients"), count(&api, "users")), (3, 2));

    // An empty channel.
    let empty = api_presence(addr, "nobody-here");
    assert_eq!(
        (count(&empty, "clients"), count(&empty, "users")),
        (0, 0),
        "{empty}"
    );
    assert_eq!(empty["members"], json!([]));

    // Unsubscribing leaves presence.
    let r = anon.call(json!({ "op": "unsubscribe", "channel": "room" }));
    assert_eq!(r["ok"], true, "{r}");
    let info = wait_presence_clients(addr, "room", 2);
    assert_eq!(count(&info, "users"), 1, "{info}");
    assert!(members(&info)
        .iter()
        .all(|(_, u)| u.as_deref() == Some("alice")));

    for c in [a1, a2, anon, bystander] {
        c.close();
    }
    stop_gateway(server);
}

#[test]
fn join_and_leave_events_where_the_namespace_asks_for_them() {
    let server = start_gateway(|cfg| {
        cfg.namespaces.insert(
            "lobby".into(),
            ChannelOverrides {
                join_leave: Some(true),
                ..Default::default()
            },
        );
    });
    let addr = server.local_addr();

    let mut watcher = Client::connect(addr, "/ws?user=wendy");
    watcher.connect_reply("$user:wendy");
    watcher.subscribe("lobby:main");
    // Its own join may be delivered to it; skip it, identified by presence.
    let me = members(&api_presence(addr, "lobby:main"));
    assert_eq!(me.len(), 1);
    let my_id = me[0].0.clone();
    watcher.assert_alive();

    let mut bob = Client::connect(addr, "/ws?user=bob");
    bob.connect_reply("$user:bob");
    bob.subscribe("lobby:main");
    let mut anon = Client::connect(addr, "/ws");
    anon.subscribe("lobby:main");

    let next_event = |c: &mut Client| loop {
        let m = c.next();
        assert_eq!(m["channel"], "lobby:main", "{m}");
        if m["join"]["client"] == my_id.as_str() {
            continue;
        }
        return m;
    };
    let j1 = next_event(&mut watcher);
    let bob_id = j1["join"]["client"]
        .as_str()
        .unwrap_or_else(|| panic!("{j1}"))
        .to_string();
    assert_eq!(j1["join"]["user"], "bob", "{j1}");
    assert_eq!(
        j1.as_object().unwrap().len(),
        2,
        "channel and join only: {j1}"
    );
    let j2 = next_event(&mut watcher);
    let anon_id = j2["join"]["client"]
        .as_str()
        .unwrap_or_else(|| panic!("{j2}"))
        .to_string();
    assert!(j2["join"].get("user").is_none(), "anonymous: {j2}");
    assert_ne!(bob_id, anon_id);

    // The ids match what presence lists.
    let info = api_presence(addr, "lobby:main");
    let ids: Vec<String> = members(&info).into_iter().map(|(c, _)| c).collect();
    for id in [&my_id, &bob_id, &anon_id] {
        assert!(ids.contains(id), "{id} in {info}");
    }

    // An unsubscribe, and a closed connection, each bring a leave.
    let r = anon.call(json!({ "op": "unsubscribe", "channel": "lobby:main" }));
    assert_eq!(r["ok"], true, "{r}");
    let l1 = next_event(&mut watcher);
    assert_eq!(
        l1,
        json!({ "channel": "lobby:main", "leave": { "client": anon_id } })
    );
    bob.close();
    let l2 = next_event(&mut watcher);
    assert_eq!(
        l2,
        json!({ "channel": "lobby:main", "leave": { "client": bob_id, "user": "bob" } })
    );

    // Publications still flow between events, and nothing else is pending.
    api_publish(addr, "lobby:main", json!("hello"));
    assert_eq!(watcher.next_publication("lobby:main"), (1, json!("hello")));
    watcher.assert_nothing_pending();

    // Outside the namespace, no events.
    let mut quiet = Client::connect(addr, "/ws");
    quiet.subscribe("hall");
    let mut other = Client::connect(addr, "/ws?user=olga");
    other.subscribe("hall");
    other.close();
    wait_presence_clients(addr, "hall", 1);
    api_publish(addr, "hall", json!("only this"));
    assert_eq!(quiet.next_publication("hall"), (1, json!("only this")));
    quiet.assert_nothing_pending();

    for c in [watcher, anon, quiet] {
        c.close();
    }
    stop_gateway(server);
}

#[test]
fn a_closed_connection_disappears_from_presence() {
    let server = start_gateway(|_| {});
    let addr = server.local_addr();

    let mut stay = Client::connect(addr, "/ws?user=stay");
    stay.subscribe("gone");
    let mut clean = Client::connect(addr, "/ws?user=clean");
    clean.subscribe("gone");
    let mut abrupt = Client::connect(addr, "/ws?user=abrupt");
    abrupt.subscribe("gone");
    let info = wait_presence_clients(addr, "gone", 3);
    assert_eq!(count(&info, "users"), 3);

    // A clean close (close handshake).
    clean.close();
    let info = wait_presence_clients(addr, "gone", 2);
    let users: Vec<Option<String>> = members(&info).into_iter().map(|(_, u)| u).collect();
    assert!(!users.contains(&Some("clean".into())), "{info}");

    // TCP dropped without a close frame.
    drop(abrupt);
    let info = wait_presence_clients(addr, "gone", 1);
    assert_eq!(members(&info)[0].1.as_deref(), Some("stay"), "{info}");

    // The op agrees.
    let info = stay.call(json!({ "op": "presence", "channel": "gone" }));
    assert_eq!((count(&info, "clients"), count(&info, "users")), (1, 1));
    stay.close();
    wait_presence_clients(addr, "gone", 0);
    stop_gateway(server);
}
