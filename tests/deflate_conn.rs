//! permessage-deflate in the sans-IO core, both roles, every mode, no
//! sockets: negotiation end to end, round trips (whole, fragmented, byte by
//! byte, interleaved between connections sharing one engine), context
//! takeover, the compress-once frame, RSV1 rules, and a decompression bomb.

use std::sync::Arc;
use std::time::Instant;

use flate2::{Compress, Compression, FlushCompress};
use wsgate::proto::deflate::{self, Config, Engine, Mode, SharedFrame};
use wsgate::proto::frame::{encode_header, Header, HeaderRules, OpCode, MAX_HEADER};
use wsgate::proto::mask::apply_mask;
use wsgate::proto::{Conn, Error, Event, Limits};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Msg(bool, Vec<u8>),
    Ping(Vec<u8>),
    Close(Option<u16>),
    Other,
}

fn own(e: Event<'_>) -> Ev {
    match e {
        Event::Message { text, data } => Ev::Msg(text, data.to_vec()),
        Event::Ping(p) => Ev::Ping(p.to_vec()),
        Event::Close { code, .. } => Ev::Close(code),
        Event::Pong(_) => Ev::Other,
    }
}

/// One end: its connection, the bytes it has not consumed yet, what it
/// wrote, and what it heard.
struct End {
    conn: Conn,
    pending: Vec<u8>,
    out: Vec<u8>,
    events: Vec<Ev>,
    limits: Limits,
    /// Echo every message back (through the callback's sender).
    echo: bool,
}

impl End {
    fn new(conn: Conn) -> End {
        End {
            conn,
            pending: Vec::new(),
            out: Vec::new(),
            events: Vec::new(),
            limits: Limits::default(),
            echo: false,
        }
    }

    /// Feed bytes as a worker does: unconsumed bytes are presented again
    /// with the next read.
    fn feed(&mut self, bytes: &[u8], engine: &mut Engine) -> Result<(), Error> {
        self.pending.extend_from_slice(bytes);
        let mut buf = std::mem::take(&mut self.pending);
        let echo = self.echo;
        let mut evs = Vec::new();
        let r = self.conn.decode_with(
            &mut buf,
            0,
            &self.limits,
            engine,
            &mut self.out,
            &mut |e, tx| {
                if let (true, Event::Message { text, data }) = (echo, &e) {
                    tx.send(*text, data);
                }
                evs.push(own(e));
            },
        );
        self.events.extend(evs);
        match r {
            Ok(n) => {
                self.pending = buf[n..].to_vec();
                Ok(())
            }
            Err(e) => {
                self.conn.fail(&mut self.out, 0, e);
                Err(e)
            }
        }
    }

    fn send(&mut self, engine: &mut Engine, text: bool, data: &[u8]) {
        self.conn.sender(&mut self.out, engine).send(text, data);
    }

    fn take_out(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

/// Negotiate as the handshake does: the client's offer, the server's
/// choice, the client's check of the answer. Returns (server, client, the
/// answer header).
fn pair(server_cfg: &Config, client_cfg: &Config) -> (End, End, Option<String>) {
    let offer = deflate::client_offer(client_cfg);
    let params = deflate::negotiate(offer.iter().map(|s| s.as_bytes()), server_cfg);
    let answer = params.map(|p| p.to_header());
    let agreed = deflate::accept_response(answer.iter().map(|s| s.as_bytes()), client_cfg)
        .expect("the client accepts the server's answer");
    let mut server = Conn::server(0);
    server.accept(0);
    if let Some(p) = &params {
        server.set_deflate(p, server_cfg);
    }
    let mut client = Conn::client(0, 0x1234_5678);
    if let Some(p) = &agreed {
        client.set_deflate(p, client_cfg);
    }
    (End::new(server), End::new(client), answer)
}

fn cfg(mode: Mode, window_bits: u8) -> Config {
    Config {
        mode,
        window_bits,
        ..Config::default()
    }
}

/// (RSV1, opcode, payload length) of every frame in `bytes`.
fn frames(bytes: &[u8], masked: bool) -> Vec<(bool, OpCode, usize)> {
    let rules = HeaderRules {
        expect_masked: masked,
        allowed_rsv: 0b100,
        max_payload: u64::MAX >> 1,
    };
    let mut pos = 0;
    let mut v = Vec::new();
    while pos < bytes.len() {
        let h = Header::parse(&bytes[pos..], &rules).unwrap().unwrap();
        v.push((h.rsv & 4 != 0, h.opcode, h.payload_len as usize));
        pos += h.header_len + h.payload_len as usize;
    }
    v
}

/// A JSON message like a publication, of about `n` bytes.
fn json(n: usize, seed: usize) -> Vec<u8> {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!(
            r#"{{"channel":"prices","offset":{},"data":{{"symbol":"BTC-USD","bid":{}.5,"ask":{}.0}}}},"#,
            seed * 1000 + i,
            64000 + (i * 7 + seed) % 997,
            64001 + (i * 13 + seed) % 991
        ));
        i += 1;
    }
    s.pop();
    s.push(']');
    s.into_bytes()
}

fn messages() -> Vec<(bool, Vec<u8>)> {
    vec![
        (true, json(1024, 1)),
        (true, json(1024, 2)),
        (true, b"tiny".to_vec()),
        (false, (0..=255u8).cycle().take(3000).collect()),
        (true, json(70_000, 3)),
        (true, Vec::new()),
        (true, "κόσμε ".repeat(200).into_bytes()),
        (false, vec![0u8; 300_000]),
    ]
}

#[test]
fn round_trip_in_both_roles_and_every_mode() {
    let modes = [
        (cfg(Mode::Shared, 15), cfg(Mode::Shared, 15)),
        (cfg(Mode::Dedicated, 15), cfg(Mode::Dedicated, 15)),
        (cfg(Mode::Dedicated, 9), cfg(Mode::Dedicated, 12)),
        (cfg(Mode::Dedicated, 12), cfg(Mode::Shared, 15)),
        (cfg(Mode::Shared, 15), cfg(Mode::Dedicated, 10)),
    ];
    for (scfg, ccfg) in modes {
        let what = format!("server {scfg:?} / client {ccfg:?}");
        let (mut server, mut client, answer) = pair(&scfg, &ccfg);
        assert!(answer.is_some(), "{what}");
        assert!(server.conn.deflate().is_on() && client.conn.deflate().is_on());
        server.echo = true;
        let (mut se, mut ce) = (Engine::new(scfg), Engine::new(ccfg));
        for round in 0..2 {
            for (text, data) in messages() {
                client.send(&mut ce, text, &data);
                let wire = client.take_out();
                let f = frames(&wire, true);
                assert_eq!(f.len(), 1);
                // Below min_size: never compressed. The 256-byte cycle is
                // not compressible with a 9-bit window (zlib's longest
                // distance is then 250): sent as it is.
                let cycle = !text && data.len() == 3000;
                let worth = data.len() >= 256 && !cycle;
                if !cycle {
                    assert_eq!(f[0].0, worth, "{what}: RSV1 for {} bytes", data.len());
                }
                if worth && data.len() > 2000 {
                    assert!(
                        f[0].2 < data.len() / 2,
                        "{what}: {} -> {}",
                        data.len(),
                        f[0].2
                    );
                }
                server.feed(&wire, &mut se).unwrap();
                assert_eq!(
                    server.events.pop(),
                    Some(Ev::Msg(text, data.clone())),
                    "{what}"
                );
                let back = server.take_out();
                if !cycle {
                    assert_eq!(frames(&back, false)[0].0, worth, "{what}: echo RSV1");
                }
                client.feed(&back, &mut ce).unwrap();
                assert_eq!(
                    client.events.pop(),
                    Some(Ev::Msg(text, data)),
                    "{what} round {round}"
                );
            }
        }
    }
}

#[test]
fn byte_by_byte_and_fragmented_compressed_messages() {
    for scfg in [cfg(Mode::Shared, 15), cfg(Mode::Dedicated, 11)] {
        let (mut server, mut client, _) = pair(&scfg, &scfg);
        let (mut se, mut ce) = (Engine::new(scfg), Engine::new(scfg));
        let data = json(5000, 9);
        for _ in 0..3 {
            client.send(&mut ce, true, &data);
        }
        let wire = client.take_out();
        for b in wire.chunks(1) {
            server.feed(b, &mut se).unwrap();
        }
        assert_eq!(server.events, vec![Ev::Msg(true, data.clone()); 3]);

        // One compressed message cut into fragments by hand: RSV1 on the
        // first only, a ping in between.
        let mut z = Compress::new_with_window_bits(Compression::default(), false, 15);
        let mut packed = Vec::with_capacity(data.len());
        z.compress_vec(&data, &mut packed, FlushCompress::Sync)
            .unwrap();
        assert_eq!(packed[packed.len() - 4..], [0, 0, 0xff, 0xff]);
        packed.truncate(packed.len() - 4);
        let third = packed.len() / 3;
        let bytes = [
            masked(false, 0b100, 1, &packed[..third]),
            masked(true, 0, 9, b"hi"),
            masked(false, 0, 0, &packed[third..2 * third]),
            masked(true, 0, 0, &packed[2 * third..]),
        ]
        .concat();
        server.events.clear();
        for chunk in [bytes.len(), 1, 5] {
            for piece in bytes.chunks(chunk) {
                server.feed(piece, &mut se).unwrap();
            }
        }
        assert_eq!(server.events.len(), 6);
        assert_eq!(server.events[0], Ev::Ping(b"hi".to_vec()));
        assert_eq!(server.events[1], Ev::Msg(true, data.clone()));
    }
}

/// A masked client frame with any bits.
fn masked(fin: bool, rsv: u8, op: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x11, 0x22, 0x33, 0x44];
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
fn one_engine_serves_interleaved_connections() {
    // Shared mode: messages of two connections arrive fragment by fragment,
    // interleaved; one engine (one decompressor) inflates both.
    let scfg = cfg(Mode::Shared, 15);
    let (mut a, mut ca, _) = pair(&scfg, &scfg);
    let (mut b, mut cb, _) = pair(&scfg, &scfg);
    let mut ce = Engine::new(scfg);
    let (da, db) = (json(40_000, 1), json(40_000, 2));
    ca.send(&mut ce, true, &da);
    cb.send(&mut ce, true, &db);
    let (wa, wb) = (ca.take_out(), cb.take_out());
    let mut se = Engine::new(scfg);
    let (mut ia, mut ib) = (wa.chunks(999), wb.chunks(777));
    loop {
        let (x, y) = (ia.next(), ib.next());
        if x.is_none() && y.is_none() {
            break;
        }
        if let Some(x) = x {
            a.feed(x, &mut se).unwrap();
        }
        if let Some(y) = y {
            b.feed(y, &mut se).unwrap();
        }
    }
    assert_eq!(a.events, vec![Ev::Msg(true, da)]);
    assert_eq!(b.events, vec![Ev::Msg(true, db)]);
}

#[test]
fn context_takeover_shrinks_repeated_messages() {
    let sizes = |scfg: Config| {
        let (mut server, mut client, _) = pair(&scfg, &scfg);
        let (mut se, mut ce) = (Engine::new(scfg), Engine::new(scfg));
        let data = json(600, 5);
        let mut lens = Vec::new();
        for _ in 0..3 {
            server.send(&mut se, true, &data);
            let wire = server.take_out();
            lens.push(frames(&wire, false)[0].2);
            client.feed(&wire, &mut ce).unwrap();
            assert_eq!(client.events.pop(), Some(Ev::Msg(true, data.clone())));
        }
        lens
    };
    let shared = sizes(cfg(Mode::Shared, 15));
    let dedicated = sizes(cfg(Mode::Dedicated, 15));
    assert!(shared.iter().all(|&n| n == shared[0]), "{shared:?}");
    assert_eq!(dedicated[0], shared[0]);
    assert!(dedicated[1] < 20, "the repeat refers back: {dedicated:?}");
}

#[test]
fn compress_once_for_many_subscribers() {
    let shared_cfg = cfg(Mode::Shared, 15);
    let ded_cfg = cfg(Mode::Dedicated, 15);
    let (mut s1, mut c1, _) = pair(&shared_cfg, &shared_cfg);
    let (mut s2, mut c2, _) = pair(&shared_cfg, &shared_cfg);
    let (mut s3, mut c3, _) = pair(&ded_cfg, &ded_cfg);
    let (mut s4, mut c4, answer) = pair(&shared_cfg, &Config::off());
    assert_eq!(answer, None);
    let mut se = Engine::new(shared_cfg);
    let mut ce = Engine::new(ded_cfg);

    // The dedicated connection first builds up some context of its own.
    let own = json(800, 7);
    s3.send(&mut se, true, &own);
    let w = s3.take_out();
    c3.feed(&w, &mut ce).unwrap();

    let payload = json(1024, 42);
    let (plain, _) = wsgate::broker::text_frame(&payload);
    let plain: Arc<[u8]> = Arc::from(plain);
    let mut sf = SharedFrame::new(&plain);
    let f1 = sf.for_conn(&mut s1.conn, &mut se);
    let f2 = sf.for_conn(&mut s2.conn, &mut se);
    let f3 = sf.for_conn(&mut s3.conn, &mut se);
    let f4 = sf.for_conn(&mut s4.conn, &mut se);
    assert!(
        Arc::ptr_eq(&f1, &f2) && Arc::ptr_eq(&f1, &f3),
        "compressed once"
    );
    assert!(
        Arc::ptr_eq(&f4, &plain),
        "the plain frame for the plain peer"
    );
    assert_eq!(
        se.stats.compressed, 2,
        "one message of its own + one shared"
    );
    assert!(
        f1.len() < plain.len() / 2,
        "{} vs {}",
        f1.len(),
        plain.len()
    );
    for (c, f) in [
        (&mut c1, &f1),
        (&mut c2, &f2),
        (&mut c3, &f3),
        (&mut c4, &f4),
    ] {
        c.feed(f, &mut ce).unwrap();
        assert_eq!(c.events.pop(), Some(Ev::Msg(true, payload.clone())));
    }
    // The dedicated connection's own compressor restarted: its next message
    // still decodes at a peer whose window now holds the shared one.
    for _ in 0..2 {
        s3.send(&mut se, true, &own);
        let w = s3.take_out();
        c3.feed(&w, &mut ce).unwrap();
        assert_eq!(c3.events.pop(), Some(Ev::Msg(true, own.clone())));
    }
}

#[test]
fn replayed_frames_are_compressed_per_connection() {
    use wsgate::proto::Output;
    let scfg = cfg(Mode::Shared, 15);
    let (mut s, mut c, _) = pair(&scfg, &scfg);
    let mut se = Engine::new(scfg);
    let payload = json(2000, 3);
    let (plain, _) = wsgate::broker::text_frame(&payload);
    s.conn.sender(&mut s.out, &mut se).put_encoded(&plain);
    let w = s.take_out();
    assert!(frames(&w, false)[0].0, "RSV1");
    let mut ce = Engine::new(scfg);
    c.feed(&w, &mut ce).unwrap();
    assert_eq!(c.events, vec![Ev::Msg(true, payload)]);
}

#[test]
fn rsv1_rules() {
    let scfg = cfg(Mode::Shared, 15);
    let not_text = deflated(b"ok \xff\xfe");
    let cases: &[(&str, Vec<Vec<u8>>, bool, Error)] = &[
        (
            "RSV1 without negotiation",
            vec![masked(
                true,
                0b100,
                1,
                &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
            )],
            false,
            Error::ReservedBits,
        ),
        (
            "RSV1 on a ping",
            vec![masked(true, 0b100, 9, b"x")],
            true,
            Error::MisplacedRsv1,
        ),
        (
            "RSV1 on a close",
            vec![masked(true, 0b100, 8, &[3, 232])],
            true,
            Error::MisplacedRsv1,
        ),
        (
            "RSV1 on a pong",
            vec![masked(true, 0b100, 10, b"")],
            true,
            Error::MisplacedRsv1,
        ),
        (
            "RSV1 on a continuation",
            vec![masked(false, 0, 1, b"abc"), masked(true, 0b100, 0, b"def")],
            true,
            Error::MisplacedRsv1,
        ),
        (
            "RSV1 on a continuation of a compressed message",
            vec![
                masked(false, 0b100, 1, &[0xf2, 0x48]),
                masked(true, 0b100, 0, &[0xcd, 0xc9, 0xc9, 0x07, 0x00]),
            ],
            true,
            Error::MisplacedRsv1,
        ),
        (
            "RSV2 even with deflate",
            vec![masked(true, 0b010, 1, b"x")],
            true,
            Error::ReservedBits,
        ),
        (
            "corrupt deflate data",
            vec![masked(true, 0b100, 2, &[0xff, 0xff, 0xff])],
            true,
            Error::BadDeflate,
        ),
        (
            "compressed text that is not UTF-8",
            vec![masked(true, 0b100, 1, &not_text)],
            true,
            Error::InvalidUtf8,
        ),
    ];
    for (what, bytes, negotiated, want) in cases {
        let mut s = if *negotiated {
            pair(&scfg, &scfg).0
        } else {
            pair(&Config::off(), &scfg).0
        };
        let mut se = Engine::new(scfg);
        let r = s.feed(&bytes.concat(), &mut se);
        assert_eq!(r, Err(*want), "{what}");
        // The close frame carries the error's code.
        let mut c = Conn::client(0, 1);
        let mut codes = Vec::new();
        let mut sink = Vec::new();
        let mut out = s.take_out();
        c.decode(&mut out, 0, &Limits::default(), &mut sink, &mut |e, _| {
            if let Event::Close { code, .. } = e {
                codes.push(code)
            }
        })
        .unwrap();
        assert_eq!(codes, vec![want.close_code()], "{what}");
    }
    // The same bytes are a fine binary message.
    let mut e = Engine::default();
    let mut s = pair(&scfg, &scfg).0;
    s.feed(&masked(true, 0b100, 2, &not_text), &mut e).unwrap();
    assert_eq!(s.events, vec![Ev::Msg(false, b"ok \xff\xfe".to_vec())]);
}

/// Raw deflate of one message, without the sync-flush tail.
fn deflated(data: &[u8]) -> Vec<u8> {
    let mut z = Compress::new_with_window_bits(Compression::default(), false, 15);
    let mut out = Vec::with_capacity(data.len() + 64);
    z.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    out.truncate(out.len() - 4);
    out
}

/// 100 MB of zeros as ~100 KB of deflate: 1 MB of zeros compressed once,
/// repeated (each piece ends on a sync flush, so they concatenate).
fn bomb() -> Vec<u8> {
    let mut z = Compress::new_with_window_bits(Compression::best(), false, 15);
    let mut piece = Vec::with_capacity(1 << 20);
    z.compress_vec(&vec![0u8; 1 << 20], &mut piece, FlushCompress::Sync)
        .unwrap();
    let mut all = piece.repeat(100);
    all.truncate(all.len() - 4);
    all
}

#[test]
fn decompression_bomb_is_refused_with_1009() {
    let packed = bomb();
    assert!(packed.len() < 200 << 10, "{} bytes", packed.len());
    for scfg in [cfg(Mode::Shared, 15), cfg(Mode::Dedicated, 15)] {
        let mut s = pair(&scfg, &scfg).0;
        s.limits = Limits {
            max_message: 1 << 20,
        };
        let mut se = Engine::new(scfg);
        let t = Instant::now();
        // Whole, and fragmented.
        let r = s.feed(&masked(true, 0b100, 2, &packed), &mut se);
        assert_eq!(r, Err(Error::MessageTooBig));
        assert!(t.elapsed().as_secs() < 5, "{:?}", t.elapsed());
        let mut s = pair(&scfg, &scfg).0;
        s.limits.max_message = 1 << 20;
        let half = packed.len() / 2;
        let r = s.feed(
            &[
                masked(false, 0b100, 1, &packed[..half]),
                masked(true, 0, 0, &packed[half..]),
            ]
            .concat(),
            &mut se,
        );
        assert_eq!(r, Err(Error::MessageTooBig));
        // The engine still works.
        let (mut s, mut c, _) = pair(&scfg, &scfg);
        let mut ce = Engine::new(scfg);
        c.send(&mut ce, true, &json(1000, 1));
        let w = c.take_out();
        s.feed(&w, &mut se).unwrap();
        assert_eq!(s.events, vec![Ev::Msg(true, json(1000, 1))]);
    }
}

#[test]
fn closed_connection_releases_its_context() {
    let scfg = cfg(Mode::Dedicated, 15);
    let (mut s, mut c, _) = pair(&scfg, &scfg);
    let (mut se, mut ce) = (Engine::new(scfg), Engine::new(scfg));
    c.send(&mut ce, true, &json(1000, 1));
    let w = c.take_out();
    s.feed(&w, &mut se).unwrap();
    s.conn.close(&mut s.out, 0, 1000, "");
    s.conn.shutdown(0);
    // Sending after close is a no-op, and does not allocate a context.
    s.send(&mut se, true, &json(1000, 2));
    assert!(frames(&s.take_out(), false)
        .iter()
        .all(|f| f.1 == OpCode::Close));
}
