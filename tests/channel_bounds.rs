//! What a client that creates channels, or a publisher that fills history,
//! can make the node hold (SECURITY.md: channel churn, channel limit,
//! history budget), with bystanders served throughout:
//!
//! - subscribing to new channels faster than `limits.channel_rate` gets
//!   error 5, counted; what was subscribed and left keeps only a position;
//! - past `limits.max_channels` live channels, a subscribe or publish that
//!   needs another gets error 10 (HTTP 503), counted, until channels go;
//! - past `limits.history_memory`, the oldest publications node-wide are
//!   dropped first: recovery into them says `recovered:false` and replays
//!   nothing, recovery at a channel's top and from newer offsets works.
//!
//! The memory these bound is measured on the binary in tests/abuse.rs.

#[path = "support/bystanders.rs"]
mod bystander;
#[path = "support/gateway.rs"]
mod gateway_support;

use std::collections::HashMap;

use bystander::Bystanders;
use gateway_support::*;
use serde_json::{json, Value};
use tungstenite::Message;

/// `/metrics`, summed over labels.
fn metrics(addr: std::net::SocketAddr) -> HashMap<String, f64> {
    let r = http_get(addr, "/metrics");
    assert_eq!(r.status, 200);
    let mut m = HashMap::new();
    for line in r.text().lines().filter(|l| !l.starts_with('#')) {
        if let Some((name, v)) = line.rsplit_once(' ') {
            let name = name.split('{').next().unwrap_or(name).to_string();
            *m.entry(name).or_insert(0.0) += v.parse::<f64>().unwrap_or(0.0);
        }
    }
    m
}

fn metric(addr: std::net::SocketAddr, name: &str) -> u64 {
    *metrics(addr)
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in /metrics")) as u64
}

/// Write every op as its own frame, in one flush (one TCP write, as far
/// as the kernel goes), then collect the reply of each by id.
fn pipelined(c: &mut Client, ops: &[Value]) -> Vec<Value> {
    for op in ops {
        c.ws.write(Message::Text(op.to_string())).expect("queue op");
    }
    c.ws.flush().expect("flush");
    ops.iter().map(|op| c.reply_to(&op["id"])).collect()
}

fn code(reply: &Value) -> Option<u64> {
    reply["error"]["code"].as_u64()
}

#[test]
fn subscribing_new_channels_faster_than_the_channel_rate_gets_code_5() {
    let server = start_gateway(|c| c.limits.channel_rate = 20);
    let addr = server.local_addr();
    let by = Bystanders::start(addr);
    let mark = by.progress();

    // 400 new channels: 50 subscribed at a time, pipelined, then left.
    // (Not a subscribe and an unsubscribe of one channel in one write:
    // that is the pipelining case of the reply-matching work.)
    let mut c = Client::connect(addr, "/ws");
    let (mut ok, mut refused) = (0, 0);
    for round in 0..8 {
        let names: Vec<String> = (0..50).map(|i| format!("churn-{round}-{i}")).collect();
        let subs: Vec<Value> = names
            .iter()
            .enumerate()
            .map(|(i, ch)| json!({ "id": i, "op": "subscribe", "channel": ch }))
            .collect();
        let unsubs: Vec<Value> = names
            .iter()
            .enumerate()
            .map(|(i, ch)| json!({ "id": 100 + i, "op": "unsubscribe", "channel": ch }))
            .collect();
        let replies = pipelined(&mut c, &subs);
        let left = pipelined(&mut c, &unsubs);
        for (sub, unsub) in replies.iter().zip(&left) {
            match code(sub) {
                None => {
                    ok += 1;
                    assert_eq!(unsub["ok"], true, "{unsub}");
                }
                Some(5) => {
                    refused += 1;
                    let msg = sub["error"]["message"].as_str().unwrap();
                    assert!(msg.contains("per second"), "{msg}");
                    assert_eq!(code(unsub), Some(7), "never subscribed: {unsub}");
                }
                other => panic!("unexpected {other:?}: {sub}"),
            }
        }
    }
    // A burst of max_channels_per_connection (128), then 20 a second.
    assert!(
        ok >= 128 && refused >= 200,
        "{ok} accepted, {refused} refused"
    );
    assert_eq!(
        metric(addr, "wsgate_channel_rate_limited_total"),
        refused as u64
    );
    // Nothing is subscribed any more: the node keeps the channels it
    // accepted as positions only, live it holds the bystanders' one.
    wait_until(WAIT, "the churned channels to go idle", || {
        metric(addr, "wsgate_channels") == 1
    });
    assert_eq!(metric(addr, "wsgate_channels_idle"), ok as u64);
    by.served(mark, 5);
    c.assert_alive();
    // The rate refills: the connection subscribes again.
    wait_until(WAIT * 2, "a subscribe within the rate again", || {
        code(&c.call(json!({ "op": "subscribe", "channel": "later" }))).is_none()
    });
    c.close();
    let report = by.finish();
    println!("{ok} subscribes accepted, {refused} refused; bystanders {report:?}");
    stop_gateway(server);
}

#[test]
fn past_the_node_channel_limit_new_channels_get_code_10_until_channels_go() {
    let server = start_gateway(|c| {
        c.limits.max_channels = 40;
        c.limits.channel_rate = 0;
    });
    let addr = server.local_addr();
    let by = Bystanders::start(addr);
    let mark = by.progress();
    // The bystanders' feed is live: 39 more fit.
    let mut c = Client::connect(addr, "/ws");
    let ops: Vec<Value> = (0..60)
        .map(|i| json!({ "id": i, "op": "subscribe", "channel": format!("hold-{i}") }))
        .collect();
    let replies = pipelined(&mut c, &ops);
    let accepted = replies.iter().filter(|r| r["ok"] == true).count();
    assert_eq!(accepted, 39, "{:?}", &replies[..3]);
    for r in &replies[39..] {
        assert_eq!(code(r), Some(10), "{r}");
        assert!(r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("channel limit"));
    }
    // A publication to a new channel is refused alike; to existing ones,
    // it goes (the bystanders' feed keeps flowing).
    let r = http_post_json(
        addr,
        "/api/publish",
        &json!({ "channel": "brand-new", "data": 1 }),
    );
    assert_eq!((r.status, r.error_code()), (503, 10), "{}", r.text());
    assert_eq!(api_publish(addr, "hold-0", json!(1))["offset"], 1);
    assert_eq!(metric(addr, "wsgate_channel_limit_refusals_total"), 22);
    by.served(mark, 5);
    // The holder leaves: its channels (no history) go idle, and new ones
    // can be made again.
    c.close();
    wait_until(WAIT, "a new channel accepted again", || {
        http_post_json(
            addr,
            "/api/publish",
            &json!({ "channel": "brand-new", "data": 1 }),
        )
        .status
            == 200
    });
    let report = by.finish();
    println!("bystanders {report:?}");
    stop_gateway(server);
}

#[test]
fn a_full_history_budget_drops_the_oldest_publications_first() {
    let server = start_gateway(|c| c.limits.history_memory = 2 << 20);
    let addr = server.local_addr();
    // The oldest history: "old", 10 publications a client has seen.
    let items: Vec<Value> = (1..=10)
        .map(|n| json!({ "channel": "old", "data": { "n": n } }))
        .collect();
    let epoch = api_batch(addr, &items)[0]["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    let by = Bystanders::start(addr);
    let mark = by.progress();

    // 10 MiB into 20 channels: 5 times the budget.
    let pad = "f".repeat(100 << 10);
    for round in 0..5 {
        let items: Vec<Value> = (0..20)
            .map(|i| json!({ "channel": format!("flood-{i}"), "data": { "r": round, "pad": pad } }))
            .collect();
        for chunk in items.chunks(5) {
            api_batch(addr, chunk);
        }
        let held = metric(addr, "wsgate_history_bytes");
        assert!(held <= 2 << 20, "{held} bytes of history held");
    }
    assert!(metric(addr, "wsgate_history_evictions_total") > 0);
    assert_eq!(metric(addr, "wsgate_history_memory_bytes"), 2 << 20);
    by.served(mark, 5);

    // Recovery into "old": lost whole, nothing replayed; at its top: fine.
    let mut c = Client::connect(addr, "/ws");
    let r = c.subscribe_since("old", &epoch, 5);
    assert_eq!(
        (
            r["recovered"].clone(),
            r["offset"].clone(),
            r["epoch"].clone()
        ),
        (json!(false), json!(10), json!(epoch)),
        "{r}"
    );
    c.assert_nothing_pending();
    let mut d = Client::connect(addr, "/ws");
    let r = d.subscribe_since("old", &epoch, 10);
    assert_eq!(r["recovered"], true, "{r}");
    // The newest history is held: its last publication is replayed.
    let last = api_publish(addr, "flood-19", json!({ "last": true }));
    let off = last["offset"].as_u64().unwrap();
    let mut e = Client::connect(addr, "/ws");
    let r = e.subscribe_since("flood-19", last["epoch"].as_str().unwrap(), off - 2);
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(e.next_publication("flood-19").0, off - 1);
    assert_eq!(e.next_publication("flood-19").1, json!({ "last": true }));
    for x in [c, d, e] {
        x.close();
    }
    let report = by.finish();
    println!("bystanders {report:?}");
    stop_gateway(server);
}
