//! The in-memory broker's channels as bytes, for a live handoff (issue 17):
//! the old process writes them once it has sealed its broker, the new one
//! reads them before its workers start.
//!
//! What moves: every live channel's history (offsets, publication payloads,
//! and each publication's **age**, not its time: the two processes' clocks
//! start at different instants, so ages keep every TTL where it was),
//! epoch and last offset; every idle channel's position and what is left
//! of its grace; the idempotency keys still in their window with their
//! answer; and the keys of the hash that places channels in shards and
//! names idle positions (an idle position is kept under a keyed hash of
//! its name, never the name, so the new process must hash as the old one
//! did to find it). What does not move: presence and subscriber counts
//! (sessions re-join and re-subscribe when they come back), user presence.
//!
//! Layout (little-endian): `MAGIC`, version (u16), hash keys (2 × u64),
//! then three counted sections (u32 count each): channels (name: u16 +
//! UTF-8; epoch u64; top u64; publications: u32 count, each offset u64,
//! age ms u64, payload u32 + bytes), idle positions (key u64, epoch u64,
//! top u64, grace left ms u64), idempotency keys (key u16 + UTF-8, epoch
//! u16 + UTF-8, offset u64, window left ms u64).
//!
//! The reader is bounded: every length is checked against what is left
//! before anything is taken or allocated, every prefix of a state is
//! refused, a version other than [`VERSION`] is [`SnapshotError::Version`]
//! (the new process refuses the handoff; the old one unseals and serves
//! on), and a publication's frame header is built anew from its payload,
//! never read.

use std::fmt;

use crate::base::cursor::{Cursor, CursorError};
use crate::base::Frame;
use crate::proto::frame::text_frame;

/// The first bytes of a state.
pub const MAGIC: [u8; 8] = *b"WSGCHANS";
/// The state format this binary writes and reads.
pub const VERSION: u16 = 1;

/// Offsets stay below 2^56 (a [`Frame`] keeps them in 56 bits).
const MAX_OFFSET: u64 = (1 << 56) - 1;

/// The broker's channels, as moved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// The keys of the channel-name hash (shards, idle positions).
    pub hash_keys: (u64, u64),
    pub channels: Vec<ChannelState>,
    pub idle: Vec<IdleState>,
    pub keys: Vec<KeyState>,
}

/// A live channel: its position and the publications it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelState {
    pub name: String,
    pub epoch: u64,
    /// The last offset assigned.
    pub top: u64,
    /// Consecutive offsets ending at `top` (none: nothing held).
    pub publications: Vec<PubState>,
}

/// One publication held in a history.
#[derive(Clone, Debug)]
pub struct PubState {
    pub offset: u64,
    /// How long ago it was published (ms): its TTL runs on from there.
    pub age_ms: u64,
    /// The publication frame (`{"channel":…,"offset":…,"data":…}`).
    pub frame: Frame,
}

impl PartialEq for PubState {
    fn eq(&self, o: &Self) -> bool {
        (self.offset, self.age_ms, self.frame.payload()) == (o.offset, o.age_ms, o.frame.payload())
    }
}

impl Eq for PubState {}

/// An idle channel's position, under its keyed hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleState {
    pub key: u64,
    pub epoch: u64,
    pub top: u64,
    /// What is left of its grace (ms).
    pub left_ms: u64,
}

/// An idempotency key (`CHANNEL\nKEY`) and the answer it gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyState {
    pub key: String,
    pub epoch: String,
    pub offset: u64,
    /// What is left of its window (ms).
    pub left_ms: u64,
}

/// What is wrong with a state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotError {
    /// Shorter than its fields say.
    Truncated,
    /// Not a broker state.
    Magic,
    /// A version of the state format this binary does not know.
    Version(u16),
    /// A field out of range.
    Invalid(&'static str),
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Truncated => write!(f, "broker state truncated"),
            SnapshotError::Magic => write!(f, "not a broker state (bad magic)"),
            SnapshotError::Version(v) => write!(
                f,
                "broker state format version {v} unknown (this binary reads {VERSION})"
            ),
            SnapshotError::Invalid(what) => write!(f, "invalid broker state: {what}"),
        }
    }
}

impl std::error::Error for SnapshotError {}

impl State {
    /// The bytes, at this binary's version.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_as(VERSION)
    }

    /// The bytes as a binary of format `version` would write them (tests
    /// play a binary of another version with it).
    pub fn encode_as(&self, version: u16) -> Vec<u8> {
        let held: usize = self
            .channels
            .iter()
            .flat_map(|c| &c.publications)
            .map(|p| p.frame.payload().len() + 20)
            .sum();
        let mut b = Vec::with_capacity(
            64 + held + self.channels.len() * 64 + self.idle.len() * 32 + self.keys.len() * 64,
        );
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&version.to_le_bytes());
        put_u64(&mut b, self.hash_keys.0);
        put_u64(&mut b, self.hash_keys.1);
        put_u32(&mut b, self.channels.len());
        for c in &self.channels {
            put_str(&mut b, &c.name);
            put_u64(&mut b, c.epoch);
            put_u64(&mut b, c.top);
            put_u32(&mut b, c.publications.len());
            for p in &c.publications {
                put_u64(&mut b, p.offset);
                put_u64(&mut b, p.age_ms);
                let payload = p.frame.payload();
                put_u32(&mut b, payload.len());
                b.extend_from_slice(payload);
            }
        }
        put_u32(&mut b, self.idle.len());
        for i in &self.idle {
            for n in [i.key, i.epoch, i.top, i.left_ms] {
                put_u64(&mut b, n);
            }
        }
        put_u32(&mut b, self.keys.len());
        for k in &self.keys {
            put_str(&mut b, &k.key);
            put_str(&mut b, &k.epoch);
            put_u64(&mut b, k.offset);
            put_u64(&mut b, k.left_ms);
        }
        b
    }

    /// Read a state; another version is [`SnapshotError::Version`].
    pub fn decode(b: &[u8]) -> Result<State, SnapshotError> {
        let mut r = Cursor::new(b);
        if r.take(MAGIC.len())? != MAGIC {
            return Err(SnapshotError::Magic);
        }
        let version = r.u16()?;
        if version != VERSION {
            return Err(SnapshotError::Version(version));
        }
        let hash_keys = (r.u64()?, r.u64()?);
        // Each count is bounded by what is left (an entry takes at least
        // the bytes named), so no count allocates beyond the input.
        let n = count(&mut r, 2 + 8 + 8 + 4)?;
        let mut channels = Vec::with_capacity(n);
        for _ in 0..n {
            channels.push(channel(&mut r)?);
        }
        let n = count(&mut r, 32)?;
        let mut idle = Vec::with_capacity(n);
        for _ in 0..n {
            let (key, epoch, top, left_ms) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
            if top > MAX_OFFSET {
                return Err(SnapshotError::Invalid("offset"));
            }
            idle.push(IdleState {
                key,
                epoch,
                top,
                left_ms,
            });
        }
        let n = count(&mut r, 2 + 2 + 8 + 8)?;
        let mut keys = Vec::with_capacity(n);
        for _ in 0..n {
            let (key, epoch, offset, left_ms) = (r.string()?, r.string()?, r.u64()?, r.u64()?);
            keys.push(KeyState {
                key,
                epoch,
                offset,
                left_ms,
            });
        }
        if !r.is_empty() {
            return Err(SnapshotError::Invalid("bytes after the state"));
        }
        Ok(State {
            hash_keys,
            channels,
            idle,
            keys,
        })
    }
}

fn put_u64(b: &mut Vec<u8>, n: u64) {
    b.extend_from_slice(&n.to_le_bytes());
}

/// Counts and lengths are u32: a history holds far fewer publications and
/// bytes (the count and byte limits of a channel).
fn put_u32(b: &mut Vec<u8>, n: usize) {
    b.extend_from_slice(&(n.min(u32::MAX as usize) as u32).to_le_bytes());
}

/// Channel names and keys are short (limits.max_channel_length, 128-byte
/// idempotency keys): a u16 length.
fn put_str(b: &mut Vec<u8>, s: &str) {
    let n = s.len().min(usize::from(u16::MAX));
    b.extend_from_slice(&(n as u16).to_le_bytes());
    b.extend_from_slice(&s.as_bytes()[..n]);
}

impl From<CursorError> for SnapshotError {
    fn from(e: CursorError) -> Self {
        match e {
            CursorError::Short => SnapshotError::Truncated,
            CursorError::NotUtf8 => SnapshotError::Invalid("string not UTF-8"),
        }
    }
}

/// A count of entries of at least `min_entry` bytes each: no count claims
/// more than the bytes left.
fn count(r: &mut Cursor, min_entry: usize) -> Result<usize, SnapshotError> {
    let n = r.u32()? as usize;
    if n.saturating_mul(min_entry) > r.left() {
        return Err(SnapshotError::Truncated);
    }
    Ok(n)
}

fn channel(r: &mut Cursor) -> Result<ChannelState, SnapshotError> {
    let name = r.string()?;
    if name.is_empty() {
        return Err(SnapshotError::Invalid("empty channel name"));
    }
    let (epoch, top) = (r.u64()?, r.u64()?);
    if top > MAX_OFFSET {
        return Err(SnapshotError::Invalid("offset"));
    }
    let n = count(r, 8 + 8 + 4)?;
    // The publications end at `top`, one offset after another.
    let first = top
        .checked_sub(n as u64)
        .ok_or(SnapshotError::Invalid("more publications than offsets"))?
        + 1;
    let mut publications = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let (offset, age_ms) = (r.u64()?, r.u64()?);
        if offset != first + i {
            return Err(SnapshotError::Invalid(
                "publication offsets not consecutive",
            ));
        }
        let len = r.u32()? as usize;
        let payload = r.take(len)?;
        // A text frame's payload is UTF-8 (RFC 6455 §5.6: "The "Payload
        // data" is text data encoded as UTF-8").
        if std::str::from_utf8(payload).is_err() {
            return Err(SnapshotError::Invalid("publication not UTF-8"));
        }
        let (bytes, header_len) = text_frame(payload);
        publications.push(PubState {
            offset,
            age_ms,
            frame: Frame::publication(bytes, header_len, offset),
        });
    }
    Ok(ChannelState {
        name,
        epoch,
        top,
        publications,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(channel: &str, offset: u64, data: &str) -> PubState {
        let raw = serde_json::value::RawValue::from_string(data.into()).unwrap();
        PubState {
            offset,
            age_ms: 1000 * offset,
            frame: crate::broker::publication_frame(channel, offset, &raw),
        }
    }

    fn sample() -> State {
        State {
            hash_keys: (0x0123_4567_89ab_cdef, 42),
            channels: vec![
                ChannelState {
                    name: "news".into(),
                    epoch: 7,
                    top: 3,
                    publications: vec![
                        publication("news", 2, r#"{"a":"é"}"#),
                        publication("news", 3, "[1,2]"),
                    ],
                },
                ChannelState {
                    name: "quiet:é".into(),
                    epoch: u64::MAX,
                    top: 9,
                    publications: vec![],
                },
            ],
            idle: vec![IdleState {
                key: 99,
                epoch: 5,
                top: 12,
                left_ms: 250_000,
            }],
            keys: vec![KeyState {
                key: "news\nk-1".into(),
                epoch: "AAAAAAAAAAc".into(),
                offset: 3,
                left_ms: 1,
            }],
        }
    }

    #[test]
    fn a_state_round_trips() {
        for s in [State::default(), sample()] {
            assert_eq!(State::decode(&s.encode()), Ok(s.clone()));
        }
        // The frame is built anew, header included, and is the one the
        // broker would have made.
        let s = State::decode(&sample().encode()).unwrap();
        let f = &s.channels[0].publications[1].frame;
        let want = &sample().channels[0].publications[1].frame;
        assert_eq!(&f[..], &want[..]);
        assert_eq!(f.offset(), 3);
    }

    #[test]
    fn every_prefix_of_a_state_is_refused_without_panic() {
        let b = sample().encode();
        for cut in 0..b.len() {
            assert!(State::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn another_version_is_refused_by_number() {
        let b = sample().encode_as(VERSION + 1);
        assert_eq!(State::decode(&b), Err(SnapshotError::Version(VERSION + 1)));
        assert!(SnapshotError::Version(99)
            .to_string()
            .contains("version 99 unknown"));
    }

    #[test]
    fn bad_states_are_refused() {
        let head = |n_channels: u32| {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&VERSION.to_le_bytes());
            b.extend_from_slice(&[0; 16]);
            b.extend_from_slice(&n_channels.to_le_bytes());
            b
        };
        let channel = |b: &mut Vec<u8>, top: u64, pubs: &[(u64, &[u8])]| {
            b.extend_from_slice(&1u16.to_le_bytes());
            b.push(b'c');
            b.extend_from_slice(&1u64.to_le_bytes());
            b.extend_from_slice(&top.to_le_bytes());
            b.extend_from_slice(&(pubs.len() as u32).to_le_bytes());
            for (offset, payload) in pubs {
                b.extend_from_slice(&offset.to_le_bytes());
                b.extend_from_slice(&0u64.to_le_bytes());
                b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                b.extend_from_slice(payload);
            }
        };
        let tail = |b: &mut Vec<u8>| b.extend_from_slice(&[0; 8]);
        let mut bad_magic = sample().encode();
        bad_magic[0] = b'X';
        assert_eq!(State::decode(&bad_magic), Err(SnapshotError::Magic));
        // A count far beyond the input: refused before allocating.
        let mut b = head(u32::MAX);
        tail(&mut b);
        assert_eq!(State::decode(&b), Err(SnapshotError::Truncated));
        /// A channel's top, its publications (offset, payload), the error.
        type Case<'a> = (u64, &'a [(u64, &'a [u8])], SnapshotError);
        let table: &[Case] = &[
            (
                5,
                &[(4, b"1"), (4, b"2")],
                SnapshotError::Invalid("publication offsets not consecutive"),
            ),
            (
                1,
                &[(0, b"1"), (1, b"2")],
                SnapshotError::Invalid("more publications than offsets"),
            ),
            (
                1,
                &[(1, b"\xff")],
                SnapshotError::Invalid("publication not UTF-8"),
            ),
            (1 << 56, &[], SnapshotError::Invalid("offset")),
        ];
        for (top, pubs, want) in table {
            let mut b = head(1);
            channel(&mut b, *top, pubs);
            tail(&mut b);
            assert_eq!(State::decode(&b).as_ref(), Err(want), "{top} {pubs:?}");
        }
        let mut b = sample().encode();
        b.push(0);
        assert_eq!(
            State::decode(&b),
            Err(SnapshotError::Invalid("bytes after the state"))
        );
    }
}
