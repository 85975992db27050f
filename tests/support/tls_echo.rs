//! A tiny TLS WebSocket echo server for the tests of TLS clients (the
//! load generator), until the gateway's engine runs TLS itself: a thread
//! per connection, `wsgate::tls::Session` (the server side the engine will
//! use) under a blocking `Read + Write` adapter, and tungstenite's server
//! on top. Test code only.

#![allow(dead_code)] // each user takes a different subset

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use tungstenite::Message;
use wsgate::tls::{Session, TlsServer};

/// What the server saw.
#[derive(Debug, Default)]
pub struct Counts {
    pub accepted: AtomicU64,
    pub established: AtomicU64,
    pub resumed: AtomicU64,
    pub echoed: AtomicU64,
    pub tls_errors: AtomicU64,
}

pub struct TlsEcho {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
}

/// Start it on an ephemeral port of 127.0.0.1.
pub fn start(tls: TlsServer) -> TlsEcho {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(sock) = sock else { continue };
            c.accepted.fetch_add(1, Ordering::Relaxed);
            let (tls, c) = (tls.clone(), c.clone());
            std::thread::spawn(move || serve(sock, tls, c));
        }
    });
    TlsEcho { addr, counts }
}

fn serve(sock: TcpStream, tls: TlsServer, counts: Arc<Counts>) {
    let Ok(session) = tls.session() else { return };
    let stream = Blocking {
        sock,
        session,
        spill: Vec::new(),
        plain: Vec::new(),
        out: Vec::new(),
        counts: counts.clone(),
    };
    let Ok(mut ws) = tungstenite::accept(stream) else {
        return;
    };
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                counts.echoed.fetch_add(1, Ordering::Relaxed);
                if ws.send(Message::Text(t)).is_err() {
                    return;
                }
            }
            Ok(Message::Binary(b)) => {
                counts.echoed.fetch_add(1, Ordering::Relaxed);
                if ws.send(Message::Binary(b)).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// A server `Session` over a blocking socket, the way the engine's shell
/// drives it: ciphertext read, fed with the spill in front, plaintext
/// taken from the front of the buffer, the incomplete rest kept.
struct Blocking {
    sock: TcpStream,
    session: Session<UnbufferedServerConnection>,
    spill: Vec<u8>,
    plain: Vec<u8>,
    out: Vec<u8>,
    counts: Arc<Counts>,
}

impl Blocking {
    /// Read once from the socket and process what came; false at EOF.
    fn pump(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.sock.read(&mut chunk)?;
        if n == 0 {
            return Ok(false);
        }
        let was_open = self.session.is_open();
        let mut buf = std::mem::take(&mut self.spill);
        buf.extend_from_slice(&chunk[..n]);
        let fed = self.session.feed(&mut buf, &mut self.out);
        self.plain.extend_from_slice(&buf[..fed.plaintext]);
        self.sock.write_all(&self.out)?;
        self.out.clear();
        if let Some(e) = fed.error {
            self.counts.tls_errors.fetch_add(1, Ordering::Relaxed);
            return Err(io::Error::other(e));
        }
        if !was_open && self.session.is_open() {
            self.counts.established.fetch_add(1, Ordering::Relaxed);
            if self.session.resumed() {
                self.counts.resumed.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.spill = buf[fed.consumed..].to_vec();
        Ok(!fed.peer_closed)
    }
}

impl Read for Blocking {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.plain.is_empty() {
            if !self.pump()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.plain.len());
        buf[..n].copy_from_slice(&self.plain[..n]);
        self.plain.drain(..n);
        Ok(n)
    }
}

impl Write for Blocking {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        while !self.session.is_open() {
            if !self.pump()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        self.session
            .encrypt(&mut self.spill, &[buf], &mut self.out)
            .map_err(io::Error::other)?;
        self.sock.write_all(&self.out)?;
        self.out.clear();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}
