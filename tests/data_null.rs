//! `"data": null` is data (issue 12, item 3): the JSON `null` is accepted
//! on every path that publishes (WebSocket op, `POST /send`, the API, an
//! API batch) and delivered as `"data":null`, on the memory broker and on
//! Redis; a missing `data` is still refused (code 3) on all of them.

#[path = "support/gateway.rs"]
mod gateway_support;
mod redis_util;

use gateway_support::{http_get, http_post_json, start_gateway, stop_gateway, Client};
use serde_json::{json, Value};
use wsgate::server::Server;

fn run(server: Server) {
    let addr = server.local_addr();
    let mut sub = Client::connect(addr, "/ws?channel=n&user=nu");
    let _ = sub.connect_reply("n");
    let _ = sub.connect_reply("$user:nu");
    let mut bystander = Client::connect(addr, "/ws?channel=other");
    let _ = bystander.connect_reply("other");

    // The WebSocket op.
    let mut publisher = Client::connect(addr, "/ws");
    let r = publisher.call(json!({"op": "publish", "channel": "n", "data": null}));
    assert_eq!(
        (r["ok"].clone(), r["offset"].clone()),
        (json!(true), json!(1)),
        "{r}"
    );
    // `POST /send`.
    let r = http_post_json(
        addr,
        "/send",
        &json!({"id": 7, "op": "publish", "channel": "n", "data": null}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["offset"], 2);
    // The API, one and batched.
    let r = http_post_json(addr, "/api/publish", &json!({"channel": "n", "data": null}));
    assert_eq!(
        (r.status, r.json()["offset"].clone()),
        (200, json!(3)),
        "{}",
        r.text()
    );
    let r = http_post_json(
        addr,
        "/api/publish",
        &json!([{"channel": "n", "data": null}, {"channel": "n", "data": [null]}]),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()[1]["offset"], 5);
    let r = http_post_json(addr, "/api/publish", &json!({"user": "nu", "data": null}));
    assert_eq!(r.status, 200, "{}", r.text());

    for (off, data) in [
        (1, Value::Null),
        (2, Value::Null),
        (3, Value::Null),
        (4, Value::Null),
        (5, json!([null])),
    ] {
        assert_eq!(sub.next_publication("n"), (off, data));
    }
    assert_eq!(sub.next_publication("$user:nu"), (1, Value::Null));
    let page = http_get(addr, "/api/history?channel=n").json();
    assert_eq!(
        page["publications"][0],
        json!({"channel": "n", "offset": 1, "data": null})
    );

    // A missing `data` is missing everywhere.
    let r = publisher.call(json!({"op": "publish", "channel": "n"}));
    assert_eq!(r["error"]["code"], 3, "{r}");
    let r = http_post_json(addr, "/send", &json!({"op": "publish", "channel": "n"}));
    assert_eq!((r.status, r.error_code()), (400, 3), "{}", r.text());
    let r = http_post_json(addr, "/api/publish", &json!({"channel": "n"}));
    assert_eq!((r.status, r.error_code()), (400, 3), "{}", r.text());
    sub.assert_nothing_pending();

    // The bystander is served throughout.
    http_post_json(
        addr,
        "/api/publish",
        &json!({"channel": "other", "data": 1}),
    );
    assert_eq!(bystander.next_publication("other"), (1, json!(1)));
    bystander.assert_alive();
    for c in [sub, bystander, publisher] {
        c.close();
    }
    stop_gateway(server);
}

#[test]
fn null_data_is_published_on_every_path_memory() {
    run(start_gateway(|_| {}));
}

#[test]
fn null_data_is_published_on_every_path_redis() {
    let redis = redis_util::RedisServer::start();
    run(redis_util::node(&redis.url(), |_| {}));
}
