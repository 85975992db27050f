//! Leaf types every layer shares. Nothing here imports the rest of the
//! crate, so that any module
//! may use them without an arrow pointing up:
//!
//! - [`ConnKey`]: a connection of a worker (slot and generation); the
//!   server alone converts it to and from its `mio::Token`.
//! - [`Frame`]: a server frame encoded once and shared, which knows its
//!   header length and, for a publication, its offset.
//! - [`OpError`]: the one error of client ops and API calls, with its code
//!   and HTTP status.
//! - [`Millis`]: a duration in the configuration.
//! - client ids a worker makes, held as numbers ([`client_id`]), and
//!   [`ClientName`], an id's text either way.
//! - channel names, user ids and [`Position`]s ([`channel`]); the checked
//!   query string ([`query`]); the token [`Bucket`]; the counters
//!   ([`counters`]); the canonical compact form of publication data
//!   ([`compact`]); a bounded reader of binary records ([`cursor`]).

pub mod bucket;
pub mod channel;
pub mod client_id;
pub mod compact;
pub mod counters;
pub mod cursor;
pub mod error;
pub mod frame;
pub mod key;
pub mod query;
pub mod state;
pub mod time;

pub use bucket::Bucket;
pub use channel::Position;
pub use client_id::ClientName;
pub use error::OpError;
pub use frame::{Frame, FrameKind};
pub use key::{ConnKey, SubKey};
pub use time::Millis;
