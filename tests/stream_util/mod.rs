//! Readers of the fallback transports for the tests: an SSE reader that
//! interprets the stream exactly as the WHATWG HTML standard's algorithm does
//! (§9.2.6 "Interpreting an event stream", what EventSource runs), and a
//! long-poll client that follows its cursor.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

/// An event as EventSource dispatches it.
#[derive(Clone, Debug, PartialEq)]
pub struct SseEvent {
    /// `event:` (`"message"` when none was given).
    pub kind: String,
    pub data: String,
    /// The stream's last event ID when the event was dispatched (what
    /// EventSource would send back as `Last-Event-ID`).
    pub last_event_id: String,
}

/// `GET /sse…` read by the WHATWG algorithm.
pub struct SseReader {
    sock: BufReader<TcpStream>,
    /// Decoded text not yet split into lines.
    buf: String,
    /// The last byte seen was a CR: an LF right after it belongs to it.
    after_cr: bool,
    started: bool,
    event_type: String,
    data: String,
    last_event_id_buffer: String,
    pub last_event_id: String,
    /// Bytes not yet decoded (a UTF-8 sequence split between reads).
    undecoded: Vec<u8>,
    pub ended: bool,
}

impl SseReader {
    /// Open `target` (`/sse?channel=…`), with a `Last-Event-ID` header if
    /// given; panics unless the answer is `200 text/event-stream`.
    pub fn open(addr: SocketAddr, target: &str, last_event_id: Option<&str>) -> SseReader {
        Self::try_open(addr, target, last_event_id).unwrap_or_else(|e| panic!("GET {target}: {e}"))
    }

    pub fn try_open(
        addr: SocketAddr,
        target: &str,
        last_event_id: Option<&str>,
    ) -> Result<SseReader, String> {
        let mut sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        sock.set_nodelay(true).ok();
        let header = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        sock.write_all(
            format!(
                "GET {target} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n{header}\r\n"
            )
            .as_bytes(),
        )
        .map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(15))).ok();
        let mut sock = BufReader::new(sock);
        let mut line = String::new();
        sock.read_line(&mut line).map_err(|e| e.to_string())?;
        if !line.starts_with("HTTP/1.1 200") {
            return Err(format!("status line {line:?}"));
        }
        let mut event_stream = false;
        loop {
            line.clear();
            sock.read_line(&mut line).map_err(|e| e.to_string())?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-type") {
                    event_stream = v.trim() == "text/event-stream";
                }
            }
        }
        if !event_stream {
            return Err("not text/event-stream".into());
        }
        Ok(SseReader {
            sock,
            buf: String::new(),
            after_cr: false,
            started: false,
            event_type: String::new(),
            data: String::new(),
            last_event_id_buffer: String::new(),
            last_event_id: String::new(),
            undecoded: Vec::new(),
            ended: false,
        })
    }

    /// The next dispatched event; `Err("timed out")` if none came within
    /// `within`, `Err("ended")` once the stream is over.
    pub fn next_event(&mut self, within: Duration) -> Result<SseEvent, String> {
        let end = Instant::now() + within;
        loop {
            if let Some(ev) = self.take_event() {
                return Ok(ev);
            }
            if self.ended {
                return Err("ended".into());
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(TIMED_OUT.into());
            }
            self.sock
                .get_ref()
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok();
            let mut chunk = [0u8; 16 * 1024];
            match self.sock.read(&mut chunk) {
                Ok(0) => self.ended = true,
                Ok(n) => self.feed(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(TIMED_OUT.into())
                }
                Err(_) => self.ended = true,
            }
        }
    }

    /// Decode bytes (UTF-8 decode, BOM stripped once at the start).
    fn feed(&mut self, bytes: &[u8]) {
        self.undecoded.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.undecoded) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // Invalid bytes decode to U+FFFD, as the standard's decoder does.
            Err(_) => {
                let s = String::from_utf8_lossy(&self.undecoded).into_owned();
                self.undecoded.clear();
                self.push_text(&s);
                return;
            }
        };
        let s = std::str::from_utf8(&self.undecoded[..valid])
            .expect("checked")
            .to_owned();
        self.undecoded.drain(..valid);
        self.push_text(&s);
    }

    fn push_text(&mut self, mut s: &str) {
        if !self.started && !s.is_empty() {
            self.started = true;
            s = s.strip_prefix('\u{FEFF}').unwrap_or(s);
        }
        if self.after_cr {
            // CRLF split between two reads: the LF was part of the CR's line end.
            self.after_cr = false;
            s = s.strip_prefix('\n').unwrap_or(s);
        }
        self.buf.push_str(s);
    }

    /// Process complete lines until an event is dispatched.
    fn take_event(&mut self) -> Option<SseEvent> {
        loop {
            let end = self.buf.find(['\r', '\n'])?;
            let line: String = self.buf[..end].to_owned();
            let mut skip = 1;
            if self.buf.as_bytes()[end] == b'\r' {
                match self.buf.as_bytes().get(end + 1) {
                    Some(b'\n') => skip = 2,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            self.buf.drain(..end + skip);
            if let Some(ev) = self.line(&line) {
                return Some(ev);
            }
        }
    }

    /// One line of the stream (WHATWG HTML §9.2.6).
    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event_type = value.to_owned(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => self.last_event_id_buffer = value.to_owned(),
            _ => {} // retry, and fields the standard ignores
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        self.last_event_id = self.last_event_id_buffer.clone();
        if self.data.is_empty() {
            self.event_type.clear();
            return None;
        }
        if self.data.ends_with('\n') {
            self.data.pop();
        }
        let kind = if self.event_type.is_empty() {
            "message".to_owned()
        } else {
            std::mem::take(&mut self.event_type)
        };
        Some(SseEvent {
            kind,
            data: std::mem::take(&mut self.data),
            last_event_id: self.last_event_id.clone(),
        })
    }
}

pub const TIMED_OUT: &str = "timed out";

/// `GET target` with `Connection: close`: the status and the body as JSON
/// (`Value::Null` when it is not JSON).
pub fn get_json(addr: SocketAddr, target: &str, timeout: Duration) -> io::Result<(u16, Value)> {
    let mut sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("no head in {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad head {head:?}")))?;
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// A long-poll reader of some channels: each [`Poller::poll`] asks with the
/// last cursor and returns the answer's messages.
pub struct Poller {
    pub addr: SocketAddr,
    pub channels: Vec<String>,
    pub cursor: Option<String>,
    /// `recovered` of the last answer.
    pub recovered: Value,
}

impl Poller {
    pub fn new(addr: SocketAddr, channels: &[&str]) -> Poller {
        Poller {
            addr,
            channels: channels.iter().map(|c| c.to_string()).collect(),
            cursor: None,
            recovered: Value::Null,
        }
    }

    /// One poll held up to `wait` seconds: its messages, or an error (the
    /// status, or the I/O error) — the cursor is kept then, as a client would.
    pub fn poll(&mut self, wait: u32) -> Result<Vec<Value>, String> {
        let mut target = String::from("/poll?");
        for c in &self.channels {
            target.push_str("channel=");
            target.push_str(c);
            target.push('&');
        }
        if let Some(c) = &self.cursor {
            target.push_str(&format!("cursor={c}&"));
        }
        target.push_str(&format!("wait={wait}"));
        let timeout = Duration::from_secs(u64::from(wait) + 15);
        let (status, v) = get_json(self.addr, &target, timeout).map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("status {status}: {v}"));
        }
        if let Some(c) = v["cursor"].as_str() {
            self.cursor = Some(c.to_owned());
        }
        self.recovered = v["recovered"].clone();
        Ok(v["messages"].as_array().cloned().unwrap_or_default())
    }
}
