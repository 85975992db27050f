//! Pipelined ops through a gateway `Session`, with a scripted broker that
//! answers in any order the input chooses, live publications at any time,
//! and the connection closing at any point.
//!
//! Input layout: a sequence of steps, one byte each (some take the next
//! byte as an argument):
//!
//! | byte % 8 | step |
//! |---|---|
//! | 0–3 | queue an op: kind `(byte >> 3) % 8` (subscribe, unsubscribe, publish, presence, ping, malformed JSON, refresh, binary frame), channel: next byte % 4 (`a`, `b`, `c`, or a refused name) |
//! | 4 | deliver the queued ops, as one read (pipelined) |
//! | 5 | answer an outstanding broker request: next byte picks it, its low bit says error |
//! | 6 | a live publication on channel next byte % 3 |
//! | 7 | the connection closes |
//!
//! At the end the queued ops are delivered and every request is answered.
//!
//! Checked (the reply invariant, against a sequential model fed with the
//! broker's own decisions): every op gets exactly one reply, in order, with
//! the id it was sent with; each reply is what applying the ops one at a
//! time gives (codes 4, 5, 6, 7, presence counts, offsets); a publication
//! arrives only between its channel's subscribe reply and unsubscribe
//! reply, offsets one by one from the subscribe's position; at the end the
//! session, the worker's index, the broker's interest and presence agree
//! with the model, and after a close nothing is left anywhere.

#![no_main]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use wsgate::broker::{
    Broker, BrokerStats, PublishOptions, ReplayRequest, ReplyBody, ReplyTo, SubFlags, Subscribed,
    Tags,
};
use wsgate::gateway::error::OpError;
use wsgate::gateway::session::{Ctx, Divert, Session, SubState};
use wsgate::gateway::GatewayConfig;
use wsgate::base::counters::Counters;
use wsgate::base::ConnKey;
use wsgate::pubsub::presence::{Member, Presence};
use wsgate::pubsub::topics::Topics;
use wsgate::pubsub::{Position, Frame};

const CHANNELS: [&str; 4] = ["a", "b", "c", "bad name"];
const MAX_CHANNELS: usize = 2;
const TOKEN: ConnKey = ConnKey::new(7, 0);

/// A request the session made.
#[derive(Debug)]
enum Req {
    Subscribe(Arc<str>, Option<Member>),
    Publish(String),
    Presence(String),
}

/// The broker's side: what it was asked, and its state.
#[derive(Default)]
struct State {
    asked: Vec<(ReplyTo, Req)>,
    interest: BTreeMap<String, i64>,
    presence: BTreeMap<String, Presence>,
    top: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Scripted(Mutex<State>);

impl Scripted {
    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }
}

impl Broker for Scripted {
    fn publish(&self, _: usize, channel: &str, _: &RawValue, _: &PublishOptions, reply: Option<ReplyTo>) {
        let mut st = self.st();
        match reply {
            Some(to) => st.asked.push((to, Req::Publish(channel.into()))),
            // Unanswered (the connection is gone): published at once.
            None => *st.top.entry(channel.into()).or_default() += 1,
        }
    }

    fn publish_batch(&self, _: usize, _: &[(String, Box<RawValue>)], _: ReplyTo) {
        panic!("a session never publishes a batch");
    }

    fn subscribe(
        &self,
        _: usize,
        ch: Arc<str>,
        _: Option<Position>,
        m: Option<Member>,
        _: SubFlags,
        to: ReplyTo,
    ) {
        let mut st = self.st();
        *st.interest.entry(ch.to_string()).or_default() += 1;
        st.asked.push((to, Req::Subscribe(ch, m)));
    }

    fn unsubscribe(&self, _: usize, channel: &str, member: Option<&Member>, _: SubFlags) {
        let mut st = self.st();
        let n = st.interest.entry(channel.into()).or_default();
        *n -= 1;
        assert!(*n >= 0, "unsubscribed more than subscribed from {channel}");
        if let Some(m) = member {
            st.presence.entry(channel.into()).or_default().leave(&m.client());
        }
    }

    fn history(&self, _: usize, _: &str, _: Option<Position>, _: usize, _: bool, _: ReplyTo) {
        panic!("no history op is generated here");
    }

    fn users_online(&self, _: usize, _: Vec<String>, _: ReplyTo) {
        panic!("a session never asks for user presence");
    }

    fn replay(&self, _: usize, _: ReplayRequest, _: ReplyTo) {
        panic!("no subscribe answer here leaves a gap to replay");
    }

    fn presence(&self, _: usize, channel: &str, to: ReplyTo) {
        self.st().asked.push((to, Req::Presence(channel.into())));
    }

    fn disconnect_user(&self, _: &str) {}

    fn sweep(&self) {}

    fn stats(&self) -> BrokerStats {
        BrokerStats::default()
    }
}

/// What the client sent, and how the broker decided it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Sub,
    Unsub,
    Pub,
    Presence,
    Ping,
    Malformed,
    Refresh,
    Binary,
}

struct Harness {
    broker: Scripted,
    topics: Topics,
    cfg: GatewayConfig,
    counts: Counters,
    tags: Tags,
    deltas: wsgate::delta::DeltaChannels,
    session: Option<Session>,
    out: Vec<u8>,
    /// The ops sent, in order: (kind, channel index).
    sent: Vec<(Kind, usize)>,
    queued: Vec<(bool, Vec<u8>)>,
    /// The broker's decision per op id: a subscribe's position or a
    /// publish's offset (`Ok`), or an error.
    decided: BTreeMap<u64, Result<u64, ()>>,
    /// Presence answers: op id → clients counted.
    counted: BTreeMap<u64, usize>,
}

impl Harness {
    fn ctx(&mut self) -> (Ctx<'_>, Option<&mut Session>, &mut Vec<u8>) {
        let ctx = Ctx {
            worker: 0,
            conn: TOKEN,
            broker: &self.broker,
            topics: &mut self.topics,
            cfg: &self.cfg,
            counts: &mut self.counts,
            tags: &mut self.tags,
            deltas: &mut self.deltas,
        };
        (ctx, self.session.as_mut(), &mut self.out)
    }

    fn queue(&mut self, kind: Kind, ch: usize) {
        let id = self.sent.len();
        let name = CHANNELS[ch];
        let (text, payload) = match kind {
            Kind::Sub => (true, json!({"id": id, "op": "subscribe", "channel": name}).to_string()),
            Kind::Unsub => (true, json!({"id": id, "op": "unsubscribe", "channel": name}).to_string()),
            Kind::Pub => (true, json!({"id": id, "op": "publish", "channel": name, "data": id}).to_string()),
            Kind::Presence => (true, json!({"id": id, "op": "presence", "channel": name}).to_string()),
            Kind::Ping => (true, json!({"id": id, "op": "ping"}).to_string()),
            Kind::Malformed => (true, format!("{{\"id\":{id},\"op\"")),
            Kind::Refresh => (true, json!({"id": id, "op": "refresh", "token": "x.y.z"}).to_string()),
            Kind::Binary => (false, json!({"id": id, "op": "ping"}).to_string()),
        };
        self.sent.push((kind, ch));
        self.queued.push((text, payload.into_bytes()));
    }

    fn deliver_queued(&mut self) {
        let queued = std::mem::take(&mut self.queued);
        let (mut ctx, s, out) = self.ctx();
        if let Some(s) = s {
            for (text, data) in queued {
                s.on_message(&mut ctx, text, &data, out);
            }
        }
    }

    /// A publication on `channel` reaches the worker: fanned out as the
    /// worker does.
    fn live(&mut self, channel: &str) {
        let offset = {
            let mut st = self.broker.st();
            let top = st.top.entry(channel.into()).or_default();
            *top += 1;
            *top
        };
        self.fan_out(channel, offset);
    }

    fn fan_out(&mut self, channel: &str, offset: u64) {
        if !self.topics.contains(channel, TOKEN) {
            return;
        }
        let data = RawValue::from_string(offset.to_string()).unwrap();
        let frame: Frame = wsgate::broker::publication_frame(channel, offset, &data);
        let s = self.session.as_mut().expect("in the index while the session lives");
        if s.holding() {
            match s.divert(channel, &frame, usize::MAX / 2) {
                Divert::Held => return,
                Divert::Full => panic!("no cap here"),
                Divert::No => {}
            }
        }
        self.out.extend_from_slice(&frame);
    }

    /// Answer request `i` of those outstanding.
    fn answer(&mut self, i: usize, fail: bool) {
        let (to, req) = {
            let mut st = self.broker.st();
            if st.asked.is_empty() {
                return;
            }
            let i = i % st.asked.len();
            st.asked.remove(i)
        };
        let id = to.id.as_ref().map(|r| r.get().parse::<u64>().expect("numeric ids"));
        let body = match req {
            Req::Subscribe(channel, member) => {
                let result = if fail {
                    let mut st = self.broker.st();
                    *st.interest.get_mut(&*channel).unwrap() -= 1;
                    Err(OpError::Unavailable("scripted"))
                } else {
                    let mut st = self.broker.st();
                    if let Some(m) = &member {
                        st.presence.entry(channel.to_string()).or_default().join(m.clone());
                    }
                    let top = st.top.get(&*channel).copied().unwrap_or(0);
                    Ok(Subscribed {
                        position: Position { epoch: "e".into(), offset: top },
                        recovered: None,
                        replay: Vec::new(),
                        replay_after: None,
                    })
                };
                if let Some(id) = id {
                    let d = result.as_ref().map(|s| s.position.offset).map_err(|_| ());
                    self.decided.insert(id, d);
                }
                ReplyBody::Subscribed {
                    client: member.map(|m| m.client().to_string()),
                    channel,
                    flags: SubFlags::NONE,
                    result,
                }
            }
            Req::Publish(channel) => {
                let r = if fail {
                    Err(OpError::Unavailable("scripted"))
                } else {
                    let offset = {
                        let mut st = self.broker.st();
                        let top = st.top.entry(channel.clone()).or_default();
                        *top += 1;
                        *top
                    };
                    // As the memory broker: the publication reaches the
                    // worker before the answer.
                    self.fan_out(&channel, offset);
                    Ok(Position { epoch: "e".into(), offset })
                };
                self.decided.insert(id.expect("an id"), r.as_ref().map(|p| p.offset).map_err(|_| ()));
                ReplyBody::Published(r)
            }
            Req::Presence(channel) => {
                let info = self.broker.st().presence.get(&channel).map(|p| p.info()).unwrap_or_default();
                self.counted.insert(id.expect("an id"), info.clients);
                ReplyBody::Presence(if fail { Err(OpError::Unavailable("scripted")) } else { Ok(info) })
            }
        };
        let (tag, rid) = (to.tag, to.id.clone());
        let (mut ctx, s, out) = self.ctx();
        let stale = match s {
            Some(s) => s.on_reply(&mut ctx, tag, rid.as_deref(), body, out).err(),
            None => Some(body),
        };
        // As the worker: an answer nobody waits for is undone.
        if let Some(ReplyBody::Subscribed { channel, client, flags, result: Ok(_) }) = stale {
            let member = client.map(|c| Member::new(&c, None));
            self.broker.unsubscribe(0, &channel, member.as_ref(), flags);
        }
    }

    fn close(&mut self) {
        let (mut ctx, s, _) = self.ctx();
        if let Some(s) = s {
            s.close(&mut ctx);
        }
        self.session = None;
    }
}

/// The server's text frames in `out`.
fn messages(mut out: &[u8]) -> Vec<Value> {
    let mut v = Vec::new();
    while !out.is_empty() {
        assert_eq!(out[0], 0x81, "whole text frames");
        let (len, at) = match out[1] & 0x7F {
            126 => (u16::from_be_bytes([out[2], out[3]]) as usize, 4),
            127 => (u64::from_be_bytes(out[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        v.push(serde_json::from_slice(&out[at..at + len]).expect("JSON messages"));
        out = &out[at + len..];
    }
    v
}

fn check(h: &Harness, closed: bool) {
    let msgs = messages(&h.out);
    // Subscribed channels: the next offset due.
    let mut subscribed: BTreeMap<&str, u64> = BTreeMap::new();
    let mut replies = 0usize;
    for m in &msgs {
        if m.get("ok").is_none() && m.get("error").is_none() {
            let ch = m["channel"].as_str().expect("a publication");
            let off = m["offset"].as_u64().expect("an offset");
            let next = subscribed.get_mut(ch).unwrap_or_else(|| {
                panic!("publication outside its subscription: {m}")
            });
            assert_eq!(off, *next, "offsets one by one: {m}");
            *next += 1;
            continue;
        }
        let i = replies;
        replies += 1;
        let (kind, k) = *h.sent.get(i).unwrap_or_else(|| panic!("a reply too many: {m}"));
        let name = CHANNELS[k];
        let bad = k == 3;
        let code = m["error"]["code"].as_u64();
        let id = m.get("id").and_then(Value::as_u64);
        match kind {
            Kind::Malformed | Kind::Binary => assert_eq!(id, None, "{m}"),
            _ => assert_eq!(id, Some(i as u64), "reply {i} in order: {m}"),
        }
        let decided = h.decided.get(&(i as u64)).copied();
        let want_code = match kind {
            Kind::Sub if bad => Some(4),
            Kind::Sub if subscribed.contains_key(name) => Some(6),
            Kind::Sub if subscribed.len() >= MAX_CHANNELS => Some(5),
            Kind::Sub => match decided.expect("the broker was asked") {
                Ok(pos) => {
                    assert_eq!(m["offset"], pos, "{m}");
                    subscribed.insert(name, pos + 1);
                    None
                }
                Err(()) => Some(10),
            },
            Kind::Unsub if subscribed.remove(name).is_some() => None,
            Kind::Unsub => Some(7),
            Kind::Pub if bad => Some(4),
            Kind::Pub => match decided.expect("the broker was asked") {
                Ok(off) => {
                    assert_eq!(m["offset"], off, "{m}");
                    None
                }
                Err(()) => Some(10),
            },
            Kind::Presence if bad => Some(4),
            Kind::Presence => {
                if code.is_none() {
                    let counted = h.counted[&(i as u64)];
                    assert_eq!(counted, subscribed.contains_key(name) as usize, "presence agrees: {m}");
                    assert_eq!(m["clients"], counted, "{m}");
                }
                code
            }
            Kind::Ping => {
                assert_eq!(m["pong"], true, "{m}");
                None
            }
            Kind::Malformed => Some(1),
            Kind::Refresh => Some(3),
            Kind::Binary => Some(3),
        };
        assert_eq!(code, want_code, "reply {i} ({kind:?} {name}): {m}");
    }
    if closed {
        // Nothing is owed to a closed connection; nothing may be left.
        let st = h.broker.st();
        assert!(st.interest.values().all(|&n| n == 0), "interest left: {:?}", st.interest);
        assert!(st.presence.values().all(Presence::is_empty), "presence left");
        assert_eq!(h.topics.subscriptions(), 0, "the index is empty");
        return;
    }
    assert_eq!(replies, h.sent.len(), "one reply per op");
    let s = h.session.as_ref().unwrap();
    assert!(!s.has_pending(), "nothing owed once all is answered");
    let st = h.broker.st();
    for name in &CHANNELS[..3] {
        let on = subscribed.contains_key(name);
        let in_session = s.subs.iter().any(|x| &*x.channel == *name && x.state() == SubState::Active);
        assert_eq!(in_session, on, "{name}: the session agrees");
        assert_eq!(h.topics.contains(name, TOKEN), on, "{name}: the index agrees");
        assert_eq!(st.interest.get(*name).copied().unwrap_or(0), on as i64, "{name}: the broker agrees");
        let present = st.presence.get(*name).map_or(0, |p| p.info().clients);
        assert_eq!(present, on as usize, "{name}: presence agrees");
        if let Some(next) = subscribed.get(name) {
            assert_eq!(*next, st.top.get(*name).copied().unwrap_or(0) + 1, "{name}: every publication delivered");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut cfg = GatewayConfig::default();
    cfg.max_channels = MAX_CHANNELS;
    // The subscribe rate (error 5 past `limits.channel_rate`) reads the
    // clock, so it would make a run depend on how fast it went: off here,
    // tested in `gateway::channel_rate` and tests/abuse.rs.
    cfg.channel_rate = 0;
    let mut h = Harness {
        broker: Scripted::default(),
        topics: Topics::default(),
        cfg,
        counts: Counters::default(),
        tags: Tags::default(),
        deltas: Default::default(),
        session: Some(Session::new("c1".into(), None)),
        out: Vec::new(),
        sent: Vec::new(),
        queued: Vec::new(),
        decided: BTreeMap::new(),
        counted: BTreeMap::new(),
    };
    let mut bytes: VecDeque<u8> = data.iter().copied().collect();
    let mut closed = false;
    let kinds = [Kind::Sub, Kind::Unsub, Kind::Pub, Kind::Presence, Kind::Ping, Kind::Malformed, Kind::Refresh, Kind::Binary];
    while let Some(b) = bytes.pop_front() {
        let arg = bytes.front().copied().unwrap_or(0);
        match b % 8 {
            0..=3 if !closed && h.sent.len() < 200 => {
                bytes.pop_front();
                h.queue(kinds[(b >> 3) as usize % 8], arg as usize % 4);
            }
            4 => h.deliver_queued(),
            5 => {
                bytes.pop_front();
                h.answer((arg >> 1) as usize, arg & 1 == 1);
            }
            6 if !closed => {
                bytes.pop_front();
                h.live(CHANNELS[arg as usize % 3]);
            }
            7 if !closed => {
                h.deliver_queued();
                h.close();
                closed = true;
            }
            _ => {}
        }
    }
    h.deliver_queued();
    // Everything answered (a held op is dispatched as the earlier ones are).
    let mut guard = 0;
    while !h.broker.st().asked.is_empty() {
        h.answer(0, false);
        guard += 1;
        assert!(guard < 10_000, "answers keep coming");
    }
    check(&h, closed);
});
