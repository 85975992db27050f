//! The client of the raw TCP echo: C connections, each with one S-byte
//! message in flight (send S bytes, wait for S bytes back, send again), as
//! `wsgate-load echo` does over WebSocket. Counts round trips over the
//! measured window after a warm-up and prints one JSON line:
//! `{"conns":C,"size":S,"secs":…,"messages":…,"total":…,"msgs_per_sec":…,"p50_us":…,"p99_us":…}`
//! (`messages` in the measured window, `total` with the warm-up).
//!
//! `tcp-echo-load --addr 127.0.0.1:9002 --conns 100 --size 20 --duration 10 --warmup 1`

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

struct Conn {
    sock: TcpStream,
    /// Bytes of the current message still to write, and to read back.
    to_write: usize,
    to_read: usize,
    sent_at: Instant,
}

fn main() -> io::Result<()> {
    let mut addr: SocketAddr = "127.0.0.1:9002".parse().unwrap();
    let (mut conns, mut size, mut duration, mut warmup) = (100usize, 20usize, 10.0f64, 1.0f64);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--addr" => addr = v.parse().expect("address"),
            "--conns" => conns = v.parse().expect("number"),
            "--size" => size = v.parse().expect("bytes"),
            "--duration" => duration = v.parse().expect("seconds"),
            "--warmup" => warmup = v.parse().expect("seconds"),
            other => panic!("unknown argument {other:?}"),
        }
    }
    let msg = vec![b'x'; size];
    let mut rbuf = vec![0u8; 64 * 1024];
    let mut poll = Poll::new()?;
    let mut cs = Vec::with_capacity(conns);
    for i in 0..conns {
        let std = std::net::TcpStream::connect(addr)?;
        std.set_nodelay(true)?;
        std.set_nonblocking(true)?;
        let mut sock = TcpStream::from_std(std);
        poll.registry()
            .register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)?;
        cs.push(Conn {
            sock,
            to_write: size,
            to_read: size,
            sent_at: Instant::now(),
        });
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(duration);
    let mut measured = 0u64;
    let mut total = 0u64;
    let mut lat_us: Vec<u32> = Vec::new();
    let mut events = Events::with_capacity(1024);
    // Kick every connection off.
    for c in cs.iter_mut() {
        pump(c, &msg, &mut rbuf, |_| {})?;
    }
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        poll.poll(&mut events, Some(end - now))?;
        for ev in events.iter() {
            let c = &mut cs[ev.token().0];
            pump(c, &msg, &mut rbuf, |sent_at| {
                total += 1;
                let t = Instant::now();
                if t >= measure_from && t < end {
                    measured += 1;
                    lat_us.push(t.duration_since(sent_at).as_micros() as u32);
                }
            })?;
        }
    }
    lat_us.sort_unstable();
    let pct = |p: f64| {
        lat_us
            .get(((lat_us.len() as f64 * p) as usize).min(lat_us.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"conns\":{conns},\"size\":{size},\"secs\":{duration},\"messages\":{measured},\"total\":{total},\"msgs_per_sec\":{:.0},\"p50_us\":{},\"p99_us\":{}}}",
        measured as f64 / duration,
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}

/// Write what is owed, read what came back; on a complete echo, call `done`
/// with the send time and start the next message.
fn pump(
    c: &mut Conn,
    msg: &[u8],
    rbuf: &mut [u8],
    mut done: impl FnMut(Instant),
) -> io::Result<()> {
    loop {
        let mut progress = false;
        while c.to_write > 0 {
            let off = msg.len() - c.to_write;
            match c.sock.write(&msg[off..]) {
                Ok(n) => {
                    c.to_write -= n;
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        while c.to_read > 0 {
            match c.sock.read(rbuf) {
                Ok(0) => return Err(io::Error::other("server closed")),
                Ok(n) => {
                    assert!(n <= c.to_read, "more echoed than sent");
                    c.to_read -= n;
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if c.to_write == 0 && c.to_read == 0 {
            done(c.sent_at);
            c.to_write = msg.len();
            c.to_read = msg.len();
            c.sent_at = Instant::now();
            continue;
        }
        if !progress {
            return Ok(());
        }
    }
}
