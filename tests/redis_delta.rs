//! Fossil deltas (issue 16) on two gateway nodes sharing channels through a
//! real `redis-server`: publications made on either node reach the delta
//! subscribers of both as one whole publication then deltas, computed by
//! each node's workers against what they delivered, and decode to what a
//! bystander without deltas gets, byte for byte.

#[path = "support/delta.rs"]
mod delta_support;
mod redis_util;

use delta_support::DeltaClient;
use redis_util::*;
use serde_json::{json, Value};
use wsgate::config::{ChannelOverrides, DeltaMode};
use wsgate::delta::dashboard::Dashboard;

#[test]
fn deltas_across_two_nodes_decode_to_the_bystanders_data() {
    let redis = RedisServer::start();
    let tweak = |c: &mut wsgate::config::Config| {
        c.namespaces.insert(
            "dash".into(),
            ChannelOverrides {
                delta: Some(DeltaMode::Fossil),
                ..Default::default()
            },
        );
    };
    let a = node(&redis.url(), tweak);
    let b = node(&redis.url(), tweak);
    let ch = "dash:cluster";
    let mut da = DeltaClient::connect(a.local_addr(), "/ws");
    assert_eq!(da.subscribe(ch, true)["delta"], json!(true));
    let mut db = DeltaClient::connect(b.local_addr(), "/ws");
    assert_eq!(db.subscribe(ch, true)["delta"], json!(true));
    let mut by = DeltaClient::connect(b.local_addr(), "/ws");
    by.subscribe(ch, false);
    let mut apis = [Api::new(a.local_addr()), Api::new(b.local_addr())];
    let mut dash = Dashboard::new(9);
    for n in 1..=40u64 {
        dash.tick();
        let data: Value = serde_json::from_str(&dash.json()).unwrap();
        let (_, off) = apis[(n % 2) as usize].publish(ch, data).unwrap();
        assert_eq!(off, n);
        let w = by.next_pub(ch);
        assert!(!w.delta);
        for (name, c) in [("node a", &mut da), ("node b", &mut db)] {
            let p = c.next_pub(ch);
            assert_eq!(p.offset, n, "{name}");
            assert_eq!(p.delta, n > 1, "{name}: offset {n}");
            assert_eq!(p.data, w.data, "{name}: offset {n}");
        }
    }
    for c in [&mut da, &mut db, &mut by] {
        c.assert_nothing_pending();
    }
    for api in &mut apis {
        let m = api.metrics();
        assert!(
            m.lines()
                .any(|l| l == "wsgate_delta_deliveries_total{form=\"delta\"} 39"),
            "{m}"
        );
    }
    drop((da, db, by));
    a.stop().unwrap();
    b.stop().unwrap();
}
