//! wsgate-load over `wss://` through nginx terminating TLS 1.3 in front of
//! the plain gateway (scripts/nginx_tls_peer.sh, the peer of the TLS
//! figures): echo, and sub, whose publisher posts to /api/publish over
//! TLS too. nginx must be installed (.ci/run installs nginx-light): without
//! it the test fails with a message, never passes silently.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use wsgate::config::Config;
use wsgate::load::client::{ClientConfig, Waves};
use wsgate::load::echo::{self, EchoConfig};
use wsgate::load::sub::{self, PublishConfig, SubConfig};
use wsgate::load::{Quiet, Target};
use wsgate::server::{Server, ServerConfig};
use wsgate::tls::client::{client_config, ClientSettings, Trust};

#[path = "support/certs.rs"]
mod certs;

/// The script, stopped (SIGTERM to its own pid: it stops nginx) on drop.
struct Peer {
    child: Child,
    port: u16,
}

impl Peer {
    fn start(leaf: &certs::Leaf, upstream: std::net::SocketAddr) -> Peer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/nginx_tls_peer.sh");
        let mut child = Command::new("bash")
            .arg(script)
            .arg("--cert")
            .arg(&leaf.cert)
            .arg("--key")
            .arg(&leaf.key)
            .arg("--upstream")
            .arg(upstream.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run scripts/nginx_tls_peer.sh");
        let out = child.stdout.take().expect("stdout");
        let mut line = String::new();
        // The script prints its line once nginx's worker runs, or exits.
        BufReader::new(out)
            .read_line(&mut line)
            .expect("read the script's output");
        let port = line
            .split_whitespace()
            .nth(2)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("nginx did not start (is it installed?): {line:?}"));
        Peer { child, port }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child, not yet waited for.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

#[test]
fn echo_and_sub_over_nginx_tls() {
    let ca = certs::TestCa::new("nginx");
    let leaf = ca.leaf("server", &["localhost"]);
    let srv = Server::start(ServerConfig::from_config(&Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        ..Default::default()
    }))
    .expect("server starts");
    let peer = Peer::start(&leaf, srv.local_addr());
    let tls = client_config(&ClientSettings {
        trust: Trust::CaFile(ca.ca_pem.clone()),
        resume: false,
        tls12_only: false,
    })
    .unwrap();
    let client = |path: &str| {
        let url = format!("wss://localhost:{}{path}", peer.port);
        let mut c = ClientConfig::new(Target::parse(&url).unwrap());
        c.tls = Some(tls.clone());
        c
    };
    let r = echo::run(
        &EchoConfig {
            client: client("/echo"),
            conns: 4,
            size: 200,
            text: false,
            duration: Duration::from_millis(1500),
            warmup: Duration::from_millis(100),
            waves: Waves::default(),
        },
        &mut Quiet,
    )
    .expect("echo runs");
    assert_eq!((r.open.opened, r.open.failed), (4, 0), "{r:?}");
    assert!(r.echoed > 0 && r.errors() == 0, "{r:?}");

    let (conns, publications) = (10u64, 30u64);
    let s = sub::run(
        &SubConfig {
            client: client("/ws"),
            total_conns: conns,
            first: 0,
            conns,
            channels: 1,
            prefix: "tls".into(),
            delta: false,
            waves: Waves::default(),
            warmup: Duration::ZERO,
            duration: Duration::from_secs(20),
            drain: Duration::from_secs(10),
            publish: PublishConfig {
                publishers: 1,
                rate: 0.0,
                batch: 5,
                size: 100,
                dashboard: false,
                max_lag: 16,
                limit: Some(publications),
                api_key: None,
                server_pid: None,
            },
        },
        &mut Quiet,
    )
    .expect("sub runs");
    assert_eq!((s.open.opened, s.subscribed), (conns, conns), "{s:?}");
    assert_eq!(s.publish.published, publications, "{:?}", s.publish);
    assert_eq!(s.publish.failed_requests, 0, "{:?}", s.publish.errors);
    assert_eq!(s.received, publications * conns, "{s:?}");
    assert_eq!((s.gaps, s.missing, s.duplicates), (0, 0, 0), "{s:?}");
    drop(peer);
    srv.stop().unwrap();
}
