//! The WebSocket protocol core (RFC 6455), sans-IO: it never touches a socket
//! or a clock. Bytes and `now` go in; events and bytes come out. The server
//! and the load generator share it, and the fuzz targets drive it directly.
//!
//! Reading order: [`error`] (every violation and its wire outcome),
//! [`handshake`], [`frame`], [`mask`], [`utf8`], [`close`], [`deflate`]
//! (permessage-deflate, RFC 7692), then [`conn`], the state machine that ties
//! them together.

pub mod close;
pub mod conn;
pub mod deflate;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;

pub use conn::{Conn, Event, Limits, Output, Role, Sender, State, Timeouts, TimerAction};
pub use error::{Error, Outcome};
pub use frame::OpCode;

#[cfg(test)]
mod tests;
