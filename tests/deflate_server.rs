//! permessage-deflate through the real server (one worker, loopback), with
//! a client built on the crate's own client role: negotiation in the 101,
//! compressed echoes in each mode, declined offers, RSV1 violations, a
//! decompression bomb, and a publication compressed once for subscribers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flate2::{Compress, Compression, FlushCompress};
use wsgate::proto::deflate::{self, Config, Engine, Mode};
use wsgate::proto::frame::{encode_header, Header, HeaderRules, OpCode, MAX_HEADER};
use wsgate::proto::handshake;
use wsgate::proto::mask::apply_mask;
use wsgate::proto::{Conn, Event, Limits};
use wsgate::server::{Server, ServerConfig};

const TIMEOUT: Duration = Duration::from_secs(10);

fn start(mode: Mode) -> Server {
    start_limited(mode, Limits::default().max_message)
}

fn start_limited(mode: Mode, max_message: usize) -> Server {
    let cfg = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        compression: Config {
            mode,
            ..Config::default()
        },
        limits: Limits { max_message },
        ..ServerConfig::default()
    };
    Server::start(cfg).expect("server starts")
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    /// (RSV1 on the wire, text, payload)
    Msg(bool, bool, Vec<u8>),
    Close(Option<u16>),
}

/// A blocking client on the crate's client role.
struct Client {
    sock: TcpStream,
    conn: Conn,
    engine: Engine,
    pending: Vec<u8>,
    /// The server's `Sec-WebSocket-Extensions`.
    answer: Option<String>,
}

impl Client {
    fn connect(addr: SocketAddr, path: &str, offer: Option<&str>, cfg: &Config) -> Client {
        let mut sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        sock.set_nodelay(true).unwrap();
        let mut req = Vec::new();
        let key = handshake::write_client_request(&mut req, "x", path, &[5; 16], None, offer);
        sock.write_all(&req).unwrap();
        let mut buf = Vec::new();
        let resp = loop {
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).unwrap();
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(r) = handshake::parse_response(&buf, &key).unwrap() {
                break r;
            }
        };
        let mut conn = Conn::client(0, 0xC0FFEE);
        let values = resp.extensions.iter().map(|s| s.as_bytes());
        if let Some(p) = deflate::accept_response(values, cfg).expect("valid answer") {
            conn.set_deflate(&p, cfg);
        }
        Client {
            sock,
            conn,
            engine: Engine::new(*cfg),
            pending: buf[resp.len..].to_vec(),
            answer: resp.extensions,
        }
    }

    fn send(&mut self, text: bool, data: &[u8]) {
        let mut out = Vec::new();
        self.conn
            .sender(&mut out, &mut self.engine)
            .send(text, data);
        self.sock.write_all(&out).unwrap();
    }

    /// The next message or close, frame by frame, noting RSV1.
    fn recv(&mut self) -> Ev {
        let rules = HeaderRules {
            expect_masked: false,
            allowed_rsv: 0b100,
            max_payload: u64::MAX >> 1,
        };
        let mut first_rsv1 = None;
        loop {
            while let Ok(Some(h)) = Header::parse(&self.pending, &rules) {
                let end = h.header_len + h.payload_len as usize;
                if self.pending.len() < end {
                    break;
                }
                if matches!(h.opcode, OpCode::Text | OpCode::Binary) {
                    first_rsv1 = Some(h.rsv & 4 != 0);
                }
                let mut frame: Vec<u8> = self.pending.drain(..end).collect();
                let mut got = None;
                let mut sink = Vec::new();
                let limits = Limits {
                    max_message: 64 << 20,
                };
                let n = self
                    .conn
                    .decode_with(
                        &mut frame,
                        0,
                        &limits,
                        &mut self.engine,
                        &mut sink,
                        &mut |e, _| {
                            got = match e {
                                Event::Message { text, data } => {
                                    Some(Ev::Msg(first_rsv1.unwrap_or(false), text, data.to_vec()))
                                }
                                Event::Close { code, .. } => Some(Ev::Close(code)),
                                _ => None,
                            }
                        },
                    )
                    .expect("the server's frames are valid");
                assert_eq!(n, end);
                if !sink.is_empty() {
                    self.sock.write_all(&sink).unwrap();
                }
                if let Some(ev) = got {
                    return ev;
                }
            }
            let mut chunk = [0u8; 65536];
            let n = self.sock.read(&mut chunk).expect("read");
            assert!(n > 0, "connection closed without a close frame");
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    /// Wait for the server's close frame; its code.
    fn expect_close(&mut self) -> Option<u16> {
        loop {
            if let Ev::Close(code) = self.recv() {
                return code;
            }
        }
    }
}

fn chrome_offer() -> Option<&'static str> {
    Some("permessage-deflate; client_max_window_bits")
}

fn json(n: usize, seed: usize) -> Vec<u8> {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!(
            r#"{{"user":"u{}","text":"message number {} of the test","ts":{}}},"#,
            seed,
            i,
            1_712_000_000_000u64 + (seed * 100 + i) as u64
        ));
        i += 1;
    }
    s.pop();
    s.push(']');
    s.into_bytes()
}

#[test]
fn echo_is_compressed_in_each_mode() {
    for (mode, want) in [
        (
            Mode::Shared,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ),
        (
            Mode::Dedicated,
            "permessage-deflate; client_max_window_bits=15",
        ),
    ] {
        let server = start(mode);
        let client_cfg = Config {
            mode: Mode::Dedicated,
            ..Config::default()
        };
        let mut c = Client::connect(server.local_addr(), "/echo", chrome_offer(), &client_cfg);
        assert_eq!(c.answer.as_deref(), Some(want), "{mode:?}");
        let mut raw = 0;
        for i in 0..20 {
            let data = json(1024, i);
            raw += data.len();
            c.send(true, &data);
            assert_eq!(c.recv(), Ev::Msg(true, true, data), "{mode:?} #{i}");
        }
        // Below min_size: plain both ways.
        c.send(true, b"{\"op\":\"ping\"}");
        assert_eq!(
            c.recv(),
            Ev::Msg(false, true, b"{\"op\":\"ping\"}".to_vec())
        );
        let big: Vec<u8> = json(3 << 20, 99);
        c.send(false, &big);
        assert_eq!(c.recv(), Ev::Msg(true, false, big.clone()));
        raw += big.len();
        let out = server.shared().stats().bytes_out.load(Ordering::Relaxed) as usize;
        assert!(
            out < raw / 4,
            "{mode:?}: {out} bytes out for {raw} bytes of messages"
        );
        server.stop().unwrap();
    }
}

#[test]
fn unacceptable_offers_are_declined_not_refused() {
    let server = start(Mode::Shared);
    let cfg = Config {
        mode: Mode::Dedicated,
        ..Config::default()
    };
    for offer in [
        "permessage-deflate; server_max_window_bits=8",
        "permessage-deflate; bogus=1",
        "permessage-deflate; client_max_window_bits=20",
        "x-webkit-deflate-frame",
    ] {
        let mut c = Client::connect(server.local_addr(), "/echo", Some(offer), &cfg);
        assert_eq!(c.answer, None, "{offer}");
        c.send(true, &json(2000, 1));
        assert_eq!(c.recv(), Ev::Msg(false, true, json(2000, 1)), "{offer}");
    }
    // Several offers, the second acceptable.
    let mut c = Client::connect(
        server.local_addr(),
        "/echo",
        Some("permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=10"),
        &Config {
            mode: Mode::Shared,
            ..Config::default()
        },
    );
    assert_eq!(
        c.answer.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10")
    );
    c.send(true, &json(2000, 2));
    assert_eq!(c.recv(), Ev::Msg(true, true, json(2000, 2)));
    server.stop().unwrap();

    let off = start(Mode::Off);
    let c = Client::connect(off.local_addr(), "/echo", chrome_offer(), &cfg);
    assert_eq!(c.answer, None);
    off.stop().unwrap();
}

/// A masked client frame with any bits.
fn masked(fin: bool, rsv: u8, op: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut h = [0u8; MAX_HEADER];
    let n = encode_header(
        &mut h,
        fin,
        rsv,
        OpCode::Text,
        Some(key),
        payload.len() as u64,
    );
    h[0] = (h[0] & 0xF0) | op;
    let mut f = h[..n].to_vec();
    let mut p = payload.to_vec();
    apply_mask(&mut p, key, 0);
    f.extend_from_slice(&p);
    f
}

#[test]
fn rsv1_violations_close_with_1002() {
    let server = start(Mode::Shared);
    let addr = server.local_addr();
    let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    let cfg = Config::default();
    // Not negotiated.
    let mut c = Client::connect(addr, "/echo", None, &cfg);
    c.sock.write_all(&masked(true, 0b100, 1, &hello)).unwrap();
    assert_eq!(c.expect_close(), Some(1002));
    // Negotiated: a compressed "Hello" is fine ...
    let mut c = Client::connect(addr, "/echo", chrome_offer(), &cfg);
    c.sock.write_all(&masked(true, 0b100, 1, &hello)).unwrap();
    assert_eq!(c.recv(), Ev::Msg(false, true, b"Hello".to_vec()));
    // ... but not on a ping,
    c.sock.write_all(&masked(true, 0b100, 9, b"")).unwrap();
    assert_eq!(c.expect_close(), Some(1002));
    // nor on a continuation frame.
    let mut c = Client::connect(addr, "/echo", chrome_offer(), &cfg);
    let frames = [
        masked(false, 0b100, 1, &hello[..3]),
        masked(true, 0b100, 0, &hello[3..]),
    ]
    .concat();
    c.sock.write_all(&frames).unwrap();
    assert_eq!(c.expect_close(), Some(1002));
    server.stop().unwrap();
}

#[test]
fn decompression_bomb_closes_with_1009() {
    let server = start(Mode::Shared);
    // 100 MB of zeros in about 100 KB: 1 MB compressed once, repeated
    // (each piece ends on a sync flush, so they concatenate).
    let mut z = Compress::new_with_window_bits(Compression::best(), false, 15);
    let mut piece = Vec::with_capacity(1 << 20);
    z.compress_vec(&vec![0u8; 1 << 20], &mut piece, FlushCompress::Sync)
        .unwrap();
    let mut bomb = piece.repeat(100);
    bomb.truncate(bomb.len() - 4);
    assert!(bomb.len() < 150 << 10, "{}", bomb.len());
    let mut c = Client::connect(
        server.local_addr(),
        "/echo",
        chrome_offer(),
        &Config::default(),
    );
    let t = Instant::now();
    c.sock.write_all(&masked(true, 0b100, 2, &bomb)).unwrap();
    assert_eq!(c.expect_close(), Some(1009));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    server.stop().unwrap();
}

/// `n` bytes that deflate cannot shrink (xorshift).
fn incompressible(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `data` as one permessage-deflate payload (RFC 7692 §7.2.1: a sync
/// flush, its `00 00 ff ff` removed), as zlib-based clients make it.
fn deflated(data: &[u8]) -> Vec<u8> {
    let mut z = Compress::new_with_window_bits(Compression::default(), false, 15);
    let mut out = Vec::with_capacity(data.len() + 1024);
    z.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    assert_eq!(out[out.len() - 4..], [0, 0, 0xff, 0xff]);
    out.truncate(out.len() - 4);
    out
}

/// The limit is on the message, not on its compressed frame: a message of
/// exactly `max_message` incompressible bytes, whose compressed payload is
/// a little larger (stored blocks), is echoed, whole or in fragments; one
/// byte more is 1009 once inflated, a frame declared past the compressed
/// bound is 1009 from its header, and a bomb still stops at the limit.
/// A plain `/echo` client, connected throughout, is served after each.
#[test]
fn a_message_of_max_message_bytes_compressed_larger_is_accepted() {
    const MAX: usize = 100_000;
    let server = start_limited(Mode::Shared, MAX);
    let addr = server.local_addr();
    let plain = Config {
        mode: Mode::Off,
        ..Config::default()
    };
    let mut bystander = Client::connect(addr, "/echo", None, &plain);
    let mut bystander_echo = |n: usize| {
        let msg = format!("bystander {n}").into_bytes();
        bystander.send(true, &msg);
        assert_eq!(
            bystander.recv(),
            Ev::Msg(false, true, msg),
            "bystander #{n}"
        );
    };
    bystander_echo(0);
    let connect = || Client::connect(addr, "/echo", chrome_offer(), &Config::default());

    let data = incompressible(MAX, 7);
    let z = deflated(&data);
    assert!(
        z.len() > MAX && z.len() <= deflate::max_compressed(MAX),
        "{} compressed bytes",
        z.len()
    );
    // The echo of `data`, or what came instead (without 100 KB of bytes).
    let expect_echo = |c: &mut Client, data: &[u8], what: &str| match c.recv() {
        Ev::Msg(_, false, got) => assert!(
            got == data,
            "{what}: {} bytes echoed, not the {} sent",
            got.len(),
            data.len()
        ),
        Ev::Msg(_, true, got) => panic!("{what}: a {}-byte text message", got.len()),
        Ev::Close(code) => panic!("{what}: closed with {code:?} instead of the echo"),
    };
    // Whole: echoed (uncompressed: deflate does not shrink it).
    let mut c = connect();
    c.sock.write_all(&masked(true, 0b100, 2, &z)).unwrap();
    expect_echo(&mut c, &data, "whole");
    bystander_echo(1);
    // In three fragments, RSV1 on the first only.
    let (a, rest) = z.split_at(z.len() / 3);
    let (b, tail) = rest.split_at(rest.len() / 2);
    let frames = [
        masked(false, 0b100, 2, a),
        masked(false, 0, 0, b),
        masked(true, 0, 0, tail),
    ]
    .concat();
    c.sock.write_all(&frames).unwrap();
    expect_echo(&mut c, &data, "in fragments");
    bystander_echo(2);

    // One byte more: within the compressed bound, refused once inflated.
    let over = deflated(&incompressible(MAX + 1, 8));
    assert!(over.len() <= deflate::max_compressed(MAX));
    let mut c = connect();
    c.sock.write_all(&masked(true, 0b100, 2, &over)).unwrap();
    assert_eq!(c.expect_close(), Some(1009));
    bystander_echo(3);

    // Declared past the compressed bound: refused from the header, before
    // its payload arrives.
    let mut c = connect();
    let declared = deflate::max_compressed(MAX) as u64 + 1;
    let mut h = [0u8; MAX_HEADER];
    let n = encode_header(
        &mut h,
        true,
        0b100,
        OpCode::Binary,
        Some([1, 2, 3, 4]),
        declared,
    );
    c.sock.write_all(&h[..n]).unwrap();
    assert_eq!(c.expect_close(), Some(1009));
    bystander_echo(4);

    // An uncompressed message keeps the plain limit on the same connection.
    let mut c = connect();
    let n = encode_header(
        &mut h,
        true,
        0,
        OpCode::Binary,
        Some([1, 2, 3, 4]),
        MAX as u64 + 1,
    );
    c.sock.write_all(&h[..n]).unwrap();
    assert_eq!(c.expect_close(), Some(1009));
    bystander_echo(5);

    // A bomb: 10 × the limit of zeros in a few hundred bytes.
    let bomb = deflated(&vec![0u8; 10 * MAX]);
    assert!(bomb.len() < 2048, "{}", bomb.len());
    let mut c = connect();
    c.sock.write_all(&masked(true, 0b100, 2, &bomb)).unwrap();
    assert_eq!(c.expect_close(), Some(1009));
    bystander_echo(6);

    let errors = server
        .shared()
        .stats()
        .protocol_errors
        .load(Ordering::Relaxed);
    assert_eq!(errors, 4, "the four refusals are counted");
    server.stop().unwrap();
}

/// A plain HTTP request on a fresh connection; the status line.
fn http(addr: SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    String::from_utf8_lossy(&resp)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn publication_is_compressed_once_for_deflate_subscribers() {
    let server = start(Mode::Shared);
    let addr = server.local_addr();
    let shared = Config::default();
    let mut subs = vec![
        Client::connect(addr, "/ws?channel=news", chrome_offer(), &shared),
        Client::connect(addr, "/ws?channel=news", chrome_offer(), &shared),
        Client::connect(addr, "/ws?channel=news", None, &shared),
    ];
    for c in &mut subs {
        // The subscribe answer.
        match c.recv() {
            Ev::Msg(_, true, data) => assert!(
                String::from_utf8_lossy(&data).contains("news"),
                "{}",
                String::from_utf8_lossy(&data)
            ),
            other => panic!("{other:?}"),
        }
    }
    let data = String::from_utf8(json(1024, 7)).unwrap();
    let body = format!(r#"{{"channel":"news","data":{data}}}"#);
    let status = http(
        addr,
        &format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(status.contains(" 200 "), "{status}");
    let mut payloads = Vec::new();
    for (i, c) in subs.iter_mut().enumerate() {
        let Ev::Msg(rsv1, true, got) = c.recv() else {
            panic!("subscriber {i}: expected a publication");
        };
        assert_eq!(
            rsv1,
            i < 2,
            "subscriber {i}: compressed iff it negotiated deflate"
        );
        let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(v["channel"], "news");
        payloads.push(got);
    }
    assert!(payloads.windows(2).all(|w| w[0] == w[1]));
    server.stop().unwrap();
}

/// The permessage-deflate series of `GET /metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct DeflateMetrics {
    connections: u64,
    messages_in: u64,
    messages_out: u64,
    in_payload: u64,
    in_wire: u64,
    out_payload: u64,
    out_wire: u64,
}

impl DeflateMetrics {
    fn scrape(addr: SocketAddr) -> DeflateMetrics {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
        let get = |series: &str| -> u64 {
            resp.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{series} not in /metrics:\n{resp}"))
        };
        DeflateMetrics {
            connections: get("wsgate_deflate_connections_total"),
            messages_in: get(r#"wsgate_deflate_messages_total{direction="in"}"#),
            messages_out: get(r#"wsgate_deflate_messages_total{direction="out"}"#),
            in_payload: get(r#"wsgate_deflate_bytes_total{direction="in",stage="payload"}"#),
            in_wire: get(r#"wsgate_deflate_bytes_total{direction="in",stage="wire"}"#),
            out_payload: get(r#"wsgate_deflate_bytes_total{direction="out",stage="payload"}"#),
            out_wire: get(r#"wsgate_deflate_bytes_total{direction="out",stage="wire"}"#),
        }
    }

    fn since(self, before: DeflateMetrics) -> DeflateMetrics {
        DeflateMetrics {
            connections: self.connections - before.connections,
            messages_in: self.messages_in - before.messages_in,
            messages_out: self.messages_out - before.messages_out,
            in_payload: self.in_payload - before.in_payload,
            in_wire: self.in_wire - before.in_wire,
            out_payload: self.out_payload - before.out_payload,
            out_wire: self.out_wire - before.out_wire,
        }
    }
}

#[test]
fn metrics_count_compressed_echoes_exactly() {
    const N: usize = 12;
    for mode in [Mode::Shared, Mode::Dedicated] {
        let server = start(mode);
        let addr = server.local_addr();
        let before = DeflateMetrics::scrape(addr);
        assert_eq!(
            before,
            DeflateMetrics::default(),
            "{mode:?}: a fresh server"
        );
        let client_cfg = Config {
            mode: Mode::Dedicated,
            ..Config::default()
        };
        let mut c = Client::connect(addr, "/echo", chrome_offer(), &client_cfg);
        let mut raw = 0;
        for i in 0..N {
            let data = json(1024 + 100 * i, i);
            raw += data.len() as u64;
            c.send(true, &data);
            assert_eq!(c.recv(), Ev::Msg(true, true, data), "{mode:?} #{i}");
        }
        // Below min_size: plain both ways, not counted.
        c.send(true, b"{\"op\":\"ping\"}");
        assert_eq!(
            c.recv(),
            Ev::Msg(false, true, b"{\"op\":\"ping\"}".to_vec())
        );
        let d = DeflateMetrics::scrape(addr).since(before);
        eprintln!("{mode:?}: {d:?}");
        assert_eq!(d.connections, 1, "{mode:?}");
        assert_eq!(d.messages_in, N as u64, "{mode:?}");
        assert_eq!(d.messages_out, N as u64, "{mode:?}");
        // Payload bytes are the messages themselves, both ways.
        assert_eq!(d.in_payload, raw, "{mode:?}");
        assert_eq!(d.out_payload, raw, "{mode:?}");
        assert!(d.in_wire > 0 && d.in_wire < raw / 2, "{mode:?}: {d:?}");
        assert!(d.out_wire > 0 && d.out_wire < raw / 2, "{mode:?}: {d:?}");
        server.stop().unwrap();
    }
}

#[test]
fn metrics_do_not_move_with_compression_off() {
    let server = start(Mode::Off);
    let addr = server.local_addr();
    let mut c = Client::connect(addr, "/echo", chrome_offer(), &Config::default());
    assert_eq!(c.answer, None);
    for i in 0..5 {
        let data = json(2048, i);
        c.send(true, &data);
        assert_eq!(c.recv(), Ev::Msg(false, true, data));
    }
    assert_eq!(DeflateMetrics::scrape(addr), DeflateMetrics::default());
    server.stop().unwrap();
}

#[test]
fn metrics_count_a_shared_frame_once_per_compression_and_per_delivery() {
    let server = start(Mode::Shared);
    let addr = server.local_addr();
    let shared = Config::default();
    let mut subs = vec![
        Client::connect(addr, "/ws?channel=metered", chrome_offer(), &shared),
        Client::connect(addr, "/ws?channel=metered", chrome_offer(), &shared),
        Client::connect(addr, "/ws?channel=metered", chrome_offer(), &shared),
        Client::connect(addr, "/ws?channel=metered", None, &shared),
    ];
    for c in &mut subs {
        assert!(
            matches!(c.recv(), Ev::Msg(_, true, _)),
            "the subscribe answer"
        );
    }
    let before = DeflateMetrics::scrape(addr);
    let data = String::from_utf8(json(2048, 3)).unwrap();
    let body = format!(r#"{{"channel":"metered","data":{data}}}"#);
    let status = http(
        addr,
        &format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(status.contains(" 200 "), "{status}");
    let mut len = 0;
    for (i, c) in subs.iter_mut().enumerate() {
        let Ev::Msg(rsv1, true, got) = c.recv() else {
            panic!("subscriber {i}: expected a publication");
        };
        assert_eq!(rsv1, i < 3, "subscriber {i}");
        len = got.len() as u64;
    }
    let d = DeflateMetrics::scrape(addr).since(before);
    eprintln!("{d:?}");
    // Three deliveries, one compression.
    assert_eq!(d.messages_out, 3, "{d:?}");
    assert_eq!(d.out_payload, len, "{d:?}");
    assert!(d.out_wire > 0 && d.out_wire < len / 2, "{d:?}");
    assert_eq!((d.messages_in, d.in_payload, d.connections), (0, 0, 0));
    server.stop().unwrap();
}
