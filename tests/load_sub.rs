//! `wsgate-load sub` (fan-out) through the library API against an
//! in-process gateway: 20 subscribers on 2 channels and a fixed number of
//! publications must all arrive, once each, in order. Then the same over two
//! child processes of the binary, which share their progress through the
//! board file. No assertion on speed.

use std::process::Command;
use std::time::Duration;

use wsgate::config::Config;
use wsgate::load::client::{ClientConfig, Waves};
use wsgate::load::sub::{self, PublishConfig, SubConfig};
use wsgate::load::{Quiet, Target};
use wsgate::server::{Server, ServerConfig};

fn server() -> Server {
    Server::start(ServerConfig::from_config(&Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        ..Default::default()
    }))
    .expect("server starts")
}

#[test]
fn every_subscriber_gets_every_publication_once() {
    let srv = server();
    let url = format!("ws://{}/ws", srv.local_addr());
    let (conns, channels, publications) = (20u64, 2u64, 60u64);
    let cfg = SubConfig {
        client: ClientConfig::new(Target::parse(&url).expect("valid URL")),
        total_conns: conns,
        first: 0,
        conns,
        channels,
        prefix: "loadtest".into(),
        delta: false,
        waves: Waves::default(),
        warmup: Duration::ZERO,
        // Generous: the run ends as soon as every publication has arrived.
        duration: Duration::from_secs(20),
        drain: Duration::from_secs(10),
        publish: PublishConfig {
            publishers: 2,
            rate: 0.0,
            batch: 7,
            size: 100,
            dashboard: false,
            max_lag: 16,
            limit: Some(publications),
            api_key: None,
            server_pid: None,
        },
    };
    let s = sub::run(&cfg, &mut Quiet).expect("sub runs");
    assert_eq!((s.open.opened, s.open.failed), (conns, 0), "{s:?}");
    assert_eq!((s.subscribed, s.refused), (conns, 0), "{s:?}");
    assert_eq!(s.publish.published, publications, "{:?}", s.publish);
    assert_eq!(s.publish.failed_requests, 0, "{:?}", s.publish.errors);
    // 60 publications round robin over 2 channels of 10 subscribers each.
    let per_channel = conns / channels;
    assert_eq!(s.expected, publications * per_channel);
    assert_eq!(s.received, publications * per_channel, "{s:?}");
    assert_eq!((s.gaps, s.missing, s.duplicates), (0, 0, 0), "{s:?}");
    assert_eq!((s.unexpected, s.disconnects), (0, 0), "{s:?}");
    assert!(s.close_codes.is_empty(), "{s:?}");
    // Everything was stamped inside the window, so every delivery has a
    // latency sample.
    assert_eq!(s.window_received, s.received);
    assert_eq!(s.latency.count(), s.received);
    srv.stop().unwrap();
}

#[test]
fn sub_over_two_processes_adds_up() {
    let srv = server();
    let url = format!("ws://{}/ws", srv.local_addr());
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate-load"))
        .args(["sub", "--url", &url, "--conns", "21", "--channels", "2"])
        .args(["--publications", "40", "--batch", "4", "--warmup", "0s"])
        .args(["--duration", "20s", "--procs", "2", "--json"])
        .output()
        .expect("wsgate-load runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(v["mode"], "sub");
    assert_eq!(v["subscribed"], 21);
    assert_eq!(v["publish"]["published"], 40);
    // Channel 0 has 11 subscribers, channel 1 has 10; 20 publications each.
    assert_eq!(v["expected"], 20 * 11 + 20 * 10);
    assert_eq!(v["received"], v["expected"]);
    assert_eq!(v["gaps"], 0);
    assert_eq!(v["duplicates"], 0);
    assert_eq!(v["disconnects"], 0);
    srv.stop().unwrap();
}
