//! Redis goes away during traffic and comes back empty: the nodes stay up,
//! say they are degraded, fail publishes fast, and every subscriber ends
//! with every publication or an explicit `resync` for what was lost.

mod redis_util;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use redis_util::*;
use serde_json::json;

/// Check a subscriber's stream: within an epoch, offsets follow one by one
/// from the subscribe answer; the only jumps are announced by a `resync`
/// event (or a subscribe answer). Returns the final position.
fn check_stream(who: &str, events: &[Event]) -> (String, u64) {
    let mut pos: Option<(String, u64)> = None;
    for (i, e) in events.iter().enumerate() {
        match e {
            Event::Subscribed(ep, o, _) | Event::Resync(ep, o) => pos = Some((ep.clone(), *o)),
            Event::Pub(o, _) => {
                let p = pos.as_mut().expect("a position before publications");
                assert_eq!(
                    *o,
                    p.1 + 1,
                    "{who}: silent gap at event {i}: {:?}",
                    &events[i.saturating_sub(3)..=i]
                );
                p.1 = *o;
            }
            Event::Other(_) => {}
        }
    }
    pos.expect("subscribed")
}

/// Follow a subscriber's position (epoch, offset) as `check_stream` does.
fn track(pos: &mut Option<(String, u64)>, e: &Event) {
    match e {
        Event::Subscribed(ep, o, _) | Event::Resync(ep, o) => *pos = Some((ep.clone(), *o)),
        Event::Pub(o, _) => {
            if let Some(p) = pos.as_mut() {
                p.1 = *o;
            }
        }
        Event::Other(_) => {}
    }
}

#[test]
fn redis_restart_during_traffic_no_crash_every_gap_recovered_or_reported() {
    let mut redis = RedisServer::start();
    let a = node(&redis.url(), |_| {});
    let b = node(&redis.url(), |_| {});
    let stop = Arc::new(AtomicBool::new(false));
    // The last accepted publication, known once the publisher stopped.
    let last = Arc::new(Mutex::new(None::<(String, u64)>));

    // Four subscribers (two per node), each reading on its own thread.
    let mut readers = Vec::new();
    for (i, addr) in [
        a.local_addr(),
        b.local_addr(),
        a.local_addr(),
        b.local_addr(),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = Client::connect(addr, "");
        let (v, _) = c.subscribe("live", None);
        let first = classify(v);
        let (stop, last) = (stop.clone(), last.clone());
        readers.push(thread::spawn(move || {
            let mut events = vec![first];
            let mut pos = None;
            let mut deadline = None;
            loop {
                // Once the publisher stopped, read until the last accepted
                // publication arrived (it may still be on its way through
                // Redis), or give up after TIMEOUT.
                if stop.load(Ordering::Acquire) {
                    if let Some(last) = last.lock().unwrap().clone() {
                        let d = *deadline.get_or_insert_with(|| Instant::now() + TIMEOUT);
                        if pos.as_ref() == Some(&last) || Instant::now() > d {
                            return events;
                        }
                    }
                }
                match c.try_next_event(Duration::from_millis(200)) {
                    Ok(e) => {
                        track(&mut pos, &e);
                        events.push(e);
                    }
                    Err(e) if e == TIMED_OUT => {}
                    Err(e) => panic!("subscriber {i} lost its connection: {e}"),
                }
            }
        }));
    }

    // A publisher that keeps going whatever happens, and records what was
    // accepted.
    let accepted = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let slowest_failure = Arc::new(Mutex::new(Duration::ZERO));
    let publisher = {
        let (accepted, failed, slowest, stop) = (
            accepted.clone(),
            failed.clone(),
            slowest_failure.clone(),
            stop.clone(),
        );
        let addr = a.local_addr();
        thread::spawn(move || {
            let mut api = Api::new(addr);
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let t = Instant::now();
                match api.publish("live", json!({ "n": n })) {
                    Ok(pos) => accepted.lock().unwrap().push(pos),
                    Err(status) => {
                        assert_eq!(status, 503, "a failed publish is 503 unavailable");
                        failed.fetch_add(1, Ordering::Relaxed);
                        let mut s = slowest.lock().unwrap();
                        *s = (*s).max(t.elapsed());
                    }
                }
                thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let accepted_count = || accepted.lock().unwrap().len();
    wait_for(TIMEOUT, "traffic before the outage", || {
        accepted_count() >= 200
    });

    redis.kill();
    let mut api_b = Api::new(b.local_addr());
    wait_for(TIMEOUT, "node b says it is degraded", || {
        api_b.get("/healthz").0 == 503
    });
    assert_eq!(api_b.get("/healthz").1["status"], json!("degraded"));
    assert!(Api::new(a.local_addr())
        .metrics()
        .contains("wsgate_broker_healthy{kind=\"redis\"} 0"));
    wait_for(TIMEOUT, "publishes fail during the outage", || {
        failed.load(Ordering::Relaxed) >= 20
    });
    let before_restart = accepted_count();
    redis.restart();
    for addr in [a.local_addr(), b.local_addr()] {
        let mut api = Api::new(addr);
        wait_for(TIMEOUT, "healthy again", || api.get("/healthz").0 == 200);
    }
    wait_for(TIMEOUT, "traffic after the outage", || {
        accepted_count() >= before_restart + 200
    });
    stop.store(true, Ordering::Release);
    publisher.join().unwrap();
    let accepted = accepted.lock().unwrap().clone();
    *last.lock().unwrap() = accepted.last().cloned();
    let events: Vec<Vec<Event>> = readers.into_iter().map(|r| r.join().unwrap()).collect();

    let last = accepted.last().unwrap().clone();
    let first_epoch = accepted[0].0.clone();
    assert_ne!(last.0, first_epoch, "Redis lost its data: a new epoch");
    assert!(
        *slowest_failure.lock().unwrap() < Duration::from_secs(3),
        "failures are fast: {:?}",
        slowest_failure.lock().unwrap()
    );
    for (i, ev) in events.iter().enumerate() {
        let end = check_stream(&format!("subscriber {i}"), ev);
        assert_eq!(
            end, last,
            "subscriber {i} ends at the last accepted publication"
        );
        // Everything accepted before the outage arrived (the same epoch).
        let first: Vec<u64> = accepted
            .iter()
            .filter(|(e, _)| *e == first_epoch)
            .map(|p| p.1)
            .collect();
        let got = offsets(ev);
        assert!(
            got.starts_with(&first),
            "subscriber {i} got every publication of the first epoch"
        );
        assert!(
            ev.iter().any(|e| matches!(e, Event::Resync(..))),
            "subscriber {i} was told"
        );
    }
    // A client still at the old epoch learns that recovery failed.
    let mut c = Client::connect(b.local_addr(), "");
    let (v, _) = c.subscribe("live", Some((&first_epoch, 10)));
    assert_eq!(v["recovered"], json!(false), "{v}");
    a.stop().unwrap();
    b.stop().unwrap();
}

#[test]
fn during_an_outage_subscribes_are_answered_and_resume_after() {
    let mut redis = RedisServer::start();
    let a = node(&redis.url(), |_| {});
    let strict = node(&redis.url(), |c| {
        c.broker.outage_subscribe = wsgate::config::OutageSubscribe::Refuse;
    });
    let mut api = Api::new(a.local_addr());
    let (e1, _) = api.publish("t", json!(1)).unwrap();
    redis.kill();
    wait_for(TIMEOUT, "degraded", || api.get("/healthz").0 == 503);

    // Accept: answered at once, without recovery.
    let mut c = Client::connect(a.local_addr(), "");
    let t = Instant::now();
    let (v, _) = c.subscribe("t", Some((&e1, 0)));
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(v["recovered"], json!(false), "{v}");
    let mut fresh = Client::connect(a.local_addr(), "");
    fresh.subscribe("other", None);
    // Refuse: error 10.
    let mut r = Client::connect(strict.local_addr(), "");
    let id = r.send(json!({ "op": "subscribe", "channel": "t" }));
    let v = r.next();
    assert_eq!(
        (v["id"].as_u64(), v["error"]["code"].as_u64()),
        (Some(id), Some(10)),
        "{v}"
    );
    // Publish, history, presence: 503 / code 10.
    let (status, v) = api
        .try_request("POST", "/api/publish", r#"{"channel":"t","data":2}"#)
        .unwrap();
    assert_eq!(
        (status, v["error"]["code"].as_u64()),
        (503, Some(10)),
        "{v}"
    );
    assert_eq!(api.get("/api/history?channel=t").0, 503);
    assert_eq!(api.get("/api/presence?channel=t").0, 503);
    let id = c.send(json!({ "op": "publish", "channel": "t", "data": 3 }));
    let v = c.next();
    assert_eq!(
        (v["id"].as_u64(), v["error"]["code"].as_u64()),
        (Some(id), Some(10)),
        "{v}"
    );

    redis.restart();
    wait_for(TIMEOUT, "healthy", || api.get("/healthz").0 == 200);
    // The subscription made during the outage works; the client is told
    // where the (new) stream stands before the first publication.
    let (e2, off) = loop {
        match api.publish("other", json!("back")) {
            Ok(p) => break p,
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    };
    let ev = fresh.collect_until(TIMEOUT, |e| !offsets(e).is_empty());
    assert_eq!(ev.last(), Some(&Event::Pub(off, json!("back"))), "{ev:?}");
    assert!(ev.contains(&Event::Resync(e2, 0)) || off == 1, "{ev:?}");
    a.stop().unwrap();
    strict.stop().unwrap();
}
