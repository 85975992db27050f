//! Replays paced by the out queue on the Redis broker (`gateway::replay`):
//! a client resuming a long gap on a node that holds little of it (its
//! tails are bounded by `limits.history_memory`) gets the rest a part at a
//! time, read from Redis, in order, each once, then live publications
//! made meanwhile through another node.

mod redis_util;

use redis_util::*;
use serde_json::json;

#[test]
fn a_long_gap_is_replayed_in_parts_from_redis_then_live() {
    let redis = RedisServer::start();
    let a = node(&redis.url(), |_| {});
    // B's out queues hold 64 KiB; its tails 64 KiB in all.
    let b = node(&redis.url(), |c| {
        c.limits.max_queued_bytes = 64 << 10;
        c.limits.history_memory = 64 << 10;
    });
    let mut api = Api::new(a.local_addr());
    let pad = "r".repeat(2000);
    let mut epoch = String::new();
    for n in 1..=200u64 {
        let (e, off) = api
            .publish("big", json!({ "n": n, "pad": pad }))
            .expect("publish");
        assert_eq!(off, n);
        epoch = e;
    }
    let mut c = Client::connect(b.local_addr(), "");
    let (v, mut got) = c.subscribe("big", Some((&epoch, 0)));
    assert_eq!(v["recovered"], json!(true), "{v}");
    // 20 more through the other node while the replay runs.
    for n in 201..=220u64 {
        api.publish("big", json!({ "n": n, "pad": pad }))
            .expect("publish");
    }
    got.extend(c.collect_until(TIMEOUT, |e| offsets(e).last() == Some(&220)));
    assert_eq!(offsets(&got), (1..=220).collect::<Vec<_>>());
    let metrics = Api::new(b.local_addr()).metrics();
    let held: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("wsgate_history_bytes "))
        .and_then(|v| v.parse().ok())
        .expect("wsgate_history_bytes");
    assert!(held <= 64 << 10, "{held} bytes of tails on node b");
}
