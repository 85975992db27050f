//! Webhooks against the test backend, which checks every signature:
//! batching, ids, order, retries of the same bytes, a full queue dropping
//! and counting, a backend restarted while events flow, and stopping.

#[path = "backend_util/mod.rs"]
mod backend_util;

use std::collections::HashSet;
use std::time::Duration;

use backend_util::{wait_for, Backend, DEADLINE, SECRET};
use serde_json::{json, Value};
use wsgate::config::Millis;
use wsgate::hooks::config::WebhooksConfig;
use wsgate::hooks::webhooks::{Event, EventKind, Webhooks};

fn config(backend: &Backend) -> WebhooksConfig {
    WebhooksConfig {
        url: backend.url("webhook"),
        secret: SECRET.into(),
        events: EventKind::ALL.to_vec(),
        batch_max: 100,
        batch_delay: Millis(50),
        retry_min: Millis(50),
        retry_max: Millis(200),
        timeout: Millis(2_000),
        ..WebhooksConfig::default()
    }
}

fn occupied(i: usize) -> Event {
    Event::channel(EventKind::ChannelOccupied, &format!("ch{i}"))
}

/// Every event the backend accepted (signature checked), in arrival order.
fn accepted(backend: &Backend) -> Vec<Value> {
    backend
        .log("webhook")
        .into_iter()
        .filter(|r| r["signature_ok"] == true)
        .collect()
}

fn events(batches: &[Value]) -> Vec<Value> {
    batches
        .iter()
        .flat_map(|b| b["body"]["events"].as_array().unwrap().clone())
        .collect()
}

#[test]
fn events_arrive_batched_signed_in_order_with_unique_ids() {
    let backend = Backend::start();
    let w = Webhooks::start(&config(&backend)).unwrap();
    for i in 0..250 {
        assert!(w.emit(occupied(i)));
    }
    assert!(w.emit(Event::member(
        EventKind::MemberAdded,
        "chat",
        "c1",
        Some("ann")
    )));
    assert!(w.emit(Event::disconnected("c1", Some("ann"), 4000, "")));
    wait_for(DEADLINE, "252 events delivered", || {
        w.stats().delivered == 252
    });
    let batches = backend.log("webhook");
    assert!(
        batches.iter().all(|b| b["signature_ok"] == true),
        "every batch signed"
    );
    assert!(batches.len() >= 3, "at most 100 events a batch");
    assert!(batches
        .iter()
        .all(|b| b["body"]["events"].as_array().unwrap().len() <= 100));
    let ev = events(&batches);
    let channels: Vec<_> = ev[..250]
        .iter()
        .map(|e| e["channel"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        channels,
        (0..250).map(|i| format!("ch{i}")).collect::<Vec<_>>(),
        "in order"
    );
    let ids: HashSet<_> = ev
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 252, "unique ids");
    assert_eq!(
        ev[250],
        json!({"id": ev[250]["id"], "name": "member_added", "time_ms": ev[250]["time_ms"],
               "channel": "chat", "user_id": "ann", "client_id": "c1"})
    );
    assert_eq!(ev[251]["name"], "client_disconnected");
    assert_eq!(ev[251]["code"], 4000);
    let st = w.stats();
    assert_eq!((st.emitted, st.dropped, st.failures.total()), (252, 0, 0));
    assert_eq!(st.batches, batches.len() as u64);
}

#[test]
fn a_wrong_secret_is_refused_by_the_backend_and_retried() {
    let backend = Backend::start();
    let mut cfg = config(&backend);
    cfg.secret = "another-secret-0123456789".into();
    let w = Webhooks::start(&cfg).unwrap();
    w.emit(occupied(1));
    wait_for(DEADLINE, "three refused attempts", || {
        w.stats().failures.status >= 3
    });
    assert_eq!(w.stats().delivered, 0);
    let log = backend.log("webhook");
    assert!(log.iter().all(|r| r["signature_ok"] == false));
    assert_eq!(
        w.stats().queued,
        0,
        "the batch in flight is not queued twice"
    );
}

#[test]
fn failed_posts_are_retried_with_the_same_bytes() {
    let backend = Backend::start();
    // Three failures of three kinds, then success.
    backend.set("webhook", json!({"mode": "allow"}));
    backend.set("webhook", json!({"mode": "badjson", "count": 1}));
    backend.set(
        "webhook",
        json!({"mode": "status", "status": 503, "count": 1}),
    );
    backend.set("webhook", json!({"mode": "close", "count": 1}));
    let w = Webhooks::start(&config(&backend)).unwrap();
    for i in 0..5 {
        w.emit(occupied(i));
    }
    wait_for(DEADLINE, "5 delivered", || w.stats().delivered == 5);
    let log = backend.log("webhook");
    // close, 503, then badjson (a 200: accepted, its body is not read).
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(
        log.iter().all(|r| r["body"] == log[0]["body"]),
        "the same body each time"
    );
    let st = w.stats();
    assert_eq!((st.attempts, st.failures.status, st.failures.io), (3, 1, 1));
    assert_eq!(events(&log[2..]).len(), 5);
}

#[test]
fn a_full_queue_drops_new_events_and_counts_them() {
    let mut backend = Backend::start();
    backend.kill();
    let mut cfg = config(&backend);
    cfg.queue_size = 10;
    cfg.batch_max = 4;
    let w = Webhooks::start(&cfg).unwrap();
    let mut sent = Vec::new();
    for i in 0..50 {
        if w.emit(occupied(i)) {
            sent.push(format!("ch{i}"));
        }
    }
    // At most one batch left the queue before it filled.
    assert!((10..=14).contains(&sent.len()), "{}", sent.len());
    let st = w.stats();
    assert_eq!(st.emitted + st.dropped, 50);
    assert_eq!(st.dropped, 50 - sent.len() as u64);
    backend.restart();
    wait_for(DEADLINE, "the queued events delivered", || {
        w.stats().delivered == sent.len() as u64
    });
    let got: Vec<_> = events(&accepted(&backend))
        .iter()
        .map(|e| e["channel"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, sent, "exactly the accepted events, in order");
}

#[test]
fn events_survive_a_backend_restart_at_least_once() {
    let mut backend = Backend::start();
    let w = Webhooks::start(&config(&backend)).unwrap();
    let mut emitted = 0;
    for round in 0..3 {
        for i in 0..100 {
            assert!(w.emit(occupied(round * 100 + i)));
            emitted += 1;
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if round == 1 {
            backend.kill();
        }
        if round == 2 {
            std::thread::sleep(Duration::from_millis(300));
            backend.restart();
        }
    }
    wait_for(DEADLINE, "every event delivered", || {
        w.stats().delivered == emitted
    });
    // The first backend's log died with it: the events of the last round,
    // emitted while it was down, all reached the restarted one.
    let ids: HashSet<_> = events(&accepted(&backend))
        .iter()
        .map(|e| e["channel"].as_str().unwrap().to_owned())
        .collect();
    for i in 200..300 {
        assert!(
            ids.contains(&format!("ch{i}")),
            "ch{i} delivered after the restart"
        );
    }
    assert!(w.stats().failures.total() > 0, "the outage was seen");
}

#[test]
fn stop_delivers_what_is_queued_or_counts_it_lost() {
    let mut backend = Backend::start();
    let mut cfg = config(&backend);
    cfg.batch_delay = Millis(2_000);
    let w = Webhooks::start(&cfg).unwrap();
    for i in 0..20 {
        w.emit(occupied(i));
    }
    w.stop(DEADLINE);
    assert_eq!(
        w.stats().delivered,
        20,
        "stop does not wait out the batch delay"
    );
    assert_eq!(events(&accepted(&backend)).len(), 20);
    assert!(!w.emit(occupied(99)), "a stopped sender takes no event");

    backend.kill();
    let w = Webhooks::start(&config(&backend)).unwrap();
    for i in 0..7 {
        w.emit(occupied(i));
    }
    w.stop(Duration::from_millis(300));
    let st = w.stats();
    assert_eq!((st.delivered, st.lost), (0, 7));
}
