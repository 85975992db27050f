//! What permessage-deflate costs per connection, measured with a counting
//! allocator: nothing in `shared` mode, a compressor and a decompressor in
//! `dedicated` mode (per window size). Run with `--nocapture` to see the
//! table:
//!
//! ```text
//! cargo test --release --test deflate_memory -- --nocapture
//! ```
//!
//! One test function only: the allocator counts every thread.

use wsgate::proto::deflate::{self, Config, Engine, Mode};
use wsgate::proto::{Conn, Limits};

mod alloc_util;
use alloc_util::live;

#[global_allocator]
static A: alloc_util::Counting = alloc_util::Counting;

/// Server-side connections after one compressed message each way, and what
/// they hold on the heap (the conns' own `size_of` excluded).
fn per_connection(server_cfg: Config, n: usize) -> isize {
    let client_cfg = Config {
        mode: Mode::Dedicated,
        ..Config::default()
    };
    let offer = deflate::client_offer(&client_cfg).unwrap();
    let params = deflate::negotiate([offer.as_bytes()], &server_cfg).expect("accepted");
    let answer = params.to_header();
    let cparams = deflate::accept_response([answer.as_bytes()], &client_cfg)
        .unwrap()
        .unwrap();
    let mut se = Engine::new(server_cfg);
    let mut ce = Engine::new(client_cfg);
    let msg =
        br#"{"channel":"prices","offset":1,"data":{"symbol":"BTC-USD","bid":64123.5}}"#.repeat(12);
    // Warm the engines (shared codecs, scratch buffers) outside the count.
    let mut conns: Vec<Conn> = Vec::with_capacity(n);
    let warm = |conns: Option<&mut Vec<Conn>>, se: &mut Engine, ce: &mut Engine| {
        let mut s = Conn::server(0);
        s.accept(0);
        s.set_deflate(&params, &server_cfg);
        let mut c = Conn::client(0, 9);
        c.set_deflate(&cparams, &client_cfg);
        let mut wire = Vec::new();
        c.sender(&mut wire, ce).send(true, &msg);
        let mut back = Vec::new();
        s.decode_with(
            &mut wire,
            0,
            &Limits::default(),
            se,
            &mut back,
            &mut |_, tx| tx.send(true, &msg),
        )
        .unwrap();
        let mut sink = Vec::new();
        c.decode_with(
            &mut back,
            0,
            &Limits::default(),
            ce,
            &mut sink,
            &mut |_, _| {},
        )
        .unwrap();
        drop(c);
        if let Some(v) = conns {
            v.push(s);
        }
    };
    warm(None, &mut se, &mut ce);
    let before = live();
    for _ in 0..n {
        warm(Some(&mut conns), &mut se, &mut ce);
    }
    let held = live() - before;
    drop(conns);
    held / n as isize
}

#[test]
fn memory_per_connection_by_mode() {
    let n = 200;
    // The allocator counts every thread of the process: the smallest of a
    // few trials, so that a stray allocation elsewhere (the test harness)
    // is not taken for state held per connection, which every trial shows.
    let shared = (0..3)
        .map(|_| per_connection(Config::default(), n))
        .min()
        .unwrap();
    eprintln!("shared mode: {shared} B of heap per connection after compressed traffic");
    assert_eq!(shared, 0, "shared mode holds no zlib state per connection");
    eprintln!(
        "size_of::<Conn>() = {} B (permessage-deflate adds 1 B of agreement, in padding, + an 8 B Option<Box>)",
        std::mem::size_of::<Conn>()
    );
    for bits in [9u8, 10, 12, 15] {
        let cfg = Config {
            mode: Mode::Dedicated,
            window_bits: bits,
            ..Config::default()
        };
        let held = per_connection(cfg, n);
        eprintln!("dedicated mode, window_bits {bits}: {held} B per connection (compressor + decompressor)");
        assert!(held > 40_000, "{held}");
    }
}
