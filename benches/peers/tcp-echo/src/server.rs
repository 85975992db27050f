//! A raw TCP echo server: one thread, one mio loop, reads into one 64 KiB
//! buffer until a short read (the socket is then empty) and writes back what
//! it read. Nothing else: no framing, no parsing. Its CPU per echo is the
//! floor a WebSocket server on the same loop design can approach (the
//! kernel's loopback TCP is most of it).
//!
//! `--listen ADDR` (default 127.0.0.1:9002). `--drain`: read until
//! `WouldBlock` instead, as mio's examples (and wsgate) do, which costs one
//! more recv(2) per readable event; the difference between the two is the
//! price of that call.

use std::collections::HashMap;
use std::io::{self, Read, Write};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    sock: TcpStream,
    /// Bytes read and not yet written back (the kernel pushed back).
    pending: Vec<u8>,
}

fn main() -> io::Result<()> {
    let mut listen = "127.0.0.1:9002".to_string();
    let mut drain = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDR"),
            "--drain" => drain = true,
            other => panic!("unknown argument {other:?} (--listen ADDR, --drain)"),
        }
    }
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(listen.parse().expect("address"))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!(
        "tcp echo listening on {listen}{}",
        if drain { " (--drain)" } else { "" }
    );
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = Events::with_capacity(1024);
    loop {
        poll.poll(&mut events, None)?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut sock, _)) => {
                            let _ = sock.set_nodelay(true);
                            next += 1;
                            poll.registry().register(
                                &mut sock,
                                Token(next),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            conns.insert(
                                next,
                                Conn {
                                    sock,
                                    pending: Vec::new(),
                                },
                            );
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            eprintln!("accept: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let id = ev.token().0;
            let Some(c) = conns.get_mut(&id) else {
                continue;
            };
            let mut alive = flush(c);
            // A short read emptied the socket: stop there instead of paying
            // one more recv(2) for EAGAIN (new data brings a new edge; tokio
            // does the same). Unless the peer's FIN came with this event:
            // then read on to see the EOF, which brings no new edge.
            let closed = drain || ev.is_read_closed();
            while alive && c.pending.is_empty() {
                match c.sock.read(&mut buf) {
                    Ok(0) => alive = false,
                    Ok(n) => {
                        c.pending.extend_from_slice(&buf[..n]);
                        alive = flush(c);
                        if n < buf.len() && !closed {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => alive = false,
                }
            }
            if !alive {
                conns.remove(&id);
            }
        }
    }
}

/// Write what is pending; false if the connection failed.
fn flush(c: &mut Conn) -> bool {
    while !c.pending.is_empty() {
        match c.sock.write(&c.pending) {
            Ok(n) => {
                c.pending.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}
