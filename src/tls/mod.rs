//! TLS inside the gateway, on rustls (with *ring*: [`provider`] says why).
//!
//! It sits in the I/O shell, between the socket and `proto`: records are
//! read into the per-worker buffer and decrypted there ([`Session::feed`]),
//! and the out queue's frames are encrypted at flush time
//! ([`Session::encrypt`]). A [`Session`] is rustls's unbuffered connection
//! and keeps no buffer of its own, so an idle TLS connection holds only
//! its keys and handshake leftovers (docs/tls.md has the sizes).
//!
//! - [`server`]: the listener's configuration from `[tls]` (TLS 1.3 and
//!   1.2, ALPN `http/1.1`, session tickets), sessions made from it;
//! - [`certs`]: PEM files, the SNI choice, reload (SIGHUP: [`sighup`]);
//! - [`session`]: one connection, sans-IO, either role;
//! - [`client`]: the client side, for wsgate-load and tests;
//! - [`error`]: what goes wrong and what the peer is told.
//!
//! Nothing here touches a socket or a clock: the shell reads, writes and
//! runs the handshake deadline.

pub mod certs;
pub mod client;
pub mod error;
pub mod provider;
pub mod server;
pub mod session;
pub mod sighup;

pub use certs::{CertError, CertStore, Reloaded};
pub use error::TlsError;
pub use server::TlsServer;
pub use session::{Fed, Session};

#[cfg(test)]
mod tests;
