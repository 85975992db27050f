//! The floor for fan-out: a server that does nothing but write each
//! publication to each subscriber's socket.
//!
//! It speaks just enough of wsgate's surface for `wsgate-load sub` to drive
//! it unchanged: the WebSocket upgrade on any path, the `subscribe` op
//! (answered `{"id":…,"ok":true,"channel":…,"epoch":"floor","offset":N}`),
//! `POST /api/publish` (one object or an array; each publication becomes the
//! frame `{"channel":…,"offset":N,"data":…}`), and `GET /api/stats`
//! (`{"deliveries":N}`, for the load tool's CPU-per-delivery meter).
//!
//! One thread, one mio loop. Per loop iteration it handles every event, then
//! writes every publication that came in during the iteration to each
//! subscriber with **one write per socket** (`writev` of the frames): below
//! saturation that is one write per publication per socket; past it, all the
//! publications due are coalesced into that one write, which is what any
//! server must do to go faster. A socket the kernel pushes back on keeps the
//! rest in a buffer that is written when it is writable again. Nothing else:
//! no history, no presence, no per-message accounting beyond one counter.
//!
//! `--listen ADDR` (default 127.0.0.1:9003).

use std::collections::HashMap;
use std::io::{self, IoSlice, Read, Write};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use serde_json::value::RawValue;
use sha1::{Digest, Sha1};

const LISTENER: Token = Token(usize::MAX);
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

struct Conn {
    sock: TcpStream,
    /// Bytes read and not yet parsed (a partial request or frame).
    input: Vec<u8>,
    /// Bytes the kernel has not taken yet.
    pending: Vec<u8>,
    websocket: bool,
}

#[derive(Default)]
struct Channel {
    subscribers: Vec<usize>,
    top: u64,
    /// Frames published during this loop iteration.
    due: Vec<Vec<u8>>,
}

#[derive(Default)]
struct State {
    channels: HashMap<String, Channel>,
    /// Channels with frames due this iteration.
    dirty: Vec<String>,
    deliveries: u64,
}

fn main() -> io::Result<()> {
    let mut listen = "127.0.0.1:9003".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDR"),
            other => panic!("unknown argument {other:?} (--listen ADDR)"),
        }
    }
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(listen.parse().expect("address"))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("fan-out floor listening on {listen}");
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut state = State::default();
    let mut next = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = Events::with_capacity(1024);
    loop {
        poll.poll(&mut events, None)?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut sock, _)) => {
                            let _ = sock.set_nodelay(true);
                            next += 1;
                            poll.registry().register(
                                &mut sock,
                                Token(next),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            conns.insert(
                                next,
                                Conn {
                                    sock,
                                    input: Vec::new(),
                                    pending: Vec::new(),
                                    websocket: false,
                                },
                            );
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            eprintln!("accept: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let id = ev.token().0;
            let mut alive = match conns.get_mut(&id) {
                Some(c) => flush(c),
                None => continue,
            };
            if alive && (ev.is_readable() || ev.is_read_closed()) {
                alive = read_and_handle(id, &mut conns, &mut state, &mut buf);
            }
            if !alive {
                conns.remove(&id);
            }
        }
        fan_out(&mut conns, &mut state);
    }
}

/// Read to `WouldBlock` and handle every complete request or frame.
fn read_and_handle(
    id: usize,
    conns: &mut HashMap<usize, Conn>,
    state: &mut State,
    buf: &mut [u8],
) -> bool {
    loop {
        let Some(c) = conns.get_mut(&id) else {
            return false;
        };
        match c.sock.read(buf) {
            Ok(0) => return false,
            Ok(n) => {
                c.input.extend_from_slice(&buf[..n]);
                if !handle_input(id, c, state) || !flush(c) {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

fn handle_input(id: usize, c: &mut Conn, state: &mut State) -> bool {
    loop {
        let used = if c.websocket {
            match ws_frame(id, c, state) {
                Some(n) => n,
                None => return true,
            }
        } else {
            match http_request(id, c, state) {
                Ok(Some(n)) => n,
                Ok(None) => return true,
                Err(()) => return false,
            }
        };
        if used == usize::MAX {
            return false; // close
        }
        c.input.drain(..used);
        if c.input.is_empty() {
            return true;
        }
    }
}

/// One HTTP request: the upgrade, a publish, the stats. `Ok(None)`: incomplete.
fn http_request(_id: usize, c: &mut Conn, state: &mut State) -> Result<Option<usize>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(&c.input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if let Some(key) = header("sec-websocket-key") {
        let mut sha = Sha1::new();
        sha.update(key);
        sha.update(GUID.as_bytes());
        let accept = STANDARD.encode(sha.finalize());
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        c.pending.extend_from_slice(resp.as_bytes());
        c.websocket = true;
        return Ok(Some(head_len));
    }
    let body_len: usize = header("content-length")
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
        .unwrap_or(0);
    if c.input.len() < head_len + body_len {
        return Ok(None);
    }
    let body = &c.input[head_len..head_len + body_len];
    let path = req.path.unwrap_or("/");
    let answer = match (req.method.unwrap_or(""), path) {
        ("POST", "/api/publish") => publish(state, body),
        ("GET", "/api/stats") => Some(format!("{{\"deliveries\":{}}}", state.deliveries)),
        _ => None,
    };
    let (status, body) = match answer {
        Some(b) => ("200 OK", b),
        None => ("404 Not Found", "{}".to_string()),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{body}",
        body.len()
    );
    c.pending.extend_from_slice(resp.as_bytes());
    Ok(Some(head_len + body_len))
}

#[derive(serde::Deserialize)]
struct Publication<'a> {
    channel: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Encode each publication once and note it due for its channel.
fn publish(state: &mut State, body: &[u8]) -> Option<String> {
    let trimmed = body.trim_ascii_start();
    let (items, batch): (Vec<Publication<'_>>, bool) = if trimmed.first() == Some(&b'[') {
        (serde_json::from_slice(body).ok()?, true)
    } else {
        (vec![serde_json::from_slice(body).ok()?], false)
    };
    let mut answers = Vec::with_capacity(items.len());
    for p in items {
        let ch = state.channels.entry(p.channel.clone()).or_default();
        ch.top += 1;
        let mut payload = Vec::with_capacity(p.channel.len() + p.data.get().len() + 48);
        payload.extend_from_slice(b"{\"channel\":");
        serde_json::to_writer(&mut payload, &p.channel).ok()?;
        payload.extend_from_slice(format!(",\"offset\":{},\"data\":", ch.top).as_bytes());
        payload.extend_from_slice(p.data.get().as_bytes());
        payload.push(b'}');
        if !ch.subscribers.is_empty() {
            if ch.due.is_empty() {
                state.dirty.push(p.channel.clone());
            }
            ch.due.push(text_frame(&payload));
        }
        answers.push(format!("{{\"epoch\":\"floor\",\"offset\":{}}}", ch.top));
    }
    Some(if batch {
        format!("[{}]", answers.join(","))
    } else {
        answers.pop().unwrap_or_default()
    })
}

/// One client frame (masked). Returns the bytes used, `usize::MAX` to close.
fn ws_frame(id: usize, c: &mut Conn, state: &mut State) -> Option<usize> {
    let b = &c.input;
    if b.len() < 2 {
        return None;
    }
    let opcode = b[0] & 0x0F;
    let (len, mut at) = match b[1] & 0x7F {
        126 => (u16::from_be_bytes(b.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    let mask: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    at += 4;
    if b.len() < at + len {
        return None;
    }
    let payload: Vec<u8> = b[at..at + len]
        .iter()
        .enumerate()
        .map(|(i, x)| x ^ mask[i % 4])
        .collect();
    match opcode {
        1 => subscribe(id, c, state, &payload),
        8 => {
            c.pending.extend_from_slice(&[0x88, 0]);
            let _ = flush(c);
            return Some(usize::MAX);
        }
        9 => {
            let mut f = vec![0x8A, payload.len() as u8];
            f.extend_from_slice(&payload);
            c.pending.extend_from_slice(&f);
        }
        _ => {}
    }
    Some(at + len)
}

/// The `subscribe` op; other ops are ignored.
fn subscribe(id: usize, c: &mut Conn, state: &mut State, json: &[u8]) {
    #[derive(serde::Deserialize)]
    struct Op<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
        op: String,
        channel: Option<String>,
    }
    let Ok(op) = serde_json::from_slice::<Op<'_>>(json) else {
        return;
    };
    let (Some(channel), "subscribe") = (op.channel, op.op.as_str()) else {
        return;
    };
    let ch = state.channels.entry(channel.clone()).or_default();
    ch.subscribers.push(id);
    let reply = format!(
        "{{\"id\":{},\"ok\":true,\"channel\":{},\"epoch\":\"floor\",\"offset\":{}}}",
        op.id.map_or("null", |r| r.get()),
        serde_json::Value::from(channel),
        ch.top
    );
    c.pending.extend_from_slice(&text_frame(reply.as_bytes()));
}

/// Everything due this iteration: one write per subscriber socket.
fn fan_out(conns: &mut HashMap<usize, Conn>, state: &mut State) {
    for name in std::mem::take(&mut state.dirty) {
        let Some(ch) = state.channels.get_mut(&name) else {
            continue;
        };
        let frames = std::mem::take(&mut ch.due);
        let slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
        let total: usize = frames.iter().map(Vec::len).sum();
        ch.subscribers.retain(|id| {
            let Some(c) = conns.get_mut(id) else {
                return false;
            };
            state.deliveries += frames.len() as u64;
            if !c.pending.is_empty() {
                for f in &frames {
                    c.pending.extend_from_slice(f);
                }
                return true;
            }
            match c.sock.write_vectored(&slices) {
                Ok(n) if n == total => {}
                Ok(n) => {
                    // The kernel took part: keep the rest for the writable event.
                    let mut skip = n;
                    for f in &frames {
                        if skip >= f.len() {
                            skip -= f.len();
                        } else {
                            c.pending.extend_from_slice(&f[skip..]);
                            skip = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    for f in &frames {
                        c.pending.extend_from_slice(f);
                    }
                }
                Err(_) => return false,
            }
            true
        });
    }
}

fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x81);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= u16::MAX as usize => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// Write what is pending; false if the connection failed.
fn flush(c: &mut Conn) -> bool {
    while !c.pending.is_empty() {
        match c.sock.write(&c.pending) {
            Ok(n) => {
                c.pending.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}
