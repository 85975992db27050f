//! Helpers for the gateway tests (`tests/gateway_*.rs`): an in-process
//! server built from a [`Config`], a tiny HTTP/1.1 client for the backend
//! API, and a tungstenite client that speaks the JSON ops and keeps
//! messages that arrive while it waits for a reply.
//!
//! Declare it with `#[path = "support/gateway.rs"] mod gateway_support;`.
//! Every wait has a deadline; nothing asserts on speed.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;
use wsgate::config::Config;
use wsgate::server::{Server, ServerConfig};

/// How long anything the server should do "soon" may take.
pub const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------- server --

/// Start an in-process gateway on an ephemeral port with 2 workers, after
/// `tweak` has adjusted the configuration.
pub fn start_gateway(tweak: impl FnOnce(&mut Config)) -> Server {
    let mut cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        ..Default::default()
    };
    tweak(&mut cfg);
    cfg.validate().expect("test configuration is valid");
    Server::start(ServerConfig::from_config(&cfg)).expect("server starts")
}

/// Stop the server and check that no worker panicked or failed.
pub fn stop_gateway(server: Server) {
    server
        .stop()
        .expect("workers end cleanly (a worker panicked or returned an error)");
}

/// Connections held by each worker (as its last loop iteration saw them).
pub fn worker_connections(server: &Server) -> Vec<u64> {
    server
        .shared()
        .workers
        .iter()
        .map(|w| w.connections.load(Ordering::Relaxed))
        .collect()
}

/// Open TCP connections until every worker holds at least one of them;
/// returns one connection per worker (the extras are closed). Nothing is
/// sent on them yet. Which worker took a connection is read from the
/// per-worker gauges, so no other connection may open or close meanwhile.
pub fn tcp_on_each_worker(server: &Server) -> Vec<TcpStream> {
    let n = server.shared().workers.len();
    let mut found: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    let mut extras = Vec::new();
    let mut tries = 0;
    while found.iter().any(Option::is_none) {
        tries += 1;
        assert!(
            tries <= 64,
            "64 connections did not reach every worker: {:?}",
            worker_connections(server)
        );
        let before = worker_connections(server);
        let sock = TcpStream::connect(server.local_addr()).expect("connect");
        let mut grown = None;
        wait_until(WAIT, "a worker to count the new connection", || {
            let now = worker_connections(server);
            grown = (0..n).find(|&i| now[i] > before[i]);
            grown.is_some()
        });
        let w = grown.expect("found above");
        if found[w].is_none() {
            found[w] = Some(sock);
        } else {
            extras.push(sock);
        }
    }
    drop(extras);
    found
        .into_iter()
        .map(|s| s.expect("every worker"))
        .collect()
}

/// Poll `cond` every 10 ms until it holds; panic with `what` after `within`.
pub fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < end, "timed out after {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ------------------------------------------------------------------ HTTP --

/// A whole HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The `error.code` of an API error body.
    pub fn error_code(&self) -> u64 {
        let v = self.json();
        v["error"]["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no error.code in {v}"))
    }
}

/// Parse one complete response from the front of `buf`: the response and
/// the bytes it used, or `None` if more bytes are needed. Without a
/// Content-Length the body runs to EOF (`eof` tells whether it was seen).
pub fn parse_response(buf: &[u8], eof: bool) -> Option<(HttpResponse, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return None,
        Err(e) => panic!(
            "invalid HTTP response ({e}): {:?}",
            String::from_utf8_lossy(buf)
        ),
    };
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    let status = resp.code.expect("status code");
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse::<usize>().expect("numeric Content-Length"));
    let end = match len {
        Some(n) if buf.len() >= head_len + n => head_len + n,
        Some(_) => return None,
        None if eof => buf.len(),
        None => return None,
    };
    let body = buf[head_len..end].to_vec();
    Some((
        HttpResponse {
            status,
            headers,
            body,
        },
        end,
    ))
}

/// Write a request (`Content-Length` always, plus `extra` header lines).
pub fn write_request(
    sock: &mut TcpStream,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) {
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: wsgate.test\r\nContent-Length: {}\r\n",
        body.len()
    );
    if close {
        req.push_str("Connection: close\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    sock.write_all(&bytes).expect("send request");
}

/// Read one response from a kept-alive connection (`buf` keeps what comes
/// after it).
pub fn read_response(sock: &mut TcpStream, buf: &mut Vec<u8>) -> HttpResponse {
    read_response_for(sock, buf, "a request")
}

/// [`read_response`], naming the request (`what`) if it fails.
pub fn read_response_for(sock: &mut TcpStream, buf: &mut Vec<u8>, what: &str) -> HttpResponse {
    let deadline = Instant::now() + WAIT;
    let mut chunk = [0u8; 16 * 1024];
    let mut eof = false;
    loop {
        if let Some((r, used)) = parse_response(buf, eof) {
            buf.drain(..used);
            return r;
        }
        assert!(
            !eof,
            "{what}: connection closed before a whole response: {:?}",
            String::from_utf8_lossy(buf)
        );
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{what}: no whole response within {WAIT:?}");
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.read(&mut chunk) {
            Ok(0) => eof = true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "{what}: no whole response within {WAIT:?} (got {:?})",
                    String::from_utf8_lossy(buf)
                )
            }
            Err(e) => panic!(
                "{what}: reading the response: {e} (got {:?})",
                String::from_utf8_lossy(buf)
            ),
        }
    }
}

/// One request on a fresh connection with `Connection: close`; the answer
/// is read to EOF.
pub fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut sock = TcpStream::connect(addr).expect("connect");
    sock.set_write_timeout(Some(WAIT)).unwrap();
    write_request(&mut sock, method, target, headers, body, true);
    let deadline = Instant::now() + WAIT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{method} {target}: connection not closed within {WAIT:?}"
        );
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A reset after a whole response (e.g. an unread body) is fine.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && !buf.is_empty() => break,
            Err(e) => panic!("{method} {target}: {e}"),
        }
    }
    let (r, used) = parse_response(&buf, true).unwrap_or_else(|| {
        panic!(
            "{method} {target}: incomplete response {:?}",
            String::from_utf8_lossy(&buf)
        )
    });
    assert_eq!(
        used,
        buf.len(),
        "{method} {target}: bytes after the response: {:?}",
        String::from_utf8_lossy(&buf)
    );
    r
}

pub fn http_get(addr: SocketAddr, target: &str) -> HttpResponse {
    http(addr, "GET", target, &[], b"")
}

pub fn http_post_json(addr: SocketAddr, target: &str, body: &Value) -> HttpResponse {
    http(
        addr,
        "POST",
        target,
        &[("Content-Type", "application/json")],
        &serde_json::to_vec(body).unwrap(),
    )
}

/// `POST /api/publish` to a channel; returns `{"epoch","offset"}`.
pub fn api_publish(addr: SocketAddr, channel: &str, data: Value) -> Value {
    let r = http_post_json(
        addr,
        "/api/publish",
        &json!({ "channel": channel, "data": data }),
    );
    assert_eq!(r.status, 200, "publish to {channel}: {}", r.text());
    r.json()
}

/// `POST /api/publish` to a user's personal channel.
pub fn api_publish_user(addr: SocketAddr, user: &str, data: Value) -> Value {
    let r = http_post_json(addr, "/api/publish", &json!({ "user": user, "data": data }));
    assert_eq!(r.status, 200, "publish to user {user}: {}", r.text());
    r.json()
}

/// A batch `POST /api/publish` (a JSON array); returns the array of results.
pub fn api_batch(addr: SocketAddr, items: &[Value]) -> Vec<Value> {
    let r = http_post_json(addr, "/api/publish", &Value::Array(items.to_vec()));
    assert_eq!(r.status, 200, "batch publish: {}", r.text());
    match r.json() {
        Value::Array(a) => {
            assert_eq!(a.len(), items.len(), "one result per item");
            a
        }
        other => panic!("batch answer is not an array: {other}"),
    }
}

/// `GET /api/presence?channel=…` (200 expected).
pub fn api_presence(addr: SocketAddr, channel: &str) -> Value {
    let r = http_get(
        addr,
        &format!("/api/presence?channel={}", url_encode(channel)),
    );
    assert_eq!(r.status, 200, "presence of {channel}: {}", r.text());
    r.json()
}

/// Percent-encode a query value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ------------------------------------------------------------------ auth --

/// An HS256 token signed with `secret`, expiring `ttl_s` from now.
pub fn hs256_token(
    secret: &str,
    sub: &str,
    ttl_s: u64,
    subscribe: &[&str],
    publish: &[&str],
) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + ttl_s;
    let claims = json!({ "sub": sub, "exp": exp, "subscribe": subscribe, "publish": publish });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("a token")
}

// -------------------------------------------------------------- WebSocket --

pub type Ws = tungstenite::WebSocket<TcpStream>;

/// How a wait for a message ended without one.
#[derive(Debug)]
pub enum NoMessage {
    Timeout,
    /// The server sent a close frame (code) or the connection ended.
    Closed(Option<u16>),
}

/// A gateway client over tungstenite: JSON ops out, JSON messages in.
/// Messages that arrive while [`Client::call`] waits for its reply are kept
/// and returned by [`Client::next`] in arrival order.
pub struct Client {
    pub ws: Ws,
    backlog: VecDeque<Value>,
    next_id: u64,
}

impl Client {
    /// Connect to `path` (e.g. `/ws`, `/ws?user=alice`).
    pub fn connect(addr: SocketAddr, path: &str) -> Client {
        let req = format!("ws://{addr}{path}")
            .into_client_request()
            .expect("valid URL");
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(WAIT)).unwrap();
        sock.set_write_timeout(Some(WAIT)).unwrap();
        sock.set_nodelay(true).unwrap();
        let (ws, resp) = match tungstenite::client::client(req, sock) {
            Ok(x) => x,
            Err(e) => panic!("WebSocket handshake on {path} failed: {e}"),
        };
        assert_eq!(resp.status().as_u16(), 101);
        Client {
            ws,
            backlog: VecDeque::new(),
            next_id: 1000,
        }
    }

    /// Connect to `path` with extra request headers.
    pub fn connect_with_headers(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Client {
        let mut req = format!("ws://{addr}{path}")
            .into_client_request()
            .expect("valid URL");
        for (k, v) in headers {
            let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes()).expect("name");
            req.headers_mut()
                .insert(name, v.parse().expect("header value"));
        }
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(WAIT)).unwrap();
        sock.set_write_timeout(Some(WAIT)).unwrap();
        sock.set_nodelay(true).unwrap();
        let (ws, resp) = tungstenite::client::client(req, sock)
            .unwrap_or_else(|e| panic!("WebSocket handshake on {path} failed: {e}"));
        assert_eq!(resp.status().as_u16(), 101);
        Client {
            ws,
            backlog: VecDeque::new(),
            next_id: 1000,
        }
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_string()))
            .expect("send text");
    }

    pub fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string());
    }

    /// Read the next JSON message from the socket (not the backlog).
    fn read_socket(&mut self, within: Duration) -> Result<Value, NoMessage> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NoMessage::Timeout);
            }
            self.ws.get_mut().set_read_timeout(Some(left)).unwrap();
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    return Ok(serde_json::from_str(&t)
                        .unwrap_or_else(|e| panic!("server sent non-JSON text ({e}): {t:?}")))
                }
                Ok(Message::Close(c)) => {
                    return Err(NoMessage::Closed(c.map(|c| u16::from(c.code))))
                }
                Ok(Message::Binary(b)) => panic!("server sent a binary message: {b:?}"),
                Ok(_) => {} // ping/pong: tungstenite answers pings itself
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(NoMessage::Timeout)
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Err(NoMessage::Closed(None))
                }
                Err(e) => panic!("WebSocket read error: {e}"),
            }
        }
    }

    /// The next message (backlog first) within `within`.
    pub fn try_next(&mut self, within: Duration) -> Result<Value, NoMessage> {
        if let Some(v) = self.backlog.pop_front() {
            return Ok(v);
        }
        self.read_socket(within)
    }

    /// The next message; panics if none comes within [`WAIT`].
    pub fn next(&mut self) -> Value {
        match self.try_next(WAIT) {
            Ok(v) => v,
            Err(e) => panic!("no message from the server within {WAIT:?}: {e:?}"),
        }
    }

    /// A fresh request id.
    pub fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Wait for the message whose `id` is `id`; others go to the backlog.
    pub fn reply_to(&mut self, id: &Value) -> Value {
        if let Some(i) = self.backlog.iter().position(|m| m.get("id") == Some(id)) {
            return self.backlog.remove(i).expect("present");
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_socket(left) {
                Ok(m) if m.get("id") == Some(id) => return m,
                Ok(m) => self.backlog.push_back(m),
                Err(e) => panic!("no reply with id {id} within {WAIT:?}: {e:?}"),
            }
        }
    }

    /// Send `op` with a fresh id (unless it has one) and wait for its reply.
    pub fn call(&mut self, mut op: Value) -> Value {
        if op.get("id").is_none() {
            let id = self.fresh_id();
            op["id"] = json!(id);
        }
        let id = op["id"].clone();
        self.send_json(&op);
        self.reply_to(&id)
    }

    /// Subscribe; panics unless the reply is ok. Returns the reply.
    pub fn subscribe(&mut self, channel: &str) -> Value {
        let r = self.call(json!({ "op": "subscribe", "channel": channel }));
        assert_eq!(r["ok"], json!(true), "subscribe to {channel}: {r}");
        r
    }

    /// Subscribe with a recovery position; returns the reply (checked ok).
    pub fn subscribe_since(&mut self, channel: &str, epoch: &str, offset: u64) -> Value {
        let r = self.call(json!({
            "op": "subscribe",
            "channel": channel,
            "since": { "epoch": epoch, "offset": offset },
        }));
        assert_eq!(r["ok"], json!(true), "subscribe to {channel} since: {r}");
        r
    }

    /// A ping op answers `{"id":…,"ok":true,"pong":true}`.
    pub fn assert_alive(&mut self) {
        let id = self.fresh_id();
        let r = self.call(json!({ "id": id, "op": "ping" }));
        assert_eq!(r, json!({ "id": id, "ok": true, "pong": true }));
    }

    /// Nothing is waiting for this client: a ping op's reply is the very
    /// next message (anything the server sent before it would come first).
    pub fn assert_nothing_pending(&mut self) {
        assert!(
            self.backlog.is_empty(),
            "messages were pending: {:?}",
            self.backlog
        );
        let id = self.fresh_id();
        self.send_json(&json!({ "id": id, "op": "ping" }));
        let m = self.next();
        assert_eq!(
            m,
            json!({ "id": id, "ok": true, "pong": true }),
            "expected nothing before the pong"
        );
    }

    /// Wait for a reply without an id (from subscriptions made at connect)
    /// for `channel`.
    pub fn connect_reply(&mut self, channel: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        if let Some(i) = self
            .backlog
            .iter()
            .position(|m| m.get("id").is_none() && m["channel"] == channel && m.get("ok").is_some())
        {
            return self.backlog.remove(i).expect("present");
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_socket(left) {
                Ok(m)
                    if m.get("id").is_none()
                        && m["channel"] == channel
                        && m.get("ok").is_some() =>
                {
                    return m
                }
                Ok(m) => self.backlog.push_back(m),
                Err(e) => panic!("no subscribe reply for {channel} within {WAIT:?}: {e:?}"),
            }
        }
    }

    /// The next message, which must be a publication on `channel`: returns
    /// (offset, data).
    pub fn next_publication(&mut self, channel: &str) -> (u64, Value) {
        let m = self.next();
        assert_eq!(m["channel"], channel, "expected a publication: {m}");
        let off = m["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("expected a publication with an offset: {m}"));
        (off, m["data"].clone())
    }

    /// Close the WebSocket cleanly (best effort) and drop the socket.
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            match self.ws.read() {
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}
