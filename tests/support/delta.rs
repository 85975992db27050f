//! A `/ws` client that keeps the raw text of what it receives and applies
//! Fossil deltas (issue 16): per channel, the last publication's data
//! bytes exactly as they stood in the frame's text, as a client must.
//!
//! Declare it with `#[path = "support/delta.rs"] mod delta_support;`.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

pub const WAIT: Duration = Duration::from_secs(20);

/// One publication as this client got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pub {
    pub offset: u64,
    /// Its data's bytes (after applying the delta, when it was one).
    pub data: Vec<u8>,
    /// It came as a delta.
    pub delta: bool,
    /// Bytes of the message's text.
    pub text_len: usize,
}

pub struct DeltaClient {
    ws: tungstenite::WebSocket<TcpStream>,
    backlog: VecDeque<String>,
    bases: HashMap<String, Vec<u8>>,
    next_id: u64,
}

/// A whole publication's `data` bytes: between the first `,"data":` and
/// the final `}` (channel names hold no quote).
pub fn data_bytes(text: &str) -> Vec<u8> {
    let start = text.find(",\"data\":").expect("a publication") + 8;
    assert!(text.ends_with('}'), "{text}");
    text.as_bytes()[start..text.len() - 1].to_vec()
}

impl DeltaClient {
    /// Connect to `path`; `Err` carries the HTTP status of a refusal.
    pub fn try_connect(addr: SocketAddr, path: &str) -> Result<DeltaClient, u16> {
        let req = format!("ws://{addr}{path}").into_client_request().unwrap();
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(WAIT)).unwrap();
        match tungstenite::client::client(req, sock) {
            Ok((ws, _)) => Ok(DeltaClient {
                ws,
                backlog: VecDeque::new(),
                bases: HashMap::new(),
                next_id: 0,
            }),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
                Err(r.status().as_u16())
            }
            Err(e) => panic!("handshake on {path}: {e}"),
        }
    }

    pub fn connect(addr: SocketAddr, path: &str) -> DeltaClient {
        Self::try_connect(addr, path).unwrap_or_else(|s| panic!("{path}: HTTP {s}"))
    }

    fn read(&mut self) -> String {
        if let Some(t) = self.backlog.pop_front() {
            return t;
        }
        self.read_socket()
    }

    fn read_socket(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no message within {WAIT:?}");
            self.ws.get_mut().set_read_timeout(Some(left)).unwrap();
            match self.ws.read() {
                Ok(Message::Text(t)) => return t,
                Ok(Message::Close(c)) => panic!("closed: {c:?}"),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Send an op (a fresh id unless it has one); returns its id.
    pub fn send(&mut self, mut op: Value) -> Value {
        if op.get("id").is_none() {
            self.next_id += 1;
            op["id"] = json!(self.next_id);
        }
        self.ws.send(Message::Text(op.to_string())).expect("send");
        op["id"].clone()
    }

    /// The reply to `id`; anything before it waits in the backlog.
    pub fn reply(&mut self, id: &Value) -> Value {
        if let Some(i) = self
            .backlog
            .iter()
            .position(|t| serde_json::from_str::<Value>(t).unwrap().get("id") == Some(id))
        {
            let t = self.backlog.remove(i).unwrap();
            return serde_json::from_str(&t).unwrap();
        }
        loop {
            let t = self.read_socket();
            let v: Value = serde_json::from_str(&t).unwrap();
            if v.get("id") == Some(id) {
                return v;
            }
            self.backlog.push_back(t);
        }
    }

    pub fn call(&mut self, op: Value) -> Value {
        let id = self.send(op);
        self.reply(&id)
    }

    /// Subscribe (with deltas asked when `delta`), checked ok; the reply.
    pub fn subscribe(&mut self, channel: &str, delta: bool) -> Value {
        let mut op = json!({ "op": "subscribe", "channel": channel });
        if delta {
            op["delta"] = json!("fossil");
        }
        let r = self.call(op);
        assert_eq!(r["ok"], json!(true), "{r}");
        r
    }

    /// The next message, parsed, with its text (no delta applied).
    pub fn next_raw(&mut self) -> (Value, String) {
        let t = self.read();
        (serde_json::from_str(&t).unwrap(), t)
    }

    /// The next message, which must be a publication of `channel`.
    pub fn next_pub(&mut self, channel: &str) -> Pub {
        self.next_event(channel)
            .unwrap_or_else(|v| panic!("expected a publication: {v}"))
    }

    /// The next message: a publication of `channel` (delta applied), or
    /// anything else as `Err`.
    pub fn next_event(&mut self, channel: &str) -> Result<Pub, Value> {
        let (v, t) = self.next_raw();
        let Some(offset) = v["offset"]
            .as_u64()
            .filter(|_| v["channel"] == json!(channel))
        else {
            return Err(v);
        };
        let delta = v.get("delta") == Some(&json!(true));
        let data = if delta {
            let base = self
                .bases
                .get(channel)
                .expect("a delta after a whole publication");
            let d = v["data"].as_str().expect("a delta is a string");
            wsgate::delta::fossil::apply(base, d.as_bytes(), 1 << 24).expect("the delta applies")
        } else {
            assert!(v.get("delta").is_none(), "{t}");
            data_bytes(&t)
        };
        self.bases.insert(channel.to_string(), data.clone());
        Ok(Pub {
            offset,
            data,
            delta,
            text_len: t.len(),
        })
    }

    /// A ping op's reply comes next: nothing else was pending.
    pub fn assert_nothing_pending(&mut self) {
        assert!(self.backlog.is_empty(), "pending: {:?}", self.backlog);
        let id = self.send(json!({ "op": "ping" }));
        let (v, t) = self.next_raw();
        assert_eq!(v["id"], id, "expected the pong, got {t}");
    }
}
