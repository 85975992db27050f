//! Admission control: connections per IP (429), handshake rate (503),
//! messages per second (close 1008), and the real client IP behind trusted
//! proxies (X-Forwarded-For, PROXY protocol v2). Each refusal has its status
//! or code and its metric, and legitimate clients keep working.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;
use wsgate::config::Config;
use wsgate::server::{Server, ServerConfig};

#[path = "support/connect_from.rs"]
mod connect_from;
use connect_from::connect_from;

fn start(tweak: impl FnOnce(&mut Config)) -> Server {
    let mut cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        ..Default::default()
    };
    tweak(&mut cfg);
    Server::start(ServerConfig::try_from_config(&cfg).unwrap()).unwrap()
}

fn upgrade(s: &mut TcpStream, path: &str, extra: &str) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn connections_per_ip_get_429_and_free_up() {
    let s = start(|c| c.admission.max_connections_per_ip = 3);
    let a = s.local_addr();
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut t = connect_from("127.0.0.3", a);
            assert!(upgrade(&mut t, "/echo", "").starts_with("HTTP/1.1 101"));
            t
        })
        .collect();
    let mut fourth = connect_from("127.0.0.3", a);
    let r = upgrade(&mut fourth, "/echo", "");
    assert!(r.starts_with("HTTP/1.1 429"), "{r}");
    assert!(r.contains("Retry-After"), "{r}");
    // Another address is not affected.
    let mut other = connect_from("127.0.0.4", a);
    assert!(upgrade(&mut other, "/echo", "").starts_with("HTTP/1.1 101"));
    assert_eq!(s.shared().stats().refused_per_ip.load(Ordering::Relaxed), 1);
    // Closing one frees a place, once the gateway has seen the close.
    drop(held.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = connect_from("127.0.0.3", a);
        let r = upgrade(&mut again, "/echo", "");
        if r.starts_with("HTTP/1.1 101") {
            break;
        }
        assert!(r.starts_with("HTTP/1.1 429"), "{r}");
        assert!(
            std::time::Instant::now() < deadline,
            "the place was not freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    s.stop().unwrap();
}

#[test]
fn handshake_rate_gets_503_with_retry_after() {
    // 1 a second: the 30 tries below take far less than the ~20 s it
    // would take for 10 of them to pass.
    let s = start(|c| c.admission.handshake_rate = 1);
    let a = s.local_addr();
    let (mut bystander, _) = tungstenite::connect(format!("ws://{a}/echo")).unwrap();
    let mut refused = 0;
    for _ in 0..30 {
        let mut t = TcpStream::connect(a).unwrap();
        let r = upgrade(&mut t, "/ws", "");
        if r.starts_with("HTTP/1.1 503") {
            assert!(r.contains("Retry-After: 1"), "{r}");
            refused += 1;
        } else {
            assert!(r.starts_with("HTTP/1.1 101"), "{r}");
        }
    }
    assert!(refused >= 20, "only {refused} of 30 refused at 1/s");
    assert_eq!(
        s.shared()
            .stats()
            .refused_handshake_rate
            .load(Ordering::Relaxed),
        refused
    );
    // Established connections are not touched.
    bystander.send(Message::text("still here")).unwrap();
    assert_eq!(bystander.read().unwrap(), Message::text("still here"));
    s.stop().unwrap();
}

#[test]
fn message_rate_closes_with_1008() {
    let s = start(|c| c.admission.messages_per_second = 10);
    let a = s.local_addr();
    let (mut calm, _) = tungstenite::connect(format!("ws://{a}/ws")).unwrap();
    let (mut flood, _) = tungstenite::connect(format!("ws://{a}/ws")).unwrap();
    for i in 0..200 {
        if flood
            .send(Message::text(json!({"id": i, "op": "ping"}).to_string()))
            .is_err()
        {
            break;
        }
    }
    let code = loop {
        match flood.read() {
            Ok(Message::Close(Some(f))) => break f.code,
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(code, CloseCode::Policy);
    assert_eq!(s.shared().stats().rate_limited.load(Ordering::Relaxed), 1);
    calm.send(Message::text(r#"{"id":1,"op":"ping"}"#)).unwrap();
    let r = calm.read().unwrap();
    assert!(r.to_text().unwrap().contains("\"pong\":true"), "{r:?}");
    s.stop().unwrap();
}

#[test]
fn forwarded_for_from_trusted_proxies_only() {
    let s = start(|c| {
        c.admission.max_connections_per_ip = 1;
        c.admission.trusted_proxies = vec!["127.0.0.5".into()];
    });
    let a = s.local_addr();
    // Through the trusted proxy: counted by the forwarded client.
    let mut p1 = connect_from("127.0.0.5", a);
    assert!(
        upgrade(&mut p1, "/echo", "X-Forwarded-For: 203.0.113.5\r\n").starts_with("HTTP/1.1 101")
    );
    let mut p2 = connect_from("127.0.0.5", a);
    let r = upgrade(&mut p2, "/echo", "X-Forwarded-For: 203.0.113.5\r\n");
    assert!(r.starts_with("HTTP/1.1 429"), "same client twice: {r}");
    let mut p3 = connect_from("127.0.0.5", a);
    assert!(
        upgrade(&mut p3, "/echo", "X-Forwarded-For: 203.0.113.6\r\n").starts_with("HTTP/1.1 101")
    );
    // From an untrusted peer the header means nothing: counted by the peer.
    let mut u1 = connect_from("127.0.0.6", a);
    assert!(
        upgrade(&mut u1, "/echo", "X-Forwarded-For: 198.51.100.1\r\n").starts_with("HTTP/1.1 101")
    );
    let mut u2 = connect_from("127.0.0.6", a);
    let r = upgrade(&mut u2, "/echo", "X-Forwarded-For: 198.51.100.2\r\n");
    assert!(r.starts_with("HTTP/1.1 429"), "spoofed header ignored: {r}");
    s.stop().unwrap();
}

#[test]
fn proxy_protocol_v2_names_the_client() {
    let s = start(|c| {
        c.admission.max_connections_per_ip = 1;
        c.admission.trusted_proxies = vec!["127.0.0.7".into()];
        c.admission.proxy_protocol = true;
    });
    let a = s.local_addr();
    let header = |ip: [u8; 4]| {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0, 12]);
        h.extend_from_slice(&ip);
        h.extend_from_slice(&[127, 0, 0, 1, 0x30, 0x39, 0x1F, 0x90]);
        h
    };
    let mut c1 = connect_from("127.0.0.7", a);
    c1.write_all(&header([198, 51, 100, 7])).unwrap();
    assert!(upgrade(&mut c1, "/echo", "").starts_with("HTTP/1.1 101"));
    let mut c2 = connect_from("127.0.0.7", a);
    c2.write_all(&header([198, 51, 100, 7])).unwrap();
    assert!(upgrade(&mut c2, "/echo", "").starts_with("HTTP/1.1 429"));
    let mut c3 = connect_from("127.0.0.7", a);
    c3.write_all(&header([198, 51, 100, 8])).unwrap();
    assert!(upgrade(&mut c3, "/echo", "").starts_with("HTTP/1.1 101"));
    // A trusted proxy that sends no valid header gets 400.
    let mut c4 = connect_from("127.0.0.7", a);
    let r = upgrade(&mut c4, "/echo", "");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    s.stop().unwrap();
}

#[test]
fn proxy_protocol_v1_names_the_client() {
    let s = start(|c| {
        c.admission.max_connections_per_ip = 1;
        c.admission.trusted_proxies = vec!["127.0.0.8".into()];
        c.admission.proxy_protocol = true;
    });
    let a = s.local_addr();
    let header = |ip: &str| format!("PROXY TCP4 {ip} 127.0.0.1 40000 443\r\n");
    let mut c1 = connect_from("127.0.0.8", a);
    c1.write_all(header("198.51.100.17").as_bytes()).unwrap();
    assert!(upgrade(&mut c1, "/echo", "").starts_with("HTTP/1.1 101"));
    let mut c2 = connect_from("127.0.0.8", a);
    c2.write_all(header("198.51.100.17").as_bytes()).unwrap();
    assert!(upgrade(&mut c2, "/echo", "").starts_with("HTTP/1.1 429"));
    let mut c3 = connect_from("127.0.0.8", a);
    c3.write_all(header("198.51.100.18").as_bytes()).unwrap();
    assert!(upgrade(&mut c3, "/echo", "").starts_with("HTTP/1.1 101"));
    // A v1 line with a bad address gets 400.
    let mut c4 = connect_from("127.0.0.8", a);
    c4.write_all(b"PROXY TCP4 198.51.100.300 127.0.0.1 1 2\r\n")
        .unwrap();
    let r = upgrade(&mut c4, "/echo", "");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    s.stop().unwrap();
}
