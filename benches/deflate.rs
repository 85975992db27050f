//! permessage-deflate: CPU per message and compression ratio for a 1 KB JSON
//! message (a publication of twelve price ticks).
//!
//! Run with `cargo bench --bench deflate`. The ratio of each variant is
//! printed before its timings. Groups:
//! - `deflate/compress`: the compress-once primitive (`Engine::compress_frame`,
//!   no context takeover, a shared compressor reset per message) at zlib
//!   levels 1 and 6, and a `dedicated` connection's own compressor (context
//!   takeover: the same stream of similar messages).
//! - `deflate/inflate`: a server `Conn` decoding one masked compressed frame
//!   (unmask + inflate + UTF-8 check), with the worker's shared decompressor
//!   (`shared`) and with the connection's own (`dedicated`); `plain` decodes
//!   the same message uncompressed, for reference.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use wsgate::proto::deflate::{self, Config, Engine, Mode};
use wsgate::proto::frame::{encode_header, OpCode, MAX_HEADER};
use wsgate::proto::mask::apply_mask;
use wsgate::proto::{Conn, Event, Limits};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// About 1 KB of JSON: a publication carrying twelve price ticks.
fn json_1k(seed: u64) -> Vec<u8> {
    let ticks: Vec<String> = (0..12)
        .map(|i| {
            let n = seed * 10 + i;
            format!(
                r#"{{"symbol":"BTC-USD","bid":{}.{},"ask":{}.{},"size":{},"ts":{}}}"#,
                64_000 + n % 97,
                n % 10,
                64_001 + n % 89,
                (n * 7) % 10,
                (n * 13) % 1000,
                1_712_345_678_000 + n * 37
            )
        })
        .collect();
    format!(
        r#"{{"channel":"prices:btc","offset":{},"data":[{}]}}"#,
        1000 + seed,
        ticks.join(",")
    )
    .into_bytes()
}

fn cfg(mode: Mode, level: u32) -> Config {
    Config {
        mode,
        level,
        ..Config::default()
    }
}

/// A server connection (and the matching client one) that negotiated
/// permessage-deflate under `c`.
fn pair(c: &Config) -> (Conn, Conn) {
    let offer = deflate::client_offer(&cfg(Mode::Dedicated, 1)).unwrap();
    let p = deflate::negotiate([offer.as_bytes()], c).unwrap();
    let answer = p.to_header();
    let cp = deflate::accept_response([answer.as_bytes()], &cfg(Mode::Dedicated, 1))
        .unwrap()
        .unwrap();
    let mut s = Conn::server(0);
    s.accept(0);
    s.set_deflate(&p, c);
    let mut cl = Conn::client(0, 7);
    cl.set_deflate(&cp, &cfg(Mode::Dedicated, 1));
    (s, cl)
}

fn compress(c: &mut Criterion) {
    let msgs: Vec<Vec<u8>> = (0..64).map(json_1k).collect();
    let len = msgs[0].len();
    let frames: Vec<Vec<u8>> = msgs
        .iter()
        .map(|m| wsgate::broker::text_frame(m).0)
        .collect();
    let mut g = c.benchmark_group("deflate/compress");
    g.throughput(Throughput::Elements(1));
    for level in [1u32, 6] {
        let mut e = Engine::new(cfg(Mode::Shared, level));
        let total: usize = frames
            .iter()
            .map(|f| e.compress_frame(f, 15).unwrap().len())
            .sum();
        eprintln!(
            "shared, level {level}: {len} B JSON -> {:.0} B frame on average (ratio {:.2})",
            total as f64 / frames.len() as f64,
            (frames[0].len() * frames.len()) as f64 / total as f64
        );
        let mut i = 0;
        g.bench_function(format!("shared_level{level}_1KiB_json"), |b| {
            b.iter(|| {
                i = (i + 1) % frames.len();
                black_box(e.compress_frame(black_box(&frames[i]), 15))
            })
        });
    }
    for level in [1u32, 6] {
        let c_ = cfg(Mode::Dedicated, level);
        let (mut s, _) = pair(&c_);
        let mut e = Engine::new(c_);
        let mut out = Vec::with_capacity(64 << 10);
        for m in &msgs {
            s.sender(&mut out, &mut e).send(true, m);
        }
        eprintln!(
            "dedicated (context takeover), level {level}: {len} B JSON -> {:.0} B frame on average (ratio {:.2})",
            out.len() as f64 / msgs.len() as f64,
            (len * msgs.len()) as f64 / out.len() as f64
        );
        let mut i = 0;
        g.bench_function(format!("dedicated_level{level}_1KiB_json"), |b| {
            b.iter(|| {
                i = (i + 1) % msgs.len();
                out.clear();
                s.sender(&mut out, &mut e).send(true, black_box(&msgs[i]));
                black_box(out.len())
            })
        });
    }
    g.finish();
}

/// A masked client frame with RSV1 as given.
fn client_frame(rsv: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = [0u8; MAX_HEADER];
    let n = encode_header(
        &mut h,
        true,
        rsv,
        OpCode::Text,
        Some(KEY),
        payload.len() as u64,
    );
    let mut f = h[..n].to_vec();
    let mut p = payload.to_vec();
    apply_mask(&mut p, KEY, 0);
    f.extend_from_slice(&p);
    f
}

fn inflate(c: &mut Criterion) {
    let msg = json_1k(3);
    let mut g = c.benchmark_group("deflate/inflate");
    g.throughput(Throughput::Elements(1));
    for (name, mode) in [("shared", Mode::Shared), ("dedicated", Mode::Dedicated)] {
        let c_ = cfg(mode, 1);
        let (mut s, mut cl) = pair(&c_);
        let mut ce = Engine::new(cfg(Mode::Dedicated, 1));
        // The client's first message: compressed from an empty window, so
        // it decodes the same however often it is replayed, with or without
        // context takeover.
        let mut wire = Vec::new();
        cl.sender(&mut wire, &mut ce).send(true, &msg);
        let mut se = Engine::new(c_);
        let limits = Limits::default();
        let mut sink = Vec::new();
        g.bench_function(format!("{name}_1KiB_json"), |b| {
            b.iter_batched_ref(
                || wire.clone(),
                |buf| {
                    let mut n = 0;
                    s.decode_with(buf, 0, &limits, &mut se, &mut sink, &mut |ev, _| {
                        if let Event::Message { data, .. } = ev {
                            n += data.len();
                        }
                    })
                    .unwrap();
                    sink.clear();
                    black_box(n)
                },
                BatchSize::SmallInput,
            )
        });
    }
    let mut s = Conn::server(0);
    s.accept(0);
    let wire = client_frame(0, &msg);
    let mut se = Engine::default();
    let limits = Limits::default();
    let mut sink = Vec::new();
    g.bench_function("plain_1KiB_json", |b| {
        b.iter_batched_ref(
            || wire.clone(),
            |buf| {
                let mut n = 0;
                s.decode_with(buf, 0, &limits, &mut se, &mut sink, &mut |ev, _| {
                    if let Event::Message { data, .. } = ev {
                        n += data.len();
                    }
                })
                .unwrap();
                black_box(n)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, compress, inflate);
criterion_main!(benches);
