//! A refreshed token's grants replace the old ones at once (issue 12,
//! item 12): every subscription the new token does not grant ends, with an
//! `unsubscribed` notice (code 8) before the refresh's reply, and nothing of
//! it arrives afterwards, past the old token's expiry too; publish rights
//! follow the new token. A bystander on the dropped channel keeps it.

#[path = "support/gateway.rs"]
mod gateway_support;

use std::io::Write;
use std::time::{Duration, Instant};

use gateway_support::{http_post_json, Client};
use serde_json::{json, Value};
use wsgate::config::Config;
use wsgate::server::{Server, ServerConfig};

const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

/// A token for `sub`, expiring `ttl_s` from now.
fn token(sub: &str, ttl_s: u64, subscribe: &[&str], publish: &[&str]) -> String {
    gateway_support::hs256_token(SECRET, sub, ttl_s, subscribe, publish)
}

fn start(tweak: impl FnOnce(&mut Config)) -> Server {
    let mut cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        ..Default::default()
    };
    cfg.auth.jwt_hs256_secret = SECRET.into();
    cfg.auth.leeway = wsgate::config::Millis(0);
    tweak(&mut cfg);
    Server::start(ServerConfig::try_from_config(&cfg).unwrap()).unwrap()
}

fn publish(addr: std::net::SocketAddr, channel: &str, data: Value) -> u64 {
    let r = http_post_json(
        addr,
        "/api/publish",
        &json!({ "channel": channel, "data": data }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["offset"].as_u64().unwrap()
}

/// Read messages up to the reply `id`.
fn until_reply(c: &mut Client, id: u64) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let m = c.next();
        let done = m["id"] == id;
        got.push(m);
        if done {
            return got;
        }
    }
}

#[test]
fn refresh_ends_subscriptions_the_new_token_does_not_grant() {
    let server = start(|_| {});
    let addr = server.local_addr();
    // Expires in 3 s unless refreshed.
    let first = token("alice", 3, &["chat:*"], &["chat:*"]);
    let mut c = Client::connect(addr, &format!("/ws?token={first}"));
    let _ = c.connect_reply("$user:alice");
    c.subscribe("chat:a");
    c.subscribe("chat:b");
    let bob = token("bob", 3600, &["chat:*"], &[]);
    let mut bystander = Client::connect(addr, &format!("/ws?token={bob}&channel=chat:b"));
    let _ = bystander.connect_reply("$user:bob");
    let _ = bystander.connect_reply("chat:b");
    let r = c.call(json!({"op": "publish", "channel": "chat:b", "data": 1}));
    assert_eq!(r["ok"], true, "{r}");
    let _ = c.next_publication("chat:b");
    assert_eq!(bystander.next_publication("chat:b").0, 1);

    // The new token grants chat:a only, and publishing there only.
    let narrow = token("alice", 3600, &["chat:a"], &["chat:a"]);
    c.send_json(&json!({"id": 10, "op": "refresh", "token": narrow}));
    let got = until_reply(&mut c, 10);
    assert_eq!(
        got,
        [
            json!({"channel": "chat:b", "unsubscribed": {"code": 8, "message": "permission denied"}}),
            got[1].clone(),
        ],
        "the notice, then the reply"
    );
    assert_eq!(got[1]["ok"], true, "{}", got[1]);

    // Nothing more of chat:b; chat:a and the personal channel go on.
    publish(addr, "chat:b", json!(2));
    let a = publish(addr, "chat:a", json!(3));
    assert_eq!(c.next_publication("chat:a"), (a, json!(3)));
    assert_eq!(bystander.next_publication("chat:b"), (2, json!(2)));
    // Publish rights follow the new token.
    let r = c.call(json!({"op": "publish", "channel": "chat:b", "data": 4}));
    assert_eq!(r["error"]["code"], 8, "{r}");
    let r = c.call(json!({"op": "subscribe", "channel": "chat:b"}));
    assert_eq!(r["error"]["code"], 8, "{r}");
    let r = c.call(json!({"op": "publish", "channel": "chat:a", "data": 5}));
    assert_eq!(r["ok"], true, "{r}");
    let _ = c.next_publication("chat:a");
    let r = http_post_json(addr, "/api/publish", &json!({"user": "alice", "data": 6}));
    assert_eq!(r.status, 200);
    assert_eq!(c.next_publication("$user:alice").1, json!(6));
    let p = gateway_support::api_presence(addr, "chat:b");
    assert_eq!(p["clients"], 1, "only the bystander: {p}");

    // Past the first token's expiry: still open (the new one holds), and
    // still nothing of chat:b.
    let expired_at = Instant::now() + Duration::from_secs(4);
    while Instant::now() < expired_at {
        c.assert_alive();
        std::thread::sleep(Duration::from_millis(250));
    }
    publish(addr, "chat:b", json!(7));
    let a = publish(addr, "chat:a", json!(8));
    assert_eq!(c.next_publication("chat:a"), (a, json!(8)));
    c.assert_nothing_pending();
    bystander.assert_alive();
    c.close();
    bystander.close();
    server.stop().unwrap();
}

/// A refresh behind a subscribe still at the broker waits for it, then
/// narrows: the subscribe's reply, the notice, the refresh's reply, and the
/// next op checked against the new token, all in order (one write).
#[test]
fn a_pipelined_refresh_narrows_after_the_ops_before_it() {
    let server = start(|_| {});
    let addr = server.local_addr();
    let wide = token("alice", 3600, &["chat:*"], &["chat:*"]);
    let mut c = Client::connect(addr, &format!("/ws?token={wide}"));
    let _ = c.connect_reply("$user:alice");
    let narrow = token("alice", 3600, &["chat:a"], &["chat:a"]);
    let ops = [
        json!({"id": 1, "op": "subscribe", "channel": "chat:c"}),
        json!({"id": 2, "op": "refresh", "token": narrow}),
        json!({"id": 3, "op": "publish", "channel": "chat:c", "data": 1}),
        json!({"id": 4, "op": "subscribe", "channel": "chat:a"}),
    ];
    let mut bytes = Vec::new();
    for op in &ops {
        bytes.extend(client_frame(op.to_string().as_bytes()));
    }
    c.ws.get_mut().write_all(&bytes).unwrap();
    let got = until_reply(&mut c, 4);
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(
        (got[0]["id"].clone(), got[0]["ok"].clone()),
        (json!(1), json!(true))
    );
    assert_eq!(
        got[1],
        json!({"channel": "chat:c", "unsubscribed": {"code": 8, "message": "permission denied"}})
    );
    assert_eq!(
        (got[2]["id"].clone(), got[2]["ok"].clone()),
        (json!(2), json!(true))
    );
    assert_eq!(
        (got[3]["id"].clone(), got[3]["error"]["code"].clone()),
        (json!(3), json!(8))
    );
    assert_eq!(
        (got[4]["id"].clone(), got[4]["ok"].clone()),
        (json!(4), json!(true))
    );
    let p = gateway_support::api_presence(addr, "chat:c");
    assert_eq!(p["clients"], 0, "{p}");
    c.close();
    server.stop().unwrap();
}

/// An anonymous connection that logs in with `refresh` gets its user's
/// personal channel (answered after the refresh), and keeps only what the
/// token grants.
#[test]
fn logging_in_with_refresh_joins_the_personal_channel() {
    let server = start(|cfg| {
        cfg.auth.required = Some(false);
        cfg.auth.anonymous_subscribe = vec!["public:*".into()];
    });
    let addr = server.local_addr();
    let mut c = Client::connect(addr, "/ws");
    c.subscribe("public:news");
    c.subscribe("public:other");
    let carol = token("carol", 3600, &["public:news"], &[]);
    c.send_json(&json!({"id": 5, "op": "refresh", "token": carol}));
    let got = until_reply(&mut c, 5);
    assert_eq!(got[0]["unsubscribed"]["code"], 8, "{got:?}");
    assert_eq!(got[0]["channel"], "public:other");
    let personal = c.connect_reply("$user:carol");
    assert_eq!(personal["ok"], true, "{personal}");
    let r = http_post_json(addr, "/api/publish", &json!({"user": "carol", "data": 1}));
    assert_eq!(r.status, 200);
    assert_eq!(c.next_publication("$user:carol"), (1, json!(1)));
    c.assert_nothing_pending();
    c.close();
    server.stop().unwrap();
}

/// A masked client text frame.
fn client_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    let key = [1, 2, 3, 4];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}
