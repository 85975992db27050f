//! Blocking TLS clients for the wss:// tests: rustls's buffered client
//! (an implementation independent of the server's unbuffered session
//! handling in the shell) trusting only the test CA, tungstenite on top for
//! WebSocket, and raw HTTP/1.1 for the other routes. Plus a bystander that
//! must stay served over TLS.
//!
//! Declare with `#[path = "support/tls_client.rs"] mod tls_client;`.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use tungstenite::{Message, WebSocket};

use wsgate::tls::client::{client_config, ClientSettings, Trust};

pub type Tls = StreamOwned<ClientConnection, TcpStream>;

/// The client configuration: TLS 1.3 and 1.2, ALPN http/1.1, the test CA.
pub fn config(ca: &Path, resume: bool) -> Arc<ClientConfig> {
    client_config(&ClientSettings {
        trust: Trust::CaFile(ca.to_path_buf()),
        resume,
        tls12_only: false,
    })
    .expect("client config")
}

/// Connect and finish the TLS handshake (name `localhost`).
pub fn connect_with(addr: SocketAddr, cfg: &Arc<ClientConfig>) -> Tls {
    handshake_over(TcpStream::connect(addr).expect("connect"), cfg)
}

/// Finish a TLS handshake over a connected socket (name `localhost`):
/// after a PROXY header, for one.
pub fn handshake_over(sock: TcpStream, cfg: &Arc<ClientConfig>) -> Tls {
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(cfg.clone(), name).expect("client connection");
    let mut tls = StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .expect("TLS handshake completes");
    }
    tls
}

pub fn connect(addr: SocketAddr, ca: &Path) -> Tls {
    connect_with(addr, &config(ca, false))
}

/// One HTTP/1.1 request over TLS (`Connection: close`): status and body.
pub fn https(addr: SocketAddr, ca: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut tls = connect(addr, ca);
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).expect("request written");
    let mut got = Vec::new();
    // The server's close_notify ends the body; an EOF without it is
    // reported by rustls as an error, which the test would see.
    tls.read_to_end(&mut got)
        .expect("response read to close_notify");
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    (status, body)
}

/// A WebSocket over TLS at `path`.
pub fn ws(addr: SocketAddr, ca: &Path, path: &str) -> WebSocket<Tls> {
    let tls = connect(addr, ca);
    let url = format!("wss://localhost:{}{path}", addr.port());
    let (ws, resp) = tungstenite::client::client(url.as_str(), tls).expect("WebSocket over TLS");
    assert_eq!(resp.status(), 101);
    ws
}

/// Read the next text message (skipping pings).
pub fn next_text(ws: &mut WebSocket<Tls>) -> String {
    loop {
        match ws.read().expect("a message") {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => {}
            m => panic!("unexpected {m:?}"),
        }
    }
}

/// A `/ws` client over TLS, subscribed to a channel of its own, that must
/// get every publication made through the API over TLS meanwhile, in order.
pub struct TlsBystander {
    addr: SocketAddr,
    ca: std::path::PathBuf,
    ws: WebSocket<Tls>,
    channel: String,
    offset: u64,
}

impl TlsBystander {
    pub fn connect(addr: SocketAddr, ca: &Path, channel: &str) -> TlsBystander {
        let mut ws = ws(addr, ca, "/ws");
        let sub = format!(r#"{{"id":1,"op":"subscribe","channel":"{channel}"}}"#);
        ws.send(Message::text(sub)).unwrap();
        let r: serde_json::Value = serde_json::from_str(&next_text(&mut ws)).unwrap();
        assert_eq!(r["ok"], true, "{r}");
        let mut b = TlsBystander {
            addr,
            ca: ca.to_path_buf(),
            ws,
            channel: channel.to_string(),
            offset: r["offset"].as_u64().unwrap_or(0),
        };
        b.assert_served("at connect");
        b
    }

    /// The next text message on the bystander's socket.
    pub fn next(&mut self) -> String {
        self.offset += 1;
        next_text(&mut self.ws)
    }

    /// Publish over https; the bystander gets it at the next offset, and
    /// its echo of a ping op comes back.
    pub fn assert_served(&mut self, after: &str) {
        let body = format!(
            r#"{{"channel":"{}","data":{{"after":"{after}"}}}}"#,
            self.channel
        );
        let (status, r) = https(self.addr, &self.ca, "POST", "/api/publish", &body);
        assert_eq!(status, 200, "publish after {after}: {r}");
        let m: serde_json::Value = serde_json::from_str(&next_text(&mut self.ws)).unwrap();
        assert_eq!(m["channel"], self.channel.as_str(), "after {after}: {m}");
        assert_eq!(m["offset"], self.offset + 1, "after {after}: {m}");
        assert_eq!(m["data"]["after"], after, "after {after}: {m}");
        self.offset += 1;
        self.ws
            .send(Message::text(r#"{"id":7,"op":"ping"}"#))
            .unwrap();
        let p: serde_json::Value = serde_json::from_str(&next_text(&mut self.ws)).unwrap();
        assert_eq!(
            p,
            serde_json::json!({"id":7,"ok":true,"pong":true}),
            "after {after}"
        );
    }
}

/// A real ClientHello (rustls's), for tests that need only the first
/// flight, whole or cut.
pub fn client_hello() -> Vec<u8> {
    let cfg = client_config(&ClientSettings {
        trust: Trust::Insecure,
        resume: false,
        tls12_only: false,
    })
    .expect("client config");
    let mut out = Vec::new();
    let _s = wsgate::tls::client::connect(&cfg, "localhost", &mut out).expect("a ClientHello");
    out
}
