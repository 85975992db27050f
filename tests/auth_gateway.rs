//! JWT auth on every transport, through a running gateway: tokens from the
//! query, `Sec-WebSocket-Protocol` and `Authorization`; channel permissions;
//! expiry with close 4501, and `refresh`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;
use wsgate::config::Config;
use wsgate::server::{Server, ServerConfig};

const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(sub: &str, exp: u64, subscribe: &[&str], publish: &[&str]) -> String {
    let claims = json!({ "sub": sub, "exp": exp, "subscribe": subscribe, "publish": publish });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn start() -> Server {
    let mut cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        ..Default::default()
    };
    cfg.auth.jwt_hs256_secret = SECRET.into();
    cfg.auth.leeway = wsgate::config::Millis(0);
    Server::start(ServerConfig::try_from_config(&cfg).unwrap()).unwrap()
}

fn http(addr: std::net::SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

fn op(ws: &mut Ws, v: Value) -> Value {
    ws.send(Message::text(v.to_string())).unwrap();
    loop {
        if let Message::Text(t) = ws.read().unwrap() {
            let r: Value = serde_json::from_str(&t).unwrap();
            if r.get("id") == v.get("id") {
                return r;
            }
        }
    }
}

#[test]
fn no_token_or_bad_token_is_refused_on_every_transport() {
    let s = start();
    let a = s.local_addr();
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let expired = token("alice", now() - 10, &["chat"], &[]);
    for target in [
        "/ws".to_string(),
        format!("/ws?token={expired}"),
        "/ws?token=not.a.jwt".into(),
    ] {
        let r = http(
            a,
            &format!("GET {target} HTTP/1.1\r\nHost: x\r\n{upgrade}\r\n"),
        );
        assert!(r.starts_with("HTTP/1.1 401"), "{target}: {r}");
        assert!(r.contains("WWW-Authenticate: Bearer"), "{r}");
    }
    let r = http(a, "GET /sse?channel=chat HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    let r = http(
        a,
        "GET /poll?channel=chat&wait=0 HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    let body = r#"{"op":"publish","channel":"chat","data":1}"#;
    let r = http(
        a,
        &format!(
            "POST /send HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    s.stop().unwrap();
}

#[test]
fn token_sources_and_channel_permissions() {
    let s = start();
    let a = s.local_addr();
    let t = token("alice", now() + 600, &["chat:*"], &["chat:room1"]);

    // From the query.
    let (mut ws, _) = tungstenite::connect(format!("ws://{a}/ws?token={t}")).unwrap();
    let r = op(
        &mut ws,
        json!({"id":1,"op":"subscribe","channel":"chat:room1"}),
    );
    assert_eq!(r["ok"], true, "{r}");
    let r = op(&mut ws, json!({"id":2,"op":"subscribe","channel":"news"}));
    assert_eq!(
        r["error"]["code"], 8,
        "not in the token's subscribe patterns: {r}"
    );
    let r = op(
        &mut ws,
        json!({"id":3,"op":"publish","channel":"chat:room2","data":1}),
    );
    assert_eq!(
        r["error"]["code"], 8,
        "not in the token's publish patterns: {r}"
    );
    let r = op(
        &mut ws,
        json!({"id":4,"op":"publish","channel":"chat:room1","data":1}),
    );
    assert_eq!(r["ok"], true, "{r}");
    // The verified user, not a ?user= claim, is the identity.
    let r = op(
        &mut ws,
        json!({"id":5,"op":"presence","channel":"chat:room1"}),
    );
    assert_eq!(r["members"][0]["user"], "alice", "{r}");

    // From Sec-WebSocket-Protocol: the server answers wsgate.v1, never the token.
    let mut req = format!("ws://{a}/ws").into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("wsgate.v1, bearer.{t}").parse().unwrap(),
    );
    let (_ws2, resp) = tungstenite::connect(req).unwrap();
    assert_eq!(resp.headers()["Sec-WebSocket-Protocol"], "wsgate.v1");

    // From Authorization (non-browser clients).
    let mut req = format!("ws://{a}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {t}").parse().unwrap());
    let (mut ws3, _) = tungstenite::connect(req).unwrap();
    let r = op(&mut ws3, json!({"id":1,"op":"ping"}));
    assert_eq!(r["pong"], true);

    // SSE with a token.
    let mut sse = TcpStream::connect(a).unwrap();
    sse.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sse.write_all(
        format!("GET /sse?channel=chat:room1&token={t} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut buf = [0u8; 512];
    let n = sse.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200 OK"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.stop().unwrap();
}

#[test]
fn expiry_closes_with_4501_unless_refreshed() {
    let s = start();
    let a = s.local_addr();
    // Expires in 2 to 3 s (exp is in whole seconds); refreshed after 1 s
    // with a token good for 10 min.
    let short = token("bob", now() + 3, &["chat"], &[]);
    let (mut kept, _) = tungstenite::connect(format!("ws://{a}/ws?token={short}")).unwrap();
    let (mut lapsed, _) = tungstenite::connect(format!("ws://{a}/ws?token={short}")).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let long = token("bob", now() + 600, &["chat"], &[]);
    let r = op(&mut kept, json!({"id":1,"op":"refresh","token": long}));
    assert_eq!(r["ok"], true, "{r}");
    // Another user's token cannot take over the connection.
    let eve = token("eve", now() + 600, &["*"], &["*"]);
    let r = op(&mut kept, json!({"id":2,"op":"refresh","token": eve}));
    assert!(r["error"].is_object(), "{r}");

    // The one that was not refreshed is closed with 4501.
    if let tungstenite::stream::MaybeTlsStream::Plain(t) = lapsed.get_mut() {
        t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let code = loop {
        match lapsed.read() {
            Ok(Message::Close(Some(f))) => break f.code,
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(code, CloseCode::from(4501));
    // The refreshed one is still usable after the first token's expiry.
    std::thread::sleep(Duration::from_millis(1500));
    let r = op(&mut kept, json!({"id":3,"op":"ping"}));
    assert_eq!(r["pong"], true, "{r}");
    s.stop().unwrap();
}
