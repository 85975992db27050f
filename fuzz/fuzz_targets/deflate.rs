//! The permessage-deflate inflater (RFC 7692), through the server's
//! `Conn::decode_with` and a worker `Engine`, after a real negotiation
//! (`client_offer` → `negotiate` → `accept_response` → `set_deflate`).
//!
//! Input: `[flags] [seed] [seed] [corrupt_at] [corrupt_xor] rest…`
//! - flags bit 0: mode (0 shared: no context takeover; 1 dedicated: context
//!   takeover); bit 1: what `rest` is (0: raw client frames, RSV1 and
//!   compressed payloads made by the fuzzer; 1: messages, separated by
//!   0xFF, that a client `Conn` compresses, then one byte of its output
//!   XORed with `corrupt_xor` at `corrupt_at` when `corrupt_xor` ≠ 0);
//!   bits 2-3: max chunk size (1, 7, 100, whole); bits 4-5: message limit
//!   (64, 1000, 70 000, 1 MiB); bits 6-7: the client's window bits (9, 12,
//!   15, 15).
//! - seed: the chunk sizes' generator.
//!
//! Checked: no panic; inflated messages within the limit (a decompression
//! bomb stops there); text is UTF-8; chunking changes nothing (events,
//! outcome, output); uncorrupted messages arrive exactly as sent, up to the
//! first one over the limit, which fails with 1009. With
//! `WSGATE_FUZZ_STRICT=1`, also what known findings break (see
//! fuzz/README.md).

#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::proto::deflate::{self, Engine, Mode};
use wsgate::proto::{Conn, Error, Event, Limits};

#[derive(Debug, PartialEq, Eq)]
enum Ev {
    Message(bool, Vec<u8>),
    Control(u8, Vec<u8>),
}

struct Setup {
    server_cfg: deflate::Config,
    client_cfg: deflate::Config,
    server_params: deflate::Params,
    client_params: deflate::Params,
}

fn negotiate(dedicated: bool, client_bits: u8) -> Setup {
    let mode = if dedicated {
        Mode::Dedicated
    } else {
        Mode::Shared
    };
    let server_cfg = deflate::Config {
        mode,
        ..deflate::Config::default()
    };
    let client_cfg = deflate::Config {
        mode,
        // Compress every message (but not below 1 byte: `min_size` 0 asks
        // for compression even when it makes a message larger).
        min_size: 1,
        window_bits: client_bits,
        level: 6,
    };
    let offer = deflate::client_offer(&client_cfg).expect("an offer");
    let server_params =
        deflate::negotiate([offer.as_bytes()], &server_cfg).expect("our own offer is accepted");
    let answer = server_params.to_header();
    let client_params = deflate::accept_response([answer.as_bytes()], &client_cfg)
        .expect("our own answer is valid")
        .expect("and agrees");
    Setup {
        server_cfg,
        client_cfg,
        server_params,
        client_params,
    }
}

/// Set `WSGATE_FUZZ_STRICT=1` to also check what known findings break
/// (their reproducers are in `fuzz/artifacts/deflate/`).
fn strict() -> bool {
    static S: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *S.get_or_init(|| std::env::var_os("WSGATE_FUZZ_STRICT").is_some())
}

/// RSV1 and the payload length of the frame at the front of `f`.
fn frame_info(f: &[u8]) -> (bool, usize) {
    let rsv1 = f[0] & 0x40 != 0;
    let len = match f[1] & 0x7F {
        126 => usize::from(u16::from_be_bytes([f[2], f[3]])),
        127 => u64::from_be_bytes(f[2..10].try_into().expect("8 bytes")) as usize,
        n => usize::from(n),
    };
    (rsv1, len)
}

struct Run {
    events: Vec<Ev>,
    out: Vec<u8>,
    result: Result<(), Error>,
}

fn feed(s: &Setup, limits: &Limits, wire: &[u8], mut next_chunk: impl FnMut() -> usize) -> Run {
    let mut conn = Conn::server(0);
    conn.accept(0);
    conn.set_deflate(&s.server_params, &s.server_cfg);
    let mut engine = Engine::new(s.server_cfg);
    let mut pending: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut events = Vec::new();
    let mut result = Ok(());
    let mut pos = 0;
    while pos < wire.len() {
        let n = next_chunk().clamp(1, wire.len() - pos);
        pending.extend_from_slice(&wire[pos..pos + n]);
        pos += n;
        let mut buf = std::mem::take(&mut pending);
        let presented = buf.len();
        let r = conn.decode_with(&mut buf, 0, limits, &mut engine, &mut out, &mut |e, _| {
            events.push(match e {
                Event::Message { text, data } => {
                    assert!(data.len() <= limits.max_message, "inflated past the limit");
                    if text {
                        assert!(std::str::from_utf8(data).is_ok(), "text not UTF-8");
                    }
                    Ev::Message(text, data.to_vec())
                }
                Event::Ping(p) => Ev::Control(9, p.to_vec()),
                Event::Pong(p) => Ev::Control(10, p.to_vec()),
                Event::Close { reason, .. } => Ev::Control(8, reason.as_bytes().to_vec()),
            })
        });
        match r {
            Ok(used) => {
                assert!(used <= presented);
                pending = buf[used..].to_vec();
            }
            Err(e) => {
                assert!(e.close_code().is_some(), "{e:?} maps to a close code");
                result = Err(e);
                conn.fail(&mut out, 0, e);
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

fuzz_target!(|data: &[u8]| {
    let [flags, s0, s1, corrupt_at, corrupt_xor, rest @ ..] = data else {
        return;
    };
    let dedicated = flags & 1 != 0;
    let structured = flags & 2 != 0;
    let max_chunk = [1usize, 7, 100, usize::MAX][usize::from(flags >> 2 & 3)];
    let max_message = [64usize, 1000, 70_000, 1 << 20][usize::from(flags >> 4 & 3)];
    let client_bits = [9u8, 12, 15, 15][usize::from(flags >> 6 & 3)];
    let limits = Limits { max_message };
    let setup = negotiate(dedicated, client_bits);

    // The wire: the fuzzer's bytes, or messages compressed by a client.
    // (text, message, whether its payload on the wire is within the frame
    // limit: `max_message`, or `max_compressed` of it when compressed)
    let mut sent: Vec<(bool, Vec<u8>, bool)> = Vec::new();
    let wire = if structured {
        let mut client = Conn::client(0, 0x1234_5678);
        client.set_deflate(&setup.client_params, &setup.client_cfg);
        let mut engine = Engine::new(setup.client_cfg);
        let mut wire = Vec::new();
        for m in rest.split(|&b| b == 0xFF) {
            let (text, body) = match m.split_first() {
                Some((k, body)) => (k & 1 == 1, body),
                None => (false, m),
            };
            let body = if text {
                String::from_utf8_lossy(body).into_owned().into_bytes()
            } else {
                body.to_vec()
            };
            let at = wire.len();
            client.sender(&mut wire, &mut engine).send(text, &body);
            let (rsv1, payload_len) = frame_info(&wire[at..]);
            if rsv1 && strict() {
                // Known (artifacts/deflate/expanded-message-sent-compressed):
                // `Sender::send` keeps deflate output that is larger than
                // the message; `deflate_message` never compares sizes.
                assert!(
                    payload_len <= body.len(),
                    "a {}-byte message was sent compressed as {payload_len} bytes",
                    body.len()
                );
            }
            let wire_max = if rsv1 {
                deflate::max_compressed(max_message)
            } else {
                max_message
            };
            sent.push((text, body, payload_len <= wire_max));
        }
        if *corrupt_xor != 0 && !wire.is_empty() {
            let i = usize::from(*corrupt_at) * wire.len() / 256;
            wire[i] ^= corrupt_xor;
        }
        wire
    } else {
        rest.to_vec()
    };

    let mut x = u16::from_le_bytes([*s0, *s1]) | 1;
    let chunked = feed(&setup, &limits, &wire, || {
        x ^= x << 7;
        x ^= x >> 9;
        x ^= x << 8;
        if max_chunk == usize::MAX {
            usize::MAX
        } else {
            1 + usize::from(x) % max_chunk
        }
    });
    let whole = feed(&setup, &limits, &wire, || usize::MAX);
    assert_eq!(chunked.events, whole.events, "chunking changed the events");
    assert_eq!(chunked.result, whole.result, "chunking changed the outcome");
    assert_eq!(chunked.out, whole.out, "chunking changed what was written");

    if structured && *corrupt_xor == 0 {
        // Everything up to the first message over the limit (as sent, or
        // as it went on the wire) arrives intact.
        let fit = sent
            .iter()
            .take_while(|(_, b, wire_fits)| b.len() <= max_message && *wire_fits)
            .count();
        let want: Vec<Ev> = sent[..fit]
            .iter()
            .map(|(t, b, _)| Ev::Message(*t, b.clone()))
            .collect();
        assert_eq!(
            whole.events, want,
            "a compressed message changed on the way (outcome {:?}, mode {:?}, \
             {client_bits} bits, limit {max_message})",
            whole.result, setup.server_cfg.mode
        );
        if fit < sent.len() {
            assert_eq!(whole.result, Err(Error::MessageTooBig));
        } else {
            assert_eq!(whole.result, Ok(()));
        }
    }
});
