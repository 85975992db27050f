//! # wsgate
//!
//! A high-density WebSocket gateway: a hand-rolled RFC 6455 server on mio,
//! one single-threaded event loop per core, no async runtime.
//!
//! ```text
//! socket ──readable──▶ server::worker (mio loop, one per core)
//!                         │ bytes (per-worker read buffer; a partial frame
//!                         │        is spilled into a pooled buffer)
//!                         ▼
//!                    proto::Conn   (sans-IO: bytes in → events out)
//!                         │ events: Message / Ping / Pong / Close
//!                         ▼
//!                    route handler (echo, …)
//!                         │ frames
//!                         ▼
//!                    server::outbuf (per-connection queue, one writev per
//!                                    loop iteration)
//! ```
//!
//! Reading order: [`proto`] (the protocol, testable in memory), then
//! [`server`] (workers, connection table, timers, buffers, out queues).

pub mod auth;
pub mod base;
pub mod broker;
pub mod config;
pub mod delta;
pub mod gateway;
pub mod hooks;
pub mod http;
pub mod load;
pub mod proto;
pub mod pubsub;
pub mod server;
pub mod tls;
