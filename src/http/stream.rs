//! The fallback transports' side of a session: SSE (`GET /sse`) and
//! long-poll (`GET /poll`). Both subscribe like a WebSocket session does and
//! receive the same publications; they differ in how those are written, and
//! in that their position is a [`ResumeToken`] carried by the client.
//!
//! SSE body:
//!
//! ```text
//! retry: 2000
//!
//! event: subscribed
//! id: <token>
//! data: {"channel":"a","epoch":"…","offset":4,"recovered":true}
//!
//! id: <token>
//! data: {"channel":"a","offset":5,"data":…}
//!
//! : keepalive
//! ```
//!
//! Long-poll answer: `{"cursor":"<token>","messages":[…],"recovered":{"a":true}}`.

use serde_json::json;

use super::resume::ResumeToken;
use crate::gateway::error::{error_json, OpError};
use crate::proto::handshake::SERVER;
use crate::proto::Output;
use crate::pubsub::Position;

/// Which fallback transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sse,
    Poll,
}

/// SSE's reconnection hint to EventSource, in ms.
pub const RETRY_MS: u64 = 2000;
/// The longest a short poll waits for its subscribe answers.
pub const SHORT_POLL_GUARD_MS: u64 = 5000;

/// A stream's state (boxed in the session; none for WebSocket sessions).
#[derive(Debug)]
pub struct StreamState {
    pub kind: Kind,
    pub token: ResumeToken,
    /// Subscribe answers still awaited.
    pub waiting: usize,
    /// When the timer must fire next: SSE keepalive, or the end of a poll.
    pub deadline: u64,
    /// SSE: keepalive interval. Poll: unused after the start.
    pub interval_ms: u64,
    /// Poll: publications gathered (JSON objects, comma-separated).
    pending: Vec<u8>,
    pending_count: usize,
    /// Poll: per channel resumed from the cursor, whether the gap was kept.
    recovered: Vec<(String, bool)>,
    errors: Vec<serde_json::Value>,
    /// Poll: an answer is due (something arrived, or a gap was lost).
    pub ready: bool,
    /// Poll: the answer was written.
    pub done: bool,
    /// Poll: the most the answer gathers (`limits.max_queued_bytes`; at
    /// least one publication).
    pub cap: usize,
    /// Poll: the answer is full; publications that arrive now are left for
    /// the next poll (the cursor stays before them).
    full: bool,
}

/// The JSON payload of an unmasked frame built by the gateway.
pub fn frame_payload(frame: &[u8]) -> &[u8] {
    let n = match frame.get(1).map(|b| b & 0x7F) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => return &[],
    };
    frame.get(n..).unwrap_or(&[])
}

/// The `offset` of a publication's JSON (0 if it has none: an event).
fn offset_of(json: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct O {
        #[serde(default)]
        offset: u64,
    }
    serde_json::from_slice::<O>(json).map_or(0, |o| o.offset)
}

impl StreamState {
    pub fn new(
        kind: Kind,
        token: ResumeToken,
        channels: usize,
        now: u64,
        interval_ms: u64,
    ) -> StreamState {
        StreamState {
            kind,
            token,
            waiting: channels,
            // A short poll (`wait=0`) answers as soon as every subscribe is
            // answered; the deadline only guards against a broker that never
            // answers.
            deadline: now
                + if interval_ms == 0 {
                    SHORT_POLL_GUARD_MS
                } else {
                    interval_ms
                },
            interval_ms,
            pending: Vec::new(),
            pending_count: 0,
            recovered: Vec::new(),
            errors: Vec::new(),
            ready: false,
            done: false,
            cap: usize::MAX,
            full: false,
        }
    }

    /// Poll: bytes of the answer gathered so far.
    pub fn body_len(&self) -> usize {
        self.pending.len()
    }

    /// Poll: take nothing more; answer once every subscribe is answered.
    pub fn cut(&mut self) {
        self.full = true;
        if self.waiting == 0 {
            self.ready = true;
        }
    }

    /// The SSE response head and the `retry:` hint.
    pub fn sse_start<O: Output + ?Sized>(out: &mut O) {
        let head = format!(
            "HTTP/1.1 200 OK\r\nServer: {SERVER}\r\nContent-Type: text/event-stream\r\n\
             Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\nConnection: keep-alive\r\n\r\n\
             retry: {RETRY_MS}\n\n"
        );
        out.put(head.as_bytes());
    }

    fn sse_event<O: Output + ?Sized>(
        out: &mut O,
        event: Option<&str>,
        id: Option<&str>,
        data: &[u8],
    ) {
        let mut b = Vec::with_capacity(data.len() + 64 + id.map_or(0, str::len));
        if let Some(e) = event {
            b.extend_from_slice(b"event: ");
            b.extend_from_slice(e.as_bytes());
            b.push(b'\n');
        }
        if let Some(i) = id {
            b.extend_from_slice(b"id: ");
            b.extend_from_slice(i.as_bytes());
            b.push(b'\n');
        }
        // Our JSON never holds a raw newline (serde_json escapes them), so a
        // single `data:` line carries it.
        b.extend_from_slice(b"data: ");
        b.extend_from_slice(data);
        b.extend_from_slice(b"\n\n");
        out.put(&b);
    }

    /// The broker answered a subscribe (its replay follows through
    /// [`StreamState::on_frame`]: `gateway::replay`).
    pub fn on_subscribed<O: Output + ?Sized>(
        &mut self,
        channel: &str,
        pos: &Position,
        recovered: Option<bool>,
        out: &mut O,
    ) {
        self.waiting = self.waiting.saturating_sub(1);
        match recovered {
            // The token keeps the client's position; the replay advances it.
            Some(true) => {}
            _ => self.token.set(channel, pos.clone()),
        }
        if let Some(r) = recovered {
            self.recovered.push((channel.to_string(), r));
        }
        match self.kind {
            Kind::Sse => {
                let mut info =
                    json!({ "channel": channel, "epoch": pos.epoch, "offset": pos.offset });
                if let Some(r) = recovered {
                    info["recovered"] = r.into();
                }
                let id = self.token.encode();
                Self::sse_event(
                    out,
                    Some("subscribed"),
                    Some(&id),
                    info.to_string().as_bytes(),
                );
            }
            Kind::Poll => {
                if recovered == Some(false) {
                    self.ready = true;
                }
            }
        }
        if self.kind == Kind::Poll && self.waiting == 0 && (self.pending_count > 0 || self.full) {
            self.ready = true;
        }
    }

    /// A subscribe failed (bad channel, limits).
    pub fn on_error<O: Output + ?Sized>(&mut self, channel: &str, e: &OpError, out: &mut O) {
        self.waiting = self.waiting.saturating_sub(1);
        let v = json!({ "channel": channel, "error": error_json(e) });
        match self.kind {
            Kind::Sse => Self::sse_event(out, Some("error"), None, v.to_string().as_bytes()),
            Kind::Poll => {
                self.errors.push(v);
                self.ready = true;
            }
        }
    }

    /// A frame for this stream: a publication (with an offset) or a
    /// presence event. Publications at or before the stream's position are
    /// duplicates and skipped.
    pub fn on_frame<O: Output + ?Sized>(&mut self, channel: &str, json: &[u8], out: &mut O) {
        let offset = offset_of(json);
        if offset == 0 {
            if self.kind == Kind::Sse {
                Self::sse_event(out, Some("presence"), None, json);
            }
            return;
        }
        if self.token.get(channel).is_some_and(|p| p.offset >= offset) {
            return;
        }
        if self.kind == Kind::Poll {
            if self.done || self.full {
                return;
            }
            if self.pending_count > 0 && self.pending.len() + json.len() + 1 > self.cap {
                // Full: this one and what follows wait for the next poll.
                self.cut();
                return;
            }
        }
        self.token.advance(channel, offset);
        match self.kind {
            Kind::Sse => {
                let id = self.token.encode();
                Self::sse_event(out, None, Some(&id), json);
            }
            Kind::Poll => {
                if self.pending_count > 0 {
                    self.pending.push(b',');
                }
                self.pending.extend_from_slice(json);
                self.pending_count += 1;
                if self.waiting == 0 {
                    self.ready = true;
                }
            }
        }
    }

    /// The server dropped a channel of this stream (slow consumer, drop policy).
    pub fn on_dropped<O: Output + ?Sized>(&mut self, notice: &[u8], out: &mut O) {
        match self.kind {
            Kind::Sse => Self::sse_event(out, Some("dropped"), None, notice),
            Kind::Poll => self.ready = true,
        }
    }

    /// SSE keepalive comment (invisible to EventSource, keeps proxies open).
    pub fn keepalive<O: Output + ?Sized>(&mut self, now: u64, out: &mut O) {
        out.put(b": keepalive\n\n");
        self.deadline = now + self.interval_ms;
    }

    /// The long-poll answer (the session ends after it).
    pub fn poll_answer(&mut self) -> Vec<u8> {
        self.done = true;
        let mut b = Vec::with_capacity(self.pending.len() + 128);
        b.extend_from_slice(b"{\"cursor\":");
        serde_json::to_writer(&mut b, &self.token.encode()).expect("serializes");
        b.extend_from_slice(b",\"messages\":[");
        b.extend_from_slice(&self.pending);
        b.push(b']');
        if !self.recovered.is_empty() {
            let m: serde_json::Map<String, serde_json::Value> = self
                .recovered
                .iter()
                .map(|(c, r)| (c.clone(), (*r).into()))
                .collect();
            b.extend_from_slice(b",\"recovered\":");
            serde_json::to_writer(&mut b, &m).expect("serializes");
        }
        if !self.errors.is_empty() {
            b.extend_from_slice(b",\"errors\":");
            serde_json::to_writer(&mut b, &self.errors).expect("serializes");
        }
        b.extend_from_slice(b"}\n");
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::encode_publication;
    use crate::pubsub::Frame;
    use serde_json::value::RawValue;
    use std::sync::Arc;

    fn publication(ch: &str, off: u64) -> Frame {
        let data = RawValue::from_string(format!("{{\"n\":{off}}}")).unwrap();
        Arc::from(encode_publication(ch, off, &data).0)
    }

    fn pos(e: &str, o: u64) -> Position {
        Position {
            epoch: e.into(),
            offset: o,
        }
    }

    #[test]
    fn sse_resume_keeps_the_client_position_until_replayed() {
        let mut t = ResumeToken::default();
        t.set("a", pos("e", 3));
        let mut s = StreamState::new(Kind::Sse, t, 1, 0, 15_000);
        let mut out = Vec::new();
        s.on_subscribed("a", &pos("e", 5), Some(true), &mut out);
        for f in [publication("a", 4), publication("a", 5)] {
            s.on_frame("a", frame_payload(&f), &mut out);
        }
        let text = String::from_utf8(out).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 3, "{text}");
        assert!(events[0].starts_with("event: subscribed\nid: "));
        assert!(events[0].ends_with(r#""recovered":true}"#), "{}", events[0]);
        // The subscribed event's id still says offset 3: a reconnect there
        // gets the replay again rather than losing it.
        let id0 = events[0]
            .lines()
            .nth(1)
            .unwrap()
            .strip_prefix("id: ")
            .unwrap();
        assert_eq!(
            ResumeToken::decode(id0, 8).unwrap().get("a"),
            Some(&pos("e", 3))
        );
        let id2 = events[2]
            .lines()
            .next()
            .unwrap()
            .strip_prefix("id: ")
            .unwrap();
        assert_eq!(
            ResumeToken::decode(id2, 8).unwrap().get("a"),
            Some(&pos("e", 5))
        );
        assert!(events[2].ends_with(r#"data: {"channel":"a","offset":5,"data":{"n":5}}"#));
        // A duplicate (live copy of a replayed offset) is skipped.
        let mut out = Vec::new();
        s.on_frame("a", frame_payload(&publication("a", 5)), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn poll_gathers_then_answers_with_the_next_cursor() {
        let mut s = StreamState::new(Kind::Poll, ResumeToken::default(), 2, 0, 25_000);
        let mut out = Vec::new();
        s.on_subscribed("a", &pos("e", 7), None, &mut out);
        assert!(!s.ready);
        s.on_subscribed("b", &pos("f", 1), None, &mut out);
        assert!(!s.ready, "nothing to say yet: hold");
        s.on_frame("a", frame_payload(&publication("a", 8)), &mut out);
        assert!(s.ready);
        assert!(out.is_empty(), "a poll writes only its answer");
        let v: serde_json::Value = serde_json::from_slice(&s.poll_answer()).unwrap();
        assert_eq!(
            v["messages"],
            json!([{"channel":"a","offset":8,"data":{"n":8}}])
        );
        let cursor = ResumeToken::decode(v["cursor"].as_str().unwrap(), 8).unwrap();
        assert_eq!(cursor.get("a"), Some(&pos("e", 8)));
        assert_eq!(cursor.get("b"), Some(&pos("f", 1)));
    }

    #[test]
    fn poll_answer_is_bounded_and_its_cursor_stops_before_what_it_left() {
        let mut t = ResumeToken::default();
        t.set("a", pos("e", 0));
        let mut s = StreamState::new(Kind::Poll, t, 1, 0, 25_000);
        s.cap = 200;
        s.on_subscribed("a", &pos("e", 0), Some(true), &mut Vec::new());
        for off in 1..=10 {
            s.on_frame("a", frame_payload(&publication("a", off)), &mut Vec::new());
        }
        assert!(s.ready);
        assert!(s.body_len() <= 200, "{}", s.body_len());
        let v: serde_json::Value = serde_json::from_slice(&s.poll_answer()).unwrap();
        let got: Vec<u64> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>());
        assert!((1..10).contains(&got.len()), "{got:?}");
        let cursor = ResumeToken::decode(v["cursor"].as_str().unwrap(), 8).unwrap();
        assert_eq!(cursor.get("a"), Some(&pos("e", got.len() as u64)));
    }

    #[test]
    fn poll_reports_a_lost_gap_at_once() {
        let mut t = ResumeToken::default();
        t.set("a", pos("old", 3));
        let mut s = StreamState::new(Kind::Poll, t, 1, 0, 25_000);
        s.on_subscribed("a", &pos("new", 9), Some(false), &mut Vec::new());
        assert!(s.ready);
        let v: serde_json::Value = serde_json::from_slice(&s.poll_answer()).unwrap();
        assert_eq!(v["recovered"], json!({"a": false}));
        let cursor = ResumeToken::decode(v["cursor"].as_str().unwrap(), 8).unwrap();
        assert_eq!(cursor.get("a"), Some(&pos("new", 9)));
    }

    #[test]
    fn payload_of_each_header_size() {
        for n in [0usize, 10, 200, 70_000] {
            let (f, hl) = crate::broker::text_frame(&vec![b'x'; n]);
            assert_eq!(frame_payload(&f).len(), n);
            assert_eq!(hl as usize, f.len() - n);
        }
    }
}
