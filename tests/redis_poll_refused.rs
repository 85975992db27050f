//! With Redis, subscribes are answered after a round trip, so a long-poll
//! with one channel refused answers (at once, with the error) before its
//! other channels' subscribe answers arrive. Those answers then find the
//! connection doing something else (here: kept alive for its next
//! request): they are undone, not dropped, so no presence member or
//! subscription is left behind, and the next request on the connection
//! gets its own answer. A `/ws` bystander is served throughout.

mod redis_util;

#[path = "support/bystander.rs"]
mod bystander;
#[path = "support/gateway.rs"]
mod gateway_support;

use std::net::TcpStream;

use bystander::Bystander;
use gateway_support::{api_presence, read_response, wait_until, write_request, Client, WAIT};
use redis_util::{node, RedisServer};
use wsgate::config::Millis;

#[test]
fn late_subscribe_answers_of_an_answered_poll_are_undone() {
    let redis = RedisServer::start();
    let server = node(&redis.url(), |cfg| {
        cfg.timeouts.poll_wait = Millis(300_000);
        cfg.timeouts.poll_max_wait = Millis(300_000);
    });
    let addr = server.local_addr();
    let mut bystander = Bystander::connect(addr, "bystander");
    let mut kept = Vec::new();
    for i in 0..4 {
        let mut sock = TcpStream::connect(addr).unwrap();
        write_request(
            &mut sock,
            "GET",
            "/poll?channel=room&channel=bad%20one",
            &[],
            b"",
            false,
        );
        let mut buf = Vec::new();
        let r = read_response(&mut sock, &mut buf);
        assert_eq!(r.status, 200, "poll {i}: {}", r.text());
        let v = r.json();
        assert_eq!(v["errors"][0]["channel"], "bad one", "poll {i}: {v}");
        assert_eq!(r.header("connection"), Some("keep-alive"));
        kept.push(sock);
    }
    // A subscribe after the polls' is answered after theirs (the hub
    // answers a channel's waiting subscribes in order): once it is, the
    // polls' answers have all been sent. Then the only member of the
    // channel is this one.
    let mut observer = Client::connect(addr, "/ws");
    observer.subscribe("room");
    wait_until(WAIT, "the polls' members to leave room", || {
        api_presence(addr, "room")["clients"] == 1
    });
    bystander.assert_served("the polls");
    // The kept connections serve their next request with its own answer.
    for (i, mut sock) in kept.into_iter().enumerate() {
        write_request(
            &mut sock,
            "GET",
            "/api/presence?channel=room",
            &[],
            b"",
            true,
        );
        let r = read_response(&mut sock, &mut Vec::new());
        assert_eq!(r.status, 200, "connection {i}: {}", r.text());
        assert_eq!(r.json()["clients"], 1, "connection {i}: {}", r.text());
    }
    bystander.assert_served("the next requests");
    observer.close();
    bystander.close();
    server.stop().expect("workers end cleanly");
}
