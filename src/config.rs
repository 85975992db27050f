//! The gateway's configuration: a TOML file, overridden by flags, shown by
//! `wsgate --print-config`. Every option has a default, so an empty file (or
//! none) runs a single node with no Redis.
//!
//! Durations are strings with a unit: `"250ms"`, `"10s"`, `"5m"` (a bare
//! number is seconds).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::pubsub::history::HistoryLimits;

pub use crate::base::time::{format_duration_ms, parse_duration_ms, Millis};

/// What happens when a connection's out queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowConsumer {
    /// Close with 4001 "slow consumer"; the client reconnects and recovers.
    Close,
    /// Drop the publications that do not fit, unsubscribe the channel and
    /// tell the client the last offset it was sent, so it can resubscribe
    /// with `since` and recover.
    Drop,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (WebSocket, SSE, long-poll, API, metrics);
    /// it speaks TLS when `[tls]` names a certificate.
    pub listen: SocketAddr,
    /// With TLS: a second listener speaking plain HTTP and WebSocket (for
    /// a health checker on the host); none by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_plain: Option<SocketAddr>,
    /// Event-loop threads (0: one per core).
    pub workers: usize,
    /// Connections held at once by the process; beyond it: HTTP 503.
    pub max_connections: usize,
    /// Serve the built-in `/echo` route.
    pub echo: bool,
    /// Key the backend API requires (`Authorization: Bearer KEY` or
    /// `X-API-Key: KEY`); empty: the API is open.
    pub api_key: String,
    /// Subprotocols the server speaks, in preference order.
    pub protocols: Vec<String>,
    /// Browser origins allowed to connect; empty: any.
    pub allowed_origins: Vec<String>,
    /// Serve the demo chat at `/` and the JavaScript client at `/wsgate.js`.
    pub demo: bool,
    pub limits: LimitsConfig,
    pub timeouts: TimeoutsConfig,
    /// Defaults for every channel.
    pub channels: ChannelOptions,
    /// Per-namespace overrides: channel `ns:rest` belongs to namespace `ns`.
    pub namespaces: BTreeMap<String, ChannelOverrides>,
    /// JWT connection tokens; none configured: the gateway is open.
    pub auth: AuthConfig,
    /// Who may connect and how fast.
    pub admission: AdmissionConfig,
    /// Where channels live: this process (`memory`) or Redis, shared by
    /// several nodes (`redis`).
    pub broker: BrokerConfig,
    /// permessage-deflate (RFC 7692).
    pub compression: CompressionConfig,
    /// The backend proxies (connect, refresh, subscribe, publish, rpc).
    pub proxy: crate::hooks::config::ProxyConfig,
    /// Events POSTed to the backend.
    pub webhooks: crate::hooks::config::WebhooksConfig,
    /// TLS on `listen`: certificates from PEM files (none: plain TCP).
    pub tls: TlsConfig,
}

/// The `[auth]` section of the configuration. Configure at most one key
/// (`jwt_hs256_secret`, `jwt_hs256_secret_file`, `jwt_rs256_public_key_file`
/// or `jwt_es256_public_key_file`); with none, the gateway is open.
///
/// ```toml
/// [auth]
/// jwt_rs256_public_key_file = "/etc/wsgate/jwt.pub.pem"
/// issuer = "https://auth.example.com"   # optional: iss must be this
/// audience = "wsgate"                   # optional: aud must name this
/// leeway = "5s"                         # clock skew allowed on exp and nbf
/// # required = false                    # allow connections without a token
/// # anonymous_subscribe = ["public:*"]  # what those may subscribe to
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 shared secret, at least 32 bytes. Prefer the file form: a
    /// secret in the config file shows in `--print-config`.
    pub jwt_hs256_secret: String,
    /// A file holding the HS256 secret (trailing newline ignored).
    pub jwt_hs256_secret_file: String,
    /// A PEM file with the RSA public key of RS256 tokens.
    pub jwt_rs256_public_key_file: String,
    /// A PEM file with the P-256 public key of ES256 tokens.
    pub jwt_es256_public_key_file: String,
    /// If set, `iss` must be present and equal to it.
    pub issuer: String,
    /// If set, `aud` must be present and name it. If not, a token carrying
    /// an `aud` is refused (RFC 7519 §4.1.3).
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf` (whole seconds, rounded up).
    pub leeway: Millis,
    /// Refuse requests that carry no token. Default: true when a key is
    /// configured. `true` without a key is an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// With `required = false`: the channel patterns a connection without a
    /// token may subscribe to (it may publish nowhere).
    pub anonymous_subscribe: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_hs256_secret: String::new(),
            jwt_hs256_secret_file: String::new(),
            jwt_rs256_public_key_file: String::new(),
            jwt_es256_public_key_file: String::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway: Millis(5_000),
            required: None,
            anonymous_subscribe: Vec::new(),
        }
    }
}

/// `[tls]`: the certificates `listen` serves. `cert` and `key` are the
/// default; `[[tls.certificates]]` add certificates chosen by the name the
/// client asks for (SNI). SIGHUP re-reads every file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, PEM, leaf first (empty: no TLS).
    pub cert: std::path::PathBuf,
    /// Its private key, PEM (PKCS#8, SEC1 or PKCS#1).
    pub key: std::path::PathBuf,
    /// Certificates by server name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<SniCertificate>,
}

/// One `[[tls.certificates]]` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SniCertificate {
    /// DNS names served with this certificate: `chat.example.com`, or
    /// `*.example.com` for any one label in front of `example.com`.
    pub server_names: Vec<String>,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TlsConfig {
    /// Does `listen` speak TLS?
    pub fn enabled(&self) -> bool {
        !self.cert.as_os_str().is_empty()
    }

    fn validate(&self) -> Result<(), String> {
        if self.cert.as_os_str().is_empty() != self.key.as_os_str().is_empty() {
            return Err("tls.cert and tls.key go together".into());
        }
        if !self.enabled() && !self.certificates.is_empty() {
            return Err("tls.certificates needs a default certificate (tls.cert, tls.key)".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &self.certificates {
            if c.cert.as_os_str().is_empty() || c.key.as_os_str().is_empty() {
                return Err("each [[tls.certificates]] needs cert and key".into());
            }
            if c.server_names.is_empty() {
                return Err(format!(
                    "[[tls.certificates]] {}: server_names is empty",
                    c.cert.display()
                ));
            }
            for name in &c.server_names {
                if !valid_server_name(name) {
                    return Err(format!(
                        "tls server name {name:?}: expected a lower-case DNS name \
                         (chat.example.com) or a wildcard (*.example.com)"
                    ));
                }
                if !seen.insert(name.as_str()) {
                    return Err(format!("tls server name {name:?} is listed twice"));
                }
            }
        }
        Ok(())
    }
}

/// A lower-case DNS name, or `*.` and a name of at least two labels (RFC
/// 6125 §6.4.3: the wildcard stands for the whole left-most label).
pub fn valid_server_name(name: &str) -> bool {
    let (host, min_labels) = match name.strip_prefix("*.") {
        Some(rest) => (rest, 2),
        None => (name, 1),
    };
    let labels: Vec<&str> = host.split('.').collect();
    host.len() <= 253
        && labels.len() >= min_labels
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Which permessage-deflate the gateway negotiates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionMode {
    /// Never: offers are declined.
    Off,
    /// No context takeover either way: one compressor per worker, no zlib
    /// state per connection (the density-friendly default).
    Shared,
    /// Context takeover with bounded window bits: better ratios, about
    /// 300 KB of zlib state per connection that exchanges compressed
    /// messages (allocated on first use).
    Dedicated,
}

/// Whether a channel's subscribers may ask for deltas (`delta = "fossil"`
/// in `[channels]` or a namespace).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeltaMode {
    /// Publications always go whole.
    #[default]
    Off,
    /// A subscriber that asks (`"delta":"fossil"`) gets each publication
    /// after its first as a Fossil delta of the one before.
    Fossil,
}

/// `[compression]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    pub mode: CompressionMode,
    /// Messages shorter than this many bytes are sent uncompressed, and so
    /// are those that deflate does not shrink; 0: every message is sent
    /// compressed (what kosoku, the conformance suite, expects).
    pub min_size: usize,
    /// Our compressor's LZ77 window, 9..=15 (2^N bytes); in `dedicated`
    /// mode also the most we let clients use when they let us choose.
    pub window_bits: u8,
    /// zlib level, 0 (store) ..= 9 (smallest, slowest).
    pub level: u32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        let d = crate::proto::deflate::Config::default();
        CompressionConfig {
            mode: CompressionMode::Shared,
            min_size: d.min_size,
            window_bits: d.window_bits,
            level: d.level,
        }
    }
}

impl CompressionConfig {
    /// The protocol core's settings.
    pub fn to_proto(&self) -> crate::proto::deflate::Config {
        use crate::proto::deflate::{Config, Mode};
        Config {
            mode: match self.mode {
                CompressionMode::Off => Mode::Off,
                CompressionMode::Shared => Mode::Shared,
                CompressionMode::Dedicated => Mode::Dedicated,
            },
            min_size: self.min_size,
            window_bits: self.window_bits,
            level: self.level,
        }
    }
}

/// Which channel engine a node uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// Everything in this process: a single node needs nothing else.
    Memory,
    /// Fan-out, history and presence in Redis, shared by every node.
    Redis,
    /// Fan-out over NATS, history and presence in JetStream, shared by
    /// every node.
    Nats,
}

/// Where JetStream keeps the NATS broker's streams and presence bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatsStorage {
    /// On disk: history survives a NATS restart.
    File,
    /// In memory: faster; a NATS restart loses it (new epochs).
    Memory,
}

/// What a subscribe gets while Redis is unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutageSubscribe {
    /// It succeeds (`"recovered":false` when `since` was given); live
    /// publications flow once Redis is back.
    Accept,
    /// It fails with error 10 `unavailable`.
    Refuse,
}

/// `[broker]`: the channel engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    pub kind: BrokerKind,
    /// `redis://[user:password@]host:port/db` (kind = "redis"), or
    /// `rediss://…` for TLS (verified against the system's roots, or
    /// `redis_ca`).
    pub redis_url: String,
    /// With `rediss://`: the CA certificates (PEM) that sign the Redis
    /// server's certificate ("": the system's roots).
    #[serde(skip_serializing_if = "is_empty_path")]
    pub redis_ca: std::path::PathBuf,
    /// With `rediss://`: a client certificate and key (PEM) for Redis
    /// servers that require one (`tls-auth-clients yes`, Redis's default).
    #[serde(skip_serializing_if = "is_empty_path")]
    pub redis_tls_cert: std::path::PathBuf,
    #[serde(skip_serializing_if = "is_empty_path")]
    pub redis_tls_key: std::path::PathBuf,
    /// NATS servers, `nats://[user:password@]host:port` (kind = "nats"):
    /// one, or several of a cluster (the client also learns the others
    /// from the servers).
    pub nats_urls: Vec<String>,
    /// Replicas of each JetStream stream and of the presence bucket (1, or
    /// 3 or 5 on a NATS cluster, so that a server may fail).
    pub nats_replicas: usize,
    /// "file" or "memory".
    pub nats_storage: NatsStorage,
    /// Prefix of every Redis key and pub/sub channel, or NATS subject,
    /// stream and bucket (several deployments can share one Redis or NATS
    /// with different prefixes).
    pub prefix: String,
    /// This node's name in Redis `CLIENT LIST` and the logs ("": host name
    /// and process id).
    pub node_id: String,
    /// A member whose node stopped refreshing it leaves presence after this.
    pub presence_ttl: Millis,
    /// How often a node refreshes its members in Redis.
    pub presence_refresh: Millis,
    /// How long a channel's epoch and offset outlive its last publication
    /// (at least `history_ttl`); after that, a new epoch.
    pub meta_ttl: Millis,
    /// A Redis command unanswered for this long counts as an outage.
    pub command_timeout: Millis,
    /// Reconnection backoff: the first delay cap, doubled per failed
    /// attempt up to `reconnect_max` (each delay is random below its cap).
    pub reconnect_min: Millis,
    pub reconnect_max: Millis,
    /// Subscribes during a Redis outage: "accept" or "refuse".
    pub outage_subscribe: OutageSubscribe,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            kind: BrokerKind::Memory,
            redis_url: "redis://127.0.0.1:6379/0".into(),
            redis_ca: Default::default(),
            redis_tls_cert: Default::default(),
            redis_tls_key: Default::default(),
            nats_urls: vec!["nats://127.0.0.1:4222".into()],
            nats_replicas: 1,
            nats_storage: NatsStorage::File,
            prefix: "wsgate".into(),
            node_id: String::new(),
            presence_ttl: Millis(30_000),
            presence_refresh: Millis(10_000),
            meta_ttl: Millis(24 * 3_600_000),
            command_timeout: Millis(2_000),
            reconnect_min: Millis(100),
            reconnect_max: Millis(5_000),
            outage_subscribe: OutageSubscribe::Accept,
        }
    }
}

fn is_empty_path(p: &std::path::Path) -> bool {
    p.as_os_str().is_empty()
}

/// Admission control (0 turns a limit off).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Connections one client IP may hold (IPv6: per /64); beyond: HTTP 429.
    pub max_connections_per_ip: u32,
    /// Handshakes (WebSocket upgrades, SSE and long-poll requests) per
    /// second for the whole process; beyond: HTTP 503 with Retry-After.
    pub handshake_rate: u32,
    /// Messages per second a `/ws` connection may send (bursts of twice
    /// that); beyond: close 1008.
    pub messages_per_second: u32,
    /// Proxies (addresses or CIDRs) whose `X-Forwarded-For`, or PROXY
    /// protocol v2 header, names the real client.
    pub trusted_proxies: Vec<String>,
    /// Expect a PROXY protocol v2 header from trusted proxies.
    pub proxy_protocol: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request head (HTTP 431 beyond).
    pub max_head: usize,
    /// Largest WebSocket message, all fragments together (close 1009 beyond).
    pub max_message: usize,
    /// Largest HTTP request body (HTTP 413 beyond).
    pub max_body: usize,
    /// Channels one connection may be subscribed to.
    pub max_channels_per_connection: usize,
    /// Longest channel name, in bytes.
    pub max_channel_length: usize,
    /// Bytes a connection's out queue may hold before the slow-consumer
    /// policy applies.
    pub max_queued_bytes: usize,
    /// What to do with a connection over `max_queued_bytes`.
    pub slow_consumer: SlowConsumer,
    /// Channels this node holds at once: those with a subscriber, presence
    /// or history (beyond: subscribes and publishes to another channel get
    /// error 10 `unavailable`), and, separately, idle channels whose
    /// position is kept for recovery (beyond: the oldest is forgotten).
    pub max_channels: usize,
    /// Subscribes per second one connection may make, in bursts of
    /// `max_channels_per_connection` (beyond: error 5; 0: no limit).
    pub channel_rate: u32,
    /// Bytes of history the node keeps over all channels (beyond: the
    /// oldest channel histories are dropped whole).
    pub history_memory: usize,
    /// Bytes of previous publications each worker keeps as Fossil delta
    /// bases (beyond: a channel's next publication goes whole).
    pub delta_memory: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// Accept to complete request head (slowloris defence).
    pub handshake: Millis,
    /// Ping when nothing was heard for this long (0s: off).
    pub ping_interval: Millis,
    /// Drop a connection whose ping is not answered in time.
    pub pong_timeout: Millis,
    /// Close (1001) a connection that sent nothing for this long (0s: off).
    pub idle: Millis,
    /// After our close frame, wait this long for the peer's close and FIN.
    pub close_linger: Millis,
    /// Interval of SSE keepalive comments.
    pub sse_keepalive: Millis,
    /// How long a long-poll is held when nothing is waiting (`?wait=` may
    /// ask for less, or up to `poll_max_wait`).
    pub poll_wait: Millis,
    /// The longest `?wait=` honoured.
    pub poll_max_wait: Millis,
    /// On SIGTERM/SIGINT, connections are told to leave (close 4000) in a
    /// random order spread over this window, so they do not all reconnect
    /// at once.
    pub drain_window: Millis,
    /// The drain ends here: connections still open are dropped.
    pub drain_timeout: Millis,
    /// Hand memory freed after a burst back to the kernel this often
    /// (glibc keeps it otherwise; 0s: never). Only the `wsgate` binary
    /// does this: the allocator belongs to the process.
    pub trim_memory: Millis,
}

/// What a channel keeps and allows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelOptions {
    /// Publications kept for recovery (0: none).
    pub history_size: usize,
    /// Bytes of publications kept.
    pub history_bytes: usize,
    /// Age after which a publication leaves the history.
    pub history_ttl: Millis,
    /// Track who is subscribed (the `presence` op and API).
    pub presence: bool,
    /// Send join and leave events to subscribers (needs `presence`).
    pub join_leave: bool,
    /// Send the latest publication to a new subscriber that gave no `since`.
    pub deliver_latest: bool,
    /// Let clients publish with the `publish` op (the API always may).
    pub client_publish: bool,
    /// Ask the backend (`proxy.subscribe`) before a subscribe.
    pub subscribe_proxy: bool,
    /// Ask the backend (`proxy.publish`) before a client's publish.
    pub publish_proxy: bool,
    /// Send a `client_event` webhook for every client publication.
    pub client_events: bool,
    /// Deltas for the subscribers that ask for them.
    pub delta: DeltaMode,
}

/// A namespace's differences from `[channels]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_ttl: Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_leave: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliver_latest: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_publish: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe_proxy: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_proxy: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_events: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaMode>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            listen_plain: None,
            workers: 0,
            max_connections: 1_000_000,
            echo: true,
            api_key: String::new(),
            protocols: Vec::new(),
            allowed_origins: Vec::new(),
            demo: true,
            limits: LimitsConfig::default(),
            timeouts: TimeoutsConfig::default(),
            channels: ChannelOptions::default(),
            namespaces: BTreeMap::new(),
            auth: AuthConfig::default(),
            admission: AdmissionConfig::default(),
            broker: BrokerConfig::default(),
            compression: CompressionConfig::default(),
            tls: TlsConfig::default(),
            proxy: Default::default(),
            webhooks: Default::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_head: 8192,
            max_message: 16 << 20,
            max_body: 1 << 20,
            max_channels_per_connection: 128,
            max_channel_length: 255,
            max_queued_bytes: 1 << 20,
            slow_consumer: SlowConsumer::Close,
            max_channels: 1_000_000,
            channel_rate: 20,
            history_memory: 256 << 20,
            delta_memory: 64 << 20,
        }
    }
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            handshake: Millis(10_000),
            ping_interval: Millis(30_000),
            pong_timeout: Millis(10_000),
            idle: Millis(0),
            close_linger: Millis(2_000),
            sse_keepalive: Millis(15_000),
            poll_wait: Millis(25_000),
            poll_max_wait: Millis(60_000),
            drain_window: Millis(10_000),
            drain_timeout: Millis(30_000),
            trim_memory: Millis(10_000),
        }
    }
}

impl Default for ChannelOptions {
    fn default() -> Self {
        let h = HistoryLimits::default();
        ChannelOptions {
            history_size: h.size,
            history_bytes: h.bytes,
            history_ttl: Millis(h.ttl_ms),
            presence: true,
            join_leave: false,
            deliver_latest: false,
            client_publish: true,
            subscribe_proxy: false,
            publish_proxy: false,
            client_events: false,
            delta: DeltaMode::Off,
        }
    }
}

impl ChannelOptions {
    pub fn history_limits(&self) -> HistoryLimits {
        HistoryLimits {
            size: self.history_size,
            bytes: self.history_bytes,
            ttl_ms: self.history_ttl.0,
        }
    }

    fn with(&self, o: &ChannelOverrides) -> ChannelOptions {
        ChannelOptions {
            history_size: o.history_size.unwrap_or(self.history_size),
            history_bytes: o.history_bytes.unwrap_or(self.history_bytes),
            history_ttl: o.history_ttl.unwrap_or(self.history_ttl),
            presence: o.presence.unwrap_or(self.presence),
            join_leave: o.join_leave.unwrap_or(self.join_leave),
            deliver_latest: o.deliver_latest.unwrap_or(self.deliver_latest),
            client_publish: o.client_publish.unwrap_or(self.client_publish),
            subscribe_proxy: o.subscribe_proxy.unwrap_or(self.subscribe_proxy),
            publish_proxy: o.publish_proxy.unwrap_or(self.publish_proxy),
            client_events: o.client_events.unwrap_or(self.client_events),
            delta: o.delta.unwrap_or(self.delta),
        }
    }
}

/// Channel options resolved per namespace, shared read-only.
#[derive(Debug, Clone)]
pub struct ChannelPolicy {
    default: ChannelOptions,
    namespaces: BTreeMap<String, ChannelOptions>,
    /// What the node as a whole holds.
    pub node: NodeChannelLimits,
}

/// The node-wide bounds on channels (from `[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeChannelLimits {
    /// `limits.max_channels`.
    pub max_channels: usize,
    /// `limits.history_memory`.
    pub history_memory: usize,
    /// The most a replay puts in one part (half of
    /// `limits.max_queued_bytes`).
    pub replay_part: usize,
}

impl ChannelPolicy {
    pub fn new(cfg: &Config) -> ChannelPolicy {
        ChannelPolicy {
            default: cfg.channels.clone(),
            namespaces: cfg
                .namespaces
                .iter()
                .map(|(k, o)| (k.clone(), cfg.channels.with(o)))
                .collect(),
            node: NodeChannelLimits {
                max_channels: cfg.limits.max_channels,
                history_memory: cfg.limits.history_memory,
                replay_part: cfg.limits.max_queued_bytes / 2,
            },
        }
    }

    /// The options of a channel: its namespace's (the part before the first
    /// `:`), or the defaults.
    pub fn options(&self, channel: &str) -> &ChannelOptions {
        channel
            .split_once(':')
            .and_then(|(ns, _)| self.namespaces.get(ns))
            .unwrap_or(&self.default)
    }
}

impl Config {
    /// Read a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Config::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_toml(text: &str) -> Result<Config, String> {
        let cfg: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serializes")
    }

    /// Reject settings that cannot work together.
    pub fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        if l.max_head < 256 {
            return Err("limits.max_head must be at least 256".into());
        }
        if l.max_message == 0 || l.max_body == 0 {
            return Err("limits.max_message and limits.max_body must be positive".into());
        }
        if l.max_queued_bytes < 4096 {
            return Err("limits.max_queued_bytes must be at least 4096".into());
        }
        if l.max_channel_length == 0 {
            return Err("limits.max_channel_length must be positive".into());
        }
        if l.max_channels == 0 || l.history_memory == 0 {
            return Err("limits.max_channels and limits.history_memory must be positive".into());
        }
        let c = &self.compression;
        if !(9..=15).contains(&c.window_bits) {
            return Err("compression.window_bits must be within 9..=15".into());
        }
        if c.level > 9 {
            return Err("compression.level must be within 0..=9".into());
        }
        for ns in self.namespaces.keys() {
            if ns.is_empty() || ns.contains(':') {
                return Err(format!(
                    "namespace name {ns:?} must be non-empty without ':'"
                ));
            }
        }
        self.tls.validate()?;
        if let Some(plain) = self.listen_plain {
            if !self.tls.enabled() {
                return Err("listen_plain is for a plain listener beside TLS: set [tls] cert and key (or --tls-cert, --tls-key)".into());
            }
            if plain == self.listen {
                return Err("listen_plain must differ from listen".into());
            }
        }
        let b = &self.broker;
        if b.kind == BrokerKind::Redis {
            if b.redis_url.is_empty() {
                return Err("broker.redis_url is required with kind = \"redis\"".into());
            }
            if b.prefix.is_empty() || b.prefix.contains(|c: char| c.is_whitespace() || c == '{') {
                return Err("broker.prefix must be non-empty, without spaces or '{'".into());
            }
            let tls_files = !is_empty_path(&b.redis_ca)
                || !is_empty_path(&b.redis_tls_cert)
                || !is_empty_path(&b.redis_tls_key);
            if tls_files && !b.redis_url.starts_with("rediss://") {
                return Err(
                    "broker.redis_ca, redis_tls_cert and redis_tls_key need a rediss:// URL".into(),
                );
            }
            if is_empty_path(&b.redis_tls_cert) != is_empty_path(&b.redis_tls_key) {
                return Err("broker.redis_tls_cert and redis_tls_key go together".into());
            }
        }
        if b.kind == BrokerKind::Nats {
            if b.nats_urls.is_empty() || b.nats_urls.iter().any(|u| u.trim().is_empty()) {
                return Err("broker.nats_urls is required with kind = \"nats\"".into());
            }
            // The prefix names subjects, streams and a bucket.
            if b.prefix.is_empty()
                || !b
                    .prefix
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            {
                return Err(
                    "broker.prefix must be non-empty ASCII letters, digits, '-' or '_' \
                     with kind = \"nats\""
                        .into(),
                );
            }
            if !(1..=5).contains(&b.nats_replicas) {
                return Err("broker.nats_replicas must be within 1..=5".into());
            }
        }
        if b.kind != BrokerKind::Memory {
            if b.presence_refresh.0 == 0 || b.presence_refresh.0 >= b.presence_ttl.0 {
                return Err(
                    "broker.presence_refresh must be positive and below presence_ttl".into(),
                );
            }
            if b.command_timeout.0 == 0 || b.reconnect_min.0 == 0 {
                return Err("broker.command_timeout and reconnect_min must be positive".into());
            }
            if b.reconnect_max.0 < b.reconnect_min.0 {
                return Err("broker.reconnect_max must be at least reconnect_min".into());
            }
        }
        crate::hooks::config::validate(self)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("10s"), Ok(10_000));
        assert_eq!(parse_duration_ms("1.5s"), Ok(1_500));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("3"), Ok(3_000));
        assert!(parse_duration_ms("soon").is_err());
        assert!(parse_duration_ms("-1s").is_err());
        for ms in [0, 250, 10_000, 120_000, 1_500] {
            assert_eq!(parse_duration_ms(&format_duration_ms(ms)), Ok(ms));
        }
    }

    #[test]
    fn printed_config_reads_back_identically() {
        let mut cfg = Config::default();
        cfg.namespaces.insert(
            "ticker".into(),
            ChannelOverrides {
                deliver_latest: Some(true),
                history_ttl: Some(Millis(60_000)),
                ..Default::default()
            },
        );
        let text = cfg.to_toml();
        assert_eq!(Config::from_toml(&text).unwrap(), cfg);
    }

    #[test]
    fn file_overrides_and_namespaces() {
        let cfg = Config::from_toml(
            r#"
            listen = "0.0.0.0:9000"
            [limits]
            slow_consumer = "drop"
            [timeouts]
            ping_interval = "5s"
            [channels]
            history_size = 10
            [namespaces.ticker]
            deliver_latest = true
            history_size = 1
            "#,
        )
        .unwrap();
        assert_eq!(cfg.listen.port(), 9000);
        assert_eq!(cfg.limits.slow_consumer, SlowConsumer::Drop);
        assert_eq!(cfg.timeouts.ping_interval, Millis(5000));
        assert_eq!(
            cfg.timeouts.pong_timeout,
            Millis(10_000),
            "defaults fill the rest"
        );
        let p = ChannelPolicy::new(&cfg);
        assert_eq!(p.options("chat").history_size, 10);
        assert!(!p.options("chat").deliver_latest);
        assert_eq!(p.options("ticker:btc").history_size, 1);
        assert!(p.options("ticker:btc").deliver_latest);
        assert_eq!(p.options("tickerx:btc").history_size, 10);
    }

    #[test]
    fn delta_per_namespace() {
        let cfg = Config::from_toml(
            "[namespaces.dash]\ndelta = \"fossil\"\n[namespaces.chat]\nhistory_size = 5",
        )
        .unwrap();
        let p = ChannelPolicy::new(&cfg);
        assert_eq!(p.options("dash:eu").delta, DeltaMode::Fossil);
        assert_eq!(p.options("chat:1").delta, DeltaMode::Off, "the default");
        assert_eq!(p.options("other").delta, DeltaMode::Off);
        assert_eq!(Config::from_toml(&cfg.to_toml()).unwrap(), cfg);
        let on =
            Config::from_toml("[channels]\ndelta = \"fossil\"\n[namespaces.raw]\ndelta = \"off\"")
                .unwrap();
        let p = ChannelPolicy::new(&on);
        assert_eq!(p.options("x").delta, DeltaMode::Fossil);
        assert_eq!(p.options("raw:x").delta, DeltaMode::Off);
        for bad in ["\"xdelta\"", "\"Fossil\"", "true", "1"] {
            let t = format!("[namespaces.dash]\ndelta = {bad}");
            assert!(Config::from_toml(&t).is_err(), "{bad}");
        }
    }

    #[test]
    fn broker_section() {
        assert_eq!(Config::default().broker.kind, BrokerKind::Memory);
        let cfg = Config::from_toml(
            r#"
            [broker]
            kind = "redis"
            redis_url = "redis://127.0.0.1:7000/1"
            presence_ttl = "5s"
            presence_refresh = "1s"
            outage_subscribe = "refuse"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.broker.kind, BrokerKind::Redis);
        assert_eq!(cfg.broker.presence_ttl, Millis(5000));
        assert_eq!(cfg.broker.outage_subscribe, OutageSubscribe::Refuse);
        assert_eq!(Config::from_toml(&cfg.to_toml()).unwrap(), cfg);
        assert!(Config::from_toml("[broker]\nkind = \"kafka\"").is_err());
        assert!(Config::from_toml(
            "[broker]\nkind = \"redis\"\npresence_ttl = \"1s\"\npresence_refresh = \"2s\""
        )
        .is_err());
        // TLS to Redis: files only with rediss://, cert and key together.
        let tls = Config::from_toml(
            "[broker]\nkind = \"redis\"\nredis_url = \"rediss://r.example:6380/0\"\n\
             redis_ca = \"/etc/ca.pem\"\nredis_tls_cert = \"/c.pem\"\nredis_tls_key = \"/k.pem\"",
        )
        .unwrap();
        assert_eq!(Config::from_toml(&tls.to_toml()).unwrap(), tls);
        assert!(Config::from_toml("[broker]\nkind = \"redis\"\nredis_ca = \"/ca.pem\"").is_err());
        assert!(Config::from_toml(
            "[broker]\nkind = \"redis\"\nredis_url = \"rediss://r:1/0\"\nredis_tls_cert = \"/c\""
        )
        .is_err());
    }

    #[test]
    fn nats_broker_section() {
        let cfg = Config::from_toml(
            r#"
            [broker]
            kind = "nats"
            nats_urls = ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
            nats_replicas = 3
            nats_storage = "memory"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.broker.kind, BrokerKind::Nats);
        assert_eq!(cfg.broker.nats_urls.len(), 2);
        assert_eq!(cfg.broker.nats_replicas, 3);
        assert_eq!(cfg.broker.nats_storage, NatsStorage::Memory);
        assert_eq!(Config::from_toml(&cfg.to_toml()).unwrap(), cfg);
        // Defaults: one local server, file storage, one replica.
        let d = Config::from_toml("[broker]\nkind = \"nats\"").unwrap();
        assert_eq!(d.broker.nats_urls, vec!["nats://127.0.0.1:4222".to_owned()]);
        assert_eq!(d.broker.nats_storage, NatsStorage::File);
        // The prefix names streams and subjects: no dots, spaces or '>'.
        for bad in ["a.b", "a b", "a>", ""] {
            let t = format!("[broker]\nkind = \"nats\"\nprefix = \"{bad}\"");
            assert!(Config::from_toml(&t).is_err(), "{bad:?}");
        }
        assert!(Config::from_toml("[broker]\nkind = \"nats\"\nnats_urls = []").is_err());
        assert!(Config::from_toml("[broker]\nkind = \"nats\"\nnats_replicas = 0").is_err());
        // Redis keeps accepting a prefix with ':' (its keys are not subjects).
        assert!(Config::from_toml("[broker]\nkind = \"redis\"\nprefix = \"a:b\"").is_ok());
    }
    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(Config::from_toml("lisen = \"x\"").is_err());
        assert!(Config::from_toml("[limits]\nmax_queued_bytes = 10").is_err());
        assert!(Config::from_toml("[limits]\nmax_channels = 0").is_err());
        assert!(Config::from_toml("[limits]\nhistory_memory = 0").is_err());
        assert!(Config::from_toml("[timeouts]\nhandshake = \"later\"").is_err());
        assert!(Config::from_toml("[compression]\nmode = \"fast\"").is_err());
        assert!(Config::from_toml("[compression]\nwindow_bits = 8").is_err());
        assert!(Config::from_toml("[compression]\nlevel = 10").is_err());
    }

    #[test]
    fn tls_section() {
        assert!(!Config::default().tls.enabled());
        let cfg = Config::from_toml(
            r#"
            listen = "0.0.0.0:443"
            listen_plain = "127.0.0.1:8080"
            [tls]
            cert = "/etc/wsgate/default.pem"
            key = "/etc/wsgate/default.key"
            [[tls.certificates]]
            server_names = ["chat.example.com", "*.example.org"]
            cert = "/etc/wsgate/chat.pem"
            key = "/etc/wsgate/chat.key"
            "#,
        )
        .unwrap();
        assert!(cfg.tls.enabled());
        assert_eq!(cfg.tls.certificates[0].server_names.len(), 2);
        assert_eq!(cfg.listen_plain, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(Config::from_toml(&cfg.to_toml()).unwrap(), cfg);
        // What cannot work is refused with the reason.
        for bad in [
            "[tls]\ncert = \"a.pem\"",
            "[tls]\nkey = \"a.key\"",
            "[[tls.certificates]]\nserver_names = [\"a.example\"]\ncert = \"b\"\nkey = \"c\"",
            "listen_plain = \"127.0.0.1:8081\"",
            "[tls]\ncert = \"a\"\nkey = \"b\"\n[[tls.certificates]]\nserver_names = []\ncert = \"b\"\nkey = \"c\"",
            "[tls]\ncert = \"a\"\nkey = \"b\"\n[[tls.certificates]]\nserver_names = [\"Chat.Example.com\"]\ncert = \"b\"\nkey = \"c\"",
            "[tls]\ncert = \"a\"\nkey = \"b\"\n[[tls.certificates]]\nserver_names = [\"a.b\", \"a.b\"]\ncert = \"b\"\nkey = \"c\"",
            "listen_plain = \"127.0.0.1:8080\"\n[tls]\ncert = \"a\"\nkey = \"b\"",
            "[tls]\ncert = \"a\"\nkey = \"b\"\nciphers = \"all\"",
        ] {
            assert!(Config::from_toml(bad).is_err(), "{bad}");
        }
        for good in [
            "localhost",
            "example.com",
            "*.example.com",
            "a-1.b.example",
            "xn--bcher-kva.example",
        ] {
            assert!(valid_server_name(good), "{good}");
        }
        for bad in [
            "*.com",
            "a.com.",
            "a..b",
            "-a.b",
            "*.*.b.c",
            "a b.c",
            "é.example",
        ] {
            assert!(!valid_server_name(bad), "{bad}");
        }
    }

    #[test]
    fn compression_section() {
        let cfg = Config::from_toml(
            "[compression]\nmode = \"dedicated\"\nwindow_bits = 10\nmin_size = 64\nlevel = 6",
        )
        .unwrap();
        let p = cfg.compression.to_proto();
        assert_eq!(p.mode, crate::proto::deflate::Mode::Dedicated);
        assert_eq!((p.window_bits, p.min_size, p.level), (10, 64, 6));
        assert_eq!(Config::default().compression.mode, CompressionMode::Shared);
        let off = Config::from_toml("[compression]\nmode = \"off\"").unwrap();
        assert_eq!(
            off.compression.to_proto().mode,
            crate::proto::deflate::Mode::Off
        );
    }
}
