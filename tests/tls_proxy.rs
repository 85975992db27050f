//! PROXY protocol before TLS (issue 14): on the TLS port, a trusted load
//! balancer's PROXY header (v2 or v1) is read before the ClientHello and
//! names the client (per-IP admission counts it); a missing or bad header
//! from the trusted proxy, and any PROXY header from a peer that is not
//! one, is refused: closed before a byte of TLS, counted by reason. Each
//! case has a wss:// bystander (an untrusted client, straight to the port)
//! that must stay served.

mod support;

#[path = "support/certs.rs"]
mod certs;
#[path = "support/connect_from.rs"]
mod connect_from;
#[path = "support/tls_client.rs"]
mod tls_client;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use connect_from::connect_from;
use rustls::ClientConfig;
use support::{wait_for, TIMEOUT};
use tls_client::{client_hello, handshake_over, next_text, TlsBystander};
use tungstenite::Message;
use wsgate::config::{Config, TlsConfig};
use wsgate::server::{Server, ServerConfig};

/// The load balancer's source address (trusted); everyone else is not.
const PROXY: &str = "127.0.0.9";

struct Case {
    _ca: certs::TestCa,
    server: Server,
    client: Arc<ClientConfig>,
    bystander: TlsBystander,
}

/// TLS on `listen`, PROXY protocol from `PROXY`, 2 connections per client
/// IP (the bystander and its https publish), a 1 s handshake deadline.
fn case(tag: &str) -> Case {
    let ca = certs::TestCa::new(tag);
    let leaf = ca.leaf("server", &["localhost"]);
    let mut cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        ..Default::default()
    };
    cfg.tls = TlsConfig {
        cert: leaf.cert.clone(),
        key: leaf.key.clone(),
        certificates: Vec::new(),
    };
    cfg.admission.max_connections_per_ip = 2;
    cfg.admission.trusted_proxies = vec![PROXY.into()];
    cfg.admission.proxy_protocol = true;
    cfg.timeouts.handshake = wsgate::config::Millis(1000);
    let server = Server::start(ServerConfig::try_from_config(&cfg).expect("config")).unwrap();
    let bystander = TlsBystander::connect(server.local_addr(), &ca.ca_pem, tag);
    let client = tls_client::config(&ca.ca_pem, false);
    Case {
        _ca: ca,
        server,
        client,
        bystander,
    }
}

fn count(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn v2_header(client: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&client);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

/// Through the load balancer: `header` first (written in pieces of
/// `piece` bytes), then TLS and a `/ws` ping op. The op is answered.
fn proxied_ws(c: &Case, header: &[u8], piece: usize) -> tungstenite::WebSocket<tls_client::Tls> {
    let mut s = connect_from(PROXY, c.server.local_addr());
    s.set_nodelay(true).unwrap();
    for p in header.chunks(piece) {
        s.write_all(p).unwrap();
    }
    let tls = handshake_over(s, &c.client);
    let url = format!("wss://localhost:{}/ws", c.server.local_addr().port());
    let (mut ws, _) = tungstenite::client(url, tls).expect("upgrade through the proxy");
    ws.send(Message::text(r#"{"id":3,"op":"ping"}"#)).unwrap();
    let p: serde_json::Value = serde_json::from_str(&next_text(&mut ws)).unwrap();
    assert_eq!(p, serde_json::json!({"id":3,"ok":true,"pong":true}));
    ws
}

/// Write `bytes` from `from`, then read until the server closes: what it
/// sent (nothing, for a connection refused before TLS).
fn refused(from: &str, to: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = connect_from(from, to);
    s.write_all(bytes).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut got = Vec::new();
    loop {
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the server did not close: {e}"),
        }
    }
}

#[test]
fn a_trusted_proxys_header_names_the_client_before_tls() {
    let mut c = case("proxy-names");
    let st = || c.server.shared().stats();
    // v2, whole, then byte by byte (the shell keeps a partial header).
    let _a1 = proxied_ws(&c, &v2_header([198, 51, 100, 7], 5000), 1 << 10);
    let _a2 = proxied_ws(&c, &v2_header([198, 51, 100, 7], 5001), 1);
    // The same client a third time: over its limit of 2, closed before a
    // byte of TLS, counted per IP (the proxy's own address never is).
    let mut third = v2_header([198, 51, 100, 7], 5002);
    third.extend_from_slice(&client_hello());
    let got = refused(PROXY, c.server.local_addr(), &third);
    assert!(got.is_empty(), "no TLS byte to a refused client: {got:?}");
    wait_for(TIMEOUT, "refused per IP", || {
        count(&st().refused_per_ip) == 1
    });
    c.bystander.assert_served("a client over its limit");
    // Another client behind the same proxy, by v1: admitted.
    let _b = proxied_ws(&c, b"PROXY TCP4 198.51.100.8 127.0.0.1 6000 443\r\n", 7);
    // LOCAL (the balancer's health check): admitted, counted for no one.
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    let _l = proxied_ws(&c, local, 1 << 10);
    assert_eq!(count(&st().refused_per_ip), 1);
    assert_eq!(count(&st().tls_failed_proxy_header), 0);
    c.bystander.assert_served("proxied clients");
    c.server.stop().unwrap();
}

#[test]
fn a_missing_or_bad_header_from_the_proxy_is_refused() {
    let mut c = case("proxy-bad");
    let st = || c.server.shared().stats();
    let addr = c.server.local_addr();
    let mut bad_version = v2_header([198, 51, 100, 7], 5000);
    bad_version[12] = 0x11;
    let mut v1_bad_address = b"PROXY TCP4 198.51.100.300 127.0.0.1 1 2\r\n".to_vec();
    v1_bad_address.extend_from_slice(&client_hello());
    let mut v1_no_crlf = b"PROXY UNKNOWN ".to_vec();
    v1_no_crlf.resize(200, b'x');
    let cases: [(&str, Vec<u8>); 4] = [
        ("a ClientHello with no header", client_hello()),
        ("a v2 header of version 1", bad_version),
        ("a v1 line with a bad address", v1_bad_address),
        ("a v1 line with no CRLF in 107 bytes", v1_no_crlf),
    ];
    for (i, (what, bytes)) in cases.into_iter().enumerate() {
        let got = refused(PROXY, addr, &bytes);
        assert!(got.is_empty(), "{what}: no TLS byte: {got:?}");
        wait_for(TIMEOUT, what, || {
            count(&st().tls_failed_proxy_header) == i as u64 + 1
        });
        c.bystander.assert_served(what);
    }
    // A header that stops halfway is cut at the handshake deadline.
    let handshakes = count(&st().tls_handshakes_full);
    let got = refused(PROXY, addr, b"PROXY TCP4 198.51");
    assert!(got.is_empty(), "{got:?}");
    wait_for(TIMEOUT, "cut at the deadline", || {
        count(&st().tls_failed_timeout) == 1
    });
    assert_eq!(count(&st().tls_handshakes_full), handshakes, "no handshake");
    c.bystander.assert_served("a stalled header");
    c.server.stop().unwrap();
}

#[test]
fn a_header_from_an_untrusted_peer_is_refused() {
    let mut c = case("proxy-untrusted");
    let st = || c.server.shared().stats();
    let addr = c.server.local_addr();
    let mut v2 = v2_header([198, 51, 100, 7], 5000);
    v2.extend_from_slice(&client_hello());
    let mut v1 = b"PROXY TCP4 198.51.100.7 127.0.0.1 1 2\r\n".to_vec();
    v1.extend_from_slice(&client_hello());
    for (i, (what, bytes)) in [("v2", v2), ("v1", v1)].into_iter().enumerate() {
        let got = refused("127.0.0.10", addr, &bytes);
        assert!(got.is_empty(), "{what}: no TLS byte: {got:?}");
        wait_for(TIMEOUT, what, || {
            count(&st().tls_failed_proxy_untrusted) == i as u64 + 1
        });
        c.bystander.assert_served(what);
    }
    // A plain TLS client from there is served as ever.
    let s = connect_from("127.0.0.10", addr);
    s.set_nodelay(true).unwrap();
    let mut tls = handshake_over(s, &c.client);
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    let _ = tls.read_to_string(&mut body);
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    c.server.stop().unwrap();
}
