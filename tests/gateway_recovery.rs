//! Recovery: a client that comes back with `since` gets exactly what it
//! missed, in order, then live publications; or it is told plainly that
//! the gap is lost (never a partial replay). Also `GET /api/history` and
//! `deliver_latest`.

#[path = "support/gateway.rs"]
mod gateway_support;

use std::time::Duration;

use gateway_support::*;
use serde_json::{json, Value};
use wsgate::config::ChannelOverrides;

fn publish_n(addr: std::net::SocketAddr, channel: &str, range: std::ops::RangeInclusive<u64>) {
    let items: Vec<Value> = range
        .map(|i| json!({ "channel": channel, "data": { "n": i } }))
        .collect();
    for chunk in items.chunks(40) {
        api_batch(addr, chunk);
    }
}

/// The next message must be publication `offset` of `channel` with `{"n":offset}`.
fn expect_pub(c: &mut Client, channel: &str, offset: u64) {
    assert_eq!(
        c.next(),
        json!({ "channel": channel, "offset": offset, "data": { "n": offset } }),
    );
}

#[test]
fn reconnect_with_since_replays_exactly_the_gap_then_live() {
    let server = start_gateway(|_| {});
    let addr = server.local_addr();

    let mut c = Client::connect(addr, "/ws");
    let r = c.subscribe("news");
    let epoch = r["epoch"].as_str().unwrap().to_string();
    publish_n(addr, "news", 1..=10);
    let mut last = 0;
    for i in 1..=10 {
        let (off, data) = c.next_publication("news");
        assert_eq!((off, data), (i, json!({ "n": i })));
        last = off;
    }
    c.close();

    publish_n(addr, "news", 11..=110);

    let mut c = Client::connect(addr, "/ws");
    let r = c.subscribe_since("news", &epoch, last);
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(r["epoch"], epoch.as_str(), "{r}");
    assert_eq!(r["offset"], 110, "{r}");
    for i in 11..=110 {
        expect_pub(&mut c, "news", i);
    }
    // Then live ones, with nothing in between.
    publish_n(addr, "news", 111..=112);
    expect_pub(&mut c, "news", 111);
    expect_pub(&mut c, "news", 112);
    c.assert_nothing_pending();

    // Since the top: recovered, nothing to replay.
    let mut d = Client::connect(addr, "/ws");
    let r = d.subscribe_since("news", &epoch, 112);
    assert_eq!(
        (r["recovered"].clone(), r["offset"].clone()),
        (json!(true), json!(112))
    );
    publish_n(addr, "news", 113..=113);
    expect_pub(&mut d, "news", 113);
    expect_pub(&mut c, "news", 113);
    c.close();
    d.close();
    stop_gateway(server);
}

#[test]
fn a_gap_longer_than_the_history_or_a_wrong_epoch_is_not_recovered() {
    let server = start_gateway(|cfg| cfg.channels.history_size = 50);
    let addr = server.local_addr();

    let mut c = Client::connect(addr, "/ws");
    let epoch = c.subscribe("short")["epoch"].as_str().unwrap().to_string();
    publish_n(addr, "short", 1..=10);
    for i in 1..=10 {
        expect_pub(&mut c, "short", i);
    }
    c.close();
    publish_n(addr, "short", 11..=110);

    // 100 missed, 50 kept: lost, and no replay at all.
    let mut c = Client::connect(addr, "/ws");
    let r = c.subscribe_since("short", &epoch, 10);
    assert_eq!(r["recovered"], false, "{r}");
    assert_eq!(r["offset"], 110, "the current position: {r}");
    assert_eq!(
        r["epoch"],
        epoch.as_str(),
        "history was trimmed, not lost: {r}"
    );
    publish_n(addr, "short", 111..=111);
    expect_pub(&mut c, "short", 111);

    // A gap within the 50 kept is recovered (offsets 62..=111 are held).
    let mut d = Client::connect(addr, "/ws");
    let r = d.subscribe_since("short", &epoch, 61);
    assert_eq!(r["recovered"], true, "{r}");
    for i in 62..=111 {
        expect_pub(&mut d, "short", i);
    }
    // One more than that is not.
    let mut e = Client::connect(addr, "/ws");
    let r = e.subscribe_since("short", &epoch, 60);
    assert_eq!(r["recovered"], false, "{r}");

    // A wrong epoch: not recovered, no replay.
    let mut w = Client::connect(addr, "/ws");
    let r = w.subscribe_since("short", "not-the-epoch", 100);
    assert_eq!(r["recovered"], false, "{r}");
    assert_eq!(r["epoch"], epoch.as_str(), "{r}");
    // An offset from the future: not recovered either.
    let mut f = Client::connect(addr, "/ws");
    let r = f.subscribe_since("short", &epoch, 1000);
    assert_eq!(r["recovered"], false, "{r}");

    publish_n(addr, "short", 112..=112);
    for x in [&mut c, &mut d, &mut e, &mut w, &mut f] {
        expect_pub(x, "short", 112);
        x.assert_nothing_pending();
    }
    for x in [c, d, e, w, f] {
        x.close();
    }
    stop_gateway(server);
}

fn offsets(page: &Value) -> Vec<u64> {
    page["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("no publications array: {page}"))
        .iter()
        .map(|p| {
            assert_eq!(p["data"]["n"], p["offset"], "{p}");
            p["offset"].as_u64().unwrap()
        })
        .collect()
}

#[test]
fn history_api_with_and_without_since() {
    let server = start_gateway(|cfg| cfg.channels.history_size = 50);
    let addr = server.local_addr();
    let epoch = api_publish(addr, "hist", json!({ "n": 1 }))["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    publish_n(addr, "hist", 2..=80);

    let get = |target: &str| {
        let r = http_get(addr, target);
        assert_eq!(r.status, 200, "{target}: {}", r.text());
        assert!(
            r.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{:?}",
            r.headers
        );
        r.json()
    };

    // Without since: the most recent ones held (default limit 100; 50 kept).
    let page = get("/api/history?channel=hist");
    assert_eq!(page["epoch"], epoch.as_str(), "{page}");
    assert_eq!(page["offset"], 80, "{page}");
    assert!(page.get("recovered").is_none(), "{page}");
    assert_eq!(offsets(&page), (31..=80).collect::<Vec<_>>());
    let p0 = &page["publications"][0];
    assert_eq!(
        *p0,
        json!({ "channel": "hist", "offset": 31, "data": { "n": 31 } })
    );

    // With a limit: the last N.
    let page = get("/api/history?channel=hist&limit=5");
    assert_eq!(offsets(&page), (76..=80).collect::<Vec<_>>());

    // With since: what came after, in order.
    let page = get(&format!("/api/history?channel=hist&since=70&epoch={epoch}"));
    assert_eq!(page["recovered"], true, "{page}");
    assert_eq!(offsets(&page), (71..=80).collect::<Vec<_>>());
    let page = get(&format!(
        "/api/history?channel=hist&since=40&epoch={epoch}&limit=3"
    ));
    assert_eq!(page["recovered"], true, "{page}");
    assert_eq!(offsets(&page), vec![41, 42, 43]);
    let page = get(&format!("/api/history?channel=hist&since=80&epoch={epoch}"));
    assert_eq!(page["recovered"], true, "{page}");
    assert_eq!(offsets(&page), Vec::<u64>::new());

    // Since a trimmed offset, or another epoch: not recovered, nothing.
    let page = get(&format!("/api/history?channel=hist&since=10&epoch={epoch}"));
    assert_eq!(page["recovered"], false, "{page}");
    assert_eq!(offsets(&page), Vec::<u64>::new());
    let page = get("/api/history?channel=hist&since=75&epoch=other");
    assert_eq!(page["recovered"], false, "{page}");
    assert_eq!(offsets(&page), Vec::<u64>::new());

    // A channel never published to: empty.
    let page = get("/api/history?channel=nothing-here");
    assert_eq!(page["offset"], 0, "{page}");
    assert_eq!(offsets(&page), Vec::<u64>::new());

    // since without epoch, or a non-numeric since: 400.
    for target in [
        "/api/history?channel=hist&since=3",
        &format!("/api/history?channel=hist&since=x&epoch={epoch}"),
        "/api/history",
    ] {
        let r = http_get(addr, target);
        assert_eq!(r.status, 400, "{target}: {}", r.text());
        assert_eq!(r.error_code(), 3, "{target}");
    }
    stop_gateway(server);
}

#[test]
fn deliver_latest_sends_the_last_publication_after_the_subscribe_reply() {
    let server = start_gateway(|cfg| {
        cfg.namespaces.insert(
            "ticker".into(),
            ChannelOverrides {
                deliver_latest: Some(true),
                ..Default::default()
            },
        );
    });
    let addr = server.local_addr();

    // Nothing published yet: nothing to deliver.
    let mut early = Client::connect(addr, "/ws");
    let r = early.subscribe("ticker:eth");
    assert_eq!(r["offset"], 0, "{r}");
    early.assert_nothing_pending();

    for i in 1..=3 {
        api_publish(addr, "ticker:btc", json!({ "n": i }));
        api_publish(addr, "plain", json!({ "n": i }));
    }

    let mut c = Client::connect(addr, "/ws");
    let id = c.fresh_id();
    c.send_json(&json!({ "id": id, "op": "subscribe", "channel": "ticker:btc" }));
    // The reply first, then the latest publication, then live ones.
    let r = c.next();
    assert_eq!(r["id"], id, "the reply comes first: {r}");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["offset"], 3, "{r}");
    expect_pub(&mut c, "ticker:btc", 3);
    api_publish(addr, "ticker:btc", json!({ "n": 4 }));
    expect_pub(&mut c, "ticker:btc", 4);

    // Outside the namespace: no latest.
    let r = c.subscribe("plain");
    assert_eq!(r["offset"], 3, "{r}");
    c.assert_nothing_pending();

    // With since, recovery applies instead of the latest.
    let btc_epoch = api_publish(addr, "ticker:btc", json!({ "n": 5 }))["epoch"].clone();
    expect_pub(&mut c, "ticker:btc", 5);
    let mut d = Client::connect(addr, "/ws");
    let r = d.subscribe_since("ticker:btc", btc_epoch.as_str().unwrap(), 5);
    assert_eq!(r["recovered"], true, "{r}");
    d.assert_nothing_pending();

    for x in [early, c, d] {
        x.close();
    }
    stop_gateway(server);
}

#[test]
fn recovery_survives_a_publisher_racing_the_resubscribe() {
    // Publications keep coming while the client reconnects: the replay and
    // the live stream join with no gap and no duplicate.
    let server = start_gateway(|_| {});
    let addr = server.local_addr();
    let mut c = Client::connect(addr, "/ws");
    let epoch = c.subscribe("race")["epoch"].as_str().unwrap().to_string();
    publish_n(addr, "race", 1..=5);
    for i in 1..=5 {
        expect_pub(&mut c, "race", i);
    }
    c.close();

    let publisher = std::thread::spawn(move || {
        for i in 6..=405u64 {
            api_publish(addr, "race", json!({ "n": i }));
            if i % 50 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(20));
    let mut c = Client::connect(addr, "/ws");
    let r = c.subscribe_since("race", &epoch, 5);
    assert_eq!(r["recovered"], true, "{r}");
    publisher.join().expect("publisher");
    for i in 6..=405 {
        expect_pub(&mut c, "race", i);
    }
    c.assert_nothing_pending();
    c.close();
    stop_gateway(server);
}
