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
//! event: connected
//! data: {"connected":{"client":"…","user":"…","data":…}}
//!
//! event: subscribed
//! id: <token>
//! data: {"channel":"a","epoch":"…","offset":4,"recovered":true}
//!
//! id: <token>
//! data: {"channel":"a","offset":5,"data":…}
//!
//! event: resync
//! id: <token at E2/0>
//! data: {"channel":"a","resync":{"epoch":"E2","offset":0}}
//!
//! : keepalive
//! ```
//!
//! Long-poll answer: `{"cursor":"<token>","messages":[…],"recovered":{"a":true}}`;
//! a `resync` is one of the messages, in its place among the publications.
//! The `connected` event (only when a connect proxy admitted the stream)
//! is SSE's first; a poll's, its answer's first message.
//!
//! The token is the stream's position: a publication advances it, a
//! `resync` moves it (to the new epoch, or past a lost gap), and every `id:`
//! and cursor is the position after what was written before it.

use serde_json::json;

use super::resume::ResumeToken;
use crate::base::{Frame, FrameKind};
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
    /// Poll: something to report (a lost gap, a refused channel), answered
    /// once every subscribe is answered.
    due: bool,
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

/// The lines of an SSE field value: split at CRLF, CR or LF, the line
/// terminators of an event stream.
fn data_lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.iter().position(|&b| b == b'\n' || b == b'\r') {
            None => {
                rest = None;
                Some(r)
            }
            Some(i) => {
                let skip = if r[i] == b'\r' && r.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = Some(&r[i + skip..]);
                Some(&r[..i])
            }
        }
    })
}

/// A `resync` event: where the channel's stream goes on.
#[derive(serde::Deserialize)]
struct ResyncEvent {
    resync: Position,
}

impl StreamState {
    /// An SSE stream moved by a live handoff (issue 17): its token (the
    /// positions its events' ids carry), its keepalive interval and what
    /// is left of the current one; nothing awaited.
    pub fn thawed(
        token: ResumeToken,
        now: u64,
        interval_ms: u64,
        keepalive_in: u64,
        cap: usize,
    ) -> StreamState {
        let mut st = StreamState::new(Kind::Sse, token, 0, now, interval_ms);
        st.deadline = now + keepalive_in.min(interval_ms);
        st.cap = cap;
        st
    }

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
            due: false,
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
        // A publication's data is compact (broker::compact) and every other
        // payload comes from serde_json, so there is no raw line break here
        // and one `data:` line carries it. Should one ever come, the field
        // must not end there: "If the field name is "data": Append the field
        // value to the data buffer, then append a single U+000A LINE FEED
        // (LF) character to the data buffer" (WHATWG HTML §9.2.6), so each
        // line becomes a `data:` line of its own and the reader rebuilds the
        // text (a CR or CRLF comes back as LF: the same JSON whitespace).
        for line in data_lines(data) {
            b.extend_from_slice(b"data: ");
            b.extend_from_slice(line);
            b.push(b'\n');
        }
        b.push(b'\n');
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
                    self.due = true;
                }
            }
        }
        self.ready_when_complete();
    }

    /// A poll answers once every subscribe is answered (so that its cursor
    /// holds every channel's position) and it has something to say: a
    /// publication, a lost gap, a refused channel, or a full answer.
    fn ready_when_complete(&mut self) {
        if self.kind == Kind::Poll
            && self.waiting == 0
            && (self.due || self.pending_count > 0 || self.full)
        {
            self.ready = true;
        }
    }

    /// The connect proxy admitted the stream: the same
    /// `{"connected":{"client","user","data"}}` a WebSocket gets first.
    /// SSE: an `event: connected` before any other. Poll: the first of the
    /// answer's messages, which it does not make due (a long poll still
    /// waits for something to say: each poll is admitted anew).
    pub fn on_connected<O: Output + ?Sized>(&mut self, json: &[u8], out: &mut O) {
        match self.kind {
            Kind::Sse => Self::sse_event(out, Some("connected"), None, json),
            Kind::Poll => {
                debug_assert!(self.pending.is_empty(), "connected leads the answer");
                self.pending.extend_from_slice(json);
            }
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
                self.due = true;
                self.ready_when_complete();
            }
        }
    }

    /// A frame for this stream: a publication (with an offset), a `resync`
    /// or a presence event. Publications at or before the stream's position
    /// are duplicates and skipped.
    pub fn on_frame<O: Output + ?Sized>(&mut self, channel: &str, frame: &Frame, out: &mut O) {
        let json = frame.payload();
        let offset = match frame.kind() {
            FrameKind::Publication => frame.offset(),
            FrameKind::Resync => {
                // Where the stream moves: the event's own JSON says (rare).
                match serde_json::from_slice::<ResyncEvent>(json) {
                    Ok(e) => return self.on_resync(channel, e.resync, json, out),
                    Err(e) => return log::warn!("a resync event that does not parse: {e}"),
                }
            }
            FrameKind::Event => {
                if self.kind == Kind::Sse {
                    Self::sse_event(out, Some("presence"), None, json);
                }
                return;
            }
        };
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
                self.gather(json);
            }
        }
    }

    /// The channel's stream broke (Redis lost publications, or its history
    /// and a new epoch began): the stream's position moves to `pos`, so that
    /// the new epoch's publications are not taken for duplicates and a
    /// reconnect resumes there. SSE: an `event: resync` whose `id:` is that
    /// position. Long-poll: the event, in order among the messages, and the
    /// answer is due.
    fn on_resync<O: Output + ?Sized>(
        &mut self,
        channel: &str,
        pos: Position,
        json: &[u8],
        out: &mut O,
    ) {
        self.token.set(channel, pos);
        match self.kind {
            Kind::Sse => {
                let id = self.token.encode();
                Self::sse_event(out, Some("resync"), Some(&id), json);
            }
            Kind::Poll => {
                if self.done {
                    return;
                }
                self.gather(json);
            }
        }
    }

    /// Poll: add a message to the answer (due once every subscribe is
    /// answered).
    fn gather(&mut self, json: &[u8]) {
        // (A `connected` message may lead: `on_connected`.)
        if !self.pending.is_empty() {
            self.pending.push(b',');
        }
        self.pending.extend_from_slice(json);
        self.pending_count += 1;
        if self.waiting == 0 {
            self.ready = true;
        }
    }

    /// The server dropped a channel of this stream (slow consumer, drop policy).
    pub fn on_dropped<O: Output + ?Sized>(&mut self, notice: &[u8], out: &mut O) {
        match self.kind {
            Kind::Sse => Self::sse_event(out, Some("dropped"), None, notice),
            Kind::Poll => self.ready = true,
        }
    }

    /// The server ended a channel of this stream (a subscribe proxy's
    /// `expire_at` passed): SSE gets an `unsubscribed` event, a poll
    /// answers with it among its `errors`.
    pub fn on_unsubscribed<O: Output + ?Sized>(&mut self, channel: &str, e: &OpError, out: &mut O) {
        let v = json!({ "channel": channel, "unsubscribed": error_json(e) });
        match self.kind {
            Kind::Sse => Self::sse_event(out, Some("unsubscribed"), None, v.to_string().as_bytes()),
            Kind::Poll => {
                self.errors.push(v);
                self.ready = true;
            }
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
    use crate::broker::publication_frame;
    use crate::pubsub::Frame;
    use serde_json::value::RawValue;

    fn publication(ch: &str, off: u64) -> Frame {
        let data = RawValue::from_string(format!("{{\"n\":{off}}}")).unwrap();
        publication_frame(ch, off, &data)
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
            s.on_frame("a", &f, &mut out);
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
        s.on_frame("a", &publication("a", 5), &mut out);
        assert!(out.is_empty());
    }

    /// `connected` leads a poll's messages without making it due; SSE
    /// writes it at once as `event: connected`.
    #[test]
    fn connected_leads_a_poll_answer_and_is_an_sse_event() {
        let hello = br#"{"connected":{"client":"c","user":"u"}}"#;
        let mut s = StreamState::new(Kind::Poll, ResumeToken::default(), 1, 0, 25_000);
        let mut out = Vec::new();
        s.on_connected(hello, &mut out);
        s.on_subscribed("a", &pos("e", 7), None, &mut out);
        assert!(!s.ready, "connected alone is not worth an answer");
        s.on_frame("a", &publication("a", 8), &mut out);
        assert!(s.ready && out.is_empty());
        let v: serde_json::Value = serde_json::from_slice(&s.poll_answer()).unwrap();
        assert_eq!(
            v["messages"],
            json!([{"connected":{"client":"c","user":"u"}}, {"channel":"a","offset":8,"data":{"n":8}}])
        );
        let mut s = StreamState::new(Kind::Sse, ResumeToken::default(), 1, 0, 15_000);
        s.on_connected(hello, &mut out);
        assert_eq!(
            sse_events(&out)[0],
            (
                "connected".to_string(),
                None,
                String::from_utf8(hello.to_vec()).unwrap()
            )
        );
    }

    #[test]
    fn poll_gathers_then_answers_with_the_next_cursor() {
        let mut s = StreamState::new(Kind::Poll, ResumeToken::default(), 2, 0, 25_000);
        let mut out = Vec::new();
        s.on_subscribed("a", &pos("e", 7), None, &mut out);
        assert!(!s.ready);
        s.on_subscribed("b", &pos("f", 1), None, &mut out);
        assert!(!s.ready, "nothing to say yet: hold");
        s.on_frame("a", &publication("a", 8), &mut out);
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
            s.on_frame("a", &publication("a", off), &mut Vec::new());
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

    /// The events of an SSE body as the WHATWG algorithm reads them
    /// (`event`, `id`, `data`), comments skipped.
    fn sse_events(body: &[u8]) -> Vec<(String, Option<String>, String)> {
        let text = std::str::from_utf8(body).unwrap();
        let mut out = Vec::new();
        let (mut ev, mut id, mut data) = (String::new(), None, Vec::<&str>::new());
        let mut rest = text;
        while !rest.is_empty() {
            let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
            let line = &rest[..end];
            let skip = if rest[end..].starts_with("\r\n") {
                2
            } else {
                1
            };
            rest = rest.get(end + skip..).unwrap_or("");
            if line.is_empty() {
                if !data.is_empty() {
                    out.push((std::mem::take(&mut ev), id.take(), data.join("\n")));
                }
                data.clear();
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => ev = value.to_owned(),
                "id" => id = Some(value.to_owned()),
                "data" => data.push(value),
                _ => {}
            }
        }
        out
    }

    fn resync(ch: &str, e: &str, o: u64) -> Frame {
        crate::broker::redis::resync_event(ch, e, o)
    }

    /// A stream of channel "a" resumed at `p`, nothing to replay.
    fn resumed_at(kind: Kind, p: Position) -> StreamState {
        let mut t = ResumeToken::default();
        t.set("a", p.clone());
        let mut s = StreamState::new(kind, t, 1, 0, 15_000);
        s.on_subscribed("a", &p, Some(true), &mut Vec::new());
        s
    }

    #[test]
    fn sse_resync_moves_the_position_to_the_new_epoch() {
        let mut s = resumed_at(Kind::Sse, pos("old", 40));
        let mut out = Vec::new();
        // Redis came back empty: the new epoch starts at 0, and its first
        // publications have offsets the old epoch had already passed.
        s.on_frame("a", &resync("a", "new", 0), &mut out);
        for off in 1..=3 {
            s.on_frame("a", &publication("a", off), &mut out);
        }
        let events = sse_events(&out);
        assert_eq!(events.len(), 4, "{:?}", String::from_utf8_lossy(&out));
        let (kind, id, data) = &events[0];
        assert_eq!(kind, "resync");
        assert_eq!(
            data,
            r#"{"channel":"a","resync":{"epoch":"new","offset":0}}"#
        );
        let at = |id: &Option<String>| {
            ResumeToken::decode(id.as_deref().unwrap(), 8)
                .unwrap()
                .get("a")
                .cloned()
        };
        assert_eq!(at(id), Some(pos("new", 0)));
        for (i, (kind, id, data)) in events[1..].iter().enumerate() {
            let off = i as u64 + 1;
            assert_eq!(kind, "");
            assert_eq!(at(id), Some(pos("new", off)));
            let v: serde_json::Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["offset"], json!(off));
        }
        // A gap that could not be filled, same epoch: past it.
        let mut out = Vec::new();
        s.on_frame("a", &resync("a", "new", 9), &mut out);
        s.on_frame("a", &publication("a", 5), &mut out);
        s.on_frame("a", &publication("a", 10), &mut out);
        let events = sse_events(&out);
        assert_eq!(events.len(), 2, "offset 5 is before the position");
        assert_eq!(at(&events[1].1), Some(pos("new", 10)));
    }

    #[test]
    fn poll_answers_a_resync_in_its_place_with_a_cursor_in_the_new_epoch() {
        let mut s = resumed_at(Kind::Poll, pos("old", 40));
        let mut out = Vec::new();
        assert!(!s.ready);
        s.on_frame("a", &resync("a", "new", 0), &mut out);
        assert!(s.ready, "a held poll answers the resync");
        s.on_frame("a", &publication("a", 1), &mut out);
        assert!(out.is_empty());
        let v: serde_json::Value = serde_json::from_slice(&s.poll_answer()).unwrap();
        assert_eq!(
            v["messages"],
            json!([
                {"channel":"a","resync":{"epoch":"new","offset":0}},
                {"channel":"a","offset":1,"data":{"n":1}},
            ])
        );
        let cursor = ResumeToken::decode(v["cursor"].as_str().unwrap(), 8).unwrap();
        assert_eq!(cursor.get("a"), Some(&pos("new", 1)));
    }

    #[test]
    fn presence_events_stay_presence() {
        let mut s = StreamState::new(Kind::Sse, ResumeToken::default(), 1, 0, 15_000);
        let mut out = Vec::new();
        s.on_subscribed("a", &pos("e", 2), None, &mut out);
        out.clear();
        let join = crate::broker::encode_event(
            &json!({"channel":"a","join":{"client":"c1","user":"u"}}),
            FrameKind::Event,
        );
        s.on_frame("a", &join, &mut out);
        let events = sse_events(&out);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, "presence");
        assert_eq!(events[0].1, None);
        assert_eq!(s.token.get("a"), Some(&pos("e", 2)));
    }

    #[test]
    fn sse_data_with_line_breaks_stays_one_field() {
        // Not what the gateway writes (publications are compact), but no
        // payload can end the field early.
        for data in [
            "{\"a\":\n1}",
            "{\"a\":\r1}",
            "{\r\n\"a\":\r\n1\r\n}",
            "\n\n{}",
            "[1,\r\r\n2]",
        ] {
            let mut out = Vec::new();
            StreamState::sse_event(&mut out, None, Some("t"), data.as_bytes());
            let events = sse_events(&out);
            assert_eq!(events.len(), 1, "{data:?}: {out:?}");
            let got: serde_json::Value = serde_json::from_str(&events[0].2).unwrap();
            let want: serde_json::Value = serde_json::from_str(data).unwrap();
            assert_eq!(got, want, "{data:?}");
            assert_eq!(events[0].1.as_deref(), Some("t"));
        }
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
