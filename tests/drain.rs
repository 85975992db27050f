//! Graceful drain: on SIGTERM the gateway stops accepting, tells every
//! client to reconnect elsewhere (close 4000) spread over the drain window,
//! ends SSE streams, answers long-polls, and exits once empty.

#[path = "support/process.rs"]
mod process;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use process::Wsgate;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

/// The gateway with two workers and a drain window of `window`.
fn start(window: &str) -> Wsgate {
    let cfg = std::env::temp_dir().join(format!("wsgate-drain-{}.toml", std::process::id()));
    std::fs::write(
        &cfg,
        format!("[timeouts]\ndrain_window = \"{window}\"\ndrain_timeout = \"20s\"\n"),
    )
    .unwrap();
    Wsgate::start(
        "drain",
        &["--workers", "2", "-c", cfg.to_str().unwrap()],
        &[],
    )
}

/// Read an HTTP response head byte by byte (nothing after it is consumed).
fn read_head(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "EOF in the head: {head:?}");
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

#[test]
fn sigterm_spreads_close_4000_then_exits() {
    let mut gw = start("2s");
    let port = gw.port();
    let n = 24;
    let mut clients = Vec::new();
    for _ in 0..n {
        let (ws, _) =
            tungstenite::connect(format!("ws://127.0.0.1:{port}/ws?channel=news")).unwrap();
        clients.push(ws);
    }
    // An SSE client too: its stream must end.
    let mut sse = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sse.write_all(b"GET /sse?channel=news HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let sse_head = read_head(&mut sse);
    assert!(sse_head.starts_with("HTTP/1.1 200 OK"), "{sse_head}");
    // And a long-poll, held (25 s by default, longer than the drain
    // timeout): the drain must answer it.
    let mut poll = TcpStream::connect(("127.0.0.1", port)).unwrap();
    poll.write_all(b"GET /poll?channel=news HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Everyone is subscribed before the signal.
    for ws in clients.iter_mut() {
        let m = ws.read().unwrap();
        assert!(m.to_text().unwrap().contains("\"ok\":true"), "{m:?}");
    }

    // Clients that connected just before the signal and have not sent
    // their request yet: they must be answered and then told to leave, not
    // dropped unanswered.
    let mut late_ws = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut late_sse = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut late_health = TcpStream::connect(("127.0.0.1", port)).unwrap();

    let sent = Instant::now();
    gw.signal(libc::SIGTERM);
    let handles: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            std::thread::spawn(move || loop {
                match ws.read() {
                    Ok(Message::Close(Some(f))) => return (f.code, sent.elapsed()),
                    Ok(Message::Close(None)) => panic!("close without a code"),
                    Ok(_) => {}
                    Err(e) => panic!("connection ended without close 4000: {e}"),
                }
            })
        })
        .collect();
    // The drain has begun once nothing listens any more.
    while let Ok(probe) = TcpStream::connect(("127.0.0.1", port)) {
        drop(probe);
        assert!(sent.elapsed() < Duration::from_secs(5), "still listening");
        std::thread::sleep(Duration::from_millis(10));
    }
    // A load balancer's health check during the drain: 503, and the
    // connection is not kept.
    late_health
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut health = String::new();
    late_health.read_to_string(&mut health).unwrap();
    assert!(health.starts_with("HTTP/1.1 503 "), "{health}");
    assert!(health.contains("Connection: close\r\n"), "{health}");
    assert!(health.contains("\"status\":\"draining\""), "{health}");

    let mut times = Vec::new();
    for h in handles {
        let (code, at) = h.join().unwrap();
        assert_eq!(code, CloseCode::from(4000));
        times.push(at);
    }
    times.sort();
    // Spread over the window, not all at once: the last close comes well
    // after the first (window 2 s; 24 clients told in a random order).
    let spread = *times.last().unwrap() - times[0];
    assert!(
        spread >= Duration::from_millis(500),
        "closes not spread: {times:?}"
    );

    // Every connection that had sent its request has been told by now (the
    // window is over); the late ones send theirs only now.
    late_ws
        .write_all(
            b"GET /ws?channel=news HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .unwrap();
    late_sse
        .write_all(b"GET /sse?channel=news HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();

    let head = read_head(&mut late_ws);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let mut ws =
        tungstenite::WebSocket::from_raw_socket(late_ws, tungstenite::protocol::Role::Client, None);
    let code = loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => break f.code,
            Ok(Message::Close(None)) => panic!("close without a code"),
            Ok(_) => {}
            Err(e) => panic!("late client ended without close 4000: {e}"),
        }
    };
    assert_eq!(code, CloseCode::from(4000));
    let _ = ws.flush(); // the close reply
    drop(ws);

    // The long-poll was answered (no messages, a cursor to resume from),
    // and the connection not kept.
    poll.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut answer = String::new();
    poll.read_to_string(&mut answer)
        .expect("the long-poll is answered, then closed");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.contains("Connection: close\r\n"), "{answer}");
    assert!(answer.contains("\"cursor\":"), "{answer}");
    assert!(answer.contains("\"messages\":[]"), "{answer}");

    // The SSE streams ended: the one open before the signal, and the one
    // whose request came during the drain (answered, then ended).
    for (mut s, head_read) in [(sse, true), (late_sse, false)] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .expect("the stream ends with EOF, not a reset");
        if !head_read {
            let text = String::from_utf8_lossy(&buf);
            assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        }
    }

    // The process exits cleanly, and nothing listens any more.
    let status = loop {
        if let Some(s) = gw.exited() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(20),
            "wsgate did not exit"
        );

        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}
