//! The proxy protocol end to end, through `hooks::proxy::Proxy` (what the
//! sessions will call), against the test backend: what the backend
//! receives (Centrifugo's fields, forwarded headers and cookies), and the
//! decision each answer and each failure becomes. A bystander call of
//! another hook is answered alongside every failure.

#[path = "backend_util/mod.rs"]
mod backend_util;

use std::sync::mpsc::{channel, Receiver};
use std::sync::Mutex;
use std::time::Duration;

use backend_util::{Backend, DEADLINE};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use wsgate::config::Millis;
use wsgate::hooks::client::Failure;
use wsgate::hooks::config::ProxyConfig;
use wsgate::hooks::proxy::{
    Client, ConnectDecision, ConnectRefusal, ConnectRequest, Decision, OpRefusal, Proxy,
    PublishDecision, PublishRequest, RefreshDecision, RefreshRequest, RpcAnswer, RpcRequest,
    SubscribeDecision, SubscribeRequest, Transport, BACKEND_UNAVAILABLE,
};

struct Harness {
    proxy: Proxy<u32>,
    rx: Receiver<(u32, Decision)>,
}

fn start(backend: &Backend, tweak: impl FnOnce(&mut ProxyConfig)) -> Harness {
    let mut cfg = ProxyConfig {
        connect: backend.url("connect"),
        refresh: backend.url("refresh"),
        subscribe: backend.url("subscribe"),
        publish: backend.url("publish"),
        rpc: backend.url("rpc"),
        timeout: Millis(2_000),
        concurrency: 4,
        ..ProxyConfig::default()
    };
    tweak(&mut cfg);
    let (tx, rx) = channel();
    let tx = Mutex::new(tx);
    let proxy = Proxy::start(&cfg, move |ctx, d| {
        let _ = tx.lock().unwrap().send((ctx, d));
    })
    .expect("proxy threads");
    Harness { proxy, rx }
}

impl Harness {
    fn next(&self) -> (u32, Decision) {
        self.rx.recv_timeout(DEADLINE).expect("a decision in time")
    }

    fn connect(
        &self,
        ctx: u32,
        data: Option<&str>,
        headers: Vec<(String, String)>,
    ) -> ConnectDecision {
        let data = data.map(|d| RawValue::from_string(d.into()).unwrap());
        let req = ConnectRequest {
            client: Client::new("c-1", Transport::WebSocket),
            channels: &["news", "chat:1"],
            data: data.as_deref(),
            name: None,
            version: None,
        };
        self.proxy.connect(&req, headers, ctx).expect("queued");
        match self.next() {
            (c, Decision::Connect(d)) if c == ctx => d,
            other => panic!("{other:?}"),
        }
    }

    fn subscribe(&self, ctx: u32, channel: &str) -> SubscribeDecision {
        let req = SubscribeRequest {
            client: Client::new("c-1", Transport::Sse),
            user: "ann",
            channel,
            data: None,
            meta: None,
        };
        self.proxy.subscribe(&req, vec![], ctx).expect("queued");
        match self.next() {
            (c, Decision::Subscribe(d)) if c == ctx => d,
            other => panic!("{other:?}"),
        }
    }

    fn publish(&self, ctx: u32, data: &str) -> PublishDecision {
        let data = RawValue::from_string(data.into()).unwrap();
        let req = PublishRequest {
            client: Client::new("c-1", Transport::WebSocket),
            user: "ann",
            channel: "chat:1",
            data: &data,
            meta: None,
        };
        self.proxy.publish(&req, vec![], ctx).expect("queued");
        match self.next() {
            (c, Decision::Publish(d)) if c == ctx => d,
            other => panic!("{other:?}"),
        }
    }

    fn rpc(&self, ctx: u32, method: &str) -> RpcAnswer {
        let data = RawValue::from_string(format!(r#"{{"n":{ctx}}}"#)).unwrap();
        let req = RpcRequest {
            client: Client::new("c-1", Transport::Send),
            user: "ann",
            method,
            data: &data,
            meta: None,
        };
        self.proxy.rpc(&req, vec![], ctx).expect("queued");
        match self.next() {
            (c, Decision::Rpc(d)) if c == ctx => d,
            other => panic!("{other:?}"),
        }
    }

    /// A bystander: an rpc answered with its own data.
    fn bystander(&self, ctx: u32) {
        match self.rpc(ctx, "ping") {
            RpcAnswer::Data(d) => {
                let v: Value = serde_json::from_str(d.get()).unwrap();
                assert_eq!(v["echo"]["n"], ctx, "bystander {ctx}");
            }
            other => panic!("bystander {ctx}: {other:?}"),
        }
    }
}

fn body(backend: &Backend, hook: &str) -> Value {
    backend.log(hook).last().expect("a request")["body"].clone()
}

#[test]
fn connect_sends_centrifugo_fields_and_forwards_headers_and_cookies() {
    let backend = Backend::start();
    let h = start(&backend, |c| {
        c.forward_headers = vec!["Authorization".into(), "X-Request-Id".into()];
        c.forward_cookies = vec!["session".into()];
        c.static_headers = [("X-Wsgate-Key".to_owned(), "k1".to_owned())].into();
    });
    let headers = h.proxy.header_rules().select([
        ("Authorization", &b"Bearer abc"[..]),
        ("User-Agent", &b"browser"[..]),
        ("Cookie", &b"theme=dark; session=s3cr3t"[..]),
        ("Content-Length", &b"999"[..]),
    ]);
    let d = h.connect(1, Some(r#"{"user":"ann"}"#), headers);
    let ConnectDecision::Accept(c) = d else {
        panic!("{d:?}")
    };
    assert_eq!(c.user.as_deref(), Some("ann"));
    let log = backend.log("connect");
    assert_eq!(log.len(), 1);
    assert_eq!(
        log[0]["body"],
        json!({"client": "c-1", "transport": "websocket", "protocol": "json",
               "encoding": "json", "channels": ["news", "chat:1"], "data": {"user": "ann"}})
    );
    let hd = &log[0]["headers"];
    assert_eq!(hd["authorization"], "Bearer abc");
    assert_eq!(hd["cookie"], "session=s3cr3t", "only the named cookie");
    assert_eq!(hd["x-wsgate-key"], "k1");
    assert_eq!(hd["content-type"], "application/json");
    assert!(
        hd.get("user-agent").is_none_or(|ua| ua != "browser"),
        "not forwarded"
    );
    assert_ne!(hd["content-length"], "999", "framing is wsgate's own");
}

#[test]
fn connect_refusals_and_failures_have_their_status() {
    let mut backend = Backend::start();
    let h = start(&backend, |c| c.timeout = Millis(500));
    let refusal = |d: ConnectDecision| match d {
        ConnectDecision::Refuse(r) => r,
        d => panic!("{d:?}"),
    };
    backend.set(
        "connect",
        json!({"mode": "result", "result": {"user": "bob",
        "expire_at": 1900000000, "info": {"name": "Bob"}, "channels": ["news"],
        "subs": {"chat:1": {"info": {"role": "mod"}}}, "meta": {"tenant": 7}}, "count": 1}),
    );
    let ConnectDecision::Accept(c) = h.connect(1, None, vec![]) else {
        panic!()
    };
    assert_eq!(c.user.as_deref(), Some("bob"));
    assert_eq!(c.expire_at, Some(1_900_000_000));
    assert_eq!(c.info.unwrap().get(), r#"{"name":"Bob"}"#);
    assert_eq!(c.meta.unwrap().get(), r#"{"tenant":7}"#);
    let chans: Vec<_> = c
        .channels
        .iter()
        .map(|(n, i)| (n.as_str(), i.as_ref().map(|i| i.get().to_owned())))
        .collect();
    assert_eq!(
        chans,
        [
            ("news", None),
            ("chat:1", Some(r#"{"role":"mod"}"#.to_owned()))
        ]
    );

    let cases: Vec<(Value, u16, Option<u16>)> = vec![
        (
            json!({"mode": "error", "error": {"code": 403, "message": "banned"}}),
            403,
            None,
        ),
        (
            json!({"mode": "error", "error": {"code": 1001, "message": "app"}}),
            403,
            None,
        ),
        (
            json!({"mode": "disconnect", "disconnect": {"code": 4501, "reason": "unauthorized"}}),
            403,
            Some(4501),
        ),
        (
            json!({"mode": "disconnect", "disconnect": {"code": 4100, "reason": "later"}}),
            503,
            Some(4100),
        ),
        (json!({"mode": "status", "status": 401}), 401, None),
        (json!({"mode": "status", "status": 403}), 403, None),
        (json!({"mode": "status", "status": 500}), 503, None),
        (json!({"mode": "badjson"}), 503, None),
        (json!({"mode": "hang"}), 503, None),
    ];
    for (i, (b, status, close)) in cases.into_iter().enumerate() {
        let mut b = b;
        b["count"] = json!(1);
        backend.set("connect", b.clone());
        let r = refusal(h.connect(10 + i as u32, None, vec![]));
        assert_eq!(r.http_status(), status, "{b}");
        assert_eq!(r.close().map(|c| c.0), close, "{b}");
        h.bystander(100 + i as u32);
    }
    // Down: refused with 503 and code 14 in the body, never opened.
    backend.kill();
    let r = refusal(h.connect(30, None, vec![]));
    assert!(
        matches!(&r, ConnectRefusal::Unavailable(Failure::Connect(_))),
        "{r:?}"
    );
    assert_eq!(r.http_status(), 503);
    assert_eq!(r.error_json()["error"]["code"], BACKEND_UNAVAILABLE);
    backend.restart();
    assert!(matches!(
        h.connect(31, None, vec![]),
        ConnectDecision::Accept(_)
    ));
    let st = &h.proxy.stats()[0];
    assert_eq!(
        st.failures.status, 1,
        "401 and 403 are answers, 500 a failure"
    );
    assert_eq!(
        (
            st.failures.bad_answer,
            st.failures.timeout,
            st.failures.connect
        ),
        (1, 1, 1)
    );
}

#[test]
fn subscribe_publish_and_rpc_decisions() {
    let backend = Backend::start();
    let h = start(&backend, |_| {});
    // Subscribe: allowed with info; refused with the backend's code.
    backend.set(
        "subscribe",
        json!({"mode": "result", "result": {"info": {"role": "mod"},
        "data": {"welcome": true}, "override": {"join_leave": {"value": true}}}, "count": 1}),
    );
    let SubscribeDecision::Allow(g) = h.subscribe(1, "chat:1") else {
        panic!()
    };
    assert_eq!(g.info.unwrap().get(), r#"{"role":"mod"}"#);
    assert_eq!(g.data.unwrap().get(), r#"{"welcome":true}"#);
    assert_eq!(g.join_leave, Some(true));
    assert_eq!(
        body(&backend, "subscribe"),
        json!({"client": "c-1", "transport": "sse", "protocol": "json", "encoding": "json",
               "user": "ann", "channel": "chat:1"})
    );
    backend.set(
        "subscribe",
        json!({"mode": "error", "error": {"code": 403, "message": "not a member"}, "count": 1}),
    );
    let SubscribeDecision::Refuse(OpRefusal::Backend(e)) = h.subscribe(2, "chat:2") else {
        panic!()
    };
    assert_eq!((e.code, e.message.as_str()), (403, "not a member"));
    backend.set(
        "subscribe",
        json!({"mode": "disconnect", "disconnect": {"code": 4502, "reason": "go"}, "count": 1}),
    );
    assert!(matches!(h.subscribe(3, "chat:3"), SubscribeDecision::Disconnect(d) if d.code == 4502));

    // Publish: allowed as is, replaced, refused.
    assert_eq!(
        h.publish(4, r#"{"text":"hi"}"#),
        PublishDecision::Allow {
            skip_history: false,
            idempotency_key: None
        }
    );
    assert_eq!(body(&backend, "publish")["data"], json!({"text": "hi"}));
    backend.set("publish", json!({"mode": "result", "result": {"data": {"text": "h*"}, "skip_history": true}, "count": 1}));
    let PublishDecision::Replace {
        data, skip_history, ..
    } = h.publish(5, r#"{"text":"hell"}"#)
    else {
        panic!()
    };
    assert_eq!((data.get(), skip_history), (r#"{"text":"h*"}"#, true));
    backend.set("publish", json!({"mode": "error", "error": {"code": 1001, "message": "spam", "temporary": true}, "count": 1}));
    let PublishDecision::Refuse(r) = h.publish(6, "1") else {
        panic!()
    };
    assert_eq!((r.code(), r.temporary()), (1001, true));

    // Rpc: data back; a failure is code 14.
    h.bystander(7);
    assert_eq!(body(&backend, "rpc")["method"], "ping");
    for (i, b) in [
        json!({"mode": "status", "status": 502}),
        json!({"mode": "badjson"}),
        json!({"mode": "raw", "body": "{\"error\":{\"code\":3,\"message\":\"mimics wsgate\"}}"}),
        json!({"mode": "huge", "size": 2 << 20}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut b = b;
        b["count"] = json!(1);
        backend.set("rpc", b.clone());
        let RpcAnswer::Refuse(r) = h.rpc(10 + i as u32, "m") else {
            panic!("{b}")
        };
        assert_eq!(
            (r.code(), r.http_status()),
            (14, 502),
            "{b}: {}",
            r.message()
        );
        assert!(r.temporary());
        h.bystander(20 + i as u32);
    }
}

#[test]
fn refresh_prolongs_or_expires() {
    let backend = Backend::start();
    let h = start(&backend, |_| {});
    let req = RefreshRequest {
        client: Client::new("c-9", Transport::Poll),
        user: "ann",
        meta: Some(&RawValue::from_string(r#"{"tenant":7}"#.into()).unwrap()),
    };
    h.proxy.refresh(&req, vec![], 1).unwrap();
    let (_, d) = h.next();
    assert!(
        matches!(
            d,
            Decision::Refresh(RefreshDecision::Prolong {
                expire_at: Some(_),
                ..
            })
        ),
        "{d:?}"
    );
    assert_eq!(body(&backend, "refresh")["meta"], json!({"tenant": 7}));
    backend.set(
        "refresh",
        json!({"mode": "result", "result": {"expired": true}, "count": 1}),
    );
    h.proxy.refresh(&req, vec![], 2).unwrap();
    assert_eq!(h.next().1, Decision::Refresh(RefreshDecision::Expired));
    backend.set(
        "refresh",
        json!({"mode": "status", "status": 503, "count": 1}),
    );
    h.proxy.refresh(&req, vec![], 3).unwrap();
    assert_eq!(
        h.next().1,
        Decision::Refresh(RefreshDecision::Retry(Failure::Status(503))),
        "kept, asked again later"
    );
}

#[test]
fn a_full_queue_is_answered_at_once_with_code_14() {
    let backend = Backend::start();
    backend.set("rpc", json!({"mode": "slow", "delay_ms": 300}));
    let h = start(&backend, |c| {
        c.concurrency = 1;
        c.queue_size = 2;
    });
    let data = RawValue::from_string("{}".into()).unwrap();
    let req = RpcRequest {
        client: Client::new("c-1", Transport::WebSocket),
        user: "",
        method: "m",
        data: &data,
        meta: None,
    };
    let mut refused = Vec::new();
    for i in 0..10 {
        if let Err((ctx, d)) = h.proxy.rpc(&req, vec![], i) {
            refused.push((ctx, d));
        }
    }
    assert!(
        refused.len() >= 7,
        "at most one in flight and two queued: {}",
        refused.len()
    );
    for (ctx, d) in &refused {
        assert!(*ctx >= 1);
        let Decision::Rpc(RpcAnswer::Refuse(OpRefusal::Unavailable(Failure::Overloaded))) = d
        else {
            panic!("{d:?}")
        };
    }
    // Every queued call is answered.
    for _ in 0..(10 - refused.len()) {
        let (_, d) = h.next();
        assert!(matches!(d, Decision::Rpc(RpcAnswer::Data(_))), "{d:?}");
    }
    assert!(
        h.rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "nothing answered twice"
    );
}
