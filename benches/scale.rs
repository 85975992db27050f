//! Scale without sockets: 1,000,000 connection entries (the protocol state
//! every connection holds) in the connection table and the timer wheel, as a
//! worker holds them. Prints the memory per entry, the cost of a timer tick
//! that expires nothing (it must not grow with the number of connections),
//! the cost of a tick in steady state, and of a ping round over everyone.
//!
//! Run: `cargo bench --bench scale` (a plain program, not criterion: each
//! figure is one measured pass over a million entries).

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Instant;

use mio::Token;
use wsgate::proto::{Conn, Timeouts, TimerAction};
use wsgate::server::conn_table::{slot_of, ConnTable, Gen, Generational};
use wsgate::server::timer::TimerWheel;

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A connection's protocol state and timer, as the worker's table holds
/// them (with the slot's generation).
struct Entry(Conn, Option<wsgate::server::timer::TimerKey>, Gen);

impl Generational for Entry {
    fn generation(&self) -> Gen {
        self.2
    }
    fn set_generation(&mut self, g: Gen) {
        self.2 = g;
    }
}

struct World {
    conns: ConnTable<Entry>,
    /// As the worker's: each timer names its connection's slot, plus one
    /// (a `NonZeroU32`, the worker's `TimerSlot`): 16-byte entries.
    timers: TimerWheel<NonZeroU32>,
}

fn slot(tok: Token) -> NonZeroU32 {
    NonZeroU32::new(slot_of(tok) as u32 + 1).expect("a slot plus one")
}

impl World {
    /// The connection a fired timer names.
    fn token(&self, slot: NonZeroU32) -> Token {
        self.conns
            .token_at(slot.get() as usize - 1)
            .expect("a live connection")
    }
}

/// `n` open connections whose last traffic is spread over the ping interval,
/// as in a steady state, each with its one timer armed.
fn build(n: usize, t: &Timeouts) -> World {
    let mut w = World {
        conns: ConnTable::with_capacity(n),
        timers: TimerWheel::new(16, 4096, 0),
    };
    for i in 0..n {
        let born = (i as u64 * t.ping_interval_ms as u64) / n as u64;
        let mut c = Conn::server(born);
        c.accept(born);
        let at = c.next_timeout(born, t).expect("ping armed");
        let tok = w.conns.insert(Entry(c, None, Gen::default()));
        let key = w.timers.insert(at, slot(tok));
        w.conns.get_mut(tok).expect("present").1 = Some(key);
    }
    w
}

fn main() {
    let t = Timeouts {
        ping_interval_ms: 30_000,
        ..Timeouts::default()
    };
    println!(
        "per-connection protocol state: size_of::<proto::Conn>() = {} B",
        std::mem::size_of::<Conn>()
    );
    println!();
    println!(
        "{:>9} {:>10} {:>14} {:>16} {:>14}",
        "entries", "B/entry", "empty tick", "steady tick", "fired/tick"
    );
    for n in [10_000usize, 100_000, 1_000_000] {
        let before = rss_kib();
        let mut w = build(n, &t);
        let per_entry = (rss_kib() - before) * 1024 / n as u64;

        // A tick in which nothing is due: advance within the first tick.
        let start = Instant::now();
        let mut fired = Vec::new();
        w.timers.advance(1, &mut fired);
        let empty = start.elapsed();
        assert!(fired.is_empty() && w.timers.scanned() == 0);

        // Steady state: 1 s of 16 ms ticks, each firing the pings due.
        let mut out = Vec::new();
        let mut total = std::time::Duration::ZERO;
        let mut fired_total = 0;
        let ticks = 1000 / 16;
        for k in 1..=ticks {
            let now = 30_000 + k * 16;
            let s = Instant::now();
            w.timers.advance(now, &mut fired);
            for s in fired.drain(..) {
                let tok = w.token(s);
                fired_total += 1;
                let Entry(c, key, _) = w.conns.get_mut(tok).expect("live");
                *key = None;
                if c.handle_timeout(now, &t, &mut out) == TimerAction::Continue {
                    if let Some(at) = c.next_timeout(now, &t) {
                        *key = Some(w.timers.insert(at, slot(tok)));
                    }
                }
                out.clear();
            }
            total += s.elapsed();
        }
        println!(
            "{n:>9} {per_entry:>10} {:>11.1} µs {:>13.1} µs {:>14}",
            empty.as_secs_f64() * 1e6,
            total.as_secs_f64() * 1e6 / ticks as f64,
            fired_total / ticks as usize
        );

        if n == 1_000_000 {
            // A ping round for everyone at once (the worst case: every
            // connection went quiet at the same moment).
            let now = 200_000;
            let s = Instant::now();
            let mut sent = 0usize;
            for tok in w.conns.tokens() {
                let Entry(c, _, _) = w.conns.get_mut(tok).expect("live");
                c.handle_timeout(now, &t, &mut out);
                sent += out.len();
                out.clear();
            }
            let el = s.elapsed();
            println!();
            println!(
                "ping round over {n} connections: {:.1} ms, {:.0} ns per connection ({} bytes of ping frames)",
                el.as_secs_f64() * 1e3,
                el.as_secs_f64() * 1e9 / n as f64,
                sent
            );
        }
        black_box(&w.conns);
    }
}
