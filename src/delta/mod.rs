//! Fossil deltas of publications (issue 16): a subscriber that asks for
//! them gets, after a whole publication, each next one as the difference
//! from the previous one's `data`.
//!
//! - [`fossil`]: the codec. A port of Fossil's `delta_create`, byte for
//!   byte, plus a variant whose deltas of UTF-8 text are UTF-8; a strict,
//!   bounded apply.
//! - [`wire`]: the delta form of a publication frame
//!   (`{"channel":…,"offset":…,"data":"<delta>","delta":true}`, the delta
//!   as a JSON string), and where `data` lies in a whole one.
//! - [`dashboard`]: the 200-metric dashboard the figures are taken on.
//! - [`state`]: one worker's [`DeltaChannels`]: each channel's previous
//!   publication (only for channels with delta subscribers, bounded), the
//!   delta computed at most once per publication, and the choice, per
//!   subscriber, between the two shared frames.
//! - [`fanout`]: one publication's frames for one worker's subscribers
//!   ([`Fanout`]): whole or delta per subscriber, each form compressed at
//!   most once for permessage-deflate.
//!
//! How the gateway uses it (`server::worker::Worker::fan_out`, per
//! `Deliver`):
//!
//! ```text
//! let mut fan = Fanout::new(&mut deltas, &channel, offset, &whole);
//! for each subscriber of channel:
//!     let form = fan.pick(session.delta_cursor(&channel)); // None: not asked
//!     hold fan.plain(form) behind a waiting reply, or queue
//!     fan.for_conn(form, conn, deflate)   // or end the subscription
//! ```
//!
//! with [`DeltaChannels::join`] when a subscribe is granted deltas
//! (`gateway::session`, `Sub::delta`), [`DeltaChannels::leave`] when that
//! subscription is removed (unsubscribe, drop notice, refresh, refused,
//! close), and [`DeltaChannels::reset`] on a `resync` (through
//! [`Fanout::new`]). The wire format and the figures: `docs/deltas.md`.

pub mod dashboard;
pub mod fanout;
pub mod fossil;
pub mod state;
pub mod wire;

pub use fanout::{Fanout, Form};
pub use state::{DeltaChannels, DeltaCursor, DeltaLimits, DeltaStats, Pick, Prepared};
