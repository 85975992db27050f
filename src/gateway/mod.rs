//! The gateway: what a WebSocket client can do on `/ws` (subscribe,
//! unsubscribe, publish, presence), the session each such connection holds,
//! and the settings that bound it.

pub mod channel_rate;
pub mod error;
pub mod ops;
pub mod pipeline;
pub mod replay;
pub mod reply;
pub mod session;
pub mod sink;

use crate::config::{ChannelPolicy, Config, SlowConsumer};

/// Close codes of the gateway (RFC 6455 leaves 4000-4999 to applications).
/// 4000-4499: reconnecting is expected to work; 4500-4999: it will not
/// until something changes (credentials, permissions).
pub mod close_code {
    /// The server is draining, or an operator disconnected the user:
    /// reconnect (to another node).
    pub const SHUTDOWN: u16 = 4000;
    /// The connection could not keep up with its channels: reconnect and
    /// recover with `since`.
    pub const SLOW_CONSUMER: u16 = 4001;
}

/// Unanswered ops per connection before the worker stops reading it
/// ([`GatewayConfig::max_pending_ops`]).
pub const MAX_PENDING_OPS: usize = 1024;

/// Gateway settings, resolved from [`Config`].
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub policy: ChannelPolicy,
    pub max_channels: usize,
    pub max_channel_length: usize,
    pub max_message: usize,
    pub max_queued_bytes: usize,
    /// Ops of one connection not yet replied to (at the broker, or held
    /// behind one that is): beyond it the connection is not read until
    /// replies drain. See [`pipeline`].
    pub max_pending_ops: usize,
    pub max_body: usize,
    pub slow_consumer: SlowConsumer,
    /// Required by `/api/*` when set.
    pub api_key: Option<String>,
    /// Serve the demo and the JavaScript client.
    pub demo: bool,
    /// Messages per second per `/ws` connection (0: no limit).
    pub messages_per_second: u32,
    /// Subscribes per second per connection, in bursts of `max_channels`
    /// (0: no limit).
    pub channel_rate: u32,
    /// Token checks and permissions (open when no key is configured).
    pub auth: std::sync::Arc<crate::auth::Authenticator>,
    pub sse_keepalive_ms: u64,
    pub poll_wait_ms: u64,
    pub poll_max_wait_ms: u64,
    /// Fossil delta bases per worker (`limits.delta_memory`).
    pub delta_limits: crate::delta::DeltaLimits,
    /// The backend hooks (proxies), when any is configured: set by
    /// `Server::start`, which starts their threads.
    pub proxy: Option<std::sync::Arc<crate::broker::HookProxy>>,
}

impl GatewayConfig {
    pub fn new(cfg: &Config) -> GatewayConfig {
        GatewayConfig {
            policy: ChannelPolicy::new(cfg),
            max_channels: cfg.limits.max_channels_per_connection,
            max_channel_length: cfg.limits.max_channel_length,
            max_message: cfg.limits.max_message,
            max_queued_bytes: cfg.limits.max_queued_bytes,
            max_pending_ops: MAX_PENDING_OPS,
            max_body: cfg.limits.max_body,
            slow_consumer: cfg.limits.slow_consumer,
            api_key: (!cfg.api_key.is_empty()).then(|| cfg.api_key.clone()),
            demo: cfg.demo,
            messages_per_second: cfg.admission.messages_per_second,
            channel_rate: cfg.limits.channel_rate,
            auth: std::sync::Arc::new(crate::auth::Authenticator::open()),
            sse_keepalive_ms: cfg.timeouts.sse_keepalive.0.max(1),
            poll_wait_ms: cfg.timeouts.poll_wait.0,
            poll_max_wait_ms: cfg.timeouts.poll_max_wait.0,
            delta_limits: crate::delta::DeltaLimits {
                max_total: cfg.limits.delta_memory,
                ..Default::default()
            },
            proxy: None,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig::new(&Config::default())
    }
}
