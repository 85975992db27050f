//! The frame decoder (`proto::Conn::decode`), fed as the worker feeds it:
//! the input arrives in chunks whose sizes come from the input itself, and
//! the bytes a call leaves unconsumed are presented again in front of the
//! next chunk. On an error the connection is failed, and input after that
//! must be swallowed.
//!
//! Input: `[flags] [seed] [seed] stream…`
//! - flags bit 0: role (0 server, fed masked client frames; 1 client);
//!   bits 1-2: max chunk size (1, 7, 100, whole); bits 3-4: the message
//!   limit (64, 1000, 70 000, 16 MiB).
//! - seed: the chunk sizes' generator.
//!
//! Checked: no panic; consumed ≤ presented; whole messages within the
//! limit; text is UTF-8; control payloads ≤ 125 bytes; nothing after a
//! Close; the same events and the same outcome as one call on the whole
//! stream; what the connection wrote is valid for the peer's role.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::proto::{Conn, Error, Event, Limits, State};

#[derive(Debug, PartialEq, Eq)]
enum Ev {
    Message(bool, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

fn own(e: Event<'_>) -> Ev {
    match e {
        Event::Message { text, data } => Ev::Message(text, data.to_vec()),
        Event::Ping(p) => Ev::Ping(p.to_vec()),
        Event::Pong(p) => Ev::Pong(p.to_vec()),
        Event::Close { code, reason } => Ev::Close(code, reason.to_string()),
    }
}

fn new_conn(client: bool) -> Conn {
    if client {
        Conn::client(0, 0x9e37_79b9)
    } else {
        let mut c = Conn::server(0);
        c.accept(0);
        c
    }
}

struct Run {
    events: Vec<Ev>,
    out: Vec<u8>,
    result: Result<(), Error>,
}

/// Feed `stream` in chunks of `next_chunk()` bytes, as the worker does.
fn feed(
    client: bool,
    limits: &Limits,
    stream: &[u8],
    mut next_chunk: impl FnMut() -> usize,
) -> Run {
    let mut conn = new_conn(client);
    let mut pending: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut events = Vec::new();
    let mut result = Ok(());
    let mut pos = 0;
    let mut closed = false;
    while pos < stream.len() {
        let n = next_chunk().clamp(1, stream.len() - pos);
        pending.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
        let mut buf = std::mem::take(&mut pending);
        let presented = buf.len();
        let mut evs = Vec::new();
        let r = conn.decode(&mut buf, 0, limits, &mut out, &mut |e, _| evs.push(own(e)));
        for e in &evs {
            check_event(e, limits);
            assert!(!closed, "event after Close: {e:?}");
            closed |= matches!(e, Ev::Close(..));
        }
        events.extend(evs);
        match r {
            Ok(used) => {
                assert!(used <= presented, "consumed {used} of {presented}");
                pending = buf[used..].to_vec();
                if closed {
                    assert_eq!(conn.state(), State::Closed);
                    assert!(pending.is_empty(), "input after Close is swallowed");
                }
            }
            Err(e) => {
                assert!(
                    e.close_code().is_some(),
                    "a frame error maps to a close code: {e:?}"
                );
                if result.is_ok() {
                    result = Err(e);
                }
                conn.fail(&mut out, 0, e);
                assert_eq!(conn.state(), State::Closed);
                // After a failure, more input is ignored.
                let mut rest = stream[pos..].to_vec();
                let used = conn
                    .decode(&mut rest, 0, limits, &mut out, &mut |e, _| {
                        panic!("event after failure: {:?}", own(e))
                    })
                    .expect("a failed connection swallows input");
                assert_eq!(used, rest.len());
                break;
            }
        }
    }
    Run {
        events,
        out,
        result,
    }
}

fn check_event(e: &Ev, limits: &Limits) {
    match e {
        Ev::Message(text, data) => {
            assert!(data.len() <= limits.max_message, "message over the limit");
            if *text {
                assert!(std::str::from_utf8(data).is_ok(), "text message not UTF-8");
            }
        }
        Ev::Ping(p) | Ev::Pong(p) => assert!(p.len() <= 125, "control payload > 125"),
        Ev::Close(code, reason) => {
            assert!(reason.len() <= 123);
            if let Some(c) = code {
                assert!(wsgate::proto::close::is_valid_code(*c), "close code {c}");
            }
        }
    }
}

/// What one side wrote must decode without error on the other side.
fn check_output(client: bool, out: &[u8]) {
    let mut peer = new_conn(!client);
    let mut bytes = out.to_vec();
    let limits = Limits::default();
    let mut sink = Vec::new();
    let used = peer
        .decode(&mut bytes, 0, &limits, &mut sink, &mut |_, _| {})
        .unwrap_or_else(|e| panic!("our own output is invalid: {e:?}"));
    assert_eq!(used, out.len(), "our own output ends mid-frame");
}

fuzz_target!(|data: &[u8]| {
    let [flags, s0, s1, stream @ ..] = data else {
        return;
    };
    let client = flags & 1 != 0;
    let max_chunk = [1usize, 7, 100, usize::MAX][usize::from(flags >> 1 & 3)];
    let max_message = [64usize, 1000, 70_000, 16 << 20][usize::from(flags >> 3 & 3)];
    let limits = Limits { max_message };

    // xorshift16 from the input's seed: chunk sizes in 1..=max_chunk.
    let mut x = u16::from_le_bytes([*s0, *s1]) | 1;
    let chunked = feed(client, &limits, stream, || {
        x ^= x << 7;
        x ^= x >> 9;
        x ^= x << 8;
        if max_chunk == usize::MAX {
            usize::MAX
        } else {
            1 + usize::from(x) % max_chunk
        }
    });
    let whole = feed(client, &limits, stream, || usize::MAX);
    assert_eq!(chunked.events, whole.events, "chunking changed the events");
    assert_eq!(chunked.result, whole.result, "chunking changed the outcome");
    assert_eq!(chunked.out, whole.out, "chunking changed what was written");
    check_output(client, &chunked.out);
});
