//! `[proxy]` and `[webhooks]`: where the application is, and the limits of
//! the calls to it. Every key has a default; a hook with no URL is off.
//!
//! ```toml
//! [proxy]
//! connect = "http://app:3000/wsgate/connect"   # each hook: a URL, or "" (off)
//! refresh = ""
//! subscribe = "http://app:3000/wsgate/subscribe"   # for namespaces with subscribe_proxy = true
//! publish = ""                                     # for namespaces with publish_proxy = true
//! rpc = "http://app:3000/wsgate/rpc"
//! timeout = "1s"              # a call, queueing included; then error 14 / HTTP 503
//! concurrency = 16            # calls in flight per node (threads, keep-alive connections)
//! queue_size = 4096           # calls waiting; beyond: refused at once (error 14)
//! queue_bytes = 67108864      # bytes of requests (bodies, headers) waiting; beyond: refused at once
//! max_answer = 1048576        # answer body bytes; beyond: a failure (error 14)
//! forward_headers = ["Authorization", "User-Agent", "X-Forwarded-For"]
//! forward_cookies = ["session"]   # only these cookies of Cookie (unless Cookie is forwarded whole)
//! static_headers = { "X-Wsgate-Key" = "…" }   # sent with every call
//!
//! [webhooks]
//! url = "http://app:3000/wsgate/events"
//! secret_file = "/etc/wsgate/webhook.secret"  # or secret = "…": HMAC-SHA256 key, at least 16 bytes
//! events = ["channel_occupied", "channel_vacated", "client_disconnected"]
//! timeout = "5s"
//! batch_max = 100             # events per POST
//! batch_delay = "50ms"        # wait this long after the first event for others
//! queue_size = 100000         # events waiting; beyond: dropped and counted
//! retry_min = "500ms"         # backoff after a failed POST: exponential, full jitter
//! retry_max = "30s"
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Millis};

/// `[proxy]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Asked when a client connects without a token.
    pub connect: String,
    /// Asked when a connection's `expire_at` comes.
    pub refresh: String,
    /// Asked on subscribes in namespaces with `subscribe_proxy = true`.
    pub subscribe: String,
    /// Asked on client publishes in namespaces with `publish_proxy = true`.
    pub publish: String,
    /// Answers the `rpc` op.
    pub rpc: String,
    /// From a call's submission to its complete answer.
    pub timeout: Millis,
    /// Calls in flight at once per node.
    pub concurrency: usize,
    /// Calls waiting for a free slot.
    pub queue_size: usize,
    /// Bytes of requests (bodies and headers) waiting.
    pub queue_bytes: usize,
    /// Largest answer body read.
    pub max_answer: usize,
    /// Request headers of the client copied to every call (by name, any
    /// case).
    pub forward_headers: Vec<String>,
    /// Cookies of the client copied (in one `Cookie` header) to every call.
    pub forward_cookies: Vec<String>,
    /// Headers added to every call (a shared secret, say, so that the
    /// backend knows the call is wsgate's).
    pub static_headers: BTreeMap<String, String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect: String::new(),
            refresh: String::new(),
            subscribe: String::new(),
            publish: String::new(),
            rpc: String::new(),
            timeout: Millis(1_000),
            concurrency: 16,
            queue_size: 4096,
            queue_bytes: 64 << 20,
            max_answer: 1 << 20,
            forward_headers: Vec::new(),
            forward_cookies: Vec::new(),
            static_headers: BTreeMap::new(),
        }
    }
}

/// The events a webhook can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A channel got its first subscriber (cluster-wide with Redis).
    ChannelOccupied,
    /// A channel lost its last subscriber (on every node).
    ChannelVacated,
    /// A member joined a channel's presence.
    MemberAdded,
    /// A member left a channel's presence.
    MemberRemoved,
    /// A connection closed (with its user, client id and close code).
    ClientDisconnected,
    /// A client published (namespaces with `client_events = true`).
    ClientEvent,
    /// A user's first connection anywhere.
    UserOnline,
    /// A user's last connection gone (or its presence expired).
    UserOffline,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::ChannelOccupied,
        EventKind::ChannelVacated,
        EventKind::MemberAdded,
        EventKind::MemberRemoved,
        EventKind::ClientDisconnected,
        EventKind::ClientEvent,
        EventKind::UserOnline,
        EventKind::UserOffline,
    ];

    /// The `name` of the event in a batch.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::ChannelOccupied => "channel_occupied",
            EventKind::ChannelVacated => "channel_vacated",
            EventKind::MemberAdded => "member_added",
            EventKind::MemberRemoved => "member_removed",
            EventKind::ClientDisconnected => "client_disconnected",
            EventKind::ClientEvent => "client_event",
            EventKind::UserOnline => "user_online",
            EventKind::UserOffline => "user_offline",
        }
    }
}

/// `[webhooks]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Where batches are POSTed; "" turns webhooks off.
    pub url: String,
    /// The HMAC-SHA256 key of `X-Wsgate-Signature` (prefer `secret_file`:
    /// this one shows in `--print-config`).
    pub secret: String,
    /// A file holding the key (a trailing newline is ignored).
    pub secret_file: String,
    /// Which events are sent.
    pub events: Vec<EventKind>,
    /// One POST, start to answer.
    pub timeout: Millis,
    /// Most events in one POST.
    pub batch_max: usize,
    /// After the first event of a batch, wait this long for others.
    pub batch_delay: Millis,
    /// Events waiting; beyond, new ones are dropped (and counted).
    pub queue_size: usize,
    /// Delay cap after the first failed POST, doubled per failure up to
    /// `retry_max`; each delay is random below its cap (full jitter).
    pub retry_min: Millis,
    pub retry_max: Millis,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            url: String::new(),
            secret: String::new(),
            secret_file: String::new(),
            events: Vec::new(),
            timeout: Millis(5_000),
            batch_max: 100,
            batch_delay: Millis(50),
            queue_size: 100_000,
            retry_min: Millis(500),
            retry_max: Millis(30_000),
        }
    }
}

/// Shortest webhook secret accepted.
pub const MIN_SECRET: usize = 16;

impl WebhooksConfig {
    /// The signing key: `secret`, or the content of `secret_file`.
    pub fn key(&self) -> Result<Vec<u8>, String> {
        if !self.secret_file.is_empty() {
            let s = std::fs::read(&self.secret_file)
                .map_err(|e| format!("webhooks.secret_file {}: {e}", self.secret_file))?;
            let end = s
                .iter()
                .rposition(|&b| b != b'\n' && b != b'\r')
                .map_or(0, |i| i + 1);
            return Ok(s[..end].to_vec());
        }
        Ok(self.secret.as_bytes().to_vec())
    }
}

/// Headers that must not be forwarded: they frame the request to the
/// backend (a client's `Content-Length` would smuggle a second request
/// into a keep-alive connection) or belong to the client's own hop.
const NOT_FORWARDED: [&str; 12] = [
    "content-length",
    "transfer-encoding",
    "content-type",
    "connection",
    "keep-alive",
    "upgrade",
    "host",
    "te",
    "trailer",
    "expect",
    "proxy-connection",
    "sec-websocket-key",
];

fn check_url(what: &str, url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Ok(());
    }
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| format!("{what} = {url:?}: not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(format!(
                "{what} = {url:?}: must start with http:// or https://"
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{what} = {url:?}: no host"));
    }
    Ok(())
}

/// A header name: an RFC 9110 token.
fn token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Check `[proxy]`, `[webhooks]` and the namespaces' proxy flags against
/// each other and the rest of the configuration (called by
/// [`Config::validate`]).
pub fn validate(cfg: &Config) -> Result<(), String> {
    let p = &cfg.proxy;
    for (what, url) in urls(cfg) {
        check_url(what, url)?;
    }
    if p.timeout.0 == 0 {
        return Err("proxy.timeout must be positive".into());
    }
    if !(1..=1024).contains(&p.concurrency) {
        return Err("proxy.concurrency must be within 1..=1024".into());
    }
    if p.queue_size == 0 || p.queue_bytes == 0 {
        return Err("proxy.queue_size and proxy.queue_bytes must be positive".into());
    }
    if p.queue_bytes < cfg.limits.max_message {
        return Err(
            "proxy.queue_bytes must be at least limits.max_message (a proxied publish of that \
             size would always be refused)"
                .into(),
        );
    }
    if p.max_answer < 1024 {
        return Err("proxy.max_answer must be at least 1024".into());
    }
    for h in &p.forward_headers {
        if !token(h) {
            return Err(format!("proxy.forward_headers: {h:?} is not a header name"));
        }
        if NOT_FORWARDED.contains(&h.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "proxy.forward_headers: {h} frames the request to the backend and cannot be forwarded"
            ));
        }
    }
    for c in &p.forward_cookies {
        if !token(c) {
            return Err(format!("proxy.forward_cookies: {c:?} is not a cookie name"));
        }
    }
    for (k, v) in &p.static_headers {
        if !token(k) || NOT_FORWARDED.contains(&k.to_ascii_lowercase().as_str()) {
            return Err(format!("proxy.static_headers: {k:?} cannot be set"));
        }
        if v.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
            return Err(format!("proxy.static_headers.{k}: a control character"));
        }
    }
    if !p.refresh.is_empty() && p.connect.is_empty() {
        return Err(
            "proxy.refresh needs proxy.connect (only connections the connect proxy admitted \
             have an expire_at to refresh)"
                .into(),
        );
    }
    if !p.connect.is_empty() && cfg.auth.required == Some(true) {
        return Err(
            "proxy.connect with auth.required = true: a connection without a token goes to \
             the connect proxy, so it cannot also be required to carry one"
                .into(),
        );
    }
    // Each namespace as resolved (its overrides on [channels]).
    let policy = crate::config::ChannelPolicy::new(cfg);
    let scopes = std::iter::once(("channels".to_owned(), &cfg.channels)).chain(
        cfg.namespaces.keys().map(|ns| {
            (
                format!("namespaces.{ns}"),
                policy.options(&format!("{ns}:_")),
            )
        }),
    );
    for (scope, o) in scopes {
        let (sub, publ, client_publish) = (o.subscribe_proxy, o.publish_proxy, o.client_publish);
        if sub && p.subscribe.is_empty() {
            return Err(format!(
                "{scope}: subscribe_proxy = true needs proxy.subscribe (a URL)"
            ));
        }
        if publ && p.publish.is_empty() {
            return Err(format!(
                "{scope}: publish_proxy = true needs proxy.publish (a URL)"
            ));
        }
        if publ && !client_publish {
            return Err(format!(
                "{scope}: publish_proxy = true with client_publish = false: no client publish \
                 would reach the proxy"
            ));
        }
    }
    let w = &cfg.webhooks;
    if !w.url.is_empty() {
        if !w.secret.is_empty() && !w.secret_file.is_empty() {
            return Err("webhooks: set secret or secret_file, not both".into());
        }
        if w.key()?.len() < MIN_SECRET {
            return Err(format!(
                "webhooks.url needs a secret of at least {MIN_SECRET} bytes (webhooks.secret \
                 or webhooks.secret_file): unsigned events could be forged"
            ));
        }
        if w.events.is_empty() {
            return Err("webhooks.url needs webhooks.events (which events to send)".into());
        }
        if w.timeout.0 == 0 || w.retry_min.0 == 0 || w.retry_max.0 < w.retry_min.0 {
            return Err(
                "webhooks.timeout and retry_min must be positive, retry_max at least retry_min"
                    .into(),
            );
        }
        if !(1..=10_000).contains(&w.batch_max) || w.queue_size == 0 {
            return Err("webhooks.batch_max must be within 1..=10000, queue_size positive".into());
        }
    }
    Ok(())
}

/// Every hook's URL, with its key.
fn urls(cfg: &Config) -> [(&'static str, &str); 6] {
    let p = &cfg.proxy;
    [
        ("proxy.connect", &p.connect),
        ("proxy.refresh", &p.refresh),
        ("proxy.subscribe", &p.subscribe),
        ("proxy.publish", &p.publish),
        ("proxy.rpc", &p.rpc),
        ("webhooks.url", &cfg.webhooks.url),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<Config, String> {
        Config::from_toml(toml)
    }

    #[test]
    fn defaults_are_off_and_valid() {
        let c = Config::default();
        assert_eq!(c.proxy, ProxyConfig::default());
        assert!(validate(&c).is_ok());
    }

    #[test]
    fn a_full_configuration_reads_and_prints_back() {
        let c = parse(
            r#"
            [proxy]
            connect = "http://127.0.0.1:3000/connect"
            refresh = "http://127.0.0.1:3000/refresh"
            subscribe = "https://app.example/sub"
            publish = "http://127.0.0.1:3000/pub"
            rpc = "http://127.0.0.1:3000/rpc"
            timeout = "250ms"
            concurrency = 4
            forward_headers = ["Authorization", "X-Request-Id"]
            forward_cookies = ["session"]
            static_headers = { "X-Wsgate-Key" = "k" }
            [namespaces.chat]
            subscribe_proxy = true
            publish_proxy = true
            [webhooks]
            url = "http://127.0.0.1:3000/events"
            secret = "0123456789abcdef"
            events = ["channel_occupied", "client_event", "user_offline"]
            batch_delay = "10ms"
            "#,
        )
        .unwrap();
        assert_eq!(c.proxy.timeout, Millis(250));
        assert_eq!(c.proxy.static_headers["X-Wsgate-Key"], "k");
        assert_eq!(
            c.webhooks.events,
            [
                EventKind::ChannelOccupied,
                EventKind::ClientEvent,
                EventKind::UserOffline
            ]
        );
        let policy = crate::config::ChannelPolicy::new(&c);
        assert!(policy.options("chat:1").subscribe_proxy);
        assert!(policy.options("chat:1").publish_proxy);
        assert!(!policy.options("news").subscribe_proxy);
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn conflicting_or_unsafe_settings_are_refused() {
        for (toml, says) in [
            ("[proxy]\nconnect = \"ftp://x/\"", "http://"),
            ("[proxy]\nconnect = \"not a url\"", "not a URL"),
            ("[proxy]\nrpc = \"http:///path\"", "URL"),
            ("[proxy]\ntimeout = \"0s\"", "timeout"),
            ("[proxy]\nconcurrency = 0", "concurrency"),
            ("[proxy]\nmax_answer = 10", "max_answer"),
            ("[proxy]\nqueue_bytes = 1000", "limits.max_message"),
            ("[proxy]\nforward_headers = [\"Content-Length\"]", "frames the request"),
            ("[proxy]\nforward_headers = [\"transfer-encoding\"]", "frames the request"),
            ("[proxy]\nforward_headers = [\"a b\"]", "header name"),
            ("[proxy]\nforward_cookies = [\"a;b\"]", "cookie name"),
            ("[proxy]\nstatic_headers = { \"Host\" = \"x\" }", "cannot be set"),
            ("[proxy]\nstatic_headers = { \"X-K\" = \"a\\r\\nX-Evil: 1\" }", "control"),
            ("[proxy]\nrefresh = \"http://a/r\"", "needs proxy.connect"),
            (
                "[proxy]\nconnect = \"http://a/c\"\n[auth]\njwt_hs256_secret = \"0123456789abcdef0123456789abcdef\"\nrequired = true",
                "auth.required",
            ),
            ("[namespaces.chat]\nsubscribe_proxy = true", "chat: subscribe_proxy"),
            ("[channels]\npublish_proxy = true", "channels: publish_proxy"),
            (
                "[proxy]\npublish = \"http://a/p\"\n[namespaces.chat]\npublish_proxy = true\nclient_publish = false",
                "client_publish = false",
            ),
            ("[webhooks]\nurl = \"http://a/e\"\nevents = [\"channel_occupied\"]", "secret"),
            (
                "[webhooks]\nurl = \"http://a/e\"\nsecret = \"short\"\nevents = [\"channel_occupied\"]",
                "secret",
            ),
            ("[webhooks]\nurl = \"http://a/e\"\nsecret = \"0123456789abcdef\"", "events"),
            (
                "[webhooks]\nurl = \"http://a/e\"\nsecret = \"0123456789abcdef\"\nevents = [\"channel_occupied\"]\nretry_min = \"5s\"\nretry_max = \"1s\"",
                "retry_max",
            ),
        ] {
            let e = parse(toml).expect_err(toml);
            assert!(e.contains(says), "{toml:?}: {e}");
        }
        assert!(parse("[webhooks]\nevents = [\"channel_exploded\"]").is_err());
        assert!(
            parse("[proxy]\nconect = \"http://a/\"").is_err(),
            "unknown key"
        );
    }

    #[test]
    fn a_namespace_may_turn_the_default_off() {
        let c = parse(
            "[proxy]\nsubscribe = \"http://a/s\"\n[channels]\nsubscribe_proxy = true\n[namespaces.public]\nsubscribe_proxy = false",
        )
        .unwrap();
        let policy = crate::config::ChannelPolicy::new(&c);
        assert!(policy.options("chat").subscribe_proxy);
        assert!(!policy.options("public:x").subscribe_proxy);
    }

    #[test]
    fn secret_file_is_read_without_its_newline() {
        let path = std::env::temp_dir().join(format!("wsgate-secret-{}", std::process::id()));
        std::fs::write(&path, "0123456789abcdefXYZ\n").unwrap();
        let w = WebhooksConfig {
            secret_file: path.display().to_string(),
            ..WebhooksConfig::default()
        };
        assert_eq!(w.key().unwrap(), b"0123456789abcdefXYZ");
        std::fs::remove_file(&path).unwrap();
        assert!(w.key().is_err(), "a missing file is an error");
    }
}
