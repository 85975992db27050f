//! Losing part of a cluster while publications go on: a node's Redis
//! pub/sub connection is killed (the node must read what it missed from
//! the stream), and a whole node is SIGKILLed (its clients reconnect to the
//! other node and recover with `since`, with no gap; its presence members
//! expire on their own).

mod redis_util;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use redis_util::*;
use serde_json::{json, Value};

/// Publish `n` publications to `channel` through `api`, one every `gap`.
fn publisher(
    addr: std::net::SocketAddr,
    channel: &'static str,
    n: u64,
    gap: Duration,
    sent: Arc<AtomicU64>,
) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut api = Api::new(addr);
        let mut epoch = String::new();
        for i in 1..=n {
            let (e, off) = api
                .publish(channel, json!({ "n": i }))
                .unwrap_or_else(|s| panic!("publish {i} failed with status {s}"));
            assert_eq!(off, i, "offsets follow the publications");
            epoch = e;
            sent.store(i, Ordering::Release);
            thread::sleep(gap);
        }
        epoch
    })
}

#[test]
fn pubsub_reconnect_reads_the_missed_publications_from_the_stream() {
    let redis = RedisServer::start();
    let a = node(&redis.url(), |_| {});
    let b = node(&redis.url(), |_| {});
    let mut subs: Vec<Client> = [a.local_addr(), b.local_addr(), a.local_addr()]
        .iter()
        .map(|&addr| Client::connect(addr, ""))
        .collect();
    for s in &mut subs {
        s.subscribe("flow", None);
    }
    const N: u64 = 600;
    let sent = Arc::new(AtomicU64::new(0));
    let p = publisher(
        b.local_addr(),
        "flow",
        N,
        Duration::from_millis(1),
        sent.clone(),
    );
    // Kill every pub/sub connection (both nodes) twice while publishing
    // goes on; the command connections (and so the publishing) survive.
    let mut con = redis.con();
    for at in [150, 350] {
        wait_for(TIMEOUT, "publisher progress", || {
            sent.load(Ordering::Acquire) >= at
        });
        let killed: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut con)
            .unwrap();
        assert_eq!(killed, 2, "one pub/sub connection per node");
    }
    p.join().unwrap();
    for (i, s) in subs.iter_mut().enumerate() {
        let got = s.collect_until(TIMEOUT, |e| offsets(e).last() == Some(&N));
        let resyncs: Vec<_> = got
            .iter()
            .filter(|e| matches!(e, Event::Resync(..)))
            .collect();
        assert!(resyncs.is_empty(), "subscriber {i}: {resyncs:?}");
        assert_eq!(offsets(&got), (1..=N).collect::<Vec<_>>(), "subscriber {i}");
        assert!(got
            .iter()
            .all(|e| !matches!(e, Event::Pub(o, d) if *d != json!({ "n": o }))));
    }
    for addr in [a.local_addr(), b.local_addr()] {
        let (_, st) = Api::new(addr).get("/api/stats");
        assert_eq!(st["broker"]["resyncs"], json!(0), "{}", st["broker"]);
    }
    a.stop().unwrap();
    b.stop().unwrap();
}

/// A client of a node that dies: it keeps its position, reconnects to
/// `fallback` with `since`, and reads until `last`.
fn resilient_client(
    mut c: Client,
    fallback: std::net::SocketAddr,
    user: String,
    last: u64,
) -> thread::JoinHandle<(Vec<u64>, usize, Client)> {
    thread::spawn(move || {
        let (v, _) = c.subscribe("feed", None);
        let mut epoch = v["epoch"].as_str().unwrap().to_owned();
        let mut pos = v["offset"].as_u64().unwrap();
        let mut got = Vec::new();
        let mut reconnects = 0;
        let end = Instant::now() + Duration::from_secs(60);
        while pos < last {
            assert!(Instant::now() < end, "stuck at {pos}");
            match c.try_next_event(Duration::from_secs(10)) {
                Ok(Event::Pub(o, _)) => {
                    got.push(o);
                    pos = o;
                }
                Ok(Event::Resync(e, o)) => panic!("resync to {e}/{o} at {pos}"),
                Ok(_) => {}
                Err(_) => {
                    // The node is gone: go to the other one and recover.
                    reconnects += 1;
                    assert!(reconnects <= 3, "too many reconnections");
                    c = Client::connect(fallback, &format!("?user={user}"));
                    let (v, replay) = c.subscribe("feed", Some((&epoch, pos)));
                    assert!(replay.iter().all(|e| !matches!(e, Event::Pub(..))));
                    assert_eq!(v["recovered"], json!(true), "recovery at {pos}: {v}");
                    epoch = v["epoch"].as_str().unwrap().to_owned();
                }
            }
        }
        (got, reconnects, c)
    })
}

fn presence_users(api: &mut Api) -> BTreeSet<String> {
    let (status, p) = api.get("/api/presence?channel=feed");
    assert_eq!(status, 200, "{p}");
    p["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["user"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn sigkilled_node_clients_recover_on_the_other_node_without_gap() {
    let redis = RedisServer::start();
    let cfg = node_config(&redis.url());
    let mut a = Process::start(&cfg); // the binary, to be SIGKILLed
    let b = node(&redis.url(), |_| {});
    const N: u64 = 800;
    let users = ["u1", "u2", "u3"];
    let clients: Vec<_> = users
        .iter()
        .map(|u| {
            let c = Client::connect(a.addr, &format!("?user={u}"));
            resilient_client(c, b.local_addr(), format!("{u}-again"), N)
        })
        .collect();
    let mut api_b = Api::new(b.local_addr());
    wait_for(TIMEOUT, "node a's members visible from node b", || {
        presence_users(&mut api_b) == users.iter().map(|u| u.to_string()).collect()
    });

    let sent = Arc::new(AtomicU64::new(0));
    let p = publisher(
        b.local_addr(),
        "feed",
        N,
        Duration::from_millis(2),
        sent.clone(),
    );
    wait_for(TIMEOUT, "publisher progress", || {
        sent.load(Ordering::Acquire) >= 250
    });
    a.sigkill();
    let killed_at = Instant::now();
    p.join().unwrap();

    let mut alive = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let (got, reconnects, c) = c.join().expect("client thread");
        alive.push(c);
        assert_eq!(reconnects, 1, "client {i}");
        assert_eq!(
            got,
            (1..=N).collect::<Vec<_>>(),
            "client {i}: every offset once, in order"
        );
    }
    // Node a's members were never removed by a leave: they expire.
    let want: BTreeSet<String> = users.iter().map(|u| format!("{u}-again")).collect();
    wait_for(TIMEOUT, "the dead node's members expire", || {
        presence_users(&mut api_b) == want
    });
    let expired_after = killed_at.elapsed();
    assert!(
        expired_after >= Duration::from_millis(500),
        "members outlived their node for a TTL, not 0 ({expired_after:?})"
    );
    let (status, h) = Api::new(b.local_addr()).get("/healthz");
    assert_eq!((status, h["status"].clone()), (200, Value::from("ok")));
    b.stop().unwrap();
}

#[test]
fn offsets_going_backwards_after_a_failover_start_a_new_epoch() {
    let redis = RedisServer::start();
    let a = node(&redis.url(), |_| {});
    let mut s = Client::connect(a.local_addr(), "");
    let (v, _) = s.subscribe("fo", None);
    let e1 = v["epoch"].as_str().unwrap().to_owned();
    let mut api = Api::new(a.local_addr());
    for n in 1..=10 {
        api.publish("fo", json!(n)).unwrap();
    }
    s.collect_until(TIMEOUT, |e| offsets(e).last() == Some(&10));
    // What a failover to a lagging replica looks like: the last writes are
    // gone, and the connections move to the new master.
    let mut con = redis.con();
    let _: () = redis::cmd("HSET")
        .arg("wsgate:meta:{fo}")
        .arg("o")
        .arg(7)
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("XTRIM")
        .arg("wsgate:history:{fo}")
        .arg("MAXLEN")
        .arg(7)
        .query(&mut con)
        .unwrap();
    let _: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut con)
        .unwrap();
    let ev = s.collect_until(TIMEOUT, |e| {
        e.iter().any(|e| matches!(e, Event::Resync(..)))
    });
    let Some(Event::Resync(e2, 0)) = ev.last().cloned() else {
        panic!("a resync to offset 0 of a new epoch: {ev:?}");
    };
    assert_ne!(e2, e1);
    let (e, off) = api.publish("fo", json!("next")).unwrap();
    assert_eq!((e.as_str(), off), (e2.as_str(), 1));
    let ev = s.collect_until(TIMEOUT, |e| !offsets(e).is_empty());
    assert_eq!(ev, vec![Event::Pub(1, json!("next"))]);
    // A client of the lost lineage cannot "recover" offsets 8..10.
    let mut c = Client::connect(a.local_addr(), "");
    let (v, _) = c.subscribe("fo", Some((&e1, 8)));
    assert_eq!(v["recovered"], json!(false), "{v}");
    a.stop().unwrap();
}
