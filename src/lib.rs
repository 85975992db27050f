//! # wsgate
//!
//! A high-density WebSocket gateway: a hand-rolled RFC 6455 server on mio,
//! one single-threaded event loop per core, no async runtime.
//!
//! ## Data flow
//!
//! ```text
//! socket ──readable──▶ server::worker (the I/O shell: mio loop, one per core)
//!                         │ bytes (per-worker read buffer; an incomplete head
//!                         │        or frame is spilled into a pooled buffer)
//!                         ▼
//!                    endpoint::Endpoint (one per connection)
//!                      Handshake ─ http::router ─▶ upgrade / HTTP answer / stream
//!                      Echo, Gateway(Session), Stream(SSE, long-poll), Http (waits)
//!                         │ frames through proto::Conn (sans-IO: bytes in →
//!                         │ events out); ops to gateway::Session, which asks
//!                         │ the broker and returns typed replies
//!                         ▼                                  │
//!                    endpoint::outbuf (per-connection        ▼
//!                      queue, one writev per loop      broker (memory, Redis,
//!                      iteration)                      NATS): offsets, history,
//!                         ▲                            presence, routing
//!                         │ WorkerMsg: answers (by ConnKey │
//!                         │ and Tag), publications         │
//!                    server::worker inbox ◀────────────────┘
//!                      fan-out: pubsub::Topics → each subscriber's endpoint
//!                      (a match on its kind and a push of the shared Frame)
//! ```
//!
//! Every `handle_*` method of an endpoint returns `endpoint::Effects`
//! (re-arm the timer, flush, a long-poll is due, process the spill,
//! resume reading) that the shell applies; the shell knows nothing of
//! HTTP, sessions or streams.
//!
//! ## Layers
//!
//! An import only ever points down (tests/import_graph.rs checks it):
//! [`base`] (leaf types: `ConnKey`, `Frame`, `OpError`, `Millis`,
//! `Position`, names, `Query`, `Bucket`, counters) → [`proto`], [`pubsub`]
//! → [`delta`] → [`config`] → [`tls`], [`auth`] → [`broker`] → [`hooks`]
//! → [`gateway`] → [`http`] → [`endpoint`] → [`server`] → [`load`].
//!
//! ## Reading order
//!
//! [`base`], then [`proto`] (the protocol, testable in memory), [`pubsub`]
//! (history, topics, presence), [`broker`] (where channels live),
//! [`gateway`] (sessions: ops, ordered replies, replays), [`http`] (router,
//! API, SSE and long-poll encoders, metrics), [`endpoint`] (what each
//! connection does), and last [`server`] (the shell: workers, connection
//! table, timers, buffers).

pub mod auth;
pub mod base;
pub mod broker;
pub mod config;
pub mod delta;
pub mod endpoint;
pub mod gateway;
pub mod hooks;
pub mod http;
pub mod load;
pub mod proto;
pub mod pubsub;
pub mod server;
pub mod tls;
