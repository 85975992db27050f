//! In-memory client/server pairs with a fake clock: every rule of the state
//! machine and every timer, with no socket and no real time.

use super::conn::{Conn, Event, Limits, State, Timeouts, TimerAction};
use super::error::Error;
use super::frame::{encode_header, OpCode, MAX_HEADER};
use super::mask::apply_mask;

#[derive(Debug, PartialEq, Eq, Clone)]
enum Ev {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

fn own(e: Event<'_>) -> Ev {
    match e {
        Event::Message { text: true, data } => Ev::Text(String::from_utf8(data.to_vec()).unwrap()),
        Event::Message { text: false, data } => Ev::Binary(data.to_vec()),
        Event::Ping(p) => Ev::Ping(p.to_vec()),
        Event::Pong(p) => Ev::Pong(p.to_vec()),
        Event::Close { code, reason } => Ev::Close(code, reason.to_string()),
    }
}

/// A masked client frame, built by hand so that any header can be made.
fn frame(fin: bool, rsv: u8, op: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x11, 0x22, 0x33, 0x44];
    let mut h = [0u8; MAX_HEADER];
    let opcode = OpCode::Text; // placeholder, patched below
    let n = encode_header(&mut h, fin, rsv, opcode, Some(key), payload.len() as u64);
    h[0] = (h[0] & 0xF0) | op;
    let mut out = h[..n].to_vec();
    let mut p = payload.to_vec();
    apply_mask(&mut p, key, 0);
    out.extend_from_slice(&p);
    out
}

struct Server {
    conn: Conn,
    pending: Vec<u8>,
    out: Vec<u8>,
    events: Vec<Ev>,
    limits: Limits,
}

impl Server {
    fn new() -> Self {
        let mut conn = Conn::server(0);
        conn.accept(0);
        Server {
            conn,
            pending: Vec::new(),
            out: Vec::new(),
            events: Vec::new(),
            limits: Limits::default(),
        }
    }

    /// Feed bytes as the worker does: unconsumed bytes are kept and
    /// presented again with the next read.
    fn feed(&mut self, bytes: &[u8], now: u64) -> Result<(), Error> {
        self.pending.extend_from_slice(bytes);
        let mut evs = Vec::new();
        let mut buf = std::mem::take(&mut self.pending);
        let r = self
            .conn
            .decode(&mut buf, now, &self.limits, &mut self.out, &mut |e, _| {
                evs.push(own(e))
            });
        self.events.extend(evs);
        match r {
            Ok(n) => {
                self.pending = buf[n..].to_vec();
                Ok(())
            }
            Err(e) => {
                self.conn.fail(&mut self.out, now, e);
                Err(e)
            }
        }
    }

    /// What the server wrote, decoded by a client.
    fn sent(&mut self) -> Vec<Ev> {
        let mut client = Conn::client(0, 7);
        let mut out = std::mem::take(&mut self.out);
        let mut evs = Vec::new();
        let mut sink = Vec::new();
        client
            .decode(&mut out, 0, &Limits::default(), &mut sink, &mut |e, _| {
                evs.push(own(e))
            })
            .expect("server output is valid");
        evs
    }
}

fn feed_all(frames: &[Vec<u8>]) -> (Server, Result<(), Error>) {
    let mut s = Server::new();
    let bytes: Vec<u8> = frames.concat();
    let r = s.feed(&bytes, 0);
    (s, r)
}

#[test]
fn messages_in_one_read_and_byte_by_byte() {
    let frames = vec![
        frame(true, 0, 1, b"hello"),
        frame(true, 0, 2, &[0, 1, 2]),
        frame(false, 0, 1, "κό".as_bytes()),
        frame(true, 0, 9, b"p"), // control frame between fragments
        frame(false, 0, 0, "σ".as_bytes()),
        frame(true, 0, 0, "με".as_bytes()),
        frame(true, 0, 1, &vec![b'x'; 70_000]),
        frame(true, 0, 10, b"unsolicited"),
    ];
    let want = vec![
        Ev::Text("hello".into()),
        Ev::Binary(vec![0, 1, 2]),
        Ev::Ping(b"p".to_vec()),
        Ev::Text("κόσμε".into()),
        Ev::Text("x".repeat(70_000)),
        Ev::Pong(b"unsolicited".to_vec()),
    ];
    let (mut s, r) = feed_all(&frames);
    r.unwrap();
    assert_eq!(s.events, want);
    assert_eq!(s.sent(), vec![Ev::Pong(b"p".to_vec())]);

    let bytes = frames.concat();
    for chunk in [1, 2, 3, 7, 100, 4096] {
        let mut s = Server::new();
        for piece in bytes.chunks(chunk) {
            s.feed(piece, 0).unwrap();
        }
        assert_eq!(s.events, want, "chunk {chunk}");
        assert!(s.pending.is_empty());
        assert!(!s.conn.is_mid_message());
    }
}

#[test]
fn protocol_violations_table() {
    let big = 1usize << 20;
    let cases: Vec<(&str, Vec<Vec<u8>>, Error)> = vec![
        (
            "continuation first",
            vec![frame(true, 0, 0, b"x")],
            Error::UnexpectedContinuation,
        ),
        (
            "new message inside fragmented one",
            vec![frame(false, 0, 1, b"a"), frame(true, 0, 1, b"b")],
            Error::ExpectedContinuation,
        ),
        (
            "rsv1 without extension",
            vec![frame(true, 4, 1, b"x")],
            Error::ReservedBits,
        ),
        (
            "reserved opcode 3",
            vec![frame(true, 0, 3, b"")],
            Error::ReservedOpcode,
        ),
        (
            "reserved control opcode 0xB",
            vec![frame(true, 0, 0xB, b"")],
            Error::ReservedOpcode,
        ),
        (
            "fragmented ping",
            vec![frame(false, 0, 9, b"")],
            Error::FragmentedControl,
        ),
        (
            "ping of 126 bytes",
            vec![frame(true, 0, 9, &[0; 126])],
            Error::ControlTooLong,
        ),
        (
            "invalid utf-8",
            vec![frame(true, 0, 1, &[0xFF])],
            Error::InvalidUtf8,
        ),
        (
            "invalid utf-8 split over fragments",
            vec![frame(false, 0, 1, &[0xCE]), frame(true, 0, 0, &[0x41])],
            Error::InvalidUtf8,
        ),
        (
            "text ending inside a code point",
            vec![frame(true, 0, 1, &[0xCE])],
            Error::InvalidUtf8,
        ),
        (
            "close with one byte",
            vec![frame(true, 0, 8, &[3])],
            Error::CloseOneByte,
        ),
        (
            "close code 1005",
            vec![frame(true, 0, 8, &[3, 0xED])],
            Error::InvalidCloseCode,
        ),
        (
            "close code 999",
            vec![frame(true, 0, 8, &[3, 0xE7])],
            Error::InvalidCloseCode,
        ),
        (
            "close reason not utf-8",
            vec![frame(true, 0, 8, &[3, 0xE8, 0xFF])],
            Error::InvalidUtf8,
        ),
        (
            "fragments adding up past the limit",
            vec![
                frame(false, 0, 2, &vec![0; big]),
                frame(true, 0, 0, &vec![0; 16 * big]),
            ],
            Error::MessageTooBig,
        ),
    ];
    for (name, frames, want) in cases {
        let (mut s, r) = feed_all(&frames);
        assert_eq!(r, Err(want), "{name}");
        assert_eq!(s.conn.state(), State::Closed, "{name}");
        let code = want.close_code().unwrap();
        assert_eq!(
            s.sent().last(),
            Some(&Ev::Close(Some(code), want.reason().to_string())),
            "{name}"
        );
    }
}

#[test]
fn unmasked_client_frame_fails_with_1002() {
    let mut s = Server::new();
    assert_eq!(s.feed(&[0x81, 0x01, b'a'], 0), Err(Error::UnmaskedFrame));
    assert_eq!(
        s.sent(),
        vec![Ev::Close(Some(1002), "client frame not masked".into())]
    );
}

#[test]
fn huge_declared_length_is_refused_from_the_header() {
    // 1 GiB declared; only the 14-byte header is ever sent.
    let mut s = Server::new();
    let mut h = [0u8; MAX_HEADER];
    let n = encode_header(&mut h, true, 0, OpCode::Binary, Some([1, 2, 3, 4]), 1 << 30);
    assert_eq!(s.feed(&h[..n], 0), Err(Error::MessageTooBig));
    assert_eq!(
        s.sent(),
        vec![Ev::Close(Some(1009), "message too big".into())]
    );
}

#[test]
fn invalid_utf8_fails_fast_inside_a_frame() {
    // Autobahn 6.4.3: the frame is not complete, but its prefix is invalid.
    let payload = ["κόσμε".as_bytes(), &[0xF4, 0x90, 0x80, 0x80], b"edited"].concat();
    let bytes = frame(true, 0, 1, &payload);
    let mut s = Server::new();
    s.feed(&bytes[..8], 0).unwrap();
    assert_eq!(s.feed(&bytes[8..20], 0), Err(Error::InvalidUtf8));
}

#[test]
fn peer_close_is_echoed_and_later_input_ignored() {
    let (mut s, r) = feed_all(&[
        frame(true, 0, 8, b"\x03\xe8bye"),
        frame(true, 0, 1, b"after close"),
    ]);
    r.unwrap();
    assert_eq!(s.events, vec![Ev::Close(Some(1000), "bye".into())]);
    assert_eq!(s.conn.state(), State::Closed);
    assert_eq!(s.sent(), vec![Ev::Close(Some(1000), String::new())]);

    let (mut s, r) = feed_all(&[frame(true, 0, 8, b"")]);
    r.unwrap();
    assert_eq!(s.sent(), vec![Ev::Close(None, String::new())]);
}

#[test]
fn server_initiated_close_waits_for_the_reply() {
    let mut s = Server::new();
    s.conn.close(&mut s.out, 5, 1001, "going away");
    assert_eq!(s.conn.state(), State::CloseSent);
    // Data frames are no longer delivered nor sent; the reply completes it.
    s.feed(&frame(true, 0, 1, b"late"), 6).unwrap();
    s.conn.send_message(&mut s.out, true, b"dropped");
    s.feed(&frame(true, 0, 8, b"\x03\xe9"), 7).unwrap();
    assert_eq!(s.events, vec![Ev::Close(Some(1001), String::new())]);
    assert_eq!(s.conn.state(), State::Closed);
    assert_eq!(s.sent(), vec![Ev::Close(Some(1001), "going away".into())]);
}

#[test]
fn client_role_masks_and_server_role_decodes() {
    let mut client = Conn::client(0, 12345);
    let mut wire = Vec::new();
    client.send_message(&mut wire, true, "hé".repeat(3000).as_bytes());
    client.send_message(&mut wire, false, b"");
    assert_ne!(wire[1] & 0x80, 0, "client frames carry a mask");
    let mut s = Server::new();
    s.feed(&wire, 0).unwrap();
    assert_eq!(
        s.events,
        vec![Ev::Text("hé".repeat(3000)), Ev::Binary(vec![])]
    );
}

// --- timers, with a fake clock ---

const T: Timeouts = Timeouts {
    handshake_ms: 10_000,
    ping_interval_ms: 1_000,
    pong_timeout_ms: 500,
    idle_timeout_ms: 0,
    close_linger_ms: 2_000,
};

#[test]
fn handshake_deadline() {
    let mut c = Conn::server(100);
    let mut out = Vec::new();
    assert_eq!(c.next_timeout(100, &T), Some(10_100));
    assert_eq!(
        c.handle_timeout(10_099, &T, &mut out),
        TimerAction::Continue
    );
    assert_eq!(
        c.handle_timeout(10_100, &T, &mut out),
        TimerAction::Drop("handshake timeout")
    );
}

#[test]
fn ping_then_pong_keeps_the_connection() {
    let mut s = Server::new();
    assert_eq!(s.conn.next_timeout(0, &T), Some(1_000));
    assert_eq!(
        s.conn.handle_timeout(999, &T, &mut s.out),
        TimerAction::Continue
    );
    assert!(s.out.is_empty(), "no ping before the interval");
    assert_eq!(
        s.conn.handle_timeout(1_000, &T, &mut s.out),
        TimerAction::Continue
    );
    assert_eq!(s.sent(), vec![Ev::Ping(vec![])]);
    assert_eq!(s.conn.next_timeout(1_000, &T), Some(1_500));
    s.feed(&frame(true, 0, 10, b""), 1_200).unwrap();
    assert_eq!(
        s.conn.handle_timeout(1_500, &T, &mut s.out),
        TimerAction::Continue
    );
    assert_eq!(s.conn.next_timeout(1_500, &T), Some(2_200));
}

#[test]
fn no_pong_drops_the_connection() {
    let mut s = Server::new();
    s.conn.handle_timeout(1_000, &T, &mut s.out);
    assert_eq!(
        s.conn.handle_timeout(1_499, &T, &mut s.out),
        TimerAction::Continue
    );
    assert_eq!(
        s.conn.handle_timeout(1_500, &T, &mut s.out),
        TimerAction::Drop("pong timeout")
    );
}

#[test]
fn traffic_postpones_the_ping() {
    let mut s = Server::new();
    s.feed(&frame(true, 0, 1, b"hi"), 800).unwrap();
    assert_eq!(
        s.conn.handle_timeout(1_000, &T, &mut s.out),
        TimerAction::Continue
    );
    assert!(s.out.is_empty());
    assert_eq!(s.conn.next_timeout(1_000, &T), Some(1_800));
}

#[test]
fn idle_timeout_closes_with_1001_then_linger_drops() {
    let t = Timeouts {
        ping_interval_ms: 0,
        idle_timeout_ms: 3_000,
        ..T
    };
    let mut s = Server::new();
    assert_eq!(s.conn.next_timeout(0, &t), Some(3_000));
    assert_eq!(
        s.conn.handle_timeout(3_000, &t, &mut s.out),
        TimerAction::Continue
    );
    assert_eq!(s.conn.state(), State::CloseSent);
    assert_eq!(s.sent(), vec![Ev::Close(Some(1001), "idle timeout".into())]);
    // The peer never answers: dropped at the linger deadline.
    assert_eq!(s.conn.next_timeout(3_000, &t), Some(5_000));
    assert_eq!(
        s.conn.handle_timeout(4_999, &t, &mut s.out),
        TimerAction::Continue
    );
    assert_eq!(
        s.conn.handle_timeout(5_000, &t, &mut s.out),
        TimerAction::Drop("close linger expired")
    );
}

#[test]
fn timers_survive_32_bit_wraparound() {
    let base = (u32::MAX as u64) - 200; // stored times wrap 200 ms later
    let mut c = Conn::server(base);
    c.accept(base);
    let mut out = Vec::new();
    assert_eq!(c.next_timeout(base, &T), Some(base + 1_000));
    assert_eq!(
        c.handle_timeout(base + 999, &T, &mut out),
        TimerAction::Continue
    );
    assert!(out.is_empty());
    c.handle_timeout(base + 1_000, &T, &mut out);
    assert!(!out.is_empty(), "ping sent across the wrap");
}

/// The live handoff (issue 17): a connection frozen in the middle of a
/// fragmented text message, inside a split code point of its second
/// fragment's half-unmasked payload, and awaiting a pong, goes on in a
/// process whose clock says something else: the message completes, the
/// UTF-8 check goes on where it was, and the pong deadline keeps its age.
#[test]
fn a_frozen_connection_goes_on_where_it_was() {
    use crate::base::state::{StateReader, StateWriter};
    let t = Timeouts::default();
    let mut s = Server::new();
    s.feed(&frame(false, 0, 1, "héllo ".as_bytes()), 1_000)
        .unwrap();
    // "€" is three bytes: cut after the first of them, mid-frame.
    let second = frame(true, 0, 0, "wörld €!".as_bytes());
    let cut = second.len() - 3;
    s.feed(&second[..cut], 1_000).unwrap();
    // A ping goes out and waits for its pong.
    assert_eq!(
        s.conn.handle_timeout(31_000, &t, &mut s.out),
        TimerAction::Continue
    );
    s.out.clear();
    let deadline = s.conn.next_timeout(32_000, &t);
    assert_eq!(s.conn.movable(), Ok(()));
    let mut rec = Vec::new();
    s.conn.freeze(32_000, &mut StateWriter(&mut rec));
    for cut in 0..rec.len() {
        let r = Conn::thaw(&mut StateReader(&rec[..cut]), 0, &s.limits);
        assert!(r.is_err(), "a record cut at {cut} is refused");
    }
    // The next process: its clock at 5 s.
    let mut r = StateReader(&rec);
    s.conn = Conn::thaw(&mut r, 5_000, &s.limits).unwrap();
    assert!(r.is_empty());
    assert_eq!(
        s.conn.next_timeout(5_000, &t).map(|d| d - 5_000),
        deadline.map(|d| d - 32_000),
        "the pong deadline is as far away as it was"
    );
    s.feed(&second[cut..], 5_000).unwrap();
    assert_eq!(s.events, vec![Ev::Text("héllo wörld €!".into())]);
    // A byte that cannot continue the split code point is refused as it
    // would have been without the move.
    let mut s2 = Server::new();
    s2.feed(&frame(false, 0, 1, &[0xe2]), 0).unwrap();
    let mut rec = Vec::new();
    s2.conn.freeze(0, &mut StateWriter(&mut rec));
    s2.conn = Conn::thaw(&mut StateReader(&rec), 0, &s2.limits).unwrap();
    assert_eq!(
        s2.feed(&frame(true, 0, 0, b"A"), 0),
        Err(Error::InvalidUtf8)
    );
}
