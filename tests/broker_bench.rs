//! Benchmark (ignored by `cargo test`): publish-to-receive latency and
//! throughput of the brokers, in the same run, alternating A B A B: one
//! node with the memory broker, two nodes sharing channels through Redis,
//! two nodes sharing them through NATS (JetStream in memory, or on file).
//!
//! Run it with `scripts/bench_cluster.sh` (memory against Redis) or
//! `scripts/bench_brokers.sh` (Redis against NATS), release builds, or
//! `SETUPS=memory,redis,nats,nats-file cargo test --release --test
//! broker_bench -- --ignored --nocapture`.
//!
//! Pinning (2-core box, /work/shared/MEASURING.md): every gateway process
//! (one worker each) on core 0; this process (publisher and subscribers)
//! and redis-server / nats-server on core 1. Two nodes: the publisher
//! publishes to node A and every subscriber is on node B, so each delivery
//! crosses the broker.
//!
//! Latency: the payload carries the publish time (ns since the Unix epoch);
//! a subscriber computes receive time − publish time. Throughput: batches
//! of publications as fast as the API takes them; deliveries counted at the
//! subscribers; server CPU time (utime + stime from /proc) per delivery.

mod nats_util;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use nats_util::*;
use serde_json::{json, Value};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pin_self(core: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes into
    // it; sched_setaffinity(0, …) applies to the calling thread, and the
    // threads it spawns later inherit the mask.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ")".
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after ")".
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

struct Gateway {
    addr: SocketAddr,
    child: Child,
    _config: TempFile,
}

impl Gateway {
    /// A gateway process with `config` (TOML: the broker section).
    fn start(config: &str) -> Gateway {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let file = TempFile::new("toml", config.as_bytes());
        let child = Command::new("taskset")
            .args(["-c", "0", env!("CARGO_BIN_EXE_wsgate")])
            .args(["--listen", &addr.to_string(), "--workers", "1", "-c"])
            .arg(&file.0)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .expect("start wsgate (needs taskset)");
        wait_for(TIMEOUT, "gateway up", || {
            matches!(Api::new(addr).try_get("/healthz"), Ok((200, _)))
        });
        Gateway {
            addr,
            child,
            _config: file,
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Setup {
    name: &'static str,
    publish_to: SocketAddr,
    subscribe_to: SocketAddr,
    /// Processes whose CPU is the gateway's.
    gateway_pids: Vec<u32>,
    broker_pid: Option<u32>,
    _gateways: Vec<Gateway>,
    _broker: Option<Child>,
    _dir: Option<std::path::PathBuf>,
}

fn memory_setup() -> Setup {
    let g = Gateway::start("");
    Setup {
        name: "1 node, memory",
        publish_to: g.addr,
        subscribe_to: g.addr,
        gateway_pids: vec![g.child.id()],
        broker_pid: None,
        _gateways: vec![g],
        _broker: None,
        _dir: None,
    }
}

/// Two gateways on a broker server (pinned to core 1).
fn two_nodes(
    name: &'static str,
    server: Child,
    config: &str,
    dir: Option<std::path::PathBuf>,
) -> Setup {
    let a = Gateway::start(config);
    let b = Gateway::start(config);
    Setup {
        name,
        publish_to: a.addr,
        subscribe_to: b.addr,
        gateway_pids: vec![a.child.id(), b.child.id()],
        broker_pid: Some(server.id()),
        _gateways: vec![a, b],
        _broker: Some(server),
        _dir: dir,
    }
}

fn redis_setup() -> Setup {
    let port = free_port();
    let child = Command::new("taskset")
        .args(["-c", "1", "redis-server", "--port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server (apt-get install redis-server)");
    let url = format!("redis://127.0.0.1:{port}/0");
    wait_for(TIMEOUT, "redis up", || {
        redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .is_ok()
    });
    let config = format!("[broker]\nkind = \"redis\"\nredis_url = \"{url}\"\n");
    two_nodes("2 nodes, redis", child, &config, None)
}

fn nats_setup_with(name: &'static str, storage: &str) -> Setup {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("wsgate-bench-nats-{}-{port}", std::process::id()));
    let bin = if std::path::Path::new("/usr/sbin/nats-server").exists() {
        "/usr/sbin/nats-server"
    } else {
        "nats-server"
    };
    let child = Command::new("taskset")
        .args([
            "-c",
            "1",
            bin,
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .arg("-sd")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server (apt-get install nats-server)");
    wait_for(TIMEOUT, "jetstream up", || {
        js_request(port, "$JS.API.INFO", "").is_ok_and(|v| v.get("error").is_none())
    });
    let config = format!(
        "[broker]\nkind = \"nats\"\nnats_urls = [\"nats://127.0.0.1:{port}\"]\n\
         nats_storage = \"{storage}\"\n"
    );
    two_nodes(name, child, &config, Some(dir))
}

fn nats_setup() -> Setup {
    nats_setup_with("2 nodes, nats", "memory")
}

fn nats_file_setup() -> Setup {
    nats_setup_with("2 nodes, nats file", "file")
}

impl Drop for Setup {
    fn drop(&mut self) {
        self._gateways.clear();
        if let Some(c) = &mut self._broker {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(d) = &self._dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Subscribers on `addr`, each on a thread, recording latencies and counts
/// until `stop`.
fn subscribers(
    addr: SocketAddr,
    channel: &str,
    n: usize,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
) -> Vec<thread::JoinHandle<Histogram<u64>>> {
    (0..n)
        .map(|_| {
            let mut c = Client::connect(addr, "");
            c.subscribe(channel, None);
            let (stop, received) = (stop.clone(), received.clone());
            thread::spawn(move || {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
                while !stop.load(Ordering::Acquire) {
                    match c.try_next(Duration::from_millis(100)) {
                        Ok(v) => {
                            if let Some(t) = v["data"]["t"].as_u64() {
                                let _ = h.record(now_ns().saturating_sub(t).max(1));
                            }
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e == TIMED_OUT => {}
                        Err(e) => panic!("subscriber: {e}"),
                    }
                }
                h
            })
        })
        .collect()
}

struct Latency {
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    count: u64,
}

fn latency_run(s: &Setup, rate: u64, secs: u64, subs: usize) -> Latency {
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let readers = subscribers(s.subscribe_to, "lat", subs, stop.clone(), received.clone());
    thread::sleep(Duration::from_millis(300));
    let mut api = Api::new(s.publish_to);
    let n = rate * secs;
    let start = Instant::now();
    for i in 0..n {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            thread::sleep(d);
        }
        api.publish("lat", json!({ "t": now_ns() }))
            .expect("publish");
    }
    let want = n * subs as u64;
    let end = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < want && Instant::now() < end {
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Release);
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for r in readers {
        h.add(r.join().unwrap()).unwrap();
    }
    assert_eq!(
        h.len(),
        want,
        "{}: every publication reached every subscriber",
        s.name
    );
    Latency {
        p50_us: h.value_at_quantile(0.50) as f64 / 1e3,
        p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
        max_us: h.max() as f64 / 1e3,
        count: h.len(),
    }
}

struct Throughput {
    publications_per_s: f64,
    deliveries_per_s: f64,
    gateway_us_per_delivery: f64,
    broker_us_per_publication: f64,
}

fn throughput_run(s: &Setup, secs: u64, subs: usize, batch: usize) -> Throughput {
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let readers = subscribers(s.subscribe_to, "tput", subs, stop.clone(), received.clone());
    thread::sleep(Duration::from_millis(300));
    let body = Value::Array(
        (0..batch)
            .map(|i| json!({ "channel": "tput", "data": { "i": i, "pad": "x".repeat(40) } }))
            .collect(),
    )
    .to_string();
    let ticks = |pids: &[u32]| pids.iter().map(|&p| cpu_ticks(p)).sum::<u64>();
    let g0 = ticks(&s.gateway_pids);
    let r0 = s.broker_pid.map_or(0, cpu_ticks);
    let rx0 = received.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut api = Api::new(s.publish_to);
    let mut published = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        let (status, _) = api
            .try_request("POST", "/api/publish", &body)
            .expect("publish batch");
        assert_eq!(status, 200);
        published += batch as u64;
    }
    // Let the subscribers drain what is in flight, within a bound.
    let want = rx0 + published * subs as u64;
    let end = Instant::now() + Duration::from_secs(20);
    while received.load(Ordering::Relaxed) < want && Instant::now() < end {
        thread::sleep(Duration::from_millis(10));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let delivered = received.load(Ordering::Relaxed) - rx0;
    let g1 = ticks(&s.gateway_pids);
    let r1 = s.broker_pid.map_or(0, cpu_ticks);
    stop.store(true, Ordering::Release);
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(
        delivered,
        published * subs as u64,
        "{}: nothing lost",
        s.name
    );
    Throughput {
        publications_per_s: published as f64 / elapsed,
        deliveries_per_s: delivered as f64 / elapsed,
        // Ticks are 1/100 s.
        gateway_us_per_delivery: (g1 - g0) as f64 * 10_000.0 / delivered.max(1) as f64,
        broker_us_per_publication: (r1 - r0) as f64 * 10_000.0 / published.max(1) as f64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Load average (1 min) now: how busy the shared box was.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[test]
#[ignore = "benchmark: run with scripts/bench_cluster.sh or scripts/bench_brokers.sh"]
fn publish_to_receive_latency_and_throughput() {
    pin_self(1);
    let rounds = env_or("ROUNDS", 3);
    let rate = env_or("RATE", 1000);
    let secs = env_or("SECS", 5);
    let lat_subs = env_or("LAT_SUBS", 20) as usize;
    let tput_subs = env_or("TPUT_SUBS", 4) as usize;
    let batch = env_or("BATCH", 50) as usize;
    type Make = fn() -> Setup;
    let setups: Vec<(&str, Make)> = std::env::var("SETUPS")
        .unwrap_or_else(|_| "memory,redis".into())
        .split(',')
        .map(|n| match n.trim() {
            "memory" => ("1 node, memory", memory_setup as Make),
            "redis" => ("2 nodes, redis", redis_setup as Make),
            "nats" => ("2 nodes, nats", nats_setup as Make),
            "nats-file" => ("2 nodes, nats file", nats_file_setup as Make),
            other => panic!("SETUPS: unknown setup {other:?} (memory, redis, nats, nats-file)"),
        })
        .collect();
    println!(
        "rounds {rounds}; latency: {rate} publications/s for {secs} s to {lat_subs} subscribers; \
         throughput: batches of {batch} for {secs} s to {tput_subs} subscribers; load average {}",
        loadavg()
    );
    let mut rows: Vec<(Vec<Latency>, Vec<Throughput>)> =
        setups.iter().map(|_| Default::default()).collect();
    for round in 0..rounds {
        for (k, (_, make)) in setups.iter().enumerate() {
            let s = make();
            let l = latency_run(&s, rate, secs, lat_subs);
            let t = throughput_run(&s, secs, tput_subs, batch);
            println!(
                "round {round} {:<19} latency p50 {:>7.0} µs p99 {:>7.0} µs max {:>7.0} µs ({} samples) | \
                 {:>7.0} pub/s {:>8.0} deliveries/s, gateway {:.2} µs CPU/delivery, broker {:.2} µs CPU/pub \
                 (load {})",
                s.name, l.p50_us, l.p99_us, l.max_us, l.count,
                t.publications_per_s, t.deliveries_per_s, t.gateway_us_per_delivery,
                t.broker_us_per_publication, loadavg()
            );
            rows[k].0.push(l);
            rows[k].1.push(t);
        }
    }
    println!(
        "\nmedians over {rounds} rounds (load average at the end {}):",
        loadavg()
    );
    println!("| setup | p50 µs | p99 µs | publications/s | deliveries/s | gateway µs CPU/delivery | broker µs CPU/publication |");
    println!("|---|---|---|---|---|---|---|");
    for ((name, _), (l, t)) in setups.iter().zip(&rows) {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {} |",
            median(l.iter().map(|x| x.p50_us).collect()),
            median(l.iter().map(|x| x.p99_us).collect()),
            median(t.iter().map(|x| x.publications_per_s).collect()),
            median(t.iter().map(|x| x.deliveries_per_s).collect()),
            median(t.iter().map(|x| x.gateway_us_per_delivery).collect()),
            if name.starts_with("1 node") {
                "-".to_string()
            } else {
                format!(
                    "{:.2}",
                    median(t.iter().map(|x| x.broker_us_per_publication).collect())
                )
            },
        );
    }
}
