//! `wsgate-load --procs N`: the binary splits a run over child processes and
//! merges their results (counts add up). Run against an in-process server.

use std::process::Command;

use wsgate::server::{Server, ServerConfig};

#[test]
fn hold_over_two_processes_merges_counts() {
    let srv = Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        ..Default::default()
    })
    .expect("server starts");
    let url = format!("ws://{}/echo", srv.local_addr());
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate-load"))
        .args(["hold", "--url", &url, "--conns", "21", "--hold", "200ms"])
        .args(["--procs", "2", "--src-ips", "127.0.0.2-127.0.0.3", "--json"])
        .output()
        .expect("wsgate-load runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(v["mode"], "hold");
    assert_eq!(v["connections"]["requested"], 21);
    assert_eq!(v["connections"]["opened"], 21);
    assert_eq!(v["connections"]["failed"], 0);
    assert_eq!(v["still_open"], 21);
    srv.stop().unwrap();
}

#[test]
fn echo_over_two_processes_merges_histograms() {
    let srv = Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        ..Default::default()
    })
    .expect("server starts");
    let url = format!("ws://{}/echo", srv.local_addr());
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate-load"))
        .args(["echo", "--url", &url, "--conns", "4", "--duration", "300ms"])
        .args(["--warmup", "0s", "--procs", "2", "--json"])
        .output()
        .expect("wsgate-load runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(v["connections"]["opened"], 4);
    let echoed = v["echoed"].as_u64().unwrap();
    assert!(echoed > 0);
    assert_eq!(
        echoed,
        v["sent"].as_u64().unwrap() - v["unanswered"].as_u64().unwrap()
    );
    // Every echo in the window is one latency sample, from both children.
    assert_eq!(v["latency_us"]["count"], v["window_echoed"]);
    srv.stop().unwrap();
}
