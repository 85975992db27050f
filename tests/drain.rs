//! Graceful drain: on SIGTERM the gateway stops accepting, tells every
//! client to reconnect elsewhere (close 4000) spread over the drain window,
//! ends SSE streams, and exits once empty.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(port: u16, window: &str) -> Gateway {
    let dir = std::env::temp_dir().join(format!("wsgate-drain-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("wsgate.toml");
    std::fs::write(
        &cfg,
        format!("[timeouts]\ndrain_window = \"{window}\"\ndrain_timeout = \"20s\"\n"),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--workers",
            "2",
            "-c",
        ])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wsgate starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "wsgate did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Gateway(child)
}

#[test]
fn sigterm_spreads_close_4000_then_exits() {
    let port = free_port();
    let mut gw = start(port, "2s");
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
    // Everyone is subscribed before the signal.
    for ws in clients.iter_mut() {
        let m = ws.read().unwrap();
        assert!(m.to_text().unwrap().contains("\"ok\":true"), "{m:?}");
    }

    let sent = Instant::now();
    // SAFETY: kill(2) on our child's pid.
    assert_eq!(unsafe { libc::kill(gw.0.id() as i32, libc::SIGTERM) }, 0);

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

    // The SSE stream ended.
    sse.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let _ = sse.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");

    // The process exits cleanly, and nothing listens any more.
    let status = loop {
        if let Some(s) = gw.0.try_wait().unwrap() {
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
