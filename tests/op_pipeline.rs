//! Pipelined ops (issue 12, item 1): every op gets exactly one reply, in
//! the order sent, and the outcome is as if the ops had been applied one at
//! a time: the replies, the publications received, presence and the final
//! subscriptions agree with a sequential model.
//!
//! The property tests send random op sequences (seeded: the seed is in
//! every failure message; `OP_PIPELINE_SEED=N` replays one) over every
//! transport, pipelined in one write (sometimes split at random bytes) and
//! one by one, against the memory broker and a real `redis-server`:
//!
//! - WebSocket `/ws`: subscribe, unsubscribe, publish (`data` sometimes
//!   `null`), presence, ping, and bad ops (malformed JSON, unknown op, a
//!   binary frame) on a channel set with a limit that is reached;
//! - SSE and long-poll: channels subscribed by URL (duplicates and bad
//!   names among them), ops over `POST /send` pipelined on one keep-alive
//!   connection or one request at a time.
//!
//! A bystander subscriber on the same gateway must receive every
//! publication made for it meanwhile, and answer a ping, after each case.
//!
//! The regressions below them are the lead's examples and the siblings
//! found on the other paths that wait for the broker.

#[path = "support/gateway.rs"]
mod gateway_support;
mod redis_util;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use gateway_support::{
    http_get, http_post_json, read_response_for, start_gateway, stop_gateway, url_encode,
    write_request, Client, HttpResponse, WAIT,
};
use serde_json::{json, Value};
use wsgate::server::Server;

/// Channels per connection in these tests (the sentinel included), so
/// that code 5 is reached.
const MAX_CHANNELS: usize = 4;
/// Channels a case uses (plus an invalid name).
const CHANNELS: usize = 4;

// ------------------------------------------------------------------ rng --

/// xorshift64*: reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }
}

/// The seeds of a property test: `OP_PIPELINE_SEED` alone, or `n` from a
/// fixed base (so that CI runs the same cases every time).
fn seeds(base: u64, n: u64) -> Vec<u64> {
    match std::env::var("OP_PIPELINE_SEED") {
        Ok(s) => vec![s.parse().expect("OP_PIPELINE_SEED is a number")],
        Err(_) => (0..n).map(|i| base + i).collect(),
    }
}

// -------------------------------------------------------------- brokers --

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Broker {
    Memory,
    Redis,
}

/// A gateway (2 workers) on the broker under test.
struct Gate {
    server: Server,
    broker: Broker,
    _redis: Option<redis_util::RedisServer>,
}

impl Gate {
    fn start(broker: Broker) -> Gate {
        let limit = |cfg: &mut wsgate::config::Config| {
            cfg.limits.max_channels_per_connection = MAX_CHANNELS;
            // Hundreds of subscribes a second by design: the channel rate
            // (tests/channel_bounds.rs) is not what these tests are about.
            cfg.limits.channel_rate = 0;
        };
        match broker {
            Broker::Memory => Gate {
                server: start_gateway(limit),
                broker,
                _redis: None,
            },
            Broker::Redis => {
                let redis = redis_util::RedisServer::start();
                Gate {
                    server: redis_util::node(&redis.url(), limit),
                    broker,
                    _redis: Some(redis),
                }
            }
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    fn stop(self) {
        stop_gateway(self.server);
    }
}

/// A `/ws` subscriber that must stay served: after each case it gets one
/// publication (offsets contiguous) and answers a ping.
struct Bystander {
    c: Client,
    channel: String,
    offset: u64,
}

impl Bystander {
    fn new(addr: SocketAddr) -> Bystander {
        let channel = "bystander".to_string();
        let mut c = Client::connect(addr, "/ws");
        let r = c.subscribe(&channel);
        Bystander {
            c,
            channel,
            offset: r["offset"].as_u64().expect("an offset"),
        }
    }

    fn check(&mut self, addr: SocketAddr, what: &str) {
        let r = http_post_json(
            addr,
            "/api/publish",
            &json!({ "channel": self.channel, "data": what }),
        );
        assert_eq!(r.status, 200, "bystander publish: {}", r.text());
        let (off, data) = self.c.next_publication(&self.channel);
        assert_eq!(
            (off, data),
            (self.offset + 1, json!(what)),
            "the bystander missed a publication"
        );
        self.offset = off;
        self.c.assert_alive();
    }
}

// ----------------------------------------------------------------- ops --

/// A random op of a WebSocket case. Channel index `CHANNELS` is a name the
/// gateway refuses.
#[derive(Clone, Copy, Debug)]
enum Op {
    Sub(usize),
    Unsub(usize),
    Pub(usize, bool),
    Presence(usize),
    Ping,
    BadJson,
    Dance,
    Binary,
}

fn random_ws_op(rng: &mut Rng) -> Op {
    // Mostly valid channels, a few bad names.
    let ch = |rng: &mut Rng| {
        if rng.percent(8) {
            CHANNELS
        } else {
            rng.below(CHANNELS)
        }
    };
    match rng.below(100) {
        0..=27 => Op::Sub(ch(rng)),
        28..=49 => Op::Unsub(ch(rng)),
        50..=74 => Op::Pub(ch(rng), rng.percent(20)),
        75..=86 => Op::Presence(ch(rng)),
        87..=92 => Op::Ping,
        93..=95 => Op::BadJson,
        96..=97 => Op::Dance,
        _ => Op::Binary,
    }
}

/// The case's channel names: `k < CHANNELS` valid, `CHANNELS` refused.
fn names(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = (0..CHANNELS).map(|k| format!("{prefix}-{k}")).collect();
    v.push(format!("{prefix} bad"));
    v
}

/// The op's text (or binary payload) with request id `i`.
fn op_payload(op: Op, i: usize, names: &[String]) -> (u8, Vec<u8>) {
    let text = match op {
        Op::Sub(k) => json!({"id": i, "op": "subscribe", "channel": names[k]}).to_string(),
        Op::Unsub(k) => json!({"id": i, "op": "unsubscribe", "channel": names[k]}).to_string(),
        Op::Pub(k, null) => {
            let data = if null { Value::Null } else { json!({ "i": i }) };
            json!({"id": i, "op": "publish", "channel": names[k], "data": data}).to_string()
        }
        Op::Presence(k) => json!({"id": i, "op": "presence", "channel": names[k]}).to_string(),
        Op::Ping => json!({"id": i, "op": "ping"}).to_string(),
        Op::BadJson => format!("{{\"id\":{i},\"op\":"),
        Op::Dance => json!({"id": i, "op": "dance"}).to_string(),
        Op::Binary => return (0x2, format!("{{\"id\":{i},\"op\":\"ping\"}}").into_bytes()),
    };
    (0x1, text.into_bytes())
}

/// The JSON text messages in `raw`, unmasked server frames.
fn server_messages(mut raw: &[u8]) -> Vec<Value> {
    let mut msgs = Vec::new();
    while raw.len() >= 2 {
        let (len, at) = match raw[1] & 0x7F {
            126 => (u16::from_be_bytes([raw[2], raw[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(raw[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        assert_eq!(raw[0], 0x81, "a whole text frame");
        msgs.push(serde_json::from_slice(&raw[at..at + len]).expect("JSON"));
        raw = &raw[at + len..];
    }
    assert!(raw.is_empty(), "a frame cut short");
    msgs
}

/// A masked client frame.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x5A, 0x13, 0xC7, 0x21];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

fn is_reply(m: &Value) -> bool {
    m.get("ok").is_some() || m.get("error").is_some()
}

// ------------------------------------------------------------ the model --

/// A channel as the sequential model sees it.
#[derive(Debug, Default)]
struct ModelChannel {
    /// Publications made (the channel's last offset).
    top: u64,
    /// Subscribed: the next offset due to arrive.
    next: Option<u64>,
    /// Data published at each offset.
    data: BTreeMap<u64, Value>,
}

/// The sequential model of one connection's channels; every check says
/// which case failed (`what`, with the seed).
struct Model {
    what: String,
    broker: Broker,
    names: Vec<String>,
    chans: BTreeMap<String, ModelChannel>,
}

impl Model {
    fn new(what: String, broker: Broker, names: &[String]) -> Model {
        Model {
            what,
            broker,
            names: names.to_vec(),
            chans: names[..CHANNELS]
                .iter()
                .map(|n| (n.clone(), ModelChannel::default()))
                .collect(),
        }
    }

    fn subscribed(&self) -> usize {
        self.chans.values().filter(|c| c.next.is_some()).count()
    }

    fn expect_error(&self, m: &Value, code: u64, id: Option<usize>, op: Op) {
        let w = &self.what;
        assert_eq!(m["error"]["code"], code, "{w}: {op:?}: {m}");
        assert_eq!(
            m.get("id").cloned(),
            id.map(|i| json!(i)),
            "{w}: {op:?}: {m}"
        );
    }

    /// The reply to op `i`.
    fn reply(&mut self, i: usize, op: Op, m: &Value) {
        let w = self.what.clone();
        assert!(
            is_reply(m),
            "{w}: op {i} {op:?}: expected its reply, got {m}"
        );
        let bad = |k: usize| k == CHANNELS;
        let ok = |m: &Value| {
            assert_eq!(m["ok"], true, "{w}: op {i} {op:?}: {m}");
            assert_eq!(m["id"], i, "{w}: op {i} {op:?}: replies in order: {m}");
        };
        match op {
            Op::Sub(k) if bad(k) => self.expect_error(m, 4, Some(i), op),
            Op::Sub(k) if self.chans[&self.names[k]].next.is_some() => {
                self.expect_error(m, 6, Some(i), op)
            }
            // The sentinel holds one place.
            Op::Sub(_) if self.subscribed() + 1 >= MAX_CHANNELS => {
                self.expect_error(m, 5, Some(i), op)
            }
            Op::Sub(k) => {
                ok(m);
                let c = self.chans.get_mut(&self.names[k]).expect("case channel");
                assert_eq!(m["channel"], self.names[k], "{w}: {m}");
                let at = m["offset"].as_u64().expect("an offset");
                match self.broker {
                    // Answered in the order of the broker's own offsets.
                    Broker::Memory => assert_eq!(at, c.top, "{w}: op {i}: position: {m}"),
                    // This node may not have seen its own latest
                    // publications yet: they follow the reply.
                    Broker::Redis => assert!(at <= c.top, "{w}: op {i}: position: {m}"),
                }
                c.next = Some(at + 1);
            }
            Op::Unsub(k) if bad(k) || self.chans[&self.names[k]].next.is_none() => {
                self.expect_error(m, 7, Some(i), op)
            }
            Op::Unsub(k) => {
                ok(m);
                assert_eq!(m["channel"], self.names[k], "{w}: {m}");
                let c = self.chans.get_mut(&self.names[k]).expect("case channel");
                let next = c.next.take().expect("subscribed");
                match self.broker {
                    Broker::Memory => assert_eq!(
                        next,
                        c.top + 1,
                        "{w}: op {i}: unsubscribed before publications made while subscribed arrived"
                    ),
                    // The node's own publication may still be on its way
                    // through Redis pub/sub when the unsubscribe is applied.
                    Broker::Redis => assert!(next <= c.top + 1, "{w}: op {i}"),
                }
            }
            Op::Pub(k, _) if bad(k) => self.expect_error(m, 4, Some(i), op),
            Op::Pub(k, null) => {
                ok(m);
                let c = self.chans.get_mut(&self.names[k]).expect("case channel");
                c.top += 1;
                assert_eq!(m["offset"], c.top, "{w}: op {i}: offsets in order: {m}");
                let data = if null { Value::Null } else { json!({ "i": i }) };
                c.data.insert(c.top, data);
            }
            Op::Presence(k) if bad(k) => self.expect_error(m, 4, Some(i), op),
            Op::Presence(k) => {
                ok(m);
                let here = self.chans[&self.names[k]].next.is_some() as u64;
                assert_eq!(m["clients"], here, "{w}: op {i}: presence agrees: {m}");
            }
            Op::Ping => {
                ok(m);
                assert_eq!(m["pong"], true, "{w}: {m}");
            }
            Op::BadJson => self.expect_error(m, 1, None, op),
            Op::Dance => self.expect_error(m, 2, Some(i), op),
            Op::Binary => self.expect_error(m, 3, None, op),
        }
    }

    /// A publication received.
    fn publication(&mut self, m: &Value) {
        let w = &self.what;
        let name = m["channel"].as_str().expect("a channel");
        let off = m["offset"].as_u64().expect("an offset");
        let c = self
            .chans
            .get_mut(name)
            .unwrap_or_else(|| panic!("{w}: publication on a channel of no case: {m}"));
        let next = c.next.unwrap_or_else(|| {
            panic!("{w}: publication while not subscribed (before the subscribe's reply or after the unsubscribe's): {m}")
        });
        assert_eq!(off, next, "{w}: offsets one by one, no duplicate: {m}");
        c.next = Some(next + 1);
        // Its data is checked once its publish's reply was read too.
        c.data.entry(off).or_insert_with(|| m["data"].clone());
        assert_eq!(c.data[&off], m["data"], "{w}: the data as published: {m}");
    }

    /// The end: every subscribed channel got everything up to its top.
    fn finish(&self) {
        for (name, c) in &self.chans {
            if let Some(next) = c.next {
                assert_eq!(next, c.top + 1, "{}: {name} missed publications", self.what);
            }
        }
    }
}

// ------------------------------------------------------------- WebSocket --

/// One WebSocket case: `ops` pipelined (in one write, or split at random
/// bytes) or one by one; then a publication on every channel through the
/// API, and the model checked against everything received.
fn ws_case(gate: &Gate, seed: u64, pipelined: bool) {
    let mut rng = Rng::new(seed);
    let prefix = format!("w{seed}");
    let names = names(&prefix);
    let sentinel = format!("{prefix}-sentinel");
    let what = format!(
        "seed {seed} ({:?}, {})",
        gate.broker,
        if pipelined { "pipelined" } else { "one by one" }
    );
    let n = 5 + rng.below(40);
    let ops: Vec<Op> = (0..n).map(|_| random_ws_op(&mut rng)).collect();
    let mut c = Client::connect(gate.addr(), &format!("/ws?channel={sentinel}"));
    let mut model = Model::new(what.clone(), gate.broker, &names);
    let mut msgs: Vec<Value> = Vec::new();
    let first = c.next();
    assert_eq!(
        (first["ok"].clone(), first["channel"].clone()),
        (json!(true), json!(sentinel)),
        "{what}: the connect reply first: {first}"
    );
    let read = |c: &mut Client, what: &str| match c.try_next(WAIT) {
        Ok(m) => m,
        Err(e) => panic!("{what}: nothing more within {WAIT:?} ({e:?})"),
    };
    if pipelined {
        let mut bytes = Vec::new();
        for (i, &op) in ops.iter().enumerate() {
            let (opcode, payload) = op_payload(op, i, &names);
            bytes.extend(client_frame(opcode, &payload));
        }
        let sock = c.ws.get_mut();
        if rng.percent(30) {
            // Split anywhere: frames arrive in pieces.
            let cut = 1 + rng.below(bytes.len() - 1);
            sock.write_all(&bytes[..cut]).unwrap();
            sock.flush().unwrap();
            std::thread::sleep(Duration::from_millis(2));
            sock.write_all(&bytes[cut..]).unwrap();
        } else {
            sock.write_all(&bytes).unwrap();
        }
        let mut replies = 0;
        while replies < n {
            let m = read(&mut c, &what);
            replies += is_reply(&m) as usize;
            msgs.push(m);
        }
    } else {
        for (i, &op) in ops.iter().enumerate() {
            let (opcode, payload) = op_payload(op, i, &names);
            c.ws.get_mut()
                .write_all(&client_frame(opcode, &payload))
                .unwrap();
            loop {
                let m = read(&mut c, &what);
                let done = is_reply(&m);
                msgs.push(m);
                if done {
                    break;
                }
            }
        }
    }
    // A publication on every channel, then on the sentinel: when the
    // sentinel's arrives, any other due is here.
    for name in &names[..CHANNELS] {
        let r = http_post_json(
            gate.addr(),
            "/api/publish",
            &json!({ "channel": name, "data": { "final": name } }),
        );
        assert_eq!(r.status, 200, "{what}: {}", r.text());
    }
    let r = http_post_json(
        gate.addr(),
        "/api/publish",
        &json!({ "channel": sentinel, "data": "end" }),
    );
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    loop {
        let m = read(&mut c, &what);
        if m["channel"] == sentinel {
            assert_eq!(m["data"], "end", "{what}: {m}");
            break;
        }
        msgs.push(m);
    }
    // Check everything in the order received.
    let mut replies = ops.iter().enumerate();
    for m in &msgs {
        if is_reply(m) {
            let (i, &op) = replies
                .next()
                .unwrap_or_else(|| panic!("{what}: a reply too many: {m}"));
            model.reply(i, op, m);
        } else if m.get("offset").is_some() && m.get("data").is_some() {
            model.publication(m);
        } else {
            panic!("{what}: unexpected message {m}");
        }
    }
    assert!(replies.next().is_none(), "{what}: replies missing");
    for name in &names[..CHANNELS] {
        let ch = model.chans.get_mut(name).expect("case channel");
        ch.top += 1;
        ch.data.insert(ch.top, json!({ "final": name }));
    }
    // The final publications were checked on arrival against `next`; their
    // data now.
    for m in msgs.iter().filter(|m| !is_reply(m)) {
        let name = m["channel"].as_str().unwrap_or_default();
        let ch = &model.chans[name];
        let off = m["offset"].as_u64().unwrap_or_default();
        assert_eq!(ch.data.get(&off), Some(&m["data"]), "{what}: data of {m}");
    }
    model.finish();
    // Presence agrees with the replies.
    for (name, ch) in &model.chans {
        let want = ch.next.is_some() as u64;
        let mut got = Value::Null;
        let ok = wait_for_value(|| {
            got = api_presence(gate.addr(), name);
            got["clients"] == want
        });
        assert!(
            ok,
            "{what}: /api/presence of {name}: {got}, want {want} client(s)"
        );
    }
    c.close();
    // Closed: nobody is left anywhere.
    for name in model.chans.keys() {
        let mut got = Value::Null;
        let ok = wait_for_value(|| {
            got = api_presence(gate.addr(), name);
            got["clients"] == 0
        });
        assert!(ok, "{what}: {name} after the close: {got}");
    }
}

fn api_presence(addr: SocketAddr, channel: &str) -> Value {
    let r = http_get(
        addr,
        &format!("/api/presence?channel={}", url_encode(channel)),
    );
    assert_eq!(r.status, 200, "presence: {}", r.text());
    r.json()
}

/// Poll `cond` until it holds or [`WAIT`] passes.
fn wait_for_value(mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + WAIT;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ws_property(broker: Broker, base: u64, pipelined: u64, one_by_one: u64) {
    let gate = Gate::start(broker);
    let mut by = Bystander::new(gate.addr());
    for seed in seeds(base, pipelined) {
        ws_case(&gate, seed, true);
        by.check(gate.addr(), &format!("after {seed}"));
    }
    for seed in seeds(base + 10_000, one_by_one) {
        ws_case(&gate, seed, false);
        by.check(gate.addr(), &format!("after {seed}"));
    }
    by.c.close();
    gate.stop();
}

#[test]
fn ws_random_ops_match_the_sequential_model_memory() {
    ws_property(Broker::Memory, 1_000, 200, 50);
}

#[test]
fn ws_random_ops_match_the_sequential_model_redis() {
    ws_property(Broker::Redis, 2_000, 60, 15);
}

// -------------------------------------------------- SSE, long-poll, /send --

/// A `POST /send` op of a fallback case.
#[derive(Clone, Copy, Debug)]
enum SendOp {
    Pub(usize, bool),
    Presence(usize),
    Ping,
    BadJson,
    Subscribe(usize),
}

fn random_send_op(rng: &mut Rng) -> SendOp {
    let ch = |rng: &mut Rng| {
        if rng.percent(8) {
            CHANNELS
        } else {
            rng.below(CHANNELS)
        }
    };
    match rng.below(100) {
        0..=54 => SendOp::Pub(ch(rng), rng.percent(15)),
        55..=79 => SendOp::Presence(ch(rng)),
        80..=89 => SendOp::Ping,
        90..=94 => SendOp::BadJson,
        _ => SendOp::Subscribe(ch(rng)),
    }
}

fn send_body(op: SendOp, i: usize, names: &[String]) -> Vec<u8> {
    match op {
        SendOp::Pub(k, null) => {
            let data = if null { Value::Null } else { json!({ "i": i }) };
            json!({"id": i, "op": "publish", "channel": names[k], "data": data})
        }
        SendOp::Presence(k) => json!({"id": i, "op": "presence", "channel": names[k]}),
        SendOp::Ping => json!({"id": i, "op": "ping"}),
        SendOp::BadJson => return format!("{{\"id\":{i},").into_bytes(),
        SendOp::Subscribe(k) => json!({"id": i, "op": "subscribe", "channel": names[k]}),
    }
    .to_string()
    .into_bytes()
}

/// Send the ops over `POST /send`: all requests in one write on one
/// keep-alive connection, or one request at a time.
fn send_ops(
    addr: SocketAddr,
    bodies: &[Vec<u8>],
    pipelined: bool,
    what: &str,
) -> Vec<HttpResponse> {
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_write_timeout(Some(WAIT)).unwrap();
    let mut buf = Vec::new();
    if pipelined {
        let mut all = Vec::new();
        for b in bodies {
            let mut one = Vec::new();
            let head = format!(
                "POST /send HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                b.len()
            );
            one.extend_from_slice(head.as_bytes());
            one.extend_from_slice(b);
            all.extend(one);
        }
        sock.write_all(&all).unwrap();
        (0..bodies.len())
            .map(|i| read_response_for(&mut sock, &mut buf, &format!("{what}: /send {i}")))
            .collect()
    } else {
        bodies
            .iter()
            .enumerate()
            .map(|(i, b)| {
                write_request(&mut sock, "POST", "/send", &[], b, false);
                read_response_for(&mut sock, &mut buf, &format!("{what}: /send {i}"))
            })
            .collect()
    }
}

/// Check the `/send` answers against the model: `here(k)` says whether the
/// stream is a member of channel `k`'s presence (`None`: either).
fn check_send_answers(
    what: &str,
    ops: &[SendOp],
    answers: &[HttpResponse],
    tops: &mut [u64],
    data: &mut [BTreeMap<u64, Value>],
    here: impl Fn(usize) -> Option<bool>,
) {
    for (i, (op, r)) in ops.iter().zip(answers).enumerate() {
        let v = r.json();
        let w = format!("{what}: /send {i} {op:?}: {} {v}", r.status);
        match *op {
            SendOp::Pub(k, _) | SendOp::Presence(k) if k == CHANNELS => {
                assert_eq!(
                    (r.status, v["error"]["code"].clone(), v["id"].clone()),
                    (400, json!(4), json!(i)),
                    "{w}"
                )
            }
            SendOp::Pub(k, null) => {
                assert_eq!(
                    (r.status, v["ok"].clone(), v["id"].clone()),
                    (200, json!(true), json!(i)),
                    "{w}"
                );
                tops[k] += 1;
                assert_eq!(v["offset"], tops[k], "{w}");
                data[k].insert(tops[k], if null { Value::Null } else { json!({ "i": i }) });
            }
            SendOp::Presence(k) => {
                assert_eq!((r.status, v["id"].clone()), (200, json!(i)), "{w}");
                if let Some(h) = here(k) {
                    assert_eq!(v["clients"], h as u64, "{w}");
                }
            }
            SendOp::Ping => assert_eq!(
                (r.status, v),
                (200, json!({"id": i, "ok": true, "pong": true})),
                "{w}"
            ),
            SendOp::BadJson => assert_eq!(
                (r.status, v["error"]["code"].clone()),
                (400, json!(1)),
                "{w}"
            ),
            SendOp::Subscribe(_) => {
                assert_eq!(
                    (r.status, v["error"]["code"].clone(), v["id"].clone()),
                    (400, json!(3), json!(i)),
                    "{w}"
                )
            }
        }
    }
}

/// URL channels of a stream: 1 to 3 picks among the case's channels and
/// the bad name (duplicates allowed), then the sentinel.
fn stream_channels(rng: &mut Rng, names: &[String], sentinel: &str) -> Vec<String> {
    let n = 1 + rng.below(3);
    let mut v: Vec<String> = (0..n)
        .map(|_| {
            if rng.percent(12) {
                names[CHANNELS].clone()
            } else {
                names[rng.below(CHANNELS)].clone()
            }
        })
        .collect();
    v.push(sentinel.to_string());
    v
}

fn query(channels: &[String]) -> String {
    channels
        .iter()
        .map(|c| format!("channel={}", url_encode(c)))
        .collect::<Vec<_>>()
        .join("&")
}

/// An SSE stream read event by event.
struct Sse {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Sse {
    fn open(addr: SocketAddr, target: &str) -> Sse {
        let mut sock = TcpStream::connect(addr).unwrap();
        write!(sock, "GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut s = Sse {
            sock,
            buf: Vec::new(),
        };
        let head_end = loop {
            if let Some(p) = s.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            s.fill();
        };
        let head = String::from_utf8_lossy(&s.buf[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "SSE refused: {head}");
        s.buf.drain(..head_end);
        s
    }

    fn fill(&mut self) {
        self.sock.set_read_timeout(Some(WAIT)).unwrap();
        let mut chunk = [0u8; 16384];
        match self.sock.read(&mut chunk) {
            Ok(0) => panic!("the SSE stream ended"),
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!(
                "SSE read: {e} (have {:?})",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// The next event: (event name, data as JSON); comments skipped.
    fn next(&mut self) -> (String, Value) {
        loop {
            while let Some(p) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.buf[..p].to_vec()).expect("UTF-8 events");
                self.buf.drain(..p + 2);
                let mut event = "message".to_string();
                let mut data = None;
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event: ") {
                        event = e.to_string();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(d).expect("JSON data"));
                    }
                }
                if let Some(d) = data {
                    return (event, d);
                }
            }
            self.fill();
        }
    }
}

/// One SSE case: the stream subscribes by URL; ops over `/send`; the
/// stream must get exactly the publications of its channels.
fn sse_case(gate: &Gate, seed: u64, pipelined: bool) {
    let mut rng = Rng::new(seed);
    let prefix = format!("s{seed}");
    let names = names(&prefix);
    let sentinel = format!("{prefix}-sentinel");
    let what = format!(
        "SSE seed {seed} ({:?}, {})",
        gate.broker,
        if pipelined { "pipelined" } else { "one by one" }
    );
    let url = stream_channels(&mut rng, &names, &sentinel);
    let mut sse = Sse::open(gate.addr(), &format!("/sse?{}", query(&url)));
    // Each URL channel, in order: subscribed, or an error event (a bad
    // name: code 4; named again: code 6).
    let mut subscribed = BTreeSet::new();
    let mut errors = Vec::new();
    for c in &url {
        if c == &names[CHANNELS] {
            errors.push(4);
        } else if !subscribed.insert(c.clone()) {
            errors.push(6);
        }
    }
    let (mut got_sub, mut got_err) = (BTreeSet::new(), Vec::new());
    while got_sub.len() < subscribed.len() || got_err.len() < errors.len() {
        let (event, d) = sse.next();
        match event.as_str() {
            "subscribed" => {
                let ch = d["channel"].as_str().unwrap().to_string();
                assert!(subscribed.contains(&ch), "{what}: {d}");
                assert_eq!(d["offset"], 0, "{what}: {d}");
                assert!(got_sub.insert(ch), "{what}: subscribed twice: {d}");
            }
            "error" => got_err.push(d["error"]["code"].as_u64().unwrap()),
            _ => panic!("{what}: unexpected event {event} {d}"),
        }
    }
    // Refusals are told at once, in the URL's order.
    assert_eq!(got_err, errors, "{what}: error events");
    // The ops.
    let n = 3 + rng.below(25);
    let ops: Vec<SendOp> = (0..n).map(|_| random_send_op(&mut rng)).collect();
    let bodies: Vec<Vec<u8>> = ops
        .iter()
        .enumerate()
        .map(|(i, &o)| send_body(o, i, &names))
        .collect();
    let answers = send_ops(gate.addr(), &bodies, pipelined, &what);
    let mut tops = vec![0u64; CHANNELS];
    let mut data = vec![BTreeMap::new(); CHANNELS];
    check_send_answers(&what, &ops, &answers, &mut tops, &mut data, |k| {
        Some(subscribed.contains(&names[k]))
    });
    let r = http_post_json(
        gate.addr(),
        "/api/publish",
        &json!({"channel": sentinel, "data": "end"}),
    );
    assert_eq!(r.status, 200, "{what}");
    // Exactly the publications of the stream's channels, in order, then
    // the sentinel's.
    let mut next: BTreeMap<String, u64> = subscribed.iter().map(|c| (c.clone(), 1)).collect();
    loop {
        let (event, d) = sse.next();
        assert_eq!(event, "message", "{what}: {d}");
        let ch = d["channel"].as_str().unwrap().to_string();
        if ch == sentinel {
            break;
        }
        let k = names.iter().position(|n| *n == ch).expect("a case channel");
        let n = next
            .get_mut(&ch)
            .unwrap_or_else(|| panic!("{what}: not subscribed: {d}"));
        assert_eq!(d["offset"], *n, "{what}: {d}");
        assert_eq!(Some(&d["data"]), data[k].get(n), "{what}: {d}");
        *n += 1;
    }
    for (ch, n) in &next {
        if let Some(k) = names.iter().position(|x| x == ch) {
            assert_eq!(*n, tops[k] + 1, "{what}: {ch} missed publications");
        }
    }
}

/// One long-poll case: a short poll subscribes by URL and hands a cursor;
/// ops over `/send`; the next poll with the cursor gets exactly the
/// publications of the channels the cursor holds; presence ends empty.
fn poll_case(gate: &Gate, seed: u64, pipelined: bool) {
    let mut rng = Rng::new(seed);
    let prefix = format!("p{seed}");
    let names = names(&prefix);
    let sentinel = format!("{prefix}-sentinel");
    let what = format!(
        "poll seed {seed} ({:?}, {})",
        gate.broker,
        if pipelined { "pipelined" } else { "one by one" }
    );
    let url = stream_channels(&mut rng, &names, &sentinel);
    let first = http_get(gate.addr(), &format!("/poll?{}&wait=0", query(&url)));
    assert_eq!(first.status, 200, "{what}: {}", first.text());
    let v = first.json();
    let cursor = v["cursor"].as_str().expect("a cursor").to_string();
    let held = wsgate::http::resume::ResumeToken::decode(&cursor, 16).expect("a valid cursor");
    // A refused channel answers the poll at once; a channel whose subscribe
    // was not answered by then has no position in the cursor.
    let early = v.get("errors").is_some();
    for (ch, pos) in &held.positions {
        assert!(url.contains(ch) && ch != &names[CHANNELS], "{what}: {v}");
        assert_eq!(pos.offset, 0, "{what}: {v}");
    }
    if !early {
        let distinct: BTreeSet<&String> = url.iter().collect();
        assert_eq!(
            held.positions.len(),
            distinct.len(),
            "{what}: every channel in the cursor: {v}"
        );
    }
    let n = 3 + rng.below(25);
    let ops: Vec<SendOp> = (0..n).map(|_| random_send_op(&mut rng)).collect();
    let bodies: Vec<Vec<u8>> = ops
        .iter()
        .enumerate()
        .map(|(i, &o)| send_body(o, i, &names))
        .collect();
    let answers = send_ops(gate.addr(), &bodies, pipelined, &what);
    let mut tops = vec![0u64; CHANNELS];
    let mut data = vec![BTreeMap::new(); CHANNELS];
    // No poll is held: nobody is present, unless a late subscribe answer of
    // an early-answered poll is still being undone (Redis: asynchronous).
    let maybe = gate.broker == Broker::Redis && early;
    check_send_answers(&what, &ops, &answers, &mut tops, &mut data, |_| {
        (!maybe).then_some(false)
    });
    // The channels the cursor holds, with it.
    let again: Vec<String> = held.positions.iter().map(|(c, _)| c.clone()).collect();
    let second = http_get(
        gate.addr(),
        &format!("/poll?{}&cursor={cursor}&wait=0", query(&again)),
    );
    assert_eq!(second.status, 200, "{what}: {}", second.text());
    let v = second.json();
    let mut next: BTreeMap<&str, u64> = held
        .positions
        .iter()
        .map(|(c, _)| (c.as_str(), 1))
        .collect();
    for m in v["messages"].as_array().expect("messages") {
        let ch = m["channel"].as_str().unwrap();
        let k = names.iter().position(|n| n == ch).expect("a case channel");
        let n = next
            .get_mut(ch)
            .unwrap_or_else(|| panic!("{what}: not in the cursor: {m}"));
        assert_eq!(m["offset"], *n, "{what}: {m}");
        assert_eq!(Some(&m["data"]), data[k].get(n), "{what}: {m}");
        *n += 1;
    }
    for (ch, n) in &next {
        if let Some(k) = names.iter().position(|x| x == ch) {
            assert_eq!(*n, tops[k] + 1, "{what}: {ch} missed publications: {v}");
        }
    }
    for name in &names[..CHANNELS] {
        let mut got = Value::Null;
        let ok = wait_for_value(|| {
            got = api_presence(gate.addr(), name);
            got["clients"] == 0
        });
        assert!(ok, "{what}: presence of {name} once no poll is held: {got}");
    }
}

fn stream_property(broker: Broker, base: u64, cases: u64) {
    let gate = Gate::start(broker);
    let mut by = Bystander::new(gate.addr());
    for seed in seeds(base, cases) {
        let pipelined = seed % 2 == 0;
        sse_case(&gate, seed, pipelined);
        poll_case(&gate, seed, pipelined);
        by.check(gate.addr(), &format!("after {seed}"));
    }
    by.c.close();
    gate.stop();
}

#[test]
fn sse_poll_and_send_match_the_model_memory() {
    stream_property(Broker::Memory, 3_000, 40);
}

#[test]
fn sse_poll_and_send_match_the_model_redis() {
    stream_property(Broker::Redis, 4_000, 16);
}

// ----------------------------------------------------------- regressions --

/// setsockopt(2) on a test socket.
fn set_socket_option<T>(sock: &TcpStream, level: libc::c_int, name: libc::c_int, value: &T) {
    use std::os::fd::AsRawFd;
    // SAFETY: a socket we own, and a pointer to a live `T` of the size given.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

/// Write `ops` (JSON texts) in one TCP write.
fn write_ops(c: &mut Client, ops: &[Value]) {
    let mut bytes = Vec::new();
    for op in ops {
        bytes.extend(client_frame(0x1, op.to_string().as_bytes()));
    }
    c.ws.get_mut().write_all(&bytes).unwrap();
}

/// The next `n` replies (publications in between are returned apart).
fn replies(c: &mut Client, n: usize) -> (Vec<Value>, Vec<Value>) {
    let (mut r, mut pubs) = (Vec::new(), Vec::new());
    while r.len() < n {
        let m = c.next();
        if is_reply(&m) {
            r.push(m);
        } else {
            pubs.push(m);
        }
    }
    (r, pubs)
}

fn ids(replies: &[Value]) -> Vec<Value> {
    replies.iter().map(|m| m["id"].clone()).collect()
}

/// The lead's examples: `subscribe r, unsubscribe r, subscribe r` and
/// `subscribe a, unsubscribe b, subscribe c`, each in one write. Before the
/// fix, an answer was matched by channel name: the second subscribe's reply
/// never came, and the channel kept delivering while presence said 0.
fn lead_examples(broker: Broker) {
    let gate = Gate::start(broker);
    let addr = gate.addr();
    let mut by = Bystander::new(addr);
    let mut c = Client::connect(addr, "/ws");
    let sub = |id: u64, ch: &str| json!({"id": id, "op": "subscribe", "channel": ch});
    let unsub = |id: u64, ch: &str| json!({"id": id, "op": "unsubscribe", "channel": ch});

    write_ops(&mut c, &[sub(1, "r"), unsub(2, "r"), sub(3, "r")]);
    let (r, _) = replies(&mut c, 3);
    assert_eq!(ids(&r), [1, 2, 3], "{r:?}");
    assert!(r.iter().all(|m| m["ok"] == true), "{r:?}");
    assert_eq!(api_presence(addr, "r")["clients"], 1);
    let p = c.call(json!({"op": "presence", "channel": "r"}));
    assert_eq!(p["clients"], 1, "{p}");
    let off = http_post_json(addr, "/api/publish", &json!({"channel": "r", "data": 1})).json()
        ["offset"]
        .clone();
    assert_eq!(c.next_publication("r"), (off.as_u64().unwrap(), json!(1)));

    write_ops(&mut c, &[unsub(4, "r"), sub(5, "r"), unsub(6, "r")]);
    let (r, _) = replies(&mut c, 3);
    assert_eq!(ids(&r), [4, 5, 6], "{r:?}");
    assert!(r.iter().all(|m| m["ok"] == true), "{r:?}");
    // Unsubscribed: presence 0, nothing delivered, and a new subscribe is
    // a subscribe (not code 6).
    assert!(wait_for_value(|| api_presence(addr, "r")["clients"] == 0));
    http_post_json(addr, "/api/publish", &json!({"channel": "r", "data": 2}));
    c.assert_nothing_pending();
    let again = c.call(sub(7, "r"));
    assert_eq!(again["ok"], true, "{again}");

    write_ops(&mut c, &[sub(8, "a"), unsub(9, "b"), sub(10, "c")]);
    let (r, _) = replies(&mut c, 3);
    assert_eq!(ids(&r), [8, 9, 10], "{r:?}");
    assert_eq!(
        (
            r[0]["ok"].clone(),
            r[1]["error"]["code"].clone(),
            r[2]["ok"].clone()
        ),
        (json!(true), json!(7), json!(true)),
        "{r:?}"
    );
    for (ch, n) in [("a", 1), ("b", 0), ("c", 1), ("r", 1)] {
        assert_eq!(api_presence(addr, ch)["clients"], n, "{ch}");
    }
    by.check(addr, "lead examples");
    c.close();
    for ch in ["a", "c", "r"] {
        assert!(
            wait_for_value(|| api_presence(addr, ch)["clients"] == 0),
            "{ch} after close"
        );
    }
    by.c.close();
    gate.stop();
}

#[test]
fn lead_examples_in_one_write_memory() {
    lead_examples(Broker::Memory);
}

#[test]
fn lead_examples_in_one_write_redis() {
    lead_examples(Broker::Redis);
}

/// A reply answered at once (ping, an error) waits for an earlier one the
/// broker answers: before the fix the pong overtook the publish's reply.
#[test]
fn an_immediate_reply_does_not_overtake_a_broker_answer() {
    let gate = Gate::start(Broker::Memory);
    let mut c = Client::connect(gate.addr(), "/ws");
    write_ops(
        &mut c,
        &[
            json!({"id": 1, "op": "publish", "channel": "x", "data": 1}),
            json!({"id": 2, "op": "ping"}),
            json!({"id": 3, "op": "presence", "channel": "x"}),
            json!({"id": 4, "op": "unsubscribe", "channel": "x"}),
            json!({"id": 5, "op": "subscribe", "channel": "bad name"}),
        ],
    );
    let (r, _) = replies(&mut c, 5);
    assert_eq!(ids(&r), [1, 2, 3, 4, 5], "{r:?}");
    assert_eq!(r[0]["offset"], 1);
    assert_eq!(
        (r[3]["error"]["code"].clone(), r[4]["error"]["code"].clone()),
        (json!(7), json!(4))
    );
    c.close();
    gate.stop();
}

/// A long-poll answered before its subscribe was (its wait ran out while
/// Redis was stalled) left the late answer to whatever the keep-alive
/// connection did next: it was dropped, and the subscription and its
/// presence stayed in the broker for good. Matched by tag, a late answer
/// is undone; the next request gets its own answer, in order.
#[test]
fn a_late_subscribe_answer_after_a_long_poll_is_undone() {
    let redis = redis_util::RedisServer::start();
    let server = redis_util::node(&redis.url(), |cfg| {
        cfg.broker.command_timeout = wsgate::config::Millis(30_000);
    });
    let addr = server.local_addr();
    let mut by = Bystander::new(addr);
    redis.pause();
    let mut sock = TcpStream::connect(addr).unwrap();
    let mut req = b"GET /poll?channel=late&wait=0.2 HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
    let body = json!({"channel": "other", "data": 1}).to_string();
    req.extend(
        format!(
            "POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    );
    sock.write_all(&req).unwrap();
    let mut buf = Vec::new();
    // The poll's wait runs out: answered with no position for `late`.
    let poll = read_response_for(&mut sock, &mut buf, "the poll");
    assert_eq!(poll.status, 200, "{}", poll.text());
    assert_eq!(poll.json()["messages"], json!([]), "{}", poll.text());
    redis.resume();
    let publish = read_response_for(&mut sock, &mut buf, "the publish");
    assert_eq!(publish.status, 200, "{}", publish.text());
    assert_eq!(
        publish.json()["offset"],
        1,
        "the publish's own answer: {}",
        publish.text()
    );
    // The poll's session is gone: its subscription must go too.
    let mut got = Value::Null;
    assert!(
        wait_for_value(|| {
            got = api_presence(addr, "late");
            got["clients"] == 0
        }),
        "presence of the poll's channel after the poll: {got}"
    );
    let stats = http_get(addr, "/api/stats").json();
    assert_eq!(stats["subscriptions"], 1, "only the bystander's: {stats}");
    // The connection serves on.
    write_request(
        &mut sock,
        "GET",
        "/api/presence?channel=other",
        &[],
        b"",
        false,
    );
    let r = read_response_for(&mut sock, &mut buf, "presence");
    assert_eq!(r.status, 200);
    by.check(addr, "late answer");
    by.c.close();
    stop_gateway(server);
}

/// Subscribes still at the broker when the connection closes (a close
/// frame, or a reset, in the same write) are undone, presence included.
fn close_with_answers_pending(broker: Broker) {
    let gate = Gate::start(broker);
    let addr = gate.addr();
    let mut by = Bystander::new(addr);
    for reset in [false, true] {
        let mut c = Client::connect(addr, "/ws?user=leaver");
        let _ = c.connect_reply("$user:leaver");
        let mut bytes = Vec::new();
        for k in 0..3 {
            let op = json!({"id": k, "op": "subscribe", "channel": format!("gone{k}")});
            bytes.extend(client_frame(0x1, op.to_string().as_bytes()));
        }
        if !reset {
            bytes.extend(client_frame(0x8, &1000u16.to_be_bytes()));
        }
        let sock = c.ws.get_mut();
        sock.write_all(&bytes).unwrap();
        if reset {
            // Closing now sends RST.
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            set_socket_option(sock, libc::SOL_SOCKET, libc::SO_LINGER, &linger);
        }
        drop(c);
        for k in 0..3 {
            let ch = format!("gone{k}");
            let mut got = Value::Null;
            assert!(
                wait_for_value(|| {
                    got = api_presence(addr, &ch);
                    got["clients"] == 0
                }),
                "{broker:?} reset={reset}: {ch}: {got}"
            );
        }
        // Nothing left subscribed: the worker's index agrees.
        let mut stats = Value::Null;
        assert!(
            wait_for_value(|| {
                stats = http_get(addr, "/api/stats").json();
                stats["subscriptions"] == 1 // the bystander's
            }),
            "{broker:?} reset={reset}: {stats}"
        );
        by.check(addr, "after a close with answers pending");
    }
    by.c.close();
    gate.stop();
}

#[test]
fn close_with_answers_pending_undoes_them_memory() {
    close_with_answers_pending(Broker::Memory);
}

#[test]
fn close_with_answers_pending_undoes_them_redis() {
    close_with_answers_pending(Broker::Redis);
}

/// A client that writes ops and half-closes (FIN in the same segment) is
/// owed every reply, the broker's included: before the fix, with nothing
/// queued yet at the EOF, the connection was dropped and they were lost.
#[test]
fn a_half_closed_client_gets_the_broker_answers() {
    let gate = Gate::start(Broker::Memory);
    let addr = gate.addr();
    let mut c = Client::connect(addr, "/ws");
    let mut bytes = Vec::new();
    for op in [
        json!({"id": 1, "op": "publish", "channel": "h", "data": 1}),
        json!({"id": 2, "op": "presence", "channel": "h"}),
        json!({"id": 3, "op": "subscribe", "channel": "h"}),
    ] {
        bytes.extend(client_frame(0x1, op.to_string().as_bytes()));
    }
    let sock = c.ws.get_mut();
    // TCP_CORK holds the data until the shutdown sets FIN on its segment.
    set_socket_option(sock, libc::IPPROTO_TCP, libc::TCP_CORK, &(1 as libc::c_int));
    sock.write_all(&bytes).unwrap();
    sock.shutdown(std::net::Shutdown::Write).unwrap();
    // Everything the server sends, to its EOF, as frames.
    let mut raw = Vec::new();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock.read_to_end(&mut raw)
        .expect("the server writes the replies, then closes");
    let got = server_messages(&raw);
    assert_eq!(ids(&got), [1, 2, 3], "{got:?}");
    assert!(got.iter().all(|m| m["ok"] == true), "{got:?}");
    gate.stop();
}

/// A client writing ops far faster than the broker answers (Redis stalled)
/// is read only while fewer than `max_pending_ops` (1,024) are unanswered:
/// the gateway's memory for it stays bounded, others are served, and once
/// Redis answers, every op gets its reply, in order.
#[test]
fn pipelined_ops_are_read_at_the_pace_of_their_answers() {
    let redis = redis_util::RedisServer::start();
    let server = redis_util::node(&redis.url(), |cfg| {
        cfg.broker.command_timeout = wsgate::config::Millis(60_000);
    });
    let addr = server.local_addr();
    let mut by = Bystander::new(addr);
    let mut c = Client::connect(addr, "/ws");
    c.assert_alive();
    let before = http_get(addr, "/api/stats").json()["messages_in"]
        .as_u64()
        .unwrap();
    redis.pause();
    const N: usize = 5_000;
    let mut bytes = Vec::new();
    for i in 0..N {
        let op = json!({"id": i, "op": "publish", "channel": "flood", "data": i});
        bytes.extend(client_frame(0x1, op.to_string().as_bytes()));
    }
    let mut writer = c.ws.get_ref().try_clone().unwrap();
    let w = std::thread::spawn(move || writer.write_all(&bytes));
    // Read up to the bound, plus what one read of 64 KiB brings (ops of
    // about 60 bytes), plus the other clients' pings below: no further while
    // Redis is stalled.
    let per_read = 64 * 1024 / 50;
    let bound = (1024 + per_read + 100) as u64;
    let read = || {
        http_get(addr, "/api/stats").json()["messages_in"]
            .as_u64()
            .unwrap()
            - before
    };
    assert!(
        wait_for_value(|| read() >= 1024),
        "the gateway reads up to the bound: {}",
        read()
    );
    // Others are served meanwhile (pings need no broker).
    let mut other = Client::connect(addr, "/ws");
    for _ in 0..20 {
        other.assert_alive();
    }
    // Nothing to wait for: the gateway must *not* read on. Give it time to.
    std::thread::sleep(Duration::from_millis(500));
    let held = read();
    assert!(
        held <= bound,
        "{held} ops read while at most {bound} may be unanswered"
    );
    redis.resume();
    let mut next = 0;
    while next < N {
        let m = c.next();
        assert_eq!(m["id"], next, "replies in order: {m}");
        assert_eq!(m["offset"], next + 1, "{m}");
        next += 1;
    }
    w.join().unwrap().expect("every op written");
    c.assert_alive();
    by.check(addr, "after the flood");
    other.close();
    c.close();
    by.c.close();
    stop_gateway(server);
}

/// A subscribe the broker answers while an earlier op still waits (Redis:
/// a channel this node already follows is answered at once; a publish
/// waits for Redis) is in the worker's index from its answer on, so that
/// nothing is missed; the publications reaching it wait behind its reply.
/// Checked under a stream of publications on that channel: none arrives
/// before the subscribe's reply, and the first after it is the reply's
/// offset + 1 (no gap).
#[test]
fn publications_wait_behind_a_subscribe_reply_that_waits() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let gate = Gate::start(Broker::Redis);
    let addr = gate.addr();
    // This node follows "busy" already.
    let mut holder = Client::connect(addr, "/ws?channel=busy");
    let _ = holder.connect_reply("busy");
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sock = TcpStream::connect(addr).unwrap();
            let mut buf = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = json!({"channel": "busy", "data": n}).to_string();
                write_request(
                    &mut sock,
                    "POST",
                    "/api/publish",
                    &[],
                    body.as_bytes(),
                    false,
                );
                let r = read_response_for(&mut sock, &mut buf, "busy publish");
                assert_eq!(r.status, 200, "{}", r.text());
                n += 1;
            }
            n
        })
    };
    let mut c = Client::connect(addr, "/ws");
    for round in 0..150u64 {
        let base = round * 10;
        write_ops(
            &mut c,
            &[
                json!({"id": base + 1, "op": "publish", "channel": "slow", "data": round}),
                json!({"id": base + 2, "op": "subscribe", "channel": "busy"}),
                json!({"id": base + 3, "op": "ping"}),
            ],
        );
        let mut expect = vec![base + 1, base + 2, base + 3].into_iter();
        let mut next_busy: Option<u64> = None;
        let mut want = expect.next();
        while let Some(id) = want {
            let m = c.next();
            if is_reply(&m) {
                assert_eq!(m["id"], id, "round {round}: replies in order: {m}");
                assert!(m.get("error").is_none(), "round {round}: {m}");
                if id == base + 2 {
                    next_busy = Some(m["offset"].as_u64().unwrap() + 1);
                }
                want = expect.next();
            } else {
                assert_eq!(m["channel"], "busy", "round {round}: {m}");
                let n = next_busy.unwrap_or_else(|| {
                    panic!("round {round}: a publication before the subscribe's reply: {m}")
                });
                assert_eq!(m["offset"], n, "round {round}: no gap after the reply: {m}");
                next_busy = Some(n + 1);
            }
        }
        c.send_json(&json!({"id": base + 4, "op": "unsubscribe", "channel": "busy"}));
        loop {
            let m = c.next();
            if is_reply(&m) {
                assert_eq!(
                    (m["id"].clone(), m["ok"].clone()),
                    (json!(base + 4), json!(true)),
                    "{m}"
                );
                break;
            }
            let n = next_busy.expect("subscribed");
            assert_eq!(m["offset"], n, "round {round}: no gap: {m}");
            next_busy = Some(n + 1);
        }
        // Nothing of the channel after the unsubscribe's reply.
        c.assert_nothing_pending();
    }
    stop.store(true, Ordering::Relaxed);
    let published = publisher.join().unwrap();
    assert!(published > 0);
    holder.close();
    c.close();
    gate.stop();
}
