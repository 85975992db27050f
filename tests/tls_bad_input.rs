//! Bad input on the TLS port, through the shell (issue 14 part 2). Each
//! case has a defined outcome (the 400 or alert the RFCs ask for, then a
//! close; a counter by reason; no panic) and a bystander over wss:// that
//! must stay served: its publications in order and its ping answered.

mod support;

#[path = "support/certs.rs"]
mod certs;
#[path = "support/tls_client.rs"]
mod tls_client;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{start, stop, vm_rss_kib, wait_connections, wait_for, TIMEOUT};
use tls_client::{client_hello, connect, TlsBystander};
use wsgate::config::TlsConfig;
use wsgate::server::Server;
use wsgate::tls::TlsServer;

struct Case {
    ca: certs::TestCa,
    server: Server,
    bystander: TlsBystander,
}

/// A server with a 1 s handshake deadline and a bystander connected.
fn case(tag: &str) -> Case {
    let ca = certs::TestCa::new(tag);
    let leaf = ca.leaf("server", &["localhost"]);
    let tls = Arc::new(
        TlsServer::new(&TlsConfig {
            cert: leaf.cert.clone(),
            key: leaf.key.clone(),
            certificates: Vec::new(),
        })
        .expect("server config"),
    );
    let server = start(move |c| {
        c.tls = Some(tls);
        c.timeouts.handshake_ms = 1000;
    });
    let bystander = TlsBystander::connect(server.local_addr(), &ca.ca_pem, tag);
    wait_connections(server.shared(), 1);
    Case {
        ca,
        server,
        bystander,
    }
}

fn count(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Read until the server closes; what it sent.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the server did not close: {e} (got {got:?})"),
        }
    }
}

/// An established wss:// /echo connection, driven by hand: what follows
/// the upgrade is written raw (records, or plaintext through rustls).
fn upgraded(c: &Case) -> tls_client::Tls {
    let mut tls = connect(c.server.local_addr(), &c.ca.ca_pem);
    tls.write_all(
        format!(
            "GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            support::KEY
        )
        .as_bytes(),
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut buf).expect("101");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101"));
    tls
}

/// The first 3 bytes of a masked text frame of 100 bytes: a frame cut short.
const HALF_FRAME: &[u8] = &[0x81, 0x80 | 100, 1];

#[test]
fn plaintext_http_on_the_tls_port_gets_400_in_plaintext() {
    let mut c = case("bad-plain");
    let mut s = TcpStream::connect(c.server.local_addr()).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let got = String::from_utf8(read_to_close(&mut s)).unwrap();
    assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
    assert!(got.contains("use https:// or wss://"), "{got}");
    let st = || c.server.shared().stats();
    wait_for(TIMEOUT, "counted", || {
        count(&st().tls_failed_plain_http) == 1
    });
    c.bystander.assert_served("plaintext HTTP");
    stop(c.server);
}

#[test]
fn garbage_and_truncated_client_hellos_get_an_alert_or_a_close() {
    let mut c = case("bad-hello");
    let addr = c.server.local_addr();
    // A handshake record whose body is not a ClientHello: a fatal alert
    // (RFC 8446 §6.2), in plaintext (no keys yet), then the close.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&[22, 3, 1, 0, 8, 1, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef])
        .unwrap();
    let got = read_to_close(&mut s);
    assert_eq!(&got[..3], &[21, 3, 3], "an alert record: {got:?}");
    assert_eq!(got[5], 2, "fatal");
    // A record header announcing more than any record may hold.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&[22, 3, 1, 0xff, 0xff]).unwrap();
    let got = read_to_close(&mut s);
    assert_eq!(got.first(), Some(&21), "an alert: {got:?}");
    // Random bytes that are not a record at all.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&[0x99; 64]).unwrap();
    let got = read_to_close(&mut s);
    assert!(got.is_empty() || got[0] == 21, "{got:?}");
    // A truncated ClientHello, then FIN: closed, counted.
    let hello = client_hello();
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    read_to_close(&mut s);
    let st = || c.server.shared().stats();
    wait_for(TIMEOUT, "counted", || {
        count(&st().tls_failed_protocol) == 3 && count(&st().tls_failed_eof) == 1
    });
    c.bystander.assert_served("bad ClientHellos");
    wait_connections(c.server.shared(), 1);
    stop(c.server);
}

#[test]
fn a_client_that_stops_mid_handshake_is_cut_at_the_deadline() {
    let mut c = case("bad-stall");
    let hello = client_hello();
    let mut s = TcpStream::connect(c.server.local_addr()).unwrap();
    s.write_all(&hello[..hello.len() - 10]).unwrap();
    // Nothing more is sent: the handshake deadline (1 s) closes it.
    let got = read_to_close(&mut s);
    assert!(got.is_empty(), "{got:?}");
    let st = || c.server.shared().stats();
    wait_for(TIMEOUT, "counted", || count(&st().tls_failed_timeout) == 1);
    c.bystander.assert_served("a stalled handshake");
    // Also after the ClientHello, before the request head: the same
    // deadline covers TLS and HTTP.
    let mut t = connect(c.server.local_addr(), &c.ca.ca_pem);
    t.write_all(b"GET /echo HTTP/1.1\r\nHost: loc").unwrap();
    let got = read_to_close(&mut t.sock);
    let _ = got;
    assert_eq!(count(&st().tls_failed_timeout), 1, "not a TLS timeout");
    c.bystander.assert_served("a stalled request head");
    stop(c.server);
}

#[test]
fn a_reset_or_a_close_notify_in_the_middle_of_a_frame() {
    let mut c = case("bad-midframe");
    // Reset: half a frame, then RST (SO_LINGER 0).
    let mut t = upgraded(&c);
    t.write_all(HALF_FRAME).unwrap();
    t.flush().unwrap();
    let sock = socket2_linger_zero(t.sock);
    drop(sock);
    wait_connections(c.server.shared(), 1);
    c.bystander.assert_served("a reset mid-frame");
    // close_notify mid-frame: the peer says it sends nothing more; the
    // server closes (the frame never completes).
    let mut t = upgraded(&c);
    t.write_all(HALF_FRAME).unwrap();
    t.conn.send_close_notify();
    t.flush().unwrap();
    let mut rest = Vec::new();
    let _ = t.sock.set_read_timeout(Some(TIMEOUT));
    let _ = t.sock.read_to_end(&mut rest);
    wait_connections(c.server.shared(), 1);
    c.bystander.assert_served("a close_notify mid-frame");
    stop(c.server);
}

#[test]
fn oversized_and_malformed_records_and_a_renegotiation_get_a_fatal_alert() {
    let mut c = case("bad-records");
    let st = || c.server.shared().stats();
    let cases: [(&str, Vec<u8>); 3] = [
        // A header announcing 65,535 bytes (more than 2^14 + 2048).
        ("oversized record", vec![23, 3, 3, 0xff, 0xff]),
        // An application-data record that does not decrypt.
        (
            "malformed record",
            [&[23u8, 3, 3, 0, 40][..], &[0x5a; 40]].concat(),
        ),
        // A new ClientHello after the TLS 1.3 handshake (there is no
        // renegotiation in TLS 1.3: a plaintext handshake record now is
        // an unexpected message).
        ("renegotiation", client_hello()),
    ];
    for (i, (what, bytes)) in cases.into_iter().enumerate() {
        let mut t = upgraded(&c);
        t.write_all(HALF_FRAME).unwrap();
        t.flush().unwrap();
        t.sock.write_all(&bytes).unwrap();
        let got = read_to_close(&mut t.sock);
        // The alert is encrypted (keys are in use): a record of type 21
        // or 23 (TLS 1.3 hides the type); at least one record came.
        assert!(
            got.len() >= 5 + 2,
            "{what}: an alert before the close: {got:?}"
        );
        wait_for(TIMEOUT, what, || {
            count(&st().tls_failed_protocol) == i as u64 + 1
        });
        c.bystander.assert_served(what);
    }
    wait_connections(c.server.shared(), 1);
    stop(c.server);
}

#[test]
fn many_half_done_handshakes_are_bounded_and_cut() {
    let mut c = case("bad-many");
    let addr = c.server.local_addr();
    let hello = client_hello();
    let before = vm_rss_kib();
    let n = 3000;
    let mut socks = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).unwrap();
        // Most of a ClientHello: the server holds it as pending records.
        s.write_all(&hello[..hello.len() - 10]).unwrap();
        socks.push(s);
    }
    wait_for(TIMEOUT, "all accepted", || {
        count(&c.server.shared().stats().accepted) > n as u64
    });
    c.bystander.assert_served("3,000 half-done handshakes");
    let grown = vm_rss_kib().saturating_sub(before);
    // Each holds a session and its pending bytes (~3 KiB of records kept
    // in a pooled buffer): bounded, far from a buffer per connection.
    assert!(
        grown < 64 * 1024,
        "RSS grew {grown} KiB for {n} half handshakes"
    );
    // The deadline cuts them all.
    wait_for(Duration::from_secs(30), "every half handshake cut", || {
        c.server.shared().connections.load(Ordering::Acquire) == 1
    });
    assert_eq!(
        count(&c.server.shared().stats().tls_failed_timeout),
        n as u64
    );
    c.bystander.assert_served("after the deadline");
    drop(socks);
    stop(c.server);
}

/// Close with RST: SO_LINGER { on, 0 }.
fn socket2_linger_zero(s: TcpStream) -> TcpStream {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid descriptor and a linger struct of the right size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
    s
}

/// `openssl s_client`'s output, gathered by a thread as it comes.
struct SClient {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    out: Arc<std::sync::Mutex<String>>,
}

impl SClient {
    fn start(args: &[&str]) -> SClient {
        use std::process::{Command, Stdio};
        let mut child = Command::new("openssl")
            .arg("s_client")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl s_client (apt-get install openssl)");
        let out = Arc::new(std::sync::Mutex::new(String::new()));
        for mut r in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = r.read(&mut buf) {
                    out.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let stdin = child.stdin.take().unwrap();
        SClient { child, stdin, out }
    }

    /// Wait until s_client printed `what`.
    fn wait_for(&self, what: &str) {
        let deadline = std::time::Instant::now() + TIMEOUT;
        while !self.out.lock().unwrap().contains(what) {
            assert!(
                std::time::Instant::now() < deadline,
                "s_client never printed {what:?}:\n{}",
                self.out.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_tls12_renegotiation_from_openssl_gets_a_warning_through_the_shell() {
    let mut c = case("reneg12");
    let st = || c.server.shared().stats();
    let addr = c.server.local_addr().to_string();
    let ca = c.ca.ca_pem.to_str().unwrap().to_string();
    // A real TLS 1.2 client on a live connection: a request answered, then
    // its `R` command (a new ClientHello inside the encrypted session).
    let mut s = SClient::start(&[
        "-connect",
        &addr,
        "-tls1_2",
        "-CAfile",
        &ca,
        "-servername",
        "localhost",
        "-verify_return_error",
        "-msg",
        "-crlf",
    ]);
    s.wait_for("Verify return code: 0 (ok)");
    s.stdin
        .write_all(b"GET /healthz HTTP/1.1\nHost: localhost\n\n")
        .unwrap();
    s.wait_for("HTTP/1.1 200 OK");
    s.stdin.write_all(b"R\n").unwrap();
    s.wait_for("RENEGOTIATING");
    // The gateway answers the encrypted ClientHello with the
    // no_renegotiation warning alert (RFC 5246 §7.2.2) and keeps the
    // session; OpenSSL's client takes that alert as fatal to its own
    // renegotiation and ends the connection with an alert of its own.
    s.wait_for("Alert [length 0002], warning no_renegotiation");
    wait_for(TIMEOUT, "the client's alert counted", || {
        count(&st().tls_failed_peer_alert) == 1
    });
    assert_eq!(
        count(&st().tls_failed_protocol),
        0,
        "the gateway did not fail the session itself"
    );
    c.bystander.assert_served("a TLS 1.2 renegotiation");
    let _ = s.child.kill();
    let _ = s.child.wait();
    wait_connections(c.server.shared(), 1);
    stop(c.server);
}
