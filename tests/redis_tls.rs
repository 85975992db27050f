//! The broker link over TLS: `rediss://` to a `redis-server` listening
//! only on its TLS port (Debian's is built with TLS), with a test CA and a
//! client certificate (Redis requires one by default). Two nodes share a
//! channel through it; a node that does not trust Redis's certificate
//! cannot reach it, says so, and the others stay served.

mod redis_util;

#[path = "support/certs.rs"]
mod certs;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use redis_util::*;
use serde_json::json;

/// `redis-server` with TLS only (`--port 0`), killed when dropped.
struct TlsRedis {
    port: u16,
    child: Child,
}

impl TlsRedis {
    fn start(ca: &certs::TestCa) -> TlsRedis {
        let server = ca.leaf("redis", &["localhost"]);
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--bind", "127.0.0.1", "--tls-port"])
            .arg(port.to_string())
            .arg("--tls-cert-file")
            .arg(&server.cert)
            .arg("--tls-key-file")
            .arg(&server.key)
            .arg("--tls-ca-cert-file")
            .arg(&ca.ca_pem)
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): apt-get install redis-server")
            });
        wait_for(TIMEOUT, "redis-server's TLS port accepts", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        TlsRedis { port, child }
    }

    fn url(&self) -> String {
        format!("rediss://localhost:{}/0", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn nodes_share_channels_over_rediss() {
    let ca = certs::TestCa::new("redis-tls");
    let redis = TlsRedis::start(&ca);
    let client = ca.leaf("node", &["wsgate-node"]);
    let tls = |cfg: &mut wsgate::config::Config| {
        cfg.broker.redis_ca = ca.ca_pem.clone();
        cfg.broker.redis_tls_cert = client.cert.clone();
        cfg.broker.redis_tls_key = client.key.clone();
    };
    let a = node(&redis.url(), tls);
    let b = node(&redis.url(), tls);
    let mut sub = Client::connect(a.local_addr(), "");
    let (v, _) = sub.subscribe("chat", None);
    let epoch = v["epoch"].as_str().expect("an epoch from Redis").to_owned();
    let mut api = Api::new(b.local_addr());
    for n in 1..=20u64 {
        let (e, off) = api.publish("chat", json!({ "n": n })).expect("publish");
        assert_eq!((e.as_str(), off), (epoch.as_str(), n));
    }
    let got = sub.collect_until(TIMEOUT, |e| offsets(e).last() == Some(&20));
    let want: Vec<Event> = (1..=20).map(|n| Event::Pub(n, json!({ "n": n }))).collect();
    assert_eq!(got, want);

    // A node that trusts another CA: Redis is unreachable for it (its
    // publishes fail), and the nodes that trust the right one go on.
    let other = certs::TestCa::new("redis-other");
    let c = node(&redis.url(), |cfg| {
        cfg.broker.redis_ca = other.ca_pem.clone();
        cfg.broker.redis_tls_cert = client.cert.clone();
        cfg.broker.redis_tls_key = client.key.clone();
    });
    let refused = Api::new(c.local_addr()).publish("chat", json!({ "n": 0 }));
    assert!(refused.is_err(), "{refused:?}");
    let (_, off) = api.publish("chat", json!({ "n": 21 })).expect("publish");
    assert_eq!(off, 21);
    let got = sub.collect_until(TIMEOUT, |e| offsets(e).last() == Some(&21));
    assert_eq!(got, vec![Event::Pub(21, json!({ "n": 21 }))]);
    for n in [a, b, c] {
        n.stop().unwrap();
    }
}
