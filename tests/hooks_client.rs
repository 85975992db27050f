//! The backend client against a real backend process (tests/backend/app.py):
//! keep-alive reuse, the concurrency limit, timeouts, 5xx, bad JSON, a huge
//! answer, a refused connection, a full queue, and a backend restarted
//! during traffic. In each, calls that should succeed (the bystanders) are
//! made alongside and must be answered, and every job reaches the sink
//! exactly once.

#[path = "backend_util/mod.rs"]
mod backend_util;

use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backend_util::{wait_for, Backend, DEADLINE};
use serde_json::{json, Value};
use wsgate::hooks::client::{BackendClient, Done, Failure, Job, Settings};
use wsgate::hooks::proxy::{decode_rpc, Decision, RpcAnswer};

type Client = BackendClient<u64, Decision>;

fn start(settings: Settings) -> (Client, Receiver<Done<u64, Decision>>) {
    let (tx, rx) = channel();
    let tx = Mutex::new(tx);
    let client = BackendClient::start(settings, move |d| {
        let _ = tx.lock().unwrap().send(d);
    })
    .expect("client threads");
    (client, rx)
}

/// An rpc call carrying `i`, which the backend echoes.
fn job(url: &str, i: u64) -> Job<u64, Decision> {
    let body = json!({"client": "c1", "transport": "websocket", "protocol": "json",
        "encoding": "json", "user": "u1", "method": "m", "data": {"i": i}});
    Job {
        url: url.into(),
        headers: vec![],
        body: body.to_string().into_bytes(),
        label: 4,
        decode: decode_rpc,
        ctx: i,
    }
}

/// The `i` the backend echoed, or the failure.
fn echoed(d: &Done<u64, Decision>) -> Result<u64, Failure> {
    match &d.result {
        Ok(Decision::Rpc(RpcAnswer::Data(data))) => {
            let v: Value = serde_json::from_str(data.get()).unwrap();
            Ok(v["echo"]["i"].as_u64().expect("echo.i"))
        }
        Ok(other) => panic!("not an rpc answer: {other:?}"),
        Err(f) => Err(f.clone()),
    }
}

/// Receive `n` outcomes, each job once.
fn collect(rx: &Receiver<Done<u64, Decision>>, n: usize) -> HashMap<u64, Done<u64, Decision>> {
    let mut seen = HashMap::new();
    let end = Instant::now() + DEADLINE;
    while seen.len() < n {
        let left = end.saturating_duration_since(Instant::now());
        let d = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("{} of {n} outcomes arrived", seen.len()));
        let ctx = d.ctx;
        assert!(seen.insert(ctx, d).is_none(), "job {ctx} answered twice");
    }
    seen
}

fn settings(concurrency: usize, timeout_ms: u64) -> Settings {
    Settings {
        concurrency,
        timeout: Duration::from_millis(timeout_ms),
        ..Settings::default()
    }
}

#[test]
fn keep_alive_connections_are_reused() {
    let backend = Backend::start();
    let (client, rx) = start(settings(2, 5_000));
    let url = backend.url("rpc");
    for round in 0..4u64 {
        for i in 0..50 {
            client.submit(job(&url, round * 50 + i)).unwrap();
        }
        let got = collect(&rx, 50);
        for (ctx, d) in &got {
            assert_eq!(echoed(d), Ok(*ctx), "each answer to its own call");
        }
    }
    let conns = backend.connections();
    assert!(
        (1..=2).contains(&conns),
        "200 calls over at most 2 keep-alive connections (one per thread), not {conns}"
    );
    let st = &client.stats()[4];
    assert_eq!((st.calls, st.ok, st.failures.total()), (200, 200, 0));
    assert_eq!(st.latency.count, 200);
}

#[test]
fn calls_in_flight_stay_within_the_concurrency_limit() {
    let backend = Backend::start();
    backend.set("rpc", json!({"mode": "slow", "delay_ms": 150}));
    let (client, rx) = start(settings(3, 10_000));
    let url = backend.url("rpc");
    for i in 0..24 {
        client.submit(job(&url, i)).unwrap();
    }
    let got = collect(&rx, 24);
    assert!(got.values().all(|d| echoed(d) == Ok(d.ctx)));
    let max = backend.stats()["max_in_flight"]["rpc"].as_u64().unwrap();
    assert_eq!(
        max, 3,
        "24 slow calls, 3 threads: exactly 3 at once at most"
    );
}

#[test]
fn a_slow_backend_times_out_and_others_are_still_answered() {
    let backend = Backend::start();
    // The next two calls hang; the rest are answered at once.
    backend.set("rpc", json!({"mode": "hang", "count": 2}));
    let (client, rx) = start(settings(4, 400));
    let url = backend.url("rpc");
    client.submit(job(&url, 0)).unwrap();
    client.submit(job(&url, 1)).unwrap();
    wait_for(DEADLINE, "both hanging calls reached the backend", || {
        backend.stats()["in_flight"]["rpc"] == 2
    });
    // Bystanders on the two free threads.
    for i in 2..22 {
        client.submit(job(&url, i)).unwrap();
    }
    let got = collect(&rx, 22);
    for i in 0..2 {
        assert_eq!(echoed(&got[&i]), Err(Failure::Timeout), "call {i}");
        assert!(got[&i].latency >= Duration::from_millis(400));
    }
    for i in 2..22 {
        assert_eq!(echoed(&got[&i]), Ok(i), "bystander {i}");
    }
    assert_eq!(client.stats()[4].failures.timeout, 2);
}

#[test]
fn a_call_that_waited_past_its_deadline_is_not_sent() {
    let backend = Backend::start();
    backend.set("rpc", json!({"mode": "slow", "delay_ms": 300, "count": 1}));
    let (client, rx) = start(settings(1, 200));
    let url = backend.url("rpc");
    client.submit(job(&url, 0)).unwrap();
    client.submit(job(&url, 1)).unwrap();
    let got = collect(&rx, 2);
    assert_eq!(echoed(&got[&0]), Err(Failure::Timeout));
    assert_eq!(
        echoed(&got[&1]),
        Err(Failure::Timeout),
        "its time went in the queue"
    );
    // Only the first reached the backend; the next call is answered.
    client.submit(job(&url, 2)).unwrap();
    assert_eq!(echoed(&collect(&rx, 1)[&2]), Ok(2));
    let calls: Vec<u64> = backend
        .log("rpc")
        .iter()
        .map(|r| r["body"]["data"]["i"].as_u64().unwrap())
        .collect();
    assert_eq!(calls, [0, 2]);
}

#[test]
fn server_errors_bad_json_and_huge_answers_are_failures() {
    let backend = Backend::start();
    let (client, rx) = start(Settings {
        max_answer: 64 << 10,
        ..settings(1, 5_000)
    });
    let url = backend.url("rpc");
    // One thread: calls reach the backend in order. Each failing call is
    // followed by a bystander that must be answered on the same client.
    let cases = [
        json!({"mode": "status", "status": 500, "count": 1}),
        json!({"mode": "status", "status": 404, "count": 1}),
        json!({"mode": "badjson", "count": 1}),
        json!({"mode": "raw", "body": "{\"result\": {\"data\": 1, \"b64data\": \"AA\"}}", "count": 1}),
        json!({"mode": "huge", "size": 4 << 20, "count": 1}),
        json!({"mode": "close", "count": 1}),
    ];
    for (n, b) in cases.iter().enumerate() {
        backend.set("rpc", b.clone());
        let i = 2 * n as u64;
        client.submit(job(&url, i)).unwrap();
        client.submit(job(&url, i + 1)).unwrap();
        let got = collect(&rx, 2);
        let failure = echoed(&got[&i]).expect_err("a failure");
        match n {
            0 => assert_eq!(failure, Failure::Status(500)),
            1 => assert_eq!(failure, Failure::Status(404)),
            2 | 3 => assert!(matches!(failure, Failure::BadAnswer(_)), "{failure:?}"),
            4 => assert_eq!(failure, Failure::TooBig(64 << 10)),
            _ => assert!(matches!(failure, Failure::Io(_)), "{failure:?}"),
        }
        assert_eq!(echoed(&got[&(i + 1)]), Ok(i + 1), "bystander after {b}");
    }
    let st = &client.stats()[4];
    let f = &st.failures;
    assert_eq!((f.status, f.bad_answer, f.too_big, f.io), (2, 2, 1, 1));
    assert_eq!(st.ok, 6);
}

#[test]
fn a_full_queue_refuses_at_once_and_every_accepted_call_is_answered() {
    let backend = Backend::start();
    backend.set("rpc", json!({"mode": "slow", "delay_ms": 500, "count": 1}));
    let (client, rx) = start(Settings {
        queue_size: 5,
        ..settings(1, 10_000)
    });
    let url = backend.url("rpc");
    client.submit(job(&url, 0)).unwrap();
    wait_for(DEADLINE, "the first call is in flight", || {
        client.queued() == 0
    });
    let mut accepted = vec![0];
    let mut refused = 0;
    for i in 1..20 {
        match client.submit(job(&url, i)) {
            Ok(()) => accepted.push(i),
            Err((j, f)) => {
                assert_eq!((j.ctx, f), (i, Failure::Overloaded));
                refused += 1;
            }
        }
    }
    assert_eq!(accepted.len(), 6, "one in flight and five queued");
    assert_eq!(refused, 14);
    let got = collect(&rx, accepted.len());
    for i in accepted {
        assert_eq!(echoed(&got[&i]), Ok(i));
    }
    assert_eq!(client.stats()[4].failures.overloaded, 14);
}

#[test]
fn a_backend_that_is_down_refuses_and_one_that_restarted_serves() {
    let mut backend = Backend::start();
    let (client, rx) = start(settings(2, 2_000));
    let url = backend.url("rpc");
    client.submit(job(&url, 0)).unwrap();
    assert_eq!(echoed(&collect(&rx, 1)[&0]), Ok(0));
    backend.kill();
    for i in 1..5 {
        client.submit(job(&url, i)).unwrap();
    }
    for (i, d) in collect(&rx, 4) {
        assert!(
            matches!(echoed(&d), Err(Failure::Connect(_))),
            "{i}: {:?}",
            d.result
        );
    }
    backend.restart();
    for i in 5..25 {
        client.submit(job(&url, i)).unwrap();
    }
    for (i, d) in collect(&rx, 20) {
        assert_eq!(
            echoed(&d),
            Ok(i),
            "after the restart: pooled connections were dropped"
        );
    }
    assert_eq!(client.stats()[4].failures.connect, 4);
}

/// Traffic from four threads while the backend is killed and restarted:
/// every call is answered once, failures only while it was down (of the
/// kinds an outage gives), and the calls after it succeed.
#[test]
fn the_backend_restarts_during_traffic() {
    let mut backend = Backend::start();
    let (client, rx) = start(settings(4, 3_000));
    let client = Arc::new(client);
    let url = backend.url("rpc");
    let sent = Arc::new(Mutex::new(0u64));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = (0..4u64)
        .map(|t| {
            let (client, url, sent, stop) =
                (client.clone(), url.clone(), sent.clone(), stop.clone());
            std::thread::spawn(move || {
                // Bounded: at most 1,500 calls per thread, ~10 ms apart
                // (about 400 a second in all: well within what the Python
                // backend answers on a busy box).
                for k in 0..1_500u64 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let i = t * 1_000_000 + k;
                    if client.submit(job(&url, i)).is_ok() {
                        *sent.lock().unwrap() += 1;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        })
        .collect();
    wait_for(DEADLINE, "traffic flows", || backend.connections() >= 1);
    std::thread::sleep(Duration::from_millis(500));
    backend.kill();
    std::thread::sleep(Duration::from_millis(500));
    backend.restart();
    wait_for(DEADLINE, "calls reach the restarted backend", || {
        backend.stats()["requests"]["rpc"].as_u64().unwrap() >= 300
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    let n = *sent.lock().unwrap() as usize;
    let got = collect(&rx, n);
    let mut failures = 0;
    for d in got.values() {
        match echoed(d) {
            Ok(i) => assert_eq!(i, d.ctx),
            Err(Failure::Connect(_) | Failure::Io(_) | Failure::Timeout) => failures += 1,
            Err(f) => panic!("unexpected failure {f:?}"),
        }
    }
    assert!(failures > 0, "the outage was seen");
    // The last 20 calls of each thread were made well after the restart.
    for t in 0..4u64 {
        let mut mine: Vec<_> = got.values().filter(|d| d.ctx / 1_000_000 == t).collect();
        mine.sort_by_key(|d| d.ctx);
        for d in mine.iter().rev().take(20) {
            assert_eq!(echoed(d), Ok(d.ctx), "after the restart");
        }
    }
    eprintln!("{n} calls, {failures} failed during the outage");
}
