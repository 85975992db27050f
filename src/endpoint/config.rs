//! The engine's settings, shared read-only by every worker.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{BrokerConfig, Config};
use crate::gateway::GatewayConfig;
use crate::proto::{deflate, Limits, Timeouts};

/// Decides whether a browser's `Origin` may open a WebSocket (`None`: no
/// Origin header, as from non-browser clients).
pub type OriginCheck = Arc<dyn Fn(Option<&[u8]>) -> bool + Send + Sync>;

/// Everything a worker needs to know.
#[derive(Clone)]
pub struct ServerConfig {
    /// Speaks TLS when `tls` is set.
    pub listen: SocketAddr,
    /// With TLS: a second listener in plaintext, same routes (a health
    /// checker on the host).
    pub listen_plain: Option<SocketAddr>,
    /// TLS on `listen` (certificates, SNI, reload; one per process).
    pub tls: Option<Arc<crate::tls::TlsServer>>,
    /// Event-loop threads; each owns an SO_REUSEPORT listener.
    pub workers: usize,
    /// Connections held at once by the process; beyond it: HTTP 503.
    pub max_connections: usize,
    /// Largest request head accepted (431 beyond).
    pub max_head: usize,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// Serve the built-in `/echo` route.
    pub echo: bool,
    /// Subprotocols the server speaks, in its order of preference.
    pub protocols: Vec<String>,
    /// Called with the request's Origin at the handshake.
    pub origin_check: Option<OriginCheck>,
    /// Out-queue bytes above which a connection's input is no longer read
    /// (it resumes once the queue has drained below half of this).
    pub out_high_water: usize,
    /// Channels, sessions and the API.
    pub gateway: GatewayConfig,
    /// Connections per IP, handshake rate, trusted proxies.
    pub admission: Admission,
    /// Graceful drain: connections are told to leave over this window...
    pub drain_window_ms: u64,
    /// ...and whatever is left is dropped after this long.
    pub drain_timeout_ms: u64,
    /// The channel engine (memory, or Redis shared by several nodes).
    pub broker: BrokerConfig,
    /// permessage-deflate (RFC 7692).
    pub compression: deflate::Config,
    /// Webhooks (`url` empty: off).
    pub webhooks: crate::hooks::config::WebhooksConfig,
    /// `[proxy]`: started by `Server::start` when any hook is configured.
    pub proxy: crate::hooks::config::ProxyConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            listen_plain: None,
            tls: None,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_connections: 1_000_000,
            max_head: 8 * 1024,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            echo: true,
            protocols: Vec::new(),
            origin_check: None,
            out_high_water: 1 << 20,
            gateway: GatewayConfig::default(),
            admission: Admission::default(),
            drain_window_ms: 10_000,
            drain_timeout_ms: 30_000,
            broker: BrokerConfig::default(),
            compression: deflate::Config::default(),
            webhooks: Default::default(),
            proxy: Default::default(),
        }
    }
}

/// Admission settings, resolved.
#[derive(Clone, Debug, Default)]
pub struct Admission {
    pub per_ip: u32,
    pub handshake_rate: u32,
    pub trusted: Vec<super::admission::Cidr>,
    pub proxy_protocol: bool,
}

impl ServerConfig {
    /// [`ServerConfig::try_from_config`] for configurations known to be
    /// valid (tests); panics on an auth key that cannot be read.
    pub fn from_config(cfg: &Config) -> ServerConfig {
        Self::try_from_config(cfg).expect("valid [auth] configuration")
    }

    /// The engine's settings from the file/flags configuration, with the
    /// auth key read (the only failure).
    pub fn try_from_config(cfg: &Config) -> Result<ServerConfig, String> {
        let mut s = Self::build(cfg);
        s.admission.trusted = cfg
            .admission
            .trusted_proxies
            .iter()
            .map(|t| super::admission::Cidr::parse(t))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("admission.trusted_proxies: {e}"))?;
        s.gateway.auth = Arc::new(crate::auth::Authenticator::new(&cfg.auth)?);
        if cfg.tls.enabled() {
            let tls = crate::tls::TlsServer::new(&cfg.tls).map_err(|e| e.to_string())?;
            s.tls = Some(Arc::new(tls));
        }
        Ok(s)
    }

    fn build(cfg: &Config) -> ServerConfig {
        let t = &cfg.timeouts;
        let ms = |m: crate::config::Millis| m.0.min(u32::MAX as u64) as u32;
        let origin_check: Option<OriginCheck> = if cfg.allowed_origins.is_empty() {
            None
        } else {
            let allowed: Vec<Vec<u8>> = cfg
                .allowed_origins
                .iter()
                .map(|o| o.clone().into_bytes())
                .collect();
            Some(Arc::new(move |origin: Option<&[u8]>| match origin {
                Some(o) => allowed.iter().any(|a| a.eq_ignore_ascii_case(o)),
                None => true, // non-browser clients send no Origin
            }))
        };
        ServerConfig {
            listen: cfg.listen,
            listen_plain: cfg.listen_plain,
            tls: None,
            workers: if cfg.workers == 0 {
                ServerConfig::default().workers
            } else {
                cfg.workers
            },
            max_connections: cfg.max_connections,
            max_head: cfg.limits.max_head,
            limits: Limits {
                max_message: cfg.limits.max_message,
            },
            timeouts: Timeouts {
                handshake_ms: ms(t.handshake),
                ping_interval_ms: ms(t.ping_interval),
                pong_timeout_ms: ms(t.pong_timeout),
                idle_timeout_ms: ms(t.idle),
                close_linger_ms: ms(t.close_linger),
            },
            echo: cfg.echo,
            protocols: cfg.protocols.clone(),
            origin_check,
            out_high_water: 1 << 20,
            gateway: GatewayConfig::new(cfg),
            admission: Admission {
                per_ip: cfg.admission.max_connections_per_ip,
                handshake_rate: cfg.admission.handshake_rate,
                trusted: Vec::new(),
                proxy_protocol: cfg.admission.proxy_protocol,
            },
            drain_window_ms: t.drain_window.0,
            drain_timeout_ms: t.drain_timeout.0.max(t.drain_window.0),
            broker: cfg.broker.clone(),
            compression: cfg.compression.to_proto(),
            webhooks: cfg.webhooks.clone(),
            proxy: cfg.proxy.clone(),
        }
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("listen_plain", &self.listen_plain)
            .field("tls", &self.tls.is_some())
            .field("workers", &self.workers)
            .field("max_connections", &self.max_connections)
            .field("max_head", &self.max_head)
            .field("limits", &self.limits)
            .field("timeouts", &self.timeouts)
            .field("echo", &self.echo)
            .field("protocols", &self.protocols)
            .field("origin_check", &self.origin_check.is_some())
            .field("out_high_water", &self.out_high_water)
            .field("broker", &self.broker.kind)
            .field("compression", &self.compression)
            .finish()
    }
}
