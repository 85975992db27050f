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
//!
//! How fan-out uses it, per worker and publication:
//!
//! ```text
//! if let Some(mut p) = deltas.publish(&channel, &whole) {
//!     for each subscriber of channel:
//!         match sub.delta_cursor {                 // Some only if it asked for deltas
//!             Some(ref mut c) => match p.pick(c) {
//!                 Pick::Whole => queue(whole), Pick::Delta(f) => queue(f) },
//!             None => queue(whole),
//!         }
//! } else { queue(whole) to every subscriber }
//! ```
//!
//! with [`DeltaChannels::join`] when a delta subscription starts on the
//! worker (subscribe, recovery, resubscribe after a drop),
//! [`DeltaChannels::leave`] when it ends, and [`DeltaChannels::reset`] on a
//! `resync`. The wire format and the figures: `docs/deltas.md`.

pub mod dashboard;
pub mod fossil;
pub mod state;
pub mod wire;

pub use state::{DeltaChannels, DeltaCursor, DeltaLimits, DeltaStats, Pick, Prepared};
