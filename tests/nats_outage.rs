//! The NATS server goes away during traffic and comes back: the nodes stay
//! up, say they are degraded, fail publishes fast, and every subscriber
//! ends with every accepted publication (the file store kept them) or, when
//! the server lost its data, an explicit `resync`.

mod nats_util;

use std::time::{Duration, Instant};

use nats_util::*;
use serde_json::json;

#[test]
fn nats_restart_during_traffic_loses_no_accepted_publication() {
    let mut nats = NatsServer::start();
    let urls = [nats.url()];
    let a = nats_node(&urls, |_| {});
    let b = nats_node(&urls, |_| {});
    let mut bystander = Client::connect(b.local_addr(), "");
    bystander.subscribe("elsewhere", None);
    let (readers, publisher) =
        start_traffic(a.local_addr(), b.local_addr(), a.local_addr(), "live");

    nats.kill();
    let mut api_b = Api::new(b.local_addr());
    wait_for(TIMEOUT, "node b says it is degraded", || {
        api_b.get("/healthz").0 == 503
    });
    assert_eq!(api_b.get("/healthz").1["status"], json!("degraded"));
    // Node a notices on its own (its own connection to the broker), not
    // when node b does: wait for it too.
    let mut api_a = Api::new(a.local_addr());
    wait_for(TIMEOUT, "node a's metric says the broker is down", || {
        api_a
            .metrics()
            .contains("wsgate_broker_healthy{kind=\"nats\"} 0")
    });
    wait_for(TIMEOUT, "publishes fail during the outage", || {
        publisher.failures() >= 20
    });
    // History and presence say so too.
    assert_eq!(api_b.get("/api/history?channel=live").0, 503);
    assert_eq!(api_b.get("/api/presence?channel=live").0, 503);
    let before_restart = publisher.accepted_count();
    nats.restart();
    for addr in [a.local_addr(), b.local_addr()] {
        let mut api = Api::new(addr);
        wait_for(TIMEOUT, "healthy again", || api.get("/healthz").0 == 200);
    }
    wait_for(TIMEOUT, "traffic after the outage", || {
        publisher.accepted_count() >= before_restart + 200
    });
    let slowest = *publisher.slowest_failure.lock().unwrap();
    let accepted = publisher.stop();
    assert!(
        slowest < Duration::from_secs(3),
        "failures are fast: {slowest:?}"
    );
    let last = assert_nothing_lost(readers, &accepted);
    // What was published before the restart is still in the stream.
    let first = accepted[0].1;
    let mut c = Client::connect(b.local_addr(), "");
    let (v, _) = c.subscribe("live", Some((&last.0, first)));
    assert_eq!(v["recovered"], json!(true), "{v}");
    let got = c.collect_until(TIMEOUT, |e| offsets(e).last() == Some(&last.1));
    assert_eq!(offsets(&got), (first + 1..=last.1).collect::<Vec<_>>());
    assert_served(&mut bystander, "the bystander");
    a.stop().unwrap();
    b.stop().unwrap();
}

#[test]
fn during_an_outage_requests_are_answered_and_a_lost_store_is_announced() {
    let mut nats = NatsServer::start();
    let urls = [nats.url()];
    // Memory storage: the restarted server has lost every stream.
    let memory = |c: &mut wsgate::config::Config| {
        c.broker.nats_storage = wsgate::config::NatsStorage::Memory
    };
    let a = nats_node(&urls, memory);
    let strict = nats_node(&urls, |c| {
        memory(c);
        c.broker.outage_subscribe = wsgate::config::OutageSubscribe::Refuse;
    });
    let mut bystander = Client::connect(a.local_addr(), "");
    let mut api = Api::new(a.local_addr());
    let mut old = Client::connect(a.local_addr(), "");
    old.subscribe("t", None);
    let (e1, _) = api.publish("t", json!(1)).unwrap();
    let ev = old.collect_until(TIMEOUT, |e| !offsets(e).is_empty());
    assert_eq!(ev, vec![Event::Pub(1, json!(1))]);
    nats.kill();
    wait_for(TIMEOUT, "degraded", || api.get("/healthz").0 == 503);

    // Accept: answered at once, from the node's recent deliveries when
    // they cover `since`, else without recovery.
    let mut c = Client::connect(a.local_addr(), "");
    let t = Instant::now();
    let (v, _) = c.subscribe("t", Some((&e1, 0)));
    assert_eq!(v["recovered"], json!(true), "{v}");
    assert_eq!(c.try_next_event(TIMEOUT), Ok(Event::Pub(1, json!(1))));
    let (v, _) = c.subscribe("u", Some((&e1, 4)));
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(v["recovered"], json!(false), "{v}");
    let mut fresh = Client::connect(a.local_addr(), "");
    fresh.subscribe("other", None);
    // Refuse: error 10; so are publishes (op and API), history, presence.
    let mut r = Client::connect(strict.local_addr(), "");
    let refused = [
        call(&mut r, json!({ "op": "subscribe", "channel": "t" }), "r"),
        call(
            &mut c,
            json!({ "op": "publish", "channel": "t", "data": 3 }),
            "c",
        ),
        call(&mut c, json!({ "op": "presence", "channel": "t" }), "c"),
    ];
    for v in refused {
        assert_eq!(v["error"]["code"], json!(10), "{v}");
    }
    let publish = api.try_request("POST", "/api/publish", r#"{"channel":"t","data":2}"#);
    let statuses = [
        publish.unwrap().0,
        api.get("/api/history?channel=t").0,
        api.get("/api/presence?channel=t").0,
    ];
    assert_eq!(statuses, [503; 3]);

    nats.restart();
    wait_for(TIMEOUT, "healthy", || api.get("/healthz").0 == 200);
    // The stream of "t" is gone: the next publication starts a new epoch,
    // and the subscriber from before the outage is told.
    let (e2, off) = loop {
        match api.publish("t", json!("back")) {
            Ok(p) => break p,
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    assert_ne!(e2, e1);
    assert_eq!(off, 1);
    let ev = old.collect_until(TIMEOUT, |e| !offsets(e).is_empty());
    assert_eq!(
        ev,
        vec![Event::Resync(e2.clone(), 0), Event::Pub(1, json!("back"))]
    );
    // The subscription made during the outage works.
    let (e3, off) = api.publish("other", json!("back")).unwrap();
    let ev = fresh.collect_until(TIMEOUT, |e| !offsets(e).is_empty());
    assert_eq!(ev.last(), Some(&Event::Pub(off, json!("back"))), "{ev:?}");
    assert!(ev.contains(&Event::Resync(e3, 0)) || off == 1, "{ev:?}");
    // Presence answers again (its bucket is made anew).
    let mut pat = Client::connect(a.local_addr(), "?user=pat");
    pat.subscribe("room", None);
    wait_for(TIMEOUT, "pat in presence", || {
        api.get("/api/presence?channel=room").1["clients"] == json!(1)
    });
    assert_served(&mut bystander, "the bystander");
    a.stop().unwrap();
    strict.stop().unwrap();
}
