//! A long-poll whose channels are all refused answers at once with the
//! errors, whatever its `wait` (it used to wait `wait` out: the default
//! poll_wait, or 5 s with `wait=0`). The gateway here holds polls for
//! 300 s, so an answer within the tests' 15 s deadline is the immediate
//! one. A `/ws` bystander is served after every case.

#[path = "support/bystander.rs"]
mod bystander;
#[path = "support/gateway.rs"]
mod gateway_support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering;

use bystander::Bystander;
use gateway_support::*;
use serde_json::{json, Value};
use wsgate::config::Millis;
use wsgate::server::Server;

fn start() -> Server {
    start_gateway(|cfg| {
        cfg.timeouts.poll_wait = Millis(300_000);
        cfg.timeouts.poll_max_wait = Millis(300_000);
    })
}

/// The `errors` of a poll's answer: (channel, code) in order.
fn errors(answer: &Value) -> Vec<(String, u64)> {
    answer["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {answer}"))
        .iter()
        .map(|e| {
            (
                e["channel"].as_str().unwrap_or_default().to_string(),
                e["error"]["code"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn a_poll_whose_channels_are_all_refused_answers_at_once() {
    let server = start();
    let addr = server.local_addr();
    let mut bystander = Bystander::connect(addr, "bystander");

    for (target, want) in [
        // The default wait (300 s here).
        ("/poll?channel=bad%20name", vec![("bad name", 4)]),
        (
            "/poll?channel=a%20b&channel=c!&wait=0",
            vec![("a b", 4), ("c!", 4)],
        ),
        ("/poll?channel=%24server&wait=5", vec![("$server", 4)]),
        // With a user: its personal channel is subscribed, the rest refused.
        ("/poll?channel=no%20way&user=alice", vec![("no way", 4)]),
    ] {
        let r = http_get(addr, target);
        assert_eq!(r.status, 200, "{target}: {}", r.text());
        let v = r.json();
        let want: Vec<(String, u64)> = want.into_iter().map(|(c, n)| (c.into(), n)).collect();
        assert_eq!(errors(&v), want, "{target}: {v}");
        assert_eq!(v["messages"], json!([]), "{target}: {v}");
        assert!(v["cursor"].is_string(), "{target}: {v}");
        bystander.assert_served(target);
    }
    bystander.close();
    stop_gateway(server);
}

/// On one kept-alive connection: two refused polls and a health check,
/// pipelined, are answered in order (the second poll is read only once the
/// first is answered, and must not wait either).
#[test]
fn pipelined_refused_polls_are_answered_in_order() {
    let server = start();
    let addr = server.local_addr();
    let mut bystander = Bystander::connect(addr, "bystander");
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.write_all(
        b"GET /poll?channel=x%20y HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /poll?channel=z!&wait=0 HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    let first = read_response_for(&mut sock, &mut buf, "the first poll");
    assert_eq!(errors(&first.json()), vec![("x y".to_string(), 4)]);
    assert_eq!(first.header("connection"), Some("keep-alive"));
    let second = read_response_for(&mut sock, &mut buf, "the second poll");
    assert_eq!(errors(&second.json()), vec![("z!".to_string(), 4)]);
    let health = read_response_for(&mut sock, &mut buf, "the health check");
    assert_eq!(health.json()["status"], "ok");
    bystander.assert_served("pipelined polls");
    bystander.close();
    stop_gateway(server);
}

/// Some channels refused, one accepted: the poll answers at once with the
/// errors, and the accepted channel's subscription (its presence member)
/// is undone with the poll's end.
#[test]
fn a_partly_refused_poll_answers_at_once_and_leaves_nothing_behind() {
    let server = start();
    let addr = server.local_addr();
    let mut bystander = Bystander::connect(addr, "bystander");
    let r = http_get(addr, "/poll?channel=room&channel=bad%20one");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(errors(&v), vec![("bad one".to_string(), 4)], "{v}");
    wait_until(WAIT, "the poll's presence member to leave", || {
        api_presence(addr, "room")["clients"] == 0
    });
    // Publications on the channel reach nobody stale: the bystander's
    // stream goes on.
    api_publish(addr, "room", json!(1));
    bystander.assert_served("a partly refused poll");
    bystander.close();
    stop_gateway(server);
}

/// A held poll with a request pipelined behind it (in the same segment, and
/// in a later one): the request waits for the poll's answer, then is
/// answered on the same connection, in order; nothing is lost or answered
/// ahead of the poll.
#[test]
fn a_request_pipelined_behind_a_held_poll_is_answered_after_it() {
    let server = start();
    let addr = server.local_addr();
    let mut bystander = Bystander::connect(addr, "bystander");
    let mut sock = TcpStream::connect(addr).unwrap();
    // A short poll on a channel that exists, a health check behind it, in
    // one segment.
    sock.write_all(
        b"GET /poll?channel=held&wait=0 HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    let poll = read_response_for(&mut sock, &mut buf, "the short poll");
    let v = poll.json();
    assert_eq!(v["messages"], json!([]), "{v}");
    let health = read_response_for(&mut sock, &mut buf, "the health check");
    assert_eq!(health.json()["status"], "ok");
    // A held poll (300 s), a request sent after it is held: answered
    // once a publication ends the poll.
    let cursor = v["cursor"].as_str().unwrap().to_string();
    write_request(
        &mut sock,
        "GET",
        &format!("/poll?channel=held&cursor={cursor}"),
        &[],
        b"",
        false,
    );
    wait_until(WAIT, "the poll to be held", || {
        api_presence(addr, "held")["clients"] == 1
    });
    // Publish only once the server has read the pipelined request.
    let bytes_in = || server.shared().stats().bytes_in.load(Ordering::Relaxed);
    let before = bytes_in();
    let history = b"GET /api/history?channel=held HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    sock.write_all(history).unwrap();
    wait_until(WAIT, "the server to read the pipelined request", || {
        bytes_in() >= before + history.len() as u64
    });
    api_publish(addr, "held", json!("one"));
    let poll = read_response_for(&mut sock, &mut buf, "the held poll");
    let v = poll.json();
    assert_eq!(v["messages"][0]["data"], "one", "{v}");
    let history = read_response_for(&mut sock, &mut buf, "the history request");
    assert_eq!(history.json()["offset"], 1, "{}", history.text());
    bystander.assert_served("pipelined behind a poll");
    bystander.close();
    stop_gateway(server);
}
