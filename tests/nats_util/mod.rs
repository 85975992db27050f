//! Helpers for the NATS tests: throwaway `nats-server` processes with
//! JetStream (one, or a cluster of three), each on free ports with its own
//! store directory, killed (and the directory removed) when dropped; gateway
//! nodes using them; a raw JetStream request for the tests' own checks.
//!
//! The gateway clients (WebSocket, API) are the Redis tests' ones
//! (tests/redis_util), re-exported here: nothing in them is Redis-specific.
//!
//! `nats-server` must be installed (`.ci/run` installs Debian's): without it
//! the tests fail with a message, never pass silently.

#![allow(dead_code)] // each test binary uses a different subset

#[path = "../redis_util/mod.rs"]
mod gateway_clients;

pub use gateway_clients::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use wsgate::config::{BrokerKind, Config, NatsStorage};
use wsgate::server::{Server, ServerConfig};

fn binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/nats-server").exists() {
        "/usr/sbin/nats-server"
    } else {
        "nats-server"
    }
}

/// A `nats-server -js` of our own, killed when dropped.
pub struct NatsServer {
    pub port: u16,
    /// The HTTP monitoring port (`-m`).
    pub monitor: u16,
    pub name: String,
    /// `--cluster` and `--routes`, for a member of a cluster.
    cluster: Option<(u16, Vec<u16>)>,
    dir: PathBuf,
    /// A configuration file (`-c`), for what flags cannot say.
    config: Option<TempFile>,
    /// `user:password@` for the URL, if the configuration asks for it.
    credentials: String,
    child: Option<Child>,
}

impl NatsServer {
    /// One server, its store in a fresh directory.
    pub fn start() -> NatsServer {
        let mut s = NatsServer::new("n1", None);
        s.spawn();
        s.wait_jetstream();
        s
    }

    /// One server with `config` (nats-server configuration text) besides
    /// the usual flags; `user:password@` goes into its URL.
    pub fn start_with_config(config: &str, credentials: &str) -> NatsServer {
        let mut s = NatsServer::new("n1", None);
        s.config = Some(TempFile::new("conf", config.as_bytes()));
        s.credentials = credentials.to_owned();
        s.spawn();
        s
    }

    /// Three servers routed to each other (one cluster), each with
    /// JetStream; returns once JetStream answers on every one.
    pub fn cluster3() -> Vec<NatsServer> {
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut all: Vec<NatsServer> = (0..3)
            .map(|i| NatsServer::new(&format!("s{}", i + 1), Some((routes[i], routes.clone()))))
            .collect();
        for s in &mut all {
            s.spawn();
        }
        for s in &all {
            s.wait_jetstream();
        }
        all
    }

    fn new(name: &str, cluster: Option<(u16, Vec<u16>)>) -> NatsServer {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("wsgate-nats-{}-{port}-{name}", std::process::id()));
        NatsServer {
            port,
            monitor: free_port(),
            name: name.into(),
            cluster,
            dir,
            config: None,
            credentials: String::new(),
            child: None,
        }
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(binary());
        if let Some(c) = &self.config {
            cmd.arg("-c").arg(&c.0);
        }
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor.to_string()])
            .args(["-n", &self.name, "-sd"])
            .arg(&self.dir);
        if let Some((port, routes)) = &self.cluster {
            let routes: Vec<String> = routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            cmd.args(["--cluster_name", "wsgate-test"])
                .args(["--cluster", &format!("nats://127.0.0.1:{port}")])
                .args(["--routes", &routes.join(",")]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start nats-server ({e}): the NATS tests need it \
                     (apt-get install nats-server; .ci/run installs it)"
                )
            });
        self.child = Some(child);
        let port = self.port;
        wait_for(TIMEOUT, "nats-server greets", || ping(port));
    }

    /// Wait until JetStream answers on this server (in a cluster: once a
    /// meta leader is elected).
    pub fn wait_jetstream(&self) {
        wait_for(
            Duration::from_secs(30),
            &format!("jetstream answers on {}", self.name),
            || js_request(self.port, "$JS.API.INFO", "").is_ok_and(|v| v.get("error").is_none()),
        );
    }

    pub fn url(&self) -> String {
        format!("nats://{}127.0.0.1:{}", self.credentials, self.port)
    }

    /// SIGKILL: every connection drops; the store stays on disk.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same ports with the same store (what a file
    /// store kept comes back).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// How many client subscriptions the server holds on `subject` (its
    /// monitoring endpoint's `/subsz`).
    pub fn subscriptions_on(&self, subject: &str) -> usize {
        let mut s = TcpStream::connect(("127.0.0.1", self.monitor)).expect("monitoring port");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let req =
            format!("GET /subsz?subs=1&limit=100000&test={subject} HTTP/1.0\r\nHost: test\r\n\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        let json = body.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v: Value = serde_json::from_str(json).expect("subsz JSON");
        v["subscriptions_list"]
            .as_array()
            .map_or(0, |l| l.iter().filter(|e| e["subject"] == subject).count())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server greets a new connection with its INFO (before any
/// authentication).
fn ping(port: u16) -> bool {
    let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("INFO")
}

/// A request to the JetStream API of the server on `port` (the NATS
/// protocol by hand: one connection, one request, its JSON answer).
pub fn js_request(port: u16, subject: &str, body: &str) -> Result<Value, String> {
    let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let req = format!(
        "CONNECT {{\"verbose\":false,\"headers\":true,\"no_responders\":true}}\r\n\
         SUB _INBOX.wsgate-test 1\r\nPUB {subject} _INBOX.wsgate-test {}\r\n{body}\r\n",
        body.len()
    );
    r.get_mut()
        .write_all(req.as_bytes())
        .map_err(|e| e.to_string())?;
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("connection closed".into());
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("PING") => {
                r.get_mut()
                    .write_all(b"PONG\r\n")
                    .map_err(|e| e.to_string())?;
            }
            Some("MSG") => {
                let n: usize = words.last().and_then(|n| n.parse().ok()).unwrap_or(0);
                let mut buf = vec![0u8; n + 2];
                r.read_exact(&mut buf).map_err(|e| e.to_string())?;
                return serde_json::from_slice(&buf[..n]).map_err(|e| e.to_string());
            }
            // A status message: "no responders" (503) while JetStream is
            // not ready.
            Some("HMSG") => return Err(format!("status: {line}")),
            Some("-ERR") => return Err(line.trim().to_owned()),
            _ => {}
        }
    }
}

/// The names of the streams capturing `subject` (the gateway's stream of a
/// channel `ch` captures `wsgate.h.TOKEN`, see src/broker/nats/names.rs).
pub fn streams_for(port: u16, subject: &str) -> Vec<String> {
    let body = serde_json::json!({ "subject": subject }).to_string();
    let v = js_request(port, "$JS.API.STREAM.NAMES", &body).expect("stream names");
    v["streams"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The configuration of a node on `urls`, with short presence and
/// reconnection timings so that tests run fast.
pub fn nats_config(urls: &[String]) -> Config {
    let mut cfg = node_config("");
    cfg.broker.kind = BrokerKind::Nats;
    cfg.broker.nats_urls = urls.to_vec();
    cfg.broker.nats_storage = NatsStorage::File;
    cfg
}

/// An in-process node on `urls`.
pub fn nats_node(urls: &[String], tweak: impl FnOnce(&mut Config)) -> Server {
    let mut cfg = nats_config(urls);
    tweak(&mut cfg);
    cfg.validate().expect("valid test config");
    Server::start(ServerConfig::from_config(&cfg)).expect("node starts")
}

/// Send `op` and return its reply (what comes before it is skipped).
pub fn call(c: &mut Client, op: Value, who: &str) -> Value {
    let id = c.send(op);
    loop {
        let v = c
            .try_next(TIMEOUT)
            .unwrap_or_else(|e| panic!("{who} is no longer served: {e}"));
        if v["id"] == serde_json::json!(id) {
            return v;
        }
    }
}

/// A `/ws` client that checks it is still served: a `ping` op answered.
pub fn assert_served(c: &mut Client, who: &str) {
    let v = call(c, serde_json::json!({ "op": "ping" }), who);
    assert_eq!(v["pong"], serde_json::json!(true), "{who}: {v}");
}

// ---------------------------------------------------------------- traffic --

/// Where a subscriber stands after each event (epoch, offset); `Err` names
/// the first silent gap: within an epoch offsets follow one by one from the
/// subscribe answer, and only a `resync` event (or a subscribe answer) may
/// move the position otherwise.
pub fn final_position(events: &[Event]) -> Result<(String, u64), String> {
    let mut pos: Option<(String, u64)> = None;
    for (i, e) in events.iter().enumerate() {
        match (e, pos.as_mut()) {
            (Event::Subscribed(ep, o, _) | Event::Resync(ep, o), _) => pos = Some((ep.clone(), *o)),
            (Event::Pub(o, _), Some(p)) if *o == p.1 + 1 => p.1 = *o,
            (Event::Pub(..), _) => {
                return Err(format!(
                    "silent gap at event {i}: {:?}",
                    &events[i.saturating_sub(3)..=i]
                ))
            }
            (Event::Other(_), _) => {}
        }
    }
    pos.ok_or_else(|| "never subscribed".into())
}

/// A publisher through one node's API, every few milliseconds, until
/// stopped: what was accepted (in order) and how failures went.
pub struct Publisher {
    pub accepted: std::sync::Arc<std::sync::Mutex<Vec<(String, u64)>>>,
    pub failed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub slowest_failure: std::sync::Arc<std::sync::Mutex<Duration>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Publisher {
    pub fn start(addr: std::net::SocketAddr, channel: &str) -> Publisher {
        use std::sync::atomic::Ordering;
        let p = Publisher {
            accepted: Default::default(),
            failed: Default::default(),
            slowest_failure: Default::default(),
            stop: Default::default(),
            thread: None,
        };
        let (accepted, failed, slowest, stop) = (
            p.accepted.clone(),
            p.failed.clone(),
            p.slowest_failure.clone(),
            p.stop.clone(),
        );
        let channel = channel.to_owned();
        let thread = std::thread::spawn(move || {
            let mut api = Api::new(addr);
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let t = std::time::Instant::now();
                match api.publish(&channel, serde_json::json!({ "n": n })) {
                    Ok(pos) => accepted.lock().unwrap().push(pos),
                    Err(status) => {
                        // 503: not published; 504: sent, not acknowledged
                        // (it may have been stored: the history tells).
                        assert!(
                            status == 503 || status == 504,
                            "a failed publish is 503 or 504, not {status}"
                        );
                        failed.fetch_add(1, Ordering::Relaxed);
                        let mut s = slowest.lock().unwrap();
                        *s = (*s).max(t.elapsed());
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Publisher {
            thread: Some(thread),
            ..p
        }
    }

    pub fn accepted_count(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    pub fn failures(&self) -> u64 {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stop, and return what was accepted.
    pub fn stop(mut self) -> Vec<(String, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.join().expect("publisher thread");
        }
        self.accepted.lock().unwrap().clone()
    }
}

/// A subscriber reading on its own thread until told where the traffic
/// ended (then until it got there, or TIMEOUT); returns what it received.
pub struct Reader {
    last: std::sync::Arc<std::sync::Mutex<Option<(String, u64)>>>,
    thread: std::thread::JoinHandle<Vec<Event>>,
}

impl Reader {
    pub fn start(addr: std::net::SocketAddr, channel: &str, who: String) -> Reader {
        let mut c = Client::connect(addr, "");
        let (v, _) = c.subscribe(channel, None);
        let last: std::sync::Arc<std::sync::Mutex<Option<(String, u64)>>> = Default::default();
        let end = last.clone();
        let thread = std::thread::spawn(move || {
            let mut events = vec![classify(v)];
            let mut deadline = None;
            loop {
                if let Some(last) = end.lock().unwrap().clone() {
                    let d = *deadline.get_or_insert_with(|| std::time::Instant::now() + TIMEOUT);
                    if final_position(&events).ok() == Some(last) || std::time::Instant::now() > d {
                        return events;
                    }
                }
                match c.try_next_event(Duration::from_millis(200)) {
                    Ok(e) => events.push(e),
                    Err(e) if e == TIMED_OUT => {}
                    Err(e) => panic!("{who} lost its connection: {e}"),
                }
            }
        });
        Reader { last, thread }
    }

    /// The traffic ended at `last`: read until there, return the events.
    pub fn finish(self, last: &(String, u64)) -> Vec<Event> {
        *self.last.lock().unwrap() = Some(last.clone());
        self.thread.join().expect("reader thread")
    }
}

/// Every reader got every accepted publication, in order, in the one epoch
/// the publisher saw, and no `resync` (nothing was lost); returns the last
/// accepted position.
pub fn assert_nothing_lost(readers: Vec<Reader>, accepted: &[(String, u64)]) -> (String, u64) {
    let last = accepted.last().expect("something was accepted").clone();
    assert!(
        accepted.iter().all(|(e, _)| *e == last.0),
        "the stream survived: one epoch throughout"
    );
    for (i, r) in readers.into_iter().enumerate() {
        let ev = r.finish(&last);
        let end = final_position(&ev).unwrap_or_else(|e| panic!("subscriber {i}: {e}"));
        assert_eq!(
            end, last,
            "subscriber {i} ends at the last accepted publication"
        );
        assert!(
            !ev.iter().any(|e| matches!(e, Event::Resync(..))),
            "subscriber {i}: nothing was lost, so nothing to announce"
        );
        let got: std::collections::HashSet<u64> = offsets(&ev).into_iter().collect();
        let missing: Vec<u64> = accepted
            .iter()
            .map(|p| p.1)
            .filter(|o| !got.contains(o))
            .collect();
        assert!(missing.is_empty(), "subscriber {i} missed {missing:?}");
    }
    last
}

/// Traffic on `channel`: two subscribers on each node, each reading on its
/// own thread, and a publisher through `publish_to`'s API; returns once
/// 200 publications were accepted.
pub fn start_traffic(
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
    publish_to: std::net::SocketAddr,
    channel: &str,
) -> (Vec<Reader>, Publisher) {
    let readers = [a, b, a, b]
        .into_iter()
        .enumerate()
        .map(|(i, addr)| Reader::start(addr, channel, format!("subscriber {i}")))
        .collect();
    let publisher = Publisher::start(publish_to, channel);
    wait_for(TIMEOUT, "traffic before the fault", || {
        publisher.accepted_count() >= 200
    });
    (readers, publisher)
}
