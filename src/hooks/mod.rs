//! Backend hooks: the gateway asking the application (proxies) and telling
//! it (webhooks), without ever blocking a worker loop.
//!
//! ```text
//! session (worker loop) ──Proxy::subscribe(req, ctx)──▶ client::BackendClient
//!        ▲                  (encode, queue; full:       (threads beside the loops:
//!        │                   refused at once)             keep-alive POSTs, timeout,
//!        │                                                answer capped, decoded)
//!        └──── worker inbox ◀── sink(ctx, proxy::Decision) ◀──┘
//!
//! engine, broker ──Webhooks::emit(event)──▶ webhooks thread ──▶ batched, signed POSTs
//! ```
//!
//! - [`config`]: `[proxy]`, `[webhooks]`, and their validation.
//! - [`client`]: the HTTP client (ureq), its queue, limits and counters.
//! - [`resolve`]: the backend's address for it, without a thread per call.
//! - [`proxy`]: Centrifugo's proxy protocol: requests, answers, and the
//!   decisions sessions apply ([`proxy::Decision`]); error code 14.
//! - [`webhooks`]: events, batching, signature, retries.
//!
//! Nothing here knows sessions, workers or brokers: a caller passes a
//! context of its own with each call and gets it back with the decision
//! (the worker's reply address, later). `docs/hooks.md` is the protocol as
//! wsgate speaks it.

pub mod client;
pub mod config;
pub mod events;
pub mod proxy;
pub mod resolve;
pub mod webhooks;
