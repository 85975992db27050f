//! Two gateway nodes sharing channels through a real `redis-server`:
//! cross-node delivery in order, recovery on the other node, presence and
//! history seen from either node, and a channel whose Redis data is lost.

mod redis_util;

use std::time::Duration;

use redis_util::*;
use serde_json::json;

#[test]
fn publications_reach_every_node_in_order_and_recover_anywhere() {
    let redis = RedisServer::start();
    let a = node(&redis.url(), |_| {});
    let b = node(&redis.url(), |_| {});
    let (addr_a, addr_b) = (a.local_addr(), b.local_addr());

    let mut subs: Vec<Client> = (0..4)
        .map(|i| Client::connect(if i % 2 == 0 { addr_a } else { addr_b }, ""))
        .collect();
    let mut epoch = String::new();
    for s in &mut subs {
        let (v, _) = s.subscribe("chat", None);
        assert!(v.get("recovered").is_none(), "{v}");
        epoch = v["epoch"].as_str().unwrap().to_owned();
    }

    // Publish through both nodes, one after the other: offsets follow the
    // order of the calls, whichever node took them.
    let mut apis = [Api::new(addr_a), Api::new(addr_b)];
    const N: u64 = 300;
    for n in 1..=N {
        let (e, off) = apis[(n % 2) as usize]
            .publish("chat", json!({ "n": n }))
            .expect("publish");
        assert_eq!((e.as_str(), off), (epoch.as_str(), n));
    }
    for (i, s) in subs.iter_mut().enumerate() {
        let got = s.collect_until(TIMEOUT, |e| offsets(e).last() == Some(&N));
        let want: Vec<Event> = (1..=N).map(|n| Event::Pub(n, json!({ "n": n }))).collect();
        assert_eq!(
            got,
            want,
            "subscriber {i} on node {}",
            if i % 2 == 0 { "a" } else { "b" }
        );
    }

    // A client that saw offset 100 on one node recovers the rest on the
    // other, then continues live.
    let mut top = N;
    for addr in [addr_a, addr_b] {
        let mut c = Client::connect(addr, "");
        let (v, _) = c.subscribe("chat", Some((&epoch, 100)));
        assert_eq!(v["recovered"], json!(true), "{v}");
        // The node may not have received the last publications yet (the
        // API answers before pub/sub delivers): those come live after the
        // replay, with nothing missing and nothing twice.
        assert!(v["offset"].as_u64().unwrap() <= top, "{v}");
        apis[0].publish("chat", json!("live")).unwrap();
        top += 1;
        let got = c.collect_until(TIMEOUT, |e| offsets(e).last() == Some(&top));
        assert_eq!(offsets(&got), (101..=top).collect::<Vec<_>>());
        assert_eq!(got.last(), Some(&Event::Pub(top, json!("live"))));
        // From the future, or another epoch: not recovered.
        let mut c = Client::connect(addr, "");
        let (v, _) = c.subscribe("chat", Some((&epoch, 10_000)));
        assert_eq!(v["recovered"], json!(false), "{v}");
        let mut c = Client::connect(addr, "");
        let (v, _) = c.subscribe("chat", Some(("other-epoch", 1)));
        assert_eq!(v["recovered"], json!(false), "{v}");
    }

    // The history API of either node reads the shared stream.
    let (status, h) = apis[1].get(&format!(
        "/api/history?channel=chat&since=290&epoch={epoch}"
    ));
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["recovered"], json!(true));
    let offs: Vec<u64> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offs.first(), Some(&291));
    assert_eq!(h["publications"][0]["data"], json!({ "n": 291 }));
    let (_, h) = apis[0].get("/api/history?channel=chat&limit=5");
    assert_eq!(h["publications"].as_array().unwrap().len(), 5);
    let (_, h) = apis[0].get("/api/history?channel=never-used");
    assert_eq!(h["offset"], json!(0));

    drop(subs);
    a.stop().unwrap();
    b.stop().unwrap();
}

#[test]
fn presence_and_join_leave_are_cluster_wide() {
    let redis = RedisServer::start();
    let a = node(&redis.url(), |c| {
        c.channels.join_leave = true;
    });
    let b = node(&redis.url(), |c| {
        c.channels.join_leave = true;
    });
    let mut alice = Client::connect(a.local_addr(), "?user=alice");
    alice.subscribe("room", None);
    let mut bob = Client::connect(b.local_addr(), "?user=bob");
    bob.subscribe("room", None);
    // Alice (node a) hears that bob joined on node b.
    let ev = alice.collect_until(TIMEOUT, |e| {
        e.iter()
            .any(|e| matches!(e, Event::Other(v) if v["join"]["user"] == json!("bob")))
    });
    assert!(!ev.is_empty());

    for addr in [a.local_addr(), b.local_addr()] {
        let (status, p) = Api::new(addr).get("/api/presence?channel=room");
        assert_eq!(status, 200, "{p}");
        assert_eq!(
            (p["clients"].as_u64(), p["users"].as_u64()),
            (Some(2), Some(2)),
            "{p}"
        );
    }
    let id = bob.send(json!({ "op": "presence", "channel": "room" }));
    let v = loop {
        let v = bob.next();
        if v["id"] == json!(id) {
            break v;
        }
    };
    assert_eq!(v["clients"], json!(2), "{v}");

    // Bob leaves: alice hears it, presence shrinks everywhere.
    drop(bob);
    alice.collect_until(TIMEOUT, |e| {
        e.iter()
            .any(|e| matches!(e, Event::Other(v) if v["leave"]["user"] == json!("bob")))
    });
    let mut api = Api::new(a.local_addr());
    wait_for(TIMEOUT, "presence shows alice only", || {
        api.get("/api/presence?channel=room").1["clients"] == json!(1)
    });
    a.stop().unwrap();
    b.stop().unwrap();
}

#[test]
fn lost_redis_data_starts_a_new_epoch_and_says_so() {
    let redis = RedisServer::start();
    let a = node(&redis.url(), |_| {});
    let b = node(&redis.url(), |_| {});
    let mut sa = Client::connect(a.local_addr(), "");
    let (v, _) = sa.subscribe("news", None);
    let e1 = v["epoch"].as_str().unwrap().to_owned();
    let mut sb = Client::connect(b.local_addr(), "");
    sb.subscribe("news", None);
    let mut api = Api::new(a.local_addr());
    for n in 1..=5 {
        api.publish("news", json!(n)).unwrap();
    }
    for s in [&mut sa, &mut sb] {
        s.collect_until(TIMEOUT, |e| offsets(e).last() == Some(&5));
    }

    // Redis loses everything (FLUSHALL, or a restart without persistence).
    let _: () = redis::cmd("FLUSHALL").query(&mut redis.con()).unwrap();
    let (e2, off) = api.publish("news", json!("after")).unwrap();
    assert_ne!(e2, e1, "a new epoch");
    assert_eq!(off, 1);
    for s in [&mut sa, &mut sb] {
        let ev = s.collect_until(TIMEOUT, |e| !offsets(e).is_empty());
        assert_eq!(
            ev,
            vec![Event::Resync(e2.clone(), 0), Event::Pub(1, json!("after"))],
            "subscribers are told, then continue in the new epoch"
        );
    }
    let mut c = Client::connect(b.local_addr(), "");
    let (v, _) = c.subscribe("news", Some((&e1, 3)));
    assert_eq!(v["recovered"], json!(false), "{v}");
    assert_eq!(v["epoch"], json!(e2));
    a.stop().unwrap();
    b.stop().unwrap();
}

#[test]
fn deliver_latest_and_personal_channels_across_nodes() {
    let redis = RedisServer::start();
    let a = node(&redis.url(), |c| {
        c.channels.deliver_latest = true;
    });
    let b = node(&redis.url(), |c| {
        c.channels.deliver_latest = true;
    });
    let mut api = Api::new(a.local_addr());
    api.publish("ticker", json!({ "px": 1 })).unwrap();
    api.publish("ticker", json!({ "px": 2 })).unwrap();
    let mut c = Client::connect(b.local_addr(), "");
    c.subscribe("ticker", None);
    let ev = c.collect_until(Duration::from_secs(5), |e| !e.is_empty());
    assert_eq!(ev[0], Event::Pub(2, json!({ "px": 2 })));

    // A user's personal channel reaches its connections on every node.
    let mut u1 = Client::connect(a.local_addr(), "?user=carol");
    let mut u2 = Client::connect(b.local_addr(), "?user=carol");
    // The personal subscription's answer comes first (no id).
    for u in [&mut u1, &mut u2] {
        let v = u.next();
        assert_eq!(v["channel"], json!("$user:carol"), "{v}");
    }
    let body = json!({ "user": "carol", "data": "hello" }).to_string();
    let (status, _) = api.try_request("POST", "/api/publish", &body).unwrap();
    assert_eq!(status, 200);
    for u in [&mut u1, &mut u2] {
        let ev = u.collect_until(TIMEOUT, |e| !e.is_empty());
        assert_eq!(ev[0], Event::Pub(1, json!("hello")));
    }
    a.stop().unwrap();
    b.stop().unwrap();
}

/// `history_bytes` bounds the Redis stream as it bounds the in-memory
/// ring: the oldest publications go first, the byte count in the meta hash
/// follows the stream, and a publication bigger than the bound is
/// delivered but not kept.
#[test]
fn history_is_bounded_by_bytes_in_redis() {
    let redis = RedisServer::start();
    let a = node(&redis.url(), |c| {
        c.channels.history_size = 100;
        c.channels.history_bytes = 1_000;
    });
    let mut api = Api::new(a.local_addr());
    let mut sub = Client::connect(a.local_addr(), "");
    let (v, _) = sub.subscribe("bytes", None);
    let epoch = v["epoch"].as_str().unwrap().to_owned();

    // Each publication's data is exactly 200 bytes of JSON: 5 fit.
    let data = |n: u64| json!({ "n": format!("{n:03}"), "pad": "x".repeat(180) });
    assert_eq!(data(10).to_string().len(), 200);
    for n in 1..=20 {
        api.publish("bytes", data(n)).expect("publish");
    }
    let got = sub.collect_until(TIMEOUT, |e| offsets(e).last() == Some(&20));
    assert_eq!(
        offsets(&got),
        (1..=20).collect::<Vec<_>>(),
        "live delivery is not trimmed"
    );

    let kept = |api: &mut Api| -> Vec<u64> {
        let (status, h) = api.get("/api/history?channel=bytes&limit=100");
        assert_eq!(status, 200, "{h}");
        h["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(kept(&mut api), vec![16, 17, 18, 19, 20]);
    let mut con = redis.con();
    let len: usize = redis::cmd("XLEN")
        .arg("wsgate:history:{bytes}")
        .query(&mut con)
        .unwrap();
    let b: usize = redis::cmd("HGET")
        .arg("wsgate:meta:{bytes}")
        .arg("b")
        .query(&mut con)
        .unwrap();
    assert_eq!((len, b), (5, 1_000));

    // A client that saw 15 recovers 16..=20; one that saw 14 cannot.
    let (status, h) = api.get(&format!(
        "/api/history?channel=bytes&since=15&epoch={epoch}"
    ));
    assert_eq!((status, &h["recovered"]), (200, &json!(true)), "{h}");
    let (_, h) = api.get(&format!(
        "/api/history?channel=bytes&since=14&epoch={epoch}"
    ));
    assert_eq!(h["recovered"], json!(false), "{h}");

    // Too big to keep: delivered, and the history is empty.
    api.publish("bytes", json!({ "pad": "y".repeat(2_000) }))
        .expect("publish");
    let got = sub.collect_until(TIMEOUT, |e| offsets(e).last() == Some(&21));
    assert_eq!(offsets(&got), vec![21]);
    assert_eq!(kept(&mut api), Vec::<u64>::new());
    let b: usize = redis::cmd("HGET")
        .arg("wsgate:meta:{bytes}")
        .arg("b")
        .query(&mut con)
        .unwrap();
    assert_eq!(b, 0);

    // And it fills again from there.
    api.publish("bytes", data(22)).expect("publish");
    assert_eq!(kept(&mut api), vec![22]);

    drop(sub);
    a.stop().unwrap();
}

/// `POST /api/disconnect` on one node closes the user's connections on
/// every node (through the Redis control channel), and only theirs.
#[test]
fn operator_disconnect_reaches_every_node() {
    let redis = RedisServer::start();
    let a = node(&redis.url(), |_| {});
    let b = node(&redis.url(), |_| {});
    let mut carol = [
        Client::connect(a.local_addr(), "?user=carol"),
        Client::connect(b.local_addr(), "?user=carol"),
    ];
    let mut dave = [
        Client::connect(a.local_addr(), "?user=dave"),
        Client::connect(b.local_addr(), "?user=dave"),
    ];

    let mut api = Api::new(a.local_addr());
    let (status, v) = api
        .try_request(
            "POST",
            "/api/disconnect",
            &json!({ "user": "carol" }).to_string(),
        )
        .expect("POST /api/disconnect");
    assert_eq!(status, 200, "{v}");
    for (i, c) in carol.iter_mut().enumerate() {
        // (After the answer to the personal channel's subscribe.)
        let end = loop {
            if let Err(e) = c.try_next(TIMEOUT) {
                break e;
            }
        };
        assert!(end.contains("4000"), "carol on node {i}: {end}");
    }
    for d in &mut dave {
        let (v, _) = d.subscribe("after", None);
        assert!(v.get("epoch").is_some(), "dave is still served: {v}");
    }
    a.stop().unwrap();
    b.stop().unwrap();
}
