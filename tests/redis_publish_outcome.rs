//! What a publish's answer means when Redis stalls (SIGSTOP for 4 s under
//! traffic, then SIGCONT): publishes the node had written to Redis when it
//! stopped sat in Redis's socket and used to run when it resumed — after
//! their clients had been told `503` (refused), so a client that retried
//! published twice.
//!
//! Now (the contract in README.md):
//! - an offset: published, once;
//! - `503` / error 10 `unavailable`: not published, and never will be;
//! - `504` / error 13 `outcome_unknown`: sent and not answered; it may have
//!   been published before the stall, and can no longer be (the publish
//!   script refuses to run past a deadline on Redis's clock, and the answer
//!   waits for it).
//!
//! Bystanders: a subscriber of the channel (which must see exactly the
//! published ones) and a client whose pings must be answered during the
//! stall.

mod redis_util;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use redis_util::*;
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Published(u64),
    Refused,
    Unknown,
}

/// Publish `{"k": k}` and classify the answer.
fn publish(api: &mut Api, k: u64) -> (Outcome, Duration) {
    let t = Instant::now();
    let body = json!({ "channel": "t", "data": { "k": k } }).to_string();
    let (status, v) = api
        .try_request("POST", "/api/publish", &body)
        .unwrap_or_else(|e| panic!("publish {k}: no answer: {e}"));
    let code = v["error"]["code"].as_u64();
    let outcome = match (status, code) {
        (200, None) => Outcome::Published(v["offset"].as_u64().expect("offset")),
        (503, Some(10)) => Outcome::Refused,
        (504, Some(13)) => Outcome::Unknown,
        _ => panic!("publish {k}: unexpected answer {status} {v}"),
    };
    (outcome, t.elapsed())
}

#[test]
fn a_refused_publish_is_never_made_and_an_unknown_one_is_settled() {
    let redis = RedisServer::start();
    let a = node(&redis.url(), |c| {
        c.channels.history_size = 10_000;
        // No presence refresh: the first command of the stall is a publish.
        c.channels.presence = false;
    });
    let b = node(&redis.url(), |c| c.channels.history_size = 10_000);
    let timeout = Duration::from_millis(1_000); // node_config's command_timeout

    // Bystanders: a subscriber on node b, a pinging client on node a.
    let mut sub = Client::connect(b.local_addr(), "");
    sub.subscribe("t", None);
    let mut pinger = Client::connect(a.local_addr(), "");

    // Four publishers, each publishing unique ids until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(HashMap::<u64, Outcome>::new()));
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let publishers: Vec<_> = (0..4u64)
        .map(|p| {
            let (stop, outcomes, slowest) = (stop.clone(), outcomes.clone(), slowest.clone());
            let addr = a.local_addr();
            thread::spawn(move || {
                let mut api = Api::new(addr);
                let mut k = p;
                while !stop.load(Ordering::Acquire) {
                    let (o, took) = publish(&mut api, k);
                    outcomes.lock().unwrap().insert(k, o);
                    if o == Outcome::Unknown {
                        // Not before its deadline: until then it could run.
                        assert!(took >= timeout, "unknown {k} answered after {took:?}");
                    }
                    let mut s = slowest.lock().unwrap();
                    *s = (*s).max(took);
                    k += 4;
                    thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();
    let count =
        |f: fn(&Outcome) -> bool| outcomes.lock().unwrap().values().filter(|o| f(o)).count();
    wait_for(TIMEOUT, "publications before the stall", || {
        count(|o| matches!(o, Outcome::Published(_))) >= 50
    });

    redis.pause();
    let paused = Instant::now();
    // The pinger is served throughout the stall.
    let mut pings = 0;
    while paused.elapsed() < Duration::from_secs(4) {
        let id = pinger.send(json!({ "op": "ping" }));
        let v = pinger
            .try_next(Duration::from_secs(5))
            .expect("a pong during the stall");
        assert_eq!(
            (v["id"].as_u64(), &v["pong"]),
            (Some(id), &json!(true)),
            "{v}"
        );
        pings += 1;
        thread::sleep(Duration::from_millis(200));
    }
    assert!(pings >= 10);
    let during = outcomes.lock().unwrap().clone();
    assert!(
        during.values().any(|o| *o == Outcome::Unknown),
        "a publish was in flight when Redis stopped: its outcome is unknown"
    );
    assert!(
        during.values().any(|o| *o == Outcome::Refused),
        "publishes during the stall are refused"
    );
    redis.resume();
    let mut api = Api::new(a.local_addr());
    wait_for(TIMEOUT, "healthy again", || api.get("/healthz").0 == 200);
    let before = count(|o| matches!(o, Outcome::Published(_)));
    wait_for(TIMEOUT, "publications after the stall", || {
        count(|o| matches!(o, Outcome::Published(_))) >= before + 50
    });
    stop.store(true, Ordering::Release);
    for p in publishers {
        p.join().unwrap();
    }
    let outcomes = outcomes.lock().unwrap().clone();
    let last = outcomes
        .values()
        .filter_map(|o| match o {
            Outcome::Published(off) => Some(*off),
            _ => None,
        })
        .max()
        .unwrap();

    // What was made: the history, and what the subscriber received.
    let (status, h) = api.get("/api/history?channel=t&limit=10000");
    assert_eq!(status, 200, "{h}");
    let made: Vec<(u64, u64)> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["data"]["k"].as_u64().unwrap(),
                p["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    let got = sub.collect_until(TIMEOUT, |e| offsets(e).last() == Some(&last));
    let streamed: Vec<(u64, u64)> = got
        .iter()
        .filter_map(|e| match e {
            Event::Pub(off, d) => Some((d["k"].as_u64().unwrap(), *off)),
            _ => None,
        })
        .collect();
    assert_eq!(
        streamed, made,
        "the subscriber saw exactly what was made, in order"
    );

    let mut times: HashMap<u64, usize> = HashMap::new();
    for (k, _) in &made {
        *times.entry(*k).or_default() += 1;
    }
    let mut unknown_made = 0;
    for (k, o) in &outcomes {
        let n = times.get(k).copied().unwrap_or(0);
        match o {
            Outcome::Published(off) => {
                assert_eq!(n, 1, "published {k} is in the history once");
                assert!(made.contains(&(*k, *off)), "published {k} at offset {off}");
            }
            Outcome::Refused => assert_eq!(n, 0, "refused {k} was made anyway"),
            Outcome::Unknown => {
                assert!(n <= 1, "unknown {k} made {n} times");
                unknown_made += n;
            }
        }
    }
    assert!(
        made.iter().all(|(k, _)| outcomes.contains_key(k)),
        "nothing made that was not asked for"
    );
    // Redis stopped for longer than their deadline: when it resumed, the
    // publishes that waited in it were refused. (One made before the stall
    // whose answer was lost would be allowed, and counted here.)
    let unknown = outcomes
        .values()
        .filter(|o| **o == Outcome::Unknown)
        .count();
    println!(
        "{} published, {} refused, {unknown} unknown ({unknown_made} of them made); slowest answer {:?}",
        outcomes.values().filter(|o| matches!(o, Outcome::Published(_))).count(),
        outcomes.values().filter(|o| **o == Outcome::Refused).count(),
        slowest.lock().unwrap()
    );
    // The bystanders are still served.
    let id = pinger.send(json!({ "op": "ping" }));
    let v: Value = pinger.next();
    assert_eq!(v["id"].as_u64(), Some(id));
    a.stop().unwrap();
    b.stop().unwrap();
}
