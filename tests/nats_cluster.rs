//! Two gateway nodes sharing channels through one real `nats-server -js`:
//! cross-node delivery in order, recovery on the other node, history from
//! the channel's JetStream stream, presence in the key-value bucket, a
//! channel whose stream is lost, idle streams swept, operator disconnects.
//! Every test keeps a bystander that must stay served.

mod nats_util;

use std::time::Duration;

use nats_util::*;
use serde_json::json;

#[test]
fn publications_reach_every_node_in_order_and_recover_anywhere() {
    let nats = NatsServer::start();
    let urls = [nats.url()];
    let a = nats_node(&urls, |_| {});
    let b = nats_node(&urls, |_| {});
    let (addr_a, addr_b) = (a.local_addr(), b.local_addr());
    let mut bystander = Client::connect(addr_b, "");
    bystander.subscribe("elsewhere", None);

    let mut subs: Vec<Client> = (0..4)
        .map(|i| Client::connect(if i % 2 == 0 { addr_a } else { addr_b }, ""))
        .collect();
    let mut epochs = Vec::new();
    for s in &mut subs {
        let (v, _) = s.subscribe("chat:room", None);
        assert!(v.get("recovered").is_none(), "{v}");
        epochs.push(v["epoch"].as_str().unwrap().to_owned());
    }
    epochs.dedup();
    assert_eq!(
        epochs.len(),
        1,
        "one epoch whichever node answered: {epochs:?}"
    );
    let epoch = epochs.pop().unwrap();
    // The channel has one stream, named with the epoch.
    assert_eq!(
        streams_for(nats.port, "wsgate.h.chat=3Aroom"),
        vec![format!("wsgate_{epoch}")]
    );

    // Publish through both nodes in turn: offsets follow the calls.
    let mut apis = [Api::new(addr_a), Api::new(addr_b)];
    const N: u64 = 300;
    for n in 1..=N {
        let (e, off) = apis[(n % 2) as usize]
            .publish("chat:room", json!({ "n": n }))
            .expect("publish");
        assert_eq!((e.as_str(), off), (epoch.as_str(), n));
    }
    let want: Vec<Event> = (1..=N).map(|n| Event::Pub(n, json!({ "n": n }))).collect();
    for (i, s) in subs.iter_mut().enumerate() {
        let got = s.collect_until(TIMEOUT, |e| offsets(e).last() == Some(&N));
        assert_eq!(got, want, "subscriber {i}");
    }

    // A client that saw offset 100 recovers the rest on either node, then
    // continues live, with nothing missing and nothing twice.
    let mut top = N;
    for addr in [addr_a, addr_b] {
        let mut c = Client::connect(addr, "");
        let (v, _) = c.subscribe("chat:room", Some((&epoch, 100)));
        assert_eq!(v["recovered"], json!(true), "{v}");
        apis[0].publish("chat:room", json!("live")).unwrap();
        top += 1;
        let got = c.collect_until(TIMEOUT, |e| offsets(e).last() == Some(&top));
        assert_eq!(offsets(&got), (101..=top).collect::<Vec<_>>());
        assert_eq!(got.last(), Some(&Event::Pub(top, json!("live"))));
        // From the future, or another epoch: not recovered.
        let mut c = Client::connect(addr, "");
        let (v, _) = c.subscribe("chat:room", Some((&epoch, 10_000)));
        assert_eq!(v["recovered"], json!(false), "{v}");
        let mut c = Client::connect(addr, "");
        let (v, _) = c.subscribe("chat:room", Some(("other-epoch", 1)));
        assert_eq!(v["recovered"], json!(false), "{v}");
    }

    // The history API of either node reads the stream.
    let (status, h) = apis[1].get(&format!(
        "/api/history?channel=chat:room&since=290&epoch={epoch}"
    ));
    assert_eq!((status, &h["recovered"]), (200, &json!(true)), "{h}");
    let offs: Vec<u64> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offs, (291..=top).collect::<Vec<_>>());
    assert_eq!(h["publications"][0]["data"], json!({ "n": 291 }));
    let (_, h) = apis[0].get("/api/history?channel=chat:room&limit=5");
    assert_eq!(h["publications"].as_array().unwrap().len(), 5);
    assert_eq!(h["offset"], json!(top));
    let (status, h) = apis[0].get("/api/history?channel=never-used");
    assert_eq!((status, &h["offset"]), (200, &json!(0)), "{h}");
    assert!(
        streams_for(nats.port, "wsgate.h.never-used").is_empty(),
        "reading history creates no stream"
    );

    // A batch through the API: in order, each with its own channel's offset.
    let body = json!([
        { "channel": "chat:room", "data": "b1" },
        { "channel": "other", "data": "b2" },
        { "channel": "chat:room", "data": "b3" },
    ])
    .to_string();
    let (status, v) = apis[1].try_request("POST", "/api/publish", &body).unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v[0]["offset"], json!(top + 1));
    assert_eq!(v[1]["offset"], json!(1));
    assert_eq!(v[2]["offset"], json!(top + 2));

    let (_, stats) = apis[0].get("/api/stats");
    assert_eq!(stats["broker"]["kind"], json!("nats"), "{stats}");
    assert_eq!(stats["broker"]["healthy"], json!(true), "{stats}");
    assert!(Api::new(addr_a)
        .metrics()
        .contains("wsgate_broker_healthy{kind=\"nats\"} 1"));
    assert_served(&mut bystander, "the bystander");
    drop(subs);
    a.stop().unwrap();
    b.stop().unwrap();
}

#[test]
fn presence_and_join_leave_are_cluster_wide_and_expire_with_their_node() {
    let nats = NatsServer::start();
    let urls = [nats.url()];
    let a = nats_node(&urls, |c| c.channels.join_leave = true);
    // Node b is a process of its own, so that it can die without a word.
    let mut cfg = nats_config(&urls);
    cfg.channels.join_leave = true;
    let mut b = Process::start(&cfg);
    let mut bystander = Client::connect(a.local_addr(), "?user=zed");
    let mut alice = Client::connect(a.local_addr(), "?user=alice");
    alice.subscribe("room", None);
    let mut bob = Client::connect(b.addr, "?user=bob");
    bob.subscribe("room", None);
    // Alice (node a) hears that bob joined on node b.
    alice.collect_until(TIMEOUT, |e| {
        e.iter()
            .any(|e| matches!(e, Event::Other(v) if v["join"]["user"] == json!("bob")))
    });
    for addr in [a.local_addr(), b.addr] {
        let mut api = Api::new(addr);
        wait_for(TIMEOUT, "both members seen from either node", || {
            let (status, p) = api.get("/api/presence?channel=room");
            status == 200 && p["clients"] == json!(2) && p["users"] == json!(2)
        });
    }
    let v = call(
        &mut bob,
        json!({ "op": "presence", "channel": "room" }),
        "bob",
    );
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

    // Carol on node b; node b dies (SIGKILL) without a word for her: she
    // leaves presence with the bucket's TTL, as no node refreshes her.
    let mut carol = Client::connect(b.addr, "?user=carol");
    carol.subscribe("room", None);
    wait_for(TIMEOUT, "carol present", || {
        api.get("/api/presence?channel=room").1["clients"] == json!(2)
    });
    b.sigkill();
    drop(carol);
    wait_for(TIMEOUT, "carol expired with presence_ttl", || {
        let p = api.get("/api/presence?channel=room").1;
        p["clients"] == json!(1) && p["members"][0]["user"] == json!("alice")
    });
    assert_served(&mut bystander, "the bystander");
    a.stop().unwrap();
}

#[test]
fn a_lost_stream_starts_a_new_epoch_and_says_so() {
    let nats = NatsServer::start();
    let urls = [nats.url()];
    let a = nats_node(&urls, |_| {});
    let b = nats_node(&urls, |_| {});
    let mut bystander = Client::connect(b.local_addr(), "");
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

    // The stream is deleted behind the gateways' backs (an operator, or a
    // server that kept it in memory restarted).
    let v = js_request(nats.port, &format!("$JS.API.STREAM.DELETE.wsgate_{e1}"), "").unwrap();
    assert_eq!(v["success"], json!(true), "{v}");
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
    assert_served(&mut bystander, "the bystander");
    a.stop().unwrap();
    b.stop().unwrap();
}

#[test]
fn deliver_latest_personal_channels_and_bounded_history() {
    let nats = NatsServer::start();
    let urls = [nats.url()];
    let tweak = |c: &mut wsgate::config::Config| {
        c.channels.deliver_latest = true;
        c.channels.history_size = 3;
    };
    let a = nats_node(&urls, tweak);
    let b = nats_node(&urls, tweak);
    let mut bystander = Client::connect(a.local_addr(), "");
    let mut api = Api::new(a.local_addr());
    for px in 1..=5 {
        api.publish("ticker", json!({ "px": px })).unwrap();
    }
    let mut c = Client::connect(b.local_addr(), "");
    c.subscribe("ticker", None);
    let ev = c.collect_until(Duration::from_secs(5), |e| !e.is_empty());
    assert_eq!(ev[0], Event::Pub(5, json!({ "px": 5 })));
    // The stream holds history_size publications: 3..=5.
    let (_, h) = Api::new(b.local_addr()).get("/api/history?channel=ticker&limit=100");
    let offs: Vec<u64> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offs, vec![3, 4, 5], "{h}");
    let epoch = h["epoch"].as_str().unwrap().to_owned();
    let mut late = Client::connect(b.local_addr(), "");
    let (v, _) = late.subscribe("ticker", Some((&epoch, 1)));
    assert_eq!(v["recovered"], json!(false), "2 is gone: {v}");
    let mut ok = Client::connect(b.local_addr(), "");
    let (v, before) = ok.subscribe("ticker", Some((&epoch, 2)));
    assert_eq!(v["recovered"], json!(true), "{v}");
    let got = [before, ok.collect_until(TIMEOUT, |e| offsets(e).len() == 3)].concat();
    assert_eq!(offsets(&got), vec![3, 4, 5]);

    // A user's personal channel reaches its connections on every node.
    let mut u1 = Client::connect(a.local_addr(), "?user=carol");
    let mut u2 = Client::connect(b.local_addr(), "?user=carol");
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
    assert_served(&mut bystander, "the bystander");
    a.stop().unwrap();
    b.stop().unwrap();
}

/// A channel with no publication for `meta_ttl` loses its stream (as the
/// Redis meta key expires): the next publication starts a new epoch.
#[test]
fn idle_streams_are_swept_after_meta_ttl() {
    let nats = NatsServer::start();
    let urls = [nats.url()];
    let a = nats_node(&urls, |c| {
        c.broker.meta_ttl = wsgate::config::Millis(1_500);
        c.channels.history_ttl = wsgate::config::Millis(1_000);
    });
    let mut bystander = Client::connect(a.local_addr(), "");
    let mut api = Api::new(a.local_addr());
    let (e1, _) = api.publish("quiet", json!(1)).unwrap();
    let (busy, _) = api.publish("busy", json!(1)).unwrap();
    assert_eq!(
        streams_for(nats.port, "wsgate.h.quiet"),
        vec![format!("wsgate_{e1}")]
    );
    // "busy" keeps publishing; "quiet" does not.
    wait_for(
        Duration::from_secs(20),
        "the quiet stream is deleted",
        || {
            api.publish("busy", json!("tick")).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            streams_for(nats.port, "wsgate.h.quiet").is_empty()
        },
    );
    assert_eq!(
        streams_for(nats.port, "wsgate.h.busy"),
        vec![format!("wsgate_{busy}")],
        "a channel in use keeps its stream"
    );
    let (e2, off) = api.publish("quiet", json!(2)).unwrap();
    assert_ne!(e2, e1);
    assert_eq!(off, 1);
    assert_served(&mut bystander, "the bystander");
    a.stop().unwrap();
}

/// Ops pipelined on one connection, publishes and presence reads mixed, are
/// answered in the order sent, and the publications get their offsets in
/// that order.
#[test]
fn pipelined_ops_are_answered_in_order() {
    let nats = NatsServer::start();
    let a = nats_node(&[nats.url()], |_| {});
    let mut c = Client::connect(a.local_addr(), "?user=pip");
    c.next(); // (the personal channel's answer)
    let mut ids = Vec::new();
    for n in 0..60 {
        let op = if n % 20 == 10 {
            json!({ "op": "presence", "channel": "pipe" })
        } else {
            json!({ "op": "publish", "channel": "pipe", "data": n })
        };
        ids.push(c.send(op));
    }
    let mut offsets_seen = Vec::new();
    for id in ids {
        let v = c.next();
        assert_eq!(v["id"], json!(id), "replies in the order sent: {v}");
        if let Some(o) = v["offset"].as_u64() {
            offsets_seen.push(o);
        }
    }
    assert_eq!(offsets_seen, (1..=57).collect::<Vec<_>>());
    a.stop().unwrap();
}

/// A node holds a subscription to a channel's live subject exactly while it
/// has local subscribers (fan-out over core NATS interest).
#[test]
fn a_node_subscribes_only_while_it_has_subscribers() {
    let nats = NatsServer::start();
    let urls = [nats.url()];
    let a = nats_node(&urls, |_| {});
    let b = nats_node(&urls, |_| {});
    let mut bystander = Client::connect(b.local_addr(), "");
    bystander.subscribe("elsewhere", None);
    let live = |n: usize| {
        let what = format!("{n} subscriptions on the live subject");
        wait_for(TIMEOUT, &what, || {
            nats.subscriptions_on("wsgate.ch.room") == n
        });
    };
    live(0);
    let mut c1 = Client::connect(a.local_addr(), "");
    let mut c2 = Client::connect(a.local_addr(), "");
    c1.subscribe("room", None);
    c2.subscribe("room", None);
    live(1); // node a, once for its two subscribers
    let mut c3 = Client::connect(b.local_addr(), "");
    c3.subscribe("room", None);
    live(2);
    let v = call(
        &mut c1,
        json!({ "op": "unsubscribe", "channel": "room" }),
        "c1",
    );
    assert_eq!(v["ok"], json!(true), "{v}");
    live(2); // c2 still listens on node a
    drop(c2);
    live(1);
    drop(c3);
    live(0);
    // Publications still go into the stream with nobody listening.
    let (_, off) = Api::new(a.local_addr()).publish("room", json!(1)).unwrap();
    assert_eq!(off, 1);
    assert_served(&mut bystander, "the bystander");
    a.stop().unwrap();
    b.stop().unwrap();
}

/// `POST /api/disconnect` on one node closes the user's connections on
/// every node (through the control subject), and only theirs.
#[test]
fn operator_disconnect_reaches_every_node() {
    let nats = NatsServer::start();
    let urls = [nats.url()];
    let a = nats_node(&urls, |_| {});
    let b = nats_node(&urls, |_| {});
    let mut carol = [
        Client::connect(a.local_addr(), "?user=carol"),
        Client::connect(b.local_addr(), "?user=carol"),
    ];
    let mut dave = [
        Client::connect(a.local_addr(), "?user=dave"),
        Client::connect(b.local_addr(), "?user=dave"),
    ];
    let (status, v) = Api::new(a.local_addr())
        .try_request(
            "POST",
            "/api/disconnect",
            &json!({ "user": "carol" }).to_string(),
        )
        .expect("POST /api/disconnect");
    assert_eq!(status, 200, "{v}");
    for (i, c) in carol.iter_mut().enumerate() {
        let end = loop {
            if let Err(e) = c.try_next(TIMEOUT) {
                break e;
            }
        };
        assert!(end.contains("4000"), "carol on node {i}: {end}");
    }
    for (i, d) in dave.iter_mut().enumerate() {
        assert_served(d, &format!("dave on node {i}"));
    }
    a.stop().unwrap();
    b.stop().unwrap();
}
