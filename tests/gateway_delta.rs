//! Fossil deltas through the gateway (issue 16): who gets them, when a
//! publication goes whole, and that every delta subscriber's data equals a
//! bystander's byte for byte. The peer-client checks are in
//! tests/gateway_python.rs (Python's own Fossil apply, with deflate) and
//! tests/browser/delta.test.mjs; Redis in tests/redis_delta.rs.

#[path = "support/delta.rs"]
mod delta_support;
#[path = "support/gateway.rs"]
mod gateway_support;

use delta_support::{DeltaClient, Pub};
use gateway_support::{api_publish, http_get, start_gateway, stop_gateway, wait_until};
use serde_json::{json, Value};
use std::time::Duration;
use wsgate::config::{ChannelOverrides, Config, DeltaMode};
use wsgate::delta::dashboard::Dashboard;
use wsgate::server::Server;

fn with_dash(c: &mut Config) {
    c.namespaces.insert(
        "dash".into(),
        ChannelOverrides {
            delta: Some(DeltaMode::Fossil),
            ..Default::default()
        },
    );
}

fn gateway() -> Server {
    start_gateway(with_dash)
}

/// Publish the dashboard's next tick; returns the data's bytes as sent.
fn tick(server: &Server, channel: &str, dash: &mut Dashboard) {
    dash.tick();
    let data: Value = serde_json::from_str(&dash.json()).unwrap();
    let r = api_publish(server.local_addr(), channel, data);
    assert!(r.get("offset").is_some(), "{r}");
}

fn metric(server: &Server, name: &str) -> u64 {
    let m = http_get(server.local_addr(), "/metrics").text();
    let l = m
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {name} in /metrics"));
    l.rsplit(' ').next().unwrap().parse().unwrap()
}

/// The delta subscriber's publication matches the bystander's.
fn same(d: &Pub, b: &Pub) {
    assert_eq!(d.offset, b.offset);
    assert!(!b.delta, "the bystander got a delta");
    assert_eq!(
        String::from_utf8_lossy(&d.data),
        String::from_utf8_lossy(&b.data),
        "offset {}",
        d.offset
    );
}

#[test]
fn a_delta_subscriber_gets_deltas_after_one_whole_and_a_bystander_whole_ones() {
    let server = gateway();
    let addr = server.local_addr();
    let ch = "dash:eu";
    let mut d = DeltaClient::connect(addr, "/ws");
    let r = d.subscribe(ch, true);
    assert_eq!(r["delta"], json!(true), "{r}");
    let mut b = DeltaClient::connect(addr, "/ws");
    let r = b.subscribe(ch, false);
    assert!(r.get("delta").is_none(), "{r}");
    // A second delta subscriber by URL (`&delta=fossil`).
    let mut u = DeltaClient::connect(addr, &format!("/ws?channel={ch}&delta=fossil"));
    let (r, _) = u.next_raw();
    assert_eq!(
        (r["ok"].clone(), r["delta"].clone()),
        (json!(true), json!(true)),
        "{r}"
    );
    let mut dash = Dashboard::new(1);
    let (mut delta_bytes, mut whole_bytes) = (0, 0);
    for n in 1..=30u64 {
        tick(&server, ch, &mut dash);
        let (pd, pb, pu) = (d.next_pub(ch), b.next_pub(ch), u.next_pub(ch));
        same(&pd, &pb);
        same(&pu, &pb);
        assert_eq!(pb.offset, n);
        assert_eq!((pd.delta, pu.delta), (n > 1, n > 1), "offset {n}");
        if n > 1 {
            delta_bytes += pd.text_len;
            whole_bytes += pb.text_len;
        }
    }
    assert!(
        delta_bytes * 10 < whole_bytes,
        "{delta_bytes} vs {whole_bytes}"
    );
    d.assert_nothing_pending();
    b.assert_nothing_pending();
    // Counted: two delta subscribers, one whole and 29 deltas each.
    assert_eq!(
        metric(&server, "wsgate_delta_deliveries_total{form=\"delta\"}"),
        58
    );
    assert_eq!(
        metric(&server, "wsgate_delta_deliveries_total{form=\"whole\"}"),
        2
    );
    assert!(
        metric(&server, "wsgate_delta_encoded_total") <= 2 * 29,
        "once per worker"
    );
    assert!(metric(&server, "wsgate_delta_bytes_saved_total") > 0);
    // Leaving drops the state.
    drop((d, u));
    wait_until(Duration::from_secs(20), "delta state dropped", || {
        metric(&server, "wsgate_delta_channels") == 0
            && metric(&server, "wsgate_delta_base_bytes") == 0
    });
    b.assert_nothing_pending();
    stop_gateway(server);
}

#[test]
fn deltas_where_the_namespace_does_not_allow_them_are_whole_and_bad_types_refused() {
    let server = gateway();
    let addr = server.local_addr();
    let mut bystander = DeltaClient::connect(addr, "/ws");
    bystander.subscribe("dash:by", false);
    let mut c = DeltaClient::connect(addr, "/ws");
    // As Centrifugo: granted only where allowed; elsewhere whole publications
    // and a reply without "delta".
    let r = c.subscribe("chat:1", true);
    assert!(r.get("delta").is_none(), "{r}");
    let mut dash = Dashboard::new(2);
    for n in 1..=3 {
        tick(&server, "chat:1", &mut dash);
        let p = c.next_pub("chat:1");
        assert_eq!((p.offset, p.delta), (n, false));
    }
    // Another type, or not a string: error 3, the connection goes on.
    for bad in [json!("xdelta"), json!("Fossil"), json!(true)] {
        let r = c.call(json!({ "op": "subscribe", "channel": "dash:x", "delta": bad }));
        assert_eq!(r["error"]["code"], json!(3), "{r}");
    }
    c.assert_nothing_pending();
    // On a URL: 400 before the upgrade.
    assert_eq!(
        DeltaClient::try_connect(addr, "/ws?channel=dash:x&delta=xdelta").err(),
        Some(400)
    );
    // The bystander on a delta namespace, without asking: whole.
    tick(&server, "dash:by", &mut dash);
    assert!(!bystander.next_pub("dash:by").delta);
    bystander.assert_nothing_pending();
    stop_gateway(server);
}

#[test]
fn pipelined_subscribe_unsubscribe_subscribe_restarts_whole_each_time() {
    let server = gateway();
    let addr = server.local_addr();
    let ch = "dash:pipe";
    let mut b = DeltaClient::connect(addr, "/ws");
    b.subscribe(ch, false);
    let mut c = DeltaClient::connect(addr, "/ws");
    let mut dash = Dashboard::new(3);
    let mut offset = 0;
    for round in 0..3 {
        // Sent at once; answered in order.
        let sub = json!({ "op": "subscribe", "channel": ch, "delta": "fossil" });
        let ids = [
            c.send(sub.clone()),
            c.send(json!({ "op": "unsubscribe", "channel": ch })),
            c.send(sub),
        ];
        for id in &ids {
            let (v, t) = c.next_raw();
            assert_eq!(&v["id"], id, "round {round}: replies in order: {t}");
            assert_eq!(v["ok"], json!(true), "{t}");
        }
        for k in 0..4 {
            tick(&server, ch, &mut dash);
            offset += 1;
            let (p, pb) = (c.next_pub(ch), b.next_pub(ch));
            same(&p, &pb);
            assert_eq!((p.offset, p.delta), (offset, k > 0), "round {round}");
        }
        // Resubscribe once more, apart: whole first again.
        c.call(json!({ "op": "unsubscribe", "channel": ch }));
    }
    c.assert_nothing_pending();
    stop_gateway(server);
}

#[test]
fn recovery_after_a_gap_replays_whole_paced_then_live_whole_then_deltas() {
    let server = start_gateway(|c| {
        with_dash(c);
        c.channels.history_size = 100;
        // The 5 × 3.9 KB gap is over half the cap: replayed paced, in parts.
        c.limits.max_queued_bytes = 16 << 10;
    });
    let addr = server.local_addr();
    let ch = "dash:rec";
    let mut b = DeltaClient::connect(addr, "/ws");
    b.subscribe(ch, false);
    let mut c = DeltaClient::connect(addr, "/ws");
    let epoch = c.subscribe(ch, true)["epoch"].as_str().unwrap().to_string();
    let mut dash = Dashboard::new(4);
    let mut seen = Vec::new();
    for _ in 0..3 {
        tick(&server, ch, &mut dash);
        let p = c.next_pub(ch);
        same(&p, &b.next_pub(ch));
        seen.push(p.delta);
    }
    assert_eq!(seen, [false, true, true]);
    drop(c);
    for _ in 0..5 {
        tick(&server, ch, &mut dash);
        b.next_pub(ch);
    }
    let mut c = DeltaClient::connect(addr, "/ws");
    let r = c.call(json!({
        "op": "subscribe", "channel": ch, "delta": "fossil",
        "since": { "epoch": epoch, "offset": 3 },
    }));
    assert_eq!(
        (r["recovered"].clone(), r["delta"].clone()),
        (json!(true), json!(true)),
        "{r}"
    );
    for off in 4..=8 {
        let p = c.next_pub(ch);
        assert_eq!((p.offset, p.delta), (off, false), "the replay is whole");
    }
    for k in 0..3 {
        tick(&server, ch, &mut dash);
        let p = c.next_pub(ch);
        same(&p, &b.next_pub(ch));
        assert_eq!(p.delta, k > 0, "live: whole first, then deltas");
    }
    c.assert_nothing_pending();
    stop_gateway(server);
}

#[test]
fn delta_bases_stay_within_delta_memory_over_many_channels() {
    let server = start_gateway(|c| {
        with_dash(c);
        c.workers = 1;
        c.limits.delta_memory = 64 << 10;
        c.limits.channel_rate = 0;
    });
    let addr = server.local_addr();
    let mut bystander = DeltaClient::connect(addr, "/ws");
    let mut c = DeltaClient::connect(addr, "/ws");
    let names: Vec<String> = (0..100).map(|i| format!("dash:m{i}")).collect();
    for n in &names {
        c.subscribe(n, true);
    }
    bystander.subscribe(&names[99], false);
    let mut dashes: Vec<Dashboard> = (0..names.len() as u64).map(Dashboard::new).collect();
    let mut deltas = 0;
    for _ in 0..3 {
        for (n, dash) in names.iter().zip(&mut dashes) {
            tick(&server, n, dash);
            deltas += c.next_pub(n).delta as u64;
        }
        let held = metric(&server, "wsgate_delta_base_bytes");
        assert!(held <= 64 << 10, "bases held {held}");
        assert!(!bystander.next_pub(&names[99]).delta);
    }
    // ~3.9 KB bases: only some channels keep one; the others go whole, and
    // everything decoded to what was published (next_pub checks each).
    assert!(deltas > 0 && deltas < 200, "{deltas} deltas");
    assert!(metric(&server, "wsgate_delta_bases_not_kept_total") > 0);
    assert_eq!(metric(&server, "wsgate_delta_channels"), 100);
    c.assert_nothing_pending();
    drop(c);
    wait_until(Duration::from_secs(20), "bases freed", || {
        metric(&server, "wsgate_delta_base_bytes") == 0
            && metric(&server, "wsgate_delta_channels") == 0
    });
    bystander.assert_nothing_pending();
    stop_gateway(server);
}

/// A publication of ~110 KB whose delta from the one before is ~50 KB:
/// `keep` unchanged, `fresh` new each time.
fn big(n: u64) -> Value {
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let fresh: String = (0..6_500)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{:08x}", x as u32)
        })
        .collect();
    json!({ "keep": "steady ".repeat(9_000), "fresh": &fresh[..50_000], "n": n })
}

#[test]
fn a_delta_subscriber_dropped_as_slow_restarts_whole_when_it_subscribes_again() {
    let server = start_gateway(|c| {
        with_dash(c);
        c.limits.max_queued_bytes = 256 << 10;
        c.limits.slow_consumer = wsgate::config::SlowConsumer::Drop;
    });
    let addr = server.local_addr();
    let ch = "dash:slow";
    let mut c = DeltaClient::connect(addr, "/ws");
    c.subscribe(ch, true);
    // It reads nothing while ~15 MB of deltas are published: more than the
    // socket buffers and the out-queue cap hold.
    let sent: Vec<Value> = (1..=300).map(big).collect();
    let dropped = || {
        server
            .shared()
            .stats()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    for (i, d) in sent.iter().enumerate() {
        api_publish(addr, ch, d.clone());
        if dropped() > 0 && i > 10 {
            break;
        }
    }
    assert!(dropped() > 0, "never dropped");
    // What it was sent decodes, in order, up to the notice.
    let mut last = 0;
    let notice = loop {
        match c.next_event(ch) {
            Ok(p) => {
                assert_eq!(p.offset, last + 1);
                assert_eq!(p.delta, p.offset > 1, "offset {}", p.offset);
                let want = serde_json::to_string(&sent[last as usize]).unwrap();
                assert!(p.data == want.as_bytes(), "offset {} differs", p.offset);
                last = p.offset;
            }
            Err(v) => break v,
        }
    };
    assert_eq!(notice["dropped"]["offset"], json!(last), "{notice}");
    assert!(last > 1, "at least a delta before the drop");
    // Subscribed again (with deltas): whole first, then deltas.
    let r = c.subscribe(ch, true);
    assert_eq!(r["delta"], json!(true));
    let top = r["offset"].as_u64().unwrap();
    let mut dash = Dashboard::new(6);
    for k in 0..3 {
        tick(&server, ch, &mut dash);
        let p = c.next_pub(ch);
        assert_eq!((p.offset, p.delta), (top + 1 + k, k > 0));
    }
    c.assert_nothing_pending();
    stop_gateway(server);
}
