//! Micro-benchmarks of the sans-IO protocol core (`wsgate::proto`).
//!
//! Run with `cargo bench --bench proto`; pass a filter to run one group,
//! e.g. `cargo bench --bench proto -- mask/`.
//!
//! Groups:
//! - `mask`: word-wise `apply_mask` against the RFC's byte-at-a-time loop,
//!   on a 64-byte-aligned slice and on one starting 3 bytes past that.
//! - `utf8`: incremental `Utf8State` (whole, and in 1 KiB pieces) against
//!   `std::str::from_utf8` and the one-shot `Utf8State::validate`.
//! - `decode`: a server `Conn` decoding a buffer of masked client frames. The
//!   decoder unmasks in place, so each iteration gets a fresh copy of the
//!   pristine buffer from `iter_batched_ref` setup (not timed). Each case is
//!   measured twice, once reporting messages/s (`msgs`) and once wire
//!   bytes/s (`bytes`, headers included).
//! - `handshake`: parse + check + 101 response of a Chrome upgrade request,
//!   and `accept_key` alone.
//! - `encode`: `put_frame` into a reused, cleared `Vec`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use wsgate::proto::frame::put_frame;
use wsgate::proto::handshake::{accept_key, check_upgrade, write_accept, Head};
use wsgate::proto::mask::{apply_mask, apply_mask_bytewise};
use wsgate::proto::utf8::{Invalid, Utf8State};
use wsgate::proto::{Conn, Event, Limits, OpCode};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Deterministic filler bytes (xorshift32).
fn noise(len: usize, mut seed: u32) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as u8
        })
        .collect()
}

fn size_label(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => format!("{n}B"),
    }
}

/// `len` bytes of `storage` starting `misalign` bytes past a 64-byte boundary.
fn slice_at(storage: &mut [u8], misalign: usize, len: usize) -> &mut [u8] {
    let base = storage.as_ptr().align_offset(64);
    &mut storage[base + misalign..base + misalign + len]
}

fn mask(c: &mut Criterion) {
    let mut g = c.benchmark_group("mask");
    for size in [20, 1 << 10, 16 << 10, 1 << 20] {
        let label = size_label(size);
        // Room for a 64-byte alignment shift plus the 3-byte offset.
        let mut storage = noise(size + 64 + 3, 1);
        g.throughput(Throughput::Bytes(size as u64));
        // The buffer is XORed again each iteration: masking is an involution
        // and the cost does not depend on the contents.
        g.bench_function(BenchmarkId::new("apply_mask", &label), |b| {
            let buf = slice_at(&mut storage, 0, size);
            b.iter(|| apply_mask(black_box(&mut *buf), black_box(KEY), black_box(0)))
        });
        g.bench_function(BenchmarkId::new("apply_mask_off3", &label), |b| {
            let buf = slice_at(&mut storage, 3, size);
            b.iter(|| apply_mask(black_box(&mut *buf), black_box(KEY), black_box(0)))
        });
        g.bench_function(BenchmarkId::new("bytewise", &label), |b| {
            let buf = slice_at(&mut storage, 0, size);
            b.iter(|| apply_mask_bytewise(black_box(&mut *buf), black_box(KEY), black_box(0)))
        });
    }
    g.finish();
}

/// Exactly `len` bytes of valid UTF-8 made by repeating `unit` (padded with
/// ASCII where a code point would not fit).
fn text_of_len(unit: &str, len: usize) -> Vec<u8> {
    let mut s = String::with_capacity(len);
    'fill: loop {
        for ch in unit.chars() {
            if s.len() + ch.len_utf8() > len {
                break 'fill;
            }
            s.push(ch);
        }
    }
    while s.len() < len {
        s.push(' ');
    }
    s.into_bytes()
}

fn feed_pieces(data: &[u8], piece: usize) -> Result<(), Invalid> {
    let mut s = Utf8State::default();
    for p in data.chunks(piece) {
        s.feed(p)?;
    }
    s.finish()
}

fn utf8(c: &mut Criterion) {
    const LEN: usize = 16 << 10;
    let ascii = text_of_len(
        "The quick brown fox jumps over the lazy dog; {\"seq\":42,\"ok\":true}\n",
        LEN,
    );
    let mixed = text_of_len("Γειά σου κόσμε! Καλημέρα 😀🚀 ünïcödé ✓ — ", LEN);
    let mut g = c.benchmark_group("utf8");
    g.throughput(Throughput::Bytes(LEN as u64));
    for (name, data) in [("ascii_16KiB", &ascii), ("mixed_16KiB", &mixed)] {
        let data = data.as_slice();
        assert_eq!(data.len(), LEN);
        assert!(feed_pieces(data, 1024).is_ok() && std::str::from_utf8(data).is_ok());
        g.bench_function(BenchmarkId::new("feed_whole", name), |b| {
            b.iter(|| {
                let mut s = Utf8State::default();
                let r = s.feed(black_box(data)).and_then(|()| s.finish());
                black_box(r)
            })
        });
        g.bench_function(BenchmarkId::new("feed_1KiB_pieces", name), |b| {
            b.iter(|| black_box(feed_pieces(black_box(data), 1024)))
        });
        g.bench_function(BenchmarkId::new("std_from_utf8", name), |b| {
            b.iter(|| black_box(std::str::from_utf8(black_box(data)).is_ok()))
        });
        g.bench_function(BenchmarkId::new("validate_oneshot", name), |b| {
            b.iter(|| black_box(Utf8State::validate(black_box(data))))
        });
    }
    g.finish();
}

/// `count` masked client frames of `size` bytes each, back to back.
fn client_frames(count: usize, size: usize, text: bool) -> Vec<u8> {
    let payload = if text {
        text_of_len("hello, websocket! :)", size)
    } else {
        noise(size, 7)
    };
    let mut client = Conn::client(0, 0x9e37_79b9);
    let mut wire = Vec::new();
    for _ in 0..count {
        client.send_message(&mut wire, text, &payload);
    }
    wire
}

/// Decode all of `buf` with `conn`; returns the number of messages seen.
fn decode_all(conn: &mut Conn, buf: &mut [u8], limits: &Limits, out: &mut Vec<u8>) -> usize {
    let mut msgs = 0usize;
    let used = conn
        .decode(buf, 0, limits, out, &mut |ev, _out| {
            if let Event::Message { data, .. } = ev {
                black_box(data);
                msgs += 1;
            }
        })
        .expect("valid frames");
    debug_assert_eq!(used, buf.len());
    msgs
}

fn decode(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("decode");
    let cases = [
        ("1000x20B_text", 1000, 20, true),
        ("100x1KiB_bin", 100, 1 << 10, false),
        ("1x16KiB_bin", 1, 16 << 10, false),
        ("1x1MiB_bin", 1, 1 << 20, false),
    ];
    for (name, count, size, text) in cases {
        let pristine = client_frames(count, size, text);
        let mut conn = Conn::server(0);
        conn.accept(0);
        let mut out = Vec::new();
        // Sanity check once: every byte consumed, every message delivered.
        let mut check = pristine.clone();
        assert_eq!(decode_all(&mut conn, &mut check, &limits, &mut out), count);
        assert!(out.is_empty() && conn.is_open() && !conn.is_mid_message());

        for (unit, tp) in [
            ("msgs", Throughput::Elements(count as u64)),
            ("bytes", Throughput::Bytes(pristine.len() as u64)),
        ] {
            g.throughput(tp);
            g.bench_function(BenchmarkId::new(name, unit), |b| {
                b.iter_batched_ref(
                    || pristine.clone(),
                    |buf| black_box(decode_all(&mut conn, buf, &limits, &mut out)),
                    BatchSize::LargeInput,
                )
            });
        }
    }
    g.finish();
}

const CHROME_UPGRADE: &[u8] = b"GET /ws?room=lobby HTTP/1.1\r\n\
Host: gateway.example.com\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://app.example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Cookie: session=9f8e7d6c5b4a39281706f5e4d3c2b1a0; theme=dark\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";

fn upgrade(req: &[u8], out: &mut Vec<u8>) {
    let head = Head::parse(req, 8 << 10)
        .expect("well-formed")
        .expect("complete");
    let up = check_upgrade(&head).expect("valid upgrade");
    write_accept(out, up.key, None, None);
}

fn handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(512);
    upgrade(CHROME_UPGRADE, &mut out);
    assert!(out.starts_with(b"HTTP/1.1 101 "));
    let req_len = CHROME_UPGRADE.len();
    g.bench_function(format!("parse_check_accept_chrome_{req_len}B"), |b| {
        b.iter(|| {
            out.clear();
            upgrade(black_box(CHROME_UPGRADE), &mut out);
            black_box(out.len())
        })
    });
    g.bench_function("accept_key", |b| {
        b.iter(|| accept_key(black_box(b"dGhlIHNhbXBsZSBub25jZQ==")))
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    let mut out = Vec::with_capacity(32 << 10);
    for (size, op) in [(20, OpCode::Text), (16 << 10, OpCode::Binary)] {
        let payload = text_of_len("hello, websocket! :)", size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("put_frame", size_label(size)), |b| {
            b.iter(|| {
                out.clear();
                put_frame(&mut out, op, black_box(&payload));
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, mask, utf8, decode, handshake, encode);
criterion_main!(benches);
