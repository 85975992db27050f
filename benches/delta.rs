//! Fossil deltas on the 200-metric dashboard (`delta::dashboard`: 200
//! numeric metrics in one JSON object, 3–4 change per tick).
//!
//! Run with `cargo bench --bench delta`. Before the timings it prints the
//! bytes on the wire per tick (WebSocket frame: header and payload) over
//! 1,000 ticks, for each way of sending them:
//! - `whole`: the publication frame (`broker::encode_publication`);
//! - `delta`: what `DeltaChannels` picks for a subscriber that has every
//!   publication (the delta form, or the whole one when not smaller);
//! - `deflate shared`: the gateway's permessage-deflate for publications
//!   (`Engine::compress_frame`: no context takeover, level 1, 15 window
//!   bits), at the default `min_size` 256 and at 0;
//! - `deflate dedicated`: a connection's own compressor with context
//!   takeover (`Conn::sender`), which the gateway uses for replies and
//!   echoes, not for publications (those are compressed once per worker);
//! - `delta + …`: the same compressors applied to what `delta` sends.
//!
//! Timings (`delta/…`): CPU per publication on the server (the delta
//! computed and its frame built, once per worker; beside it, encoding the
//! whole frame and compressing it), and per message on a client (Rust's
//! apply; the JavaScript client's is measured by `node benches/delta_decode.mjs`).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::value::RawValue;
use wsgate::broker::encode_publication;
use wsgate::delta::dashboard::Dashboard;
use wsgate::delta::fossil::{apply, Encoder};
use wsgate::delta::{DeltaChannels, DeltaLimits, Pick};
use wsgate::proto::deflate::{self, Config, Engine, Mode};
use wsgate::proto::Conn;

const TICKS: usize = 1000;

/// The dashboard's publications: `TICKS + 1` whole frames and their header
/// lengths.
fn publications(seed: u64) -> Vec<(Arc<[u8]>, usize)> {
    let mut d = Dashboard::new(seed);
    (0..=TICKS)
        .map(|i| {
            let raw = RawValue::from_string(d.json()).expect("JSON");
            d.tick();
            let (f, hl) = encode_publication("dash:eu", 1000 + i as u64, &raw);
            (Arc::from(f), hl as usize)
        })
        .collect()
}

fn cfg(mode: Mode, min_size: usize) -> Config {
    Config {
        mode,
        min_size,
        level: 1,
        ..Config::default()
    }
}

/// A server connection that negotiated permessage-deflate with context
/// takeover.
fn dedicated_conn(c: &Config) -> Conn {
    let offer = deflate::client_offer(&cfg(Mode::Dedicated, 0)).expect("an offer");
    let p = deflate::negotiate([offer.as_bytes()], c).expect("negotiated");
    let mut s = Conn::server(0);
    s.accept(0);
    s.set_deflate(&p, c);
    s
}

/// What each scheme puts on the wire per tick.
struct Sizes {
    name: &'static str,
    bytes: Vec<usize>,
}

fn report(rows: &[Sizes]) {
    let whole_mean = mean(&rows[0].bytes);
    eprintln!(
        "bytes on the wire per tick, {TICKS} ticks of the 200-metric dashboard (first one excluded):"
    );
    eprintln!(
        "{:<40} {:>8} {:>8} {:>8} {:>8}",
        "", "mean", "median", "p99", "vs whole"
    );
    for r in rows {
        let mut s = r.bytes[1..].to_vec();
        s.sort_unstable();
        let m = mean(&r.bytes);
        eprintln!(
            "{:<40} {:>8.0} {:>8} {:>8} {:>7.1}%",
            r.name,
            m,
            s[s.len() / 2],
            s[s.len() * 99 / 100],
            100.0 * m / whole_mean
        );
    }
}

fn mean(v: &[usize]) -> f64 {
    v[1..].iter().sum::<usize>() as f64 / (v.len() - 1) as f64
}

fn sizes() {
    let pubs = publications(16);
    // What a delta subscriber that has every publication is sent.
    let mut state = DeltaChannels::new(DeltaLimits::default());
    let ch: Arc<str> = Arc::from("dash:eu");
    let mut cursor = state.join(&ch);
    let picked: Vec<Arc<[u8]>> = pubs
        .iter()
        .map(|(w, _)| {
            let mut p = state.publish("dash:eu", w).expect("a delta channel");
            match p.pick(&mut cursor) {
                Pick::Whole => w.clone(),
                Pick::Delta(f) => f,
            }
        })
        .collect();
    let header = |f: &[u8]| match f[1] {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let shared = |frames: &[Arc<[u8]>], min_size: usize| -> Vec<usize> {
        let mut e = Engine::new(cfg(Mode::Shared, min_size));
        frames
            .iter()
            .map(|f| e.compress_frame(f, 15).map_or(f.len(), |z| z.len()))
            .collect()
    };
    let dedicated = |frames: &[Arc<[u8]>], min_size: usize| -> Vec<usize> {
        let c = cfg(Mode::Dedicated, min_size);
        let mut s = dedicated_conn(&c);
        let mut e = Engine::new(c);
        let mut out = Vec::new();
        frames
            .iter()
            .map(|f| {
                out.clear();
                s.sender(&mut out, &mut e).send(true, &f[header(f)..]);
                out.len()
            })
            .collect()
    };
    let wholes: Vec<Arc<[u8]>> = pubs.iter().map(|(w, _)| w.clone()).collect();
    let rows = [
        Sizes {
            name: "whole",
            bytes: wholes.iter().map(|f| f.len()).collect(),
        },
        Sizes {
            name: "delta",
            bytes: picked.iter().map(|f| f.len()).collect(),
        },
        Sizes {
            name: "deflate shared (min_size 256)",
            bytes: shared(&wholes, 256),
        },
        Sizes {
            name: "deflate dedicated (context takeover)",
            bytes: dedicated(&wholes, 256),
        },
        Sizes {
            name: "delta + deflate shared (min_size 256)",
            bytes: shared(&picked, 256),
        },
        Sizes {
            name: "delta + deflate shared (min_size 0)",
            bytes: shared(&picked, 0),
        },
        Sizes {
            name: "delta + deflate dedicated (min_size 256)",
            bytes: dedicated(&picked, 256),
        },
        Sizes {
            name: "delta + deflate dedicated (min_size 0)",
            bytes: dedicated(&picked, 0),
        },
    ];
    eprintln!(
        "first publication (whole): {} B frame; deltas sent: {} of {TICKS} ({} computed, {} not smaller)",
        wholes[0].len(),
        state.stats.delta_deliveries,
        state.stats.encoded,
        state.stats.not_smaller
    );
    report(&rows);
}

fn bench(c: &mut Criterion) {
    sizes();
    let pubs = publications(16);
    let mut g = c.benchmark_group("delta");
    g.throughput(Throughput::Elements(1));

    // Server, once per publication and worker: the delta and its frame.
    let mut state = DeltaChannels::new(DeltaLimits::default());
    let ch: Arc<str> = Arc::from("dash:eu");
    let mut cursor = state.join(&ch);
    let mut i = 0;
    g.bench_function("publish_pick_dashboard", |b| {
        b.iter(|| {
            i = (i + 1) % pubs.len();
            let mut p = state
                .publish("dash:eu", &pubs[i].0)
                .expect("a delta channel");
            black_box(p.pick(&mut cursor))
        })
    });
    // The codec alone.
    let data: Vec<&[u8]> = pubs
        .iter()
        .map(|(w, hl)| {
            let r = wsgate::delta::wire::data_range(&w[*hl..]).expect("publication");
            &w[hl + r.start..hl + r.end]
        })
        .collect();
    let mut enc = Encoder::new();
    let mut out = Vec::with_capacity(4096);
    let mut i = 0;
    g.bench_function("encode_text_dashboard", |b| {
        b.iter(|| {
            i = (i + 1) % (data.len() - 1);
            out.clear();
            enc.encode_text(data[i], data[i + 1], &mut out)
                .expect("fits");
            black_box(out.len())
        })
    });
    // For scale: encoding the whole frame, and compressing it (shared).
    let mut d = Dashboard::new(16);
    let raws: Vec<Box<RawValue>> = (0..64)
        .map(|_| {
            d.tick();
            RawValue::from_string(d.json()).expect("JSON")
        })
        .collect();
    let mut i = 0;
    g.bench_function("whole_encode_publication_dashboard", |b| {
        b.iter(|| {
            i = (i + 1) % raws.len();
            black_box(encode_publication("dash:eu", 7, &raws[i]))
        })
    });
    let mut e = Engine::new(cfg(Mode::Shared, 256));
    let mut i = 0;
    g.bench_function("whole_deflate_shared_dashboard", |b| {
        b.iter(|| {
            i = (i + 1) % pubs.len();
            black_box(e.compress_frame(&pubs[i].0, 15))
        })
    });
    // Client, per message: applying a tick's delta.
    let deltas: Vec<Vec<u8>> = data
        .windows(2)
        .map(|w| {
            let mut d = Vec::new();
            enc.encode_text(w[0], w[1], &mut d).expect("fits");
            d
        })
        .collect();
    let mut i = 0;
    g.bench_function("apply_dashboard", |b| {
        b.iter(|| {
            i = (i + 1) % deltas.len();
            black_box(apply(data[i], &deltas[i], 1 << 20).expect("applies"))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
