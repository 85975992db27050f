//! Live handoff (issue 17), step 2: connections move to the new process.
//! An `/echo` client sending throughout, with a frame half sent when the
//! signal comes, gets every echo, in order, from the new process, and no
//! close frame; a bystander client is served before, during and after.
//! The failure paths leave the old process serving its connections
//! untouched: a successor that refuses the connection state's version, and
//! one that dies in the middle of the transfer.

#[path = "support/handoff.rs"]
mod handoff_util;
#[path = "support/process.rs"]
mod process;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use handoff_util::{hand_over, start, temp, wait_for, DEADLINE};
use wsgate::server::handoff::upgrade;

/// A bare WebSocket client on a socket: frames written by hand (so that
/// one can be left half sent), frames read one by one.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

/// A masked client frame.
fn frame(op: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | op];
    let key = [0x11u8, 0x22, 0x33, 0x44];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

impl Raw {
    fn connect(addr: SocketAddr, path: &str) -> Raw {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut raw = Raw { s, buf: Vec::new() };
        let head = raw.head();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw
    }

    /// An HTTP response head.
    fn head(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let h = self.buf.drain(..i + 4).collect::<Vec<_>>();
                return String::from_utf8_lossy(&h).into_owned();
            }
            self.fill().expect("a response head");
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut b = [0u8; 16384];
        match self.s.read(&mut b)? {
            0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                self.buf.extend_from_slice(&b[..n]);
                Ok(())
            }
        }
    }

    /// The next server frame: (opcode, payload).
    fn read(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let op = self.buf[0] & 0x0f;
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 => panic!("no 64-bit lengths in this test"),
                    126 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Ok((op, payload));
                }
            }
            self.fill()?;
        }
    }

    fn echo(&mut self, text: &str) {
        self.s.write_all(&frame(1, text.as_bytes())).unwrap();
        let (op, p) = self.read().unwrap();
        assert_eq!(
            (op, p.as_slice()),
            (1, text.as_bytes()),
            "the echo of {text}"
        );
    }
}

/// Messages sent from a thread until `stop`, each its number: returns how
/// many were sent. The reader checks them in order.
fn sender(
    mut s: TcpStream,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU32>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut i = 0u32;
        while !stop.load(Ordering::Acquire) && i < 20_000 {
            s.write_all(&frame(1, format!("m{i}").as_bytes())).unwrap();
            i += 1;
            sent.store(i, Ordering::Release);
            std::thread::sleep(Duration::from_millis(2));
        }
    })
}

/// Echo clients across a handoff: one sending throughout (its echoes all
/// come back, in order, no close frame), one with a frame half sent when
/// the signal comes (the other half is sent to the new process), and a
/// bystander served before and after. The old process exits; the new one
/// serves the moved connections and new ones.
#[test]
fn echo_clients_move_with_messages_in_flight_and_a_half_sent_frame() {
    let (mut gw, pid_file) = start("echo", &[]);
    let addr = gw.addr;
    let mut bystander = Raw::connect(addr, "/echo");
    bystander.echo("before");

    // A frame cut in the middle of its payload (and one cut in its header).
    let mut half = Raw::connect(addr, "/echo");
    half.echo("half: before");
    let big = "x".repeat(1000);
    let f = frame(1, big.as_bytes());
    half.s.write_all(&f[..600]).unwrap();
    let mut header_cut = Raw::connect(addr, "/echo");
    let g = frame(1, b"cut in the header");
    header_cut.s.write_all(&g[..3]).unwrap();

    let mut busy = Raw::connect(addr, "/echo");
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU32::new(0));
    let writer = sender(busy.s.try_clone().unwrap(), stop.clone(), sent.clone());
    wait_for("messages before the signal", || {
        sent.load(Ordering::Acquire) > 50
    });

    let _guard = hand_over(&gw, &pid_file);
    wait_for("the old process to exit", || gw.exited().is_some());
    assert!(gw.exited().unwrap().success(), "{}", gw.log_text());
    // Some more messages to the new process, then stop.
    let at_exit = sent.load(Ordering::Acquire);
    wait_for("messages after the old process left", || {
        sent.load(Ordering::Acquire) > at_exit + 50
    });
    stop.store(true, Ordering::Release);
    writer.join().unwrap();
    let n = sent.load(Ordering::Acquire);
    for i in 0..n {
        match busy.read() {
            Ok((1, p)) => assert_eq!(
                String::from_utf8_lossy(&p),
                format!("m{i}"),
                "echo {i} of {n} out of order"
            ),
            Ok((op, p)) => panic!("echo {i} of {n}: opcode {op} {p:?}\n{}", gw.log_text()),
            Err(e) => panic!("echo {i} of {n}: {e}\n{}", gw.log_text()),
        }
    }
    busy.echo("busy: after");

    // The rest of the half-sent frames, to the new process.
    half.s.write_all(&f[600..]).unwrap();
    let (op, p) = half.read().unwrap();
    assert_eq!((op, p.len()), (1, 1000), "the half-sent frame's echo");
    assert_eq!(p, big.as_bytes());
    half.echo("half: after");
    header_cut.s.write_all(&g[3..]).unwrap();
    let (op, p) = header_cut.read().unwrap();
    assert_eq!((op, p.as_slice()), (1, &b"cut in the header"[..]));

    bystander.echo("after");
    let mut fresh = Raw::connect(addr, "/echo");
    fresh.echo("a new client");
    let log = gw.log_text();
    assert!(log.contains("handoff: took 4 connections"), "{log}");
    let _ = std::fs::remove_file(&pid_file);
}

fn script(name: &str, text: &str) -> PathBuf {
    let p = temp(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A successor played by Python: Ready, takes the listeners (Took), reads
/// the first connection record, then does `then` (a Python statement with
/// `s`, the handoff socket).
fn fake_successor(name: &str, then: &str) -> PathBuf {
    script(
        name,
        &format!(
            "#!/usr/bin/env python3\n\
             import os, socket, struct, time, sys\n\
             s = socket.socket(fileno=int(os.environ['WSGATE_HANDOFF_FD']))\n\
             def rec(kind, body=b''):\n\
             \x20   return b'WSGATEHO' + struct.pack('<H', 2) + bytes([kind]) + body\n\
             s.recv(1024)\n\
             s.send(rec(2))\n\
             msg, anc, flags, addr = s.recvmsg(65536, socket.CMSG_SPACE(4 * 200))\n\
             n = msg[11] | msg[12] << 8\n\
             s.send(rec(5, struct.pack('<I', n)))\n\
             while True:\n\
             \x20   msg, anc, flags, addr = s.recvmsg(1 << 17, socket.CMSG_SPACE(4 * 200))\n\
             \x20   if msg[10] != 6: break\n\
             assert msg[10] == 7, msg[:16]\n\
             {then}\n\
             time.sleep(30)\n"
        ),
    )
}

/// A failed move: the old process logs why, its connections were never
/// closed nor told anything (each gets its echo, even the one whose frame
/// was half sent), and new clients are served.
fn failed_move(name: &str, then: &str, why: &[&str]) {
    let fake = fake_successor(&format!("{name}.py"), then);
    let (mut gw, pid_file) = start(name, &["--upgrade-binary", fake.to_str().unwrap()]);
    let mut bystander = Raw::connect(gw.addr, "/echo");
    bystander.echo("before");
    let mut half = Raw::connect(gw.addr, "/echo");
    let f = frame(1, b"sent in two halves");
    half.s.write_all(&f[..8]).unwrap();
    gw.signal(libc::SIGUSR2);
    // The handoff thread's line (the workers say "handoff failed: N
    // connections resume here" a moment before it).
    wait_for("the failure in the log", || {
        gw.log_text().contains("still serving")
    });
    let log = gw.log_text();
    assert!(
        why.iter().any(|w| log.contains(w)),
        "expected one of {why:?} in:\n{log}"
    );
    assert!(log.contains("connections resume here"), "{log}");
    assert!(gw.exited().is_none(), "{log}");
    half.s.write_all(&f[8..]).unwrap();
    let (op, p) = half.read().unwrap();
    assert_eq!((op, p.as_slice()), (1, &b"sent in two halves"[..]), "{log}");
    half.echo("and on");
    bystander.echo("still here");
    let mut fresh = Raw::connect(gw.addr, "/echo");
    fresh.echo("a new client");
    assert_eq!(upgrade::read_pid_file(&pid_file).unwrap(), gw.pid());
    let _ = std::fs::remove_file(fake);
}

/// The successor refuses the connection state (another layout version):
/// the old process resumes its connections.
#[test]
fn a_refused_connection_state_leaves_the_old_process_serving() {
    failed_move(
        "refuse",
        "why = b'connection state version 1 unknown (this binary reads 99)'\n\
         s.send(rec(3, struct.pack('<H', len(why)) + why))",
        &["connection state version 1 unknown"],
    );
}

/// The successor dies with the connections' records in hand: the old
/// process resumes them.
#[test]
fn a_successor_dying_mid_transfer_leaves_the_old_process_serving() {
    // Dead before the end of the records (a broken pipe) or after (EOF):
    // both say the same.
    failed_move("dies", "os._exit(3)", &["closed the handoff socket"]);
}

/// What cannot move stays in the old process and is drained there with
/// close 4000 (the client reconnects to the new one), while the others
/// move: here a `dedicated` permessage-deflate connection whose zlib
/// streams are in use (flate2 cannot export them). A bystander moves and
/// is served throughout.
#[test]
fn a_dedicated_deflate_connection_is_told_4000_and_the_others_move() {
    let (mut gw, pid_file) = start("deflate", &["--compression", "dedicated"]);
    let addr = gw.addr;
    let mut bystander = Raw::connect(addr, "/echo");
    bystander.echo("before");
    // A client offering permessage-deflate with context takeover.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    )
    .unwrap();
    let mut dfl = Raw { s, buf: Vec::new() };
    let head = dfl.head();
    assert!(head.contains("permessage-deflate"), "{head}");
    // An uncompressed message (allowed), echoed compressed through the
    // connection's own compressor: its stream is in use now.
    dfl.s
        .write_all(&frame(1, "a".repeat(2000).as_bytes()))
        .unwrap();
    let (op, p) = dfl.read().unwrap();
    assert_eq!(op, 1);
    assert!(p.len() < 2000, "the echo was sent compressed");

    let _guard = hand_over(&gw, &pid_file);
    let (op, p) = dfl.read().unwrap();
    assert_eq!(op, 8, "a close frame, got {op} {p:?}");
    assert_eq!(u16::from_be_bytes([p[0], p[1]]), 4000);
    bystander.echo("moved");
    wait_for("the old process to exit", || gw.exited().is_some());
    let log = gw.log_text();
    assert!(log.contains("handoff: took 1 connections"), "{log}");
    bystander.echo("after");
    let _ = std::fs::remove_file(&pid_file);
}

/// One HTTP response on a kept-alive connection: (head, body).
fn response(s: &mut TcpStream, buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    let at = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut b = [0u8; 4096];
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "EOF before a response");
        buf.extend_from_slice(&b[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..at]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    while buf.len() < at + len {
        let mut b = [0u8; 4096];
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "EOF in a body");
        buf.extend_from_slice(&b[..n]);
    }
    let body = buf[at..at + len].to_vec();
    buf.drain(..at + len);
    (head, body)
}

/// Connections whose request is being read move too: one with half a
/// request head sent (the rest goes to the new process, which answers
/// 101 and echoes), one that sent nothing yet, and one kept alive between
/// two requests. A bystander moves and is served throughout.
#[test]
fn requests_being_read_and_kept_alive_connections_move() {
    let (mut gw, pid_file) = start("heads", &[]);
    let addr = gw.addr;
    let mut bystander = Raw::connect(addr, "/echo");
    bystander.echo("before");
    let mut partial = TcpStream::connect(addr).unwrap();
    partial.set_read_timeout(Some(DEADLINE)).unwrap();
    partial
        .write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .unwrap();
    let silent = TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut kept = TcpStream::connect(addr).unwrap();
    kept.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut kept_buf = Vec::new();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (head, _) = response(&mut kept, &mut kept_buf);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    // Every connection is past accept in the old process.
    wait_for("4 connections", || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut r = String::new();
        let _ = s.read_to_string(&mut r);
        // The gauges of both workers: these four and the scrape's own.
        let open: u64 = r
            .lines()
            .filter(|l| l.starts_with("wsgate_connections{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        open == 5
    });

    let _guard = hand_over(&gw, &pid_file);
    wait_for("the old process to exit", || gw.exited().is_some());
    let log = gw.log_text();
    assert!(log.contains("handoff: took 4 connections"), "{log}");

    partial
        .write_all(
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    let mut partial = Raw {
        s: partial,
        buf: Vec::new(),
    };
    let head = partial.head();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    partial.echo("upgraded by the new process");

    let mut silent = Raw {
        s: silent,
        buf: Vec::new(),
    };
    write!(
        silent.s,
        "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let head = silent.head();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    silent.echo("silent until now");

    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (head, _) = response(&mut kept, &mut kept_buf);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    bystander.echo("after");
    let _ = std::fs::remove_file(&pid_file);
}

#[path = "support/certs.rs"]
mod certs;
#[path = "support/tls_client.rs"]
mod tls_client;

/// TLS connections stay in the old process and are drained there (close
/// 4000, then close_notify): a rustls session cannot be handed to another
/// process as a session it could go on with (its secrets come out only for
/// kTLS, `enable_secret_extraction`), and a reconnect costs the client one
/// handshake. The plaintext listener's connections beside it move.
#[test]
fn a_tls_connection_is_told_4000_and_the_plain_ones_move() {
    let ca = certs::TestCa::new("handoff-tls");
    let leaf = ca.leaf("server", &["localhost"]);
    let plain = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let plain_s = plain.to_string();
    let (mut gw, pid_file) = start(
        "tls",
        &[
            "--tls-cert",
            leaf.cert.to_str().unwrap(),
            "--tls-key",
            leaf.key.to_str().unwrap(),
            "--listen-plain",
            &plain_s,
        ],
    );
    let mut bystander = Raw::connect(plain, "/echo");
    bystander.echo("before");
    let mut secure = tls_client::ws(gw.addr, &ca.ca_pem, "/echo");
    secure.send(tungstenite::Message::text("tls")).unwrap();
    assert_eq!(tls_client::next_text(&mut secure), "tls");

    let _guard = hand_over(&gw, &pid_file);
    let code = loop {
        match secure.read() {
            Ok(tungstenite::Message::Close(Some(f))) => break u16::from(f.code),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}\n{}", gw.log_text()),
        }
    };
    assert_eq!(code, 4000);
    bystander.echo("moved");
    wait_for("the old process to exit", || gw.exited().is_some());
    let log = gw.log_text();
    assert!(log.contains("handoff: took 1 connections"), "{log}");
    // The new process serves TLS on the same listener.
    let mut again = tls_client::ws(gw.addr, &ca.ca_pem, "/echo");
    again.send(tungstenite::Message::text("again")).unwrap();
    assert_eq!(tls_client::next_text(&mut again), "again");
    bystander.echo("after");
    let _ = std::fs::remove_file(&pid_file);
}

/// The new binary, handed connection records in a state layout it does
/// not read (the test plays the old process): it refuses them, naming the
/// version, before touching any, and exits with failure (the old process
/// would resume them); the connection handed over is never served by it.
#[test]
fn the_new_binary_refuses_connection_state_of_another_version() {
    use wsgate::server::handoff::{wire, Channel, Msg, ENV_FD};
    let (old, theirs) = Channel::pair().unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["--workers", "1"])
        .env(ENV_FD, std::os::fd::AsRawFd::as_raw_fd(&theirs).to_string())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(theirs);
    old.send(&Msg::Hello.encode(), &[]).unwrap();
    assert_eq!(Msg::decode(&old.recv(DEADLINE).unwrap().0), Ok(Msg::Ready));
    let fd = std::os::fd::AsFd::as_fd(&l);
    old.send(
        &Msg::Listeners(vec![wire::ListenerRole::Main]).encode(),
        &[fd],
    )
    .unwrap();
    // No channels to move (one empty last part).
    old.send(
        &Msg::BrokerState {
            last: true,
            bytes: Vec::new(),
        }
        .encode(),
        &[],
    )
    .unwrap();
    assert_eq!(
        Msg::decode(&old.recv(DEADLINE).unwrap().0),
        Ok(Msg::Took(1))
    );
    // A live connection, handed with a record of layout 99. Not from the
    // handed listener: the new process serves that one now (it may accept
    // first, and it made the listener non-blocking for both of us).
    let own = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(own.local_addr().unwrap()).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let (accepted, _) = own.accept().unwrap();
    let msg = Msg::Conns {
        state: 99,
        conns: vec![b"whatever layout 99 says".to_vec()],
    };
    old.send(&msg.encode(), &[std::os::fd::AsFd::as_fd(&accepted)])
        .unwrap();
    old.send(&Msg::ConnsEnd(1).encode(), &[]).unwrap();
    match Msg::decode(&old.recv(DEADLINE).unwrap().0) {
        Ok(Msg::Refuse(why)) => assert!(why.contains("connection state version 99"), "{why}"),
        m => panic!("expected Refuse, got {m:?}"),
    }
    let until = std::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < until,
            "the new binary did not exit"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert!(!status.success(), "{err}");
    assert!(err.contains("cannot take the connections"), "{err}");
    // The connection is still the old side's: nothing was written to it.
    drop(accepted);
    drop(l);
    drop(own);
    let mut b = [0u8; 16];
    assert_eq!(
        client.read(&mut b).unwrap(),
        0,
        "the new binary wrote to it"
    );
}
