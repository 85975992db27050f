//! Helpers for the Redis tests: a throwaway `redis-server` on a free port,
//! gateway nodes (in-process, or the `wsgate` binary when a test must
//! SIGKILL one), a WebSocket client that speaks the gateway's JSON, and a
//! keep-alive HTTP client for the backend API.
//!
//! `redis-server` must be on PATH (`.ci/run` installs it): without it the
//! tests fail with a message, never pass silently.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;
use wsgate::config::{BrokerKind, Config};
use wsgate::server::{Server, ServerConfig};

pub const TIMEOUT: Duration = Duration::from_secs(15);
/// What [`Client::try_next`] says when nothing came in time.
pub const TIMED_OUT: &str = "timed out";

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < end, "timed out after {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------------ redis --

/// A `redis-server` of our own (no persistence), killed when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): the Redis tests need it on PATH \
                     (apt-get install redis-server; .ci/run installs it)"
                )
            });
        self.child = Some(child);
        let port = self.port;
        wait_for(TIMEOUT, "redis-server answers PING", || ping(port));
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL: every connection drops, and (no persistence) all data is lost.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: connections stay open, nothing is answered (a stalled
    /// Redis) until [`RedisServer::resume`].
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().expect("redis-server running").id();
        // SAFETY: kill(2) on the pid of our own child, which we have not
        // waited for (so the pid is still ours).
        let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
        assert_eq!(
            r,
            0,
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// Start again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A connection for the test's own commands.
    pub fn con(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .expect("connect to the test redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

// ------------------------------------------------------------------ nodes --

/// The configuration of a node using `redis_url`, with short presence and
/// reconnection timings so that tests run fast.
pub fn node_config(redis_url: &str) -> Config {
    let mut cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        ..Config::default()
    };
    cfg.broker.kind = BrokerKind::Redis;
    cfg.broker.redis_url = redis_url.into();
    cfg.broker.presence_ttl = wsgate::config::Millis(2_000);
    cfg.broker.presence_refresh = wsgate::config::Millis(500);
    cfg.broker.reconnect_min = wsgate::config::Millis(50);
    cfg.broker.reconnect_max = wsgate::config::Millis(500);
    cfg.broker.command_timeout = wsgate::config::Millis(1_000);
    cfg
}

/// An in-process node.
pub fn node(redis_url: &str, tweak: impl FnOnce(&mut Config)) -> Server {
    let mut cfg = node_config(redis_url);
    tweak(&mut cfg);
    cfg.validate().expect("valid test config");
    Server::start(ServerConfig::from_config(&cfg)).expect("node starts")
}

/// The `wsgate` binary as a node (so that a test can SIGKILL it).
pub struct Process {
    pub addr: SocketAddr,
    child: Child,
    _config: TempFile,
}

impl Process {
    pub fn start(cfg: &Config) -> Process {
        let port = free_port();
        let mut cfg = cfg.clone();
        cfg.listen = SocketAddr::from(([127, 0, 0, 1], port));
        let file = TempFile::new("toml", cfg.to_toml().as_bytes());
        let child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .arg("-c")
            .arg(&file.0)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the wsgate binary");
        let addr = cfg.listen;
        wait_for(TIMEOUT, "the wsgate binary answers /healthz", || {
            matches!(Api::new(addr).try_get("/healthz"), Ok((200, _)))
        });
        Process {
            addr,
            child,
            _config: file,
        }
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.sigkill();
    }
}

pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(ext: &str, content: &[u8]) -> TempFile {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "wsgate-test-{}-{}.{ext}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&p, content).expect("write temp file");
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// -------------------------------------------------------------------- API --

/// A keep-alive HTTP client for the backend API (reconnects when needed).
pub struct Api {
    addr: SocketAddr,
    con: Option<BufReader<TcpStream>>,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Api {
        Api { addr, con: None }
    }

    pub fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> io::Result<(u16, Value)> {
        if self.con.is_none() {
            let s = TcpStream::connect(self.addr)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.set_nodelay(true)?;
            self.con = Some(BufReader::new(s));
        }
        let r = self.exchange(method, path, body);
        if r.is_err() {
            self.con = None;
        }
        r
    }

    fn exchange(&mut self, method: &str, path: &str, body: &str) -> io::Result<(u16, Value)> {
        let con = self.con.as_mut().expect("connected");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        con.get_mut().write_all(req.as_bytes())?;
        let mut line = String::new();
        if con.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
        let mut len = 0usize;
        let mut close = false;
        loop {
            line.clear();
            if con.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("connection") && v.trim() == "close" {
                    close = true;
                }
            }
        }
        let mut body = vec![0u8; len];
        con.read_exact(&mut body)?;
        if close {
            self.con = None;
        }
        let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok((status, v))
    }

    pub fn try_get(&mut self, path: &str) -> io::Result<(u16, Value)> {
        self.try_request("GET", path, "")
    }

    pub fn get(&mut self, path: &str) -> (u16, Value) {
        self.try_get(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Publish; `Ok((epoch, offset))` or `Err(status)`.
    pub fn publish(&mut self, channel: &str, data: Value) -> Result<(String, u64), u16> {
        let body = json!({ "channel": channel, "data": data }).to_string();
        match self.try_request("POST", "/api/publish", &body) {
            Ok((200, v)) => Ok((
                v["epoch"].as_str().expect("epoch").to_owned(),
                v["offset"].as_u64().expect("offset"),
            )),
            Ok((status, _)) => Err(status),
            Err(_) => Err(0),
        }
    }

    pub fn metrics(&mut self) -> String {
        let con = TcpStream::connect(self.addr).expect("connect");
        let mut con = BufReader::new(con);
        con.get_mut()
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut s = String::new();
        let _ = con.read_to_string(&mut s);
        s
    }
}

// ------------------------------------------------------------------ client --

/// What a gateway client received, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A publication: offset and data.
    Pub(u64, Value),
    /// A subscribe answer: epoch, offset, recovered.
    Subscribed(String, u64, Option<bool>),
    /// A resync event: epoch, offset.
    Resync(String, u64),
    Other(Value),
}

/// A `/ws` client.
pub struct Client {
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
}

impl Client {
    pub fn try_connect(addr: SocketAddr, query: &str) -> Result<Client, String> {
        let req = format!("ws://{addr}/ws{query}")
            .into_client_request()
            .unwrap();
        let sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        sock.set_nodelay(true).unwrap();
        let (ws, _) = tungstenite::client::client(req, sock).map_err(|e| format!("{e:?}"))?;
        Ok(Client { ws, next_id: 1 })
    }

    pub fn connect(addr: SocketAddr, query: &str) -> Client {
        Client::try_connect(addr, query).expect("websocket handshake")
    }

    pub fn send(&mut self, mut op: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        op["id"] = json!(id);
        self.ws
            .send(Message::text(op.to_string()))
            .expect("send op");
        id
    }

    /// The next JSON message, or an error if the connection ended (or
    /// nothing came within `within`).
    pub fn try_next(&mut self, within: Duration) -> Result<Value, String> {
        self.ws
            .get_ref()
            .set_read_timeout(Some(within))
            .map_err(|e| e.to_string())?;
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    return serde_json::from_str(t.as_str()).map_err(|e| e.to_string())
                }
                Ok(Message::Close(c)) => return Err(format!("closed: {c:?}")),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(TIMED_OUT.into())
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    pub fn next(&mut self) -> Value {
        self.try_next(TIMEOUT).expect("a message from the gateway")
    }

    pub fn try_next_event(&mut self, within: Duration) -> Result<Event, String> {
        self.try_next(within).map(classify)
    }

    /// Subscribe and return the answer; messages before it are returned too.
    pub fn subscribe(&mut self, channel: &str, since: Option<(&str, u64)>) -> (Value, Vec<Event>) {
        let mut op = json!({ "op": "subscribe", "channel": channel });
        if let Some((epoch, offset)) = since {
            op["since"] = json!({ "epoch": epoch, "offset": offset });
        }
        let id = self.send(op);
        let mut before = Vec::new();
        loop {
            let v = self.next();
            if v["id"] == json!(id) {
                assert_eq!(v["ok"], json!(true), "subscribe failed: {v}");
                return (v, before);
            }
            before.push(classify(v));
        }
    }

    /// Read events until `done` says so (panics after `within`).
    pub fn collect_until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&[Event]) -> bool,
    ) -> Vec<Event> {
        let end = Instant::now() + within;
        let mut got = Vec::new();
        while !done(&got) {
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out; got {} events: {:?}",
                got.len(),
                tail(&got)
            );
            match self.try_next_event(left) {
                Ok(e) => got.push(e),
                Err(e) => panic!(
                    "read failed ({e}); got {} events: {:?}",
                    got.len(),
                    tail(&got)
                ),
            }
        }
        got
    }
}

pub fn tail(events: &[Event]) -> &[Event] {
    &events[events.len().saturating_sub(5)..]
}

pub fn classify(v: Value) -> Event {
    if let Some(off) = v["offset"].as_u64().filter(|_| v.get("data").is_some()) {
        return Event::Pub(off, v["data"].clone());
    }
    if v["ok"] == json!(true) && v.get("epoch").is_some() && v.get("channel").is_some() {
        return Event::Subscribed(
            v["epoch"].as_str().unwrap_or_default().to_owned(),
            v["offset"].as_u64().unwrap_or(0),
            v["recovered"].as_bool(),
        );
    }
    if let Some(r) = v.get("resync") {
        return Event::Resync(
            r["epoch"].as_str().unwrap_or_default().to_owned(),
            r["offset"].as_u64().unwrap_or(0),
        );
    }
    Event::Other(v)
}

/// The publication offsets in `events`.
pub fn offsets(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Pub(o, _) => Some(*o),
            _ => None,
        })
        .collect()
}
