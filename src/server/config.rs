//! The engine's settings, shared read-only by every worker.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::proto::{Limits, Timeouts};

/// Decides whether a browser's `Origin` may open a WebSocket (`None`: no
/// Origin header, as from non-browser clients).
pub type OriginCheck = Arc<dyn Fn(Option<&[u8]>) -> bool + Send + Sync>;

/// Everything a worker needs to know.
#[derive(Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_connections: 1_000_000,
            max_head: 8 * 1024,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            echo: true,
            protocols: Vec::new(),
            origin_check: None,
            out_high_water: 1 << 20,
        }
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("workers", &self.workers)
            .field("max_connections", &self.max_connections)
            .field("max_head", &self.max_head)
            .field("limits", &self.limits)
            .field("timeouts", &self.timeouts)
            .field("echo", &self.echo)
            .field("protocols", &self.protocols)
            .field("origin_check", &self.origin_check.is_some())
            .field("out_high_water", &self.out_high_water)
            .finish()
    }
}
