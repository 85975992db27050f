//! The handoff's messages, as bytes: every message is one `SOCK_SEQPACKET`
//! record (the kernel keeps the boundaries, and the descriptors of an
//! `SCM_RIGHTS` message arrive with the record that carries them).
//!
//! A record is `MAGIC` (8 bytes), the sender's format version (u16 LE), a
//! kind (u8), then the kind's fields. Integers are little-endian; strings
//! are a u16 length and UTF-8. Hand-written: a few small messages, read by
//! a bounded cursor that never panics on short or hostile input (a serde
//! format would add a dependency for that and pin the layout to derive
//! rules, which a versioned format must not drift with).

use std::fmt;

use crate::base::cursor::{Cursor, CursorError};

/// The first bytes of every record.
pub const MAGIC: [u8; 8] = *b"WSGATEHO";
/// The format this binary speaks. A record of another version is refused
/// (`WireError::Version`): the old process keeps serving. 2: the
/// `BrokerState` records and the live connections (`Conns`, `ConnsEnd`,
/// `TookConns`): a binary of version 1 would not read them and would take
/// over without the channels.
pub const VERSION: u16 = 2;

const K_HELLO: u8 = 1;
const K_READY: u8 = 2;
const K_REFUSE: u8 = 3;
const K_LISTENERS: u8 = 4;
const K_TOOK: u8 = 5;
const K_BROKER_STATE: u8 = 6;

/// Bytes of broker state per record: the record's header and fields fit
/// beside them under `unix::MAX_RECORD`.
pub const STATE_CHUNK: usize = super::unix::MAX_RECORD - 64;
// Live connections. New kinds go at the end of this list.
const K_CONNS: u8 = 7;
const K_CONNS_END: u8 = 8;
const K_TOOK_CONNS: u8 = 9;

/// The layout of a connection's frozen state (`Msg::Conns`), versioned on
/// its own: a binary that reads the records but not this layout refuses
/// the connections (the old process resumes them and serves on).
pub const STATE_VERSION: u16 = 1;

/// Which of the server's listeners a handed descriptor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerRole {
    /// `listen` (TLS when configured), one per worker.
    Main,
    /// `listen_plain` beside TLS, one per worker.
    Plain,
}

/// One record of the handoff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// Old → new, first: the old one's format version.
    Hello,
    /// New → old: it knows the format and is ready to take over.
    Ready,
    /// Either way: the handoff is off, and why.
    Refuse(String),
    /// Old → new: the listening sockets, one role per descriptor (the
    /// descriptors ride on the same record, in this order).
    Listeners(Vec<ListenerRole>),
    /// New → old: it serves with this many listeners; the old one goes
    /// on to hand its connections over.
    Took(u32),
    /// Old → new, after the listeners: a part (at most [`STATE_CHUNK`]
    /// bytes) of the sealed broker's state (`broker::memory::snapshot`);
    /// `last` ends it. A broker with nothing to move sends one empty last
    /// part.
    BrokerState { last: bool, bytes: Vec<u8> },
    /// Old → new: connections, each one's frozen state (in `state`'s
    /// layout) with its descriptor on the same record, in this order.
    Conns { state: u16, conns: Vec<Vec<u8>> },
    /// Old → new: that was all of them (how many).
    ConnsEnd(u32),
    /// New → old: it took this many connections; the old one forgets
    /// them (without a byte to their sockets) and goes.
    TookConns(u32),
}

/// What is wrong with a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than its fields say.
    Truncated,
    /// Not a handoff record at all.
    Magic,
    /// A version of the format this binary does not know.
    Version(u16),
    /// A layout of connection state (`Msg::Conns`) this binary does not
    /// know.
    StateVersion(u16),
    /// An unknown kind, or a field out of range.
    Invalid(&'static str),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated => write!(f, "record truncated"),
            WireError::Magic => write!(f, "not a handoff record (bad magic)"),
            WireError::Version(v) => {
                write!(
                    f,
                    "state format version {v} unknown (this binary speaks {VERSION})"
                )
            }
            WireError::StateVersion(v) => write!(
                f,
                "connection state version {v} unknown (this binary reads {STATE_VERSION})"
            ),
            WireError::Invalid(what) => write!(f, "invalid record: {what}"),
        }
    }
}

impl std::error::Error for WireError {}

impl Msg {
    /// The record, at this binary's version.
    pub fn encode(&self) -> Vec<u8> {
        encode_as(self, VERSION)
    }

    /// Parse one record; a record of another version is `Version`.
    pub fn decode(b: &[u8]) -> Result<Msg, WireError> {
        let mut r = Cursor::new(b);
        if r.take(MAGIC.len())? != MAGIC {
            return Err(WireError::Magic);
        }
        let version = r.u16()?;
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        let msg = match r.u8()? {
            K_HELLO => Msg::Hello,
            K_READY => Msg::Ready,
            K_REFUSE => Msg::Refuse(r.string()?),
            K_LISTENERS => {
                let n = r.u16()?;
                let mut roles = Vec::with_capacity(usize::from(n).min(r.left()));
                for _ in 0..n {
                    roles.push(match r.u8()? {
                        0 => ListenerRole::Main,
                        1 => ListenerRole::Plain,
                        _ => return Err(WireError::Invalid("listener role")),
                    });
                }
                Msg::Listeners(roles)
            }
            K_TOOK => Msg::Took(r.u32()?),
            K_BROKER_STATE => {
                let last = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::Invalid("last flag")),
                };
                let n = r.u32()? as usize;
                if n > STATE_CHUNK {
                    return Err(WireError::Invalid("state part too long"));
                }
                Msg::BrokerState {
                    last,
                    bytes: r.take(n)?.to_vec(),
                }
            }
            K_CONNS => {
                let state = r.u16()?;
                let n = r.u16()?;
                let mut conns = Vec::with_capacity(usize::from(n).min(r.left()));
                for _ in 0..n {
                    let len = r.u32()? as usize;
                    conns.push(r.take(len)?.to_vec());
                }
                Msg::Conns { state, conns }
            }
            K_CONNS_END => Msg::ConnsEnd(r.u32()?),
            K_TOOK_CONNS => Msg::TookConns(r.u32()?),
            _ => return Err(WireError::Invalid("kind")),
        };
        if !r.is_empty() {
            return Err(WireError::Invalid("bytes after the record"));
        }
        Ok(msg)
    }
}

/// The record as a binary of format `version` would write it (tests use
/// it to play a binary of another version).
pub fn encode_as(msg: &Msg, version: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(32);
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&version.to_le_bytes());
    match msg {
        Msg::Hello => b.push(K_HELLO),
        Msg::Ready => b.push(K_READY),
        Msg::Refuse(why) => {
            b.push(K_REFUSE);
            // At most u16::MAX bytes, cut at a character boundary.
            let mut end = why.len().min(usize::from(u16::MAX));
            while !why.is_char_boundary(end) {
                end -= 1;
            }
            b.extend_from_slice(&(end as u16).to_le_bytes());
            b.extend_from_slice(&why.as_bytes()[..end]);
        }
        Msg::Listeners(roles) => {
            b.push(K_LISTENERS);
            b.extend_from_slice(&(roles.len() as u16).to_le_bytes());
            b.extend(roles.iter().map(|r| match r {
                ListenerRole::Main => 0u8,
                ListenerRole::Plain => 1u8,
            }));
        }
        Msg::Took(n) => {
            b.push(K_TOOK);
            b.extend_from_slice(&n.to_le_bytes());
        }
        Msg::BrokerState { last, bytes } => {
            b.push(K_BROKER_STATE);
            b.push(u8::from(*last));
            // Parts are cut at STATE_CHUNK by the sender; a longer one is
            // cut here rather than written with a wrong length.
            let n = bytes.len().min(STATE_CHUNK);
            b.extend_from_slice(&(n as u32).to_le_bytes());
            b.extend_from_slice(&bytes[..n]);
        }
        Msg::Conns { state, conns } => {
            b.push(K_CONNS);
            b.extend_from_slice(&state.to_le_bytes());
            b.extend_from_slice(&(conns.len() as u16).to_le_bytes());
            for c in conns {
                b.extend_from_slice(&(c.len() as u32).to_le_bytes());
                b.extend_from_slice(c);
            }
        }
        Msg::ConnsEnd(n) => {
            b.push(K_CONNS_END);
            b.extend_from_slice(&n.to_le_bytes());
        }
        Msg::TookConns(n) => {
            b.push(K_TOOK_CONNS);
            b.extend_from_slice(&n.to_le_bytes());
        }
    }
    b
}

impl From<CursorError> for WireError {
    fn from(e: CursorError) -> Self {
        match e {
            CursorError::Short => WireError::Truncated,
            CursorError::NotUtf8 => WireError::Invalid("string not UTF-8"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Msg> {
        vec![
            Msg::Hello,
            Msg::Ready,
            Msg::Refuse("version 7 unknown — é".into()),
            Msg::Listeners(vec![
                ListenerRole::Main,
                ListenerRole::Main,
                ListenerRole::Plain,
            ]),
            Msg::Listeners(vec![]),
            Msg::Took(19_000),
            Msg::BrokerState {
                last: false,
                bytes: vec![7; STATE_CHUNK],
            },
            Msg::BrokerState {
                last: true,
                bytes: vec![],
            },
            Msg::Conns {
                state: STATE_VERSION,
                conns: vec![b"one".to_vec(), Vec::new(), vec![0xff; 300]],
            },
            Msg::Conns {
                state: 7,
                conns: Vec::new(),
            },
            Msg::ConnsEnd(3),
            Msg::TookConns(19_000),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in all() {
            assert_eq!(Msg::decode(&m.encode()), Ok(m.clone()), "{m:?}");
        }
    }

    #[test]
    fn every_prefix_of_a_record_is_refused_without_panic() {
        for m in all() {
            let b = m.encode();
            for cut in 0..b.len() {
                let r = Msg::decode(&b[..cut]);
                assert!(r.is_err(), "{m:?} cut at {cut}: {r:?}");
            }
        }
    }

    #[test]
    fn another_version_is_refused_by_number() {
        let b = encode_as(&Msg::Hello, VERSION + 1);
        assert_eq!(Msg::decode(&b), Err(WireError::Version(VERSION + 1)));
        let b = encode_as(&Msg::Ready, 0);
        assert_eq!(Msg::decode(&b), Err(WireError::Version(0)));
    }

    #[test]
    fn bad_records_are_refused() {
        let table: &[(&[u8], WireError)] = &[
            (b"WSGATEHX\x01\x00\x01", WireError::Magic),
            (b"WSGATEHO\x02\x00\x0a", WireError::Invalid("kind")),
            (
                b"WSGATEHO\x02\x00\x01\x00",
                WireError::Invalid("bytes after the record"),
            ),
            (
                b"WSGATEHO\x02\x00\x04\x01\x00\x07",
                WireError::Invalid("listener role"),
            ),
            // A count far beyond the record: no huge allocation, truncated.
            (b"WSGATEHO\x02\x00\x04\xff\xff\x00", WireError::Truncated),
            (
                b"WSGATEHO\x02\x00\x07\x01\x00\xff\xff\x01\x00\x00\x00",
                WireError::Truncated,
            ),
            (
                b"WSGATEHO\x02\x00\x07\x01\x00\x01\x00\xff\xff\xff\xff",
                WireError::Truncated,
            ),
            (
                b"WSGATEHO\x02\x00\x03\x02\x00\xff\xfe",
                WireError::Invalid("string not UTF-8"),
            ),
            (
                b"WSGATEHO\x02\x00\x06\x02\x00\x00\x00\x00",
                WireError::Invalid("last flag"),
            ),
            (
                b"WSGATEHO\x02\x00\x06\x01\xff\xff\xff\xff",
                WireError::Invalid("state part too long"),
            ),
            (
                b"WSGATEHO\x02\x00\x06\x01\x05\x00\x00\x00ab",
                WireError::Truncated,
            ),
        ];
        for (b, want) in table {
            assert_eq!(Msg::decode(b).as_ref(), Err(want), "{b:?}");
        }
    }

    #[test]
    fn a_full_state_part_fits_in_a_record_and_a_longer_one_is_cut() {
        let full = Msg::BrokerState {
            last: false,
            bytes: vec![1; STATE_CHUNK],
        };
        assert!(full.encode().len() <= crate::server::handoff::unix::MAX_RECORD);
        let long = Msg::BrokerState {
            last: true,
            bytes: vec![1; STATE_CHUNK + 1],
        };
        assert!(long.encode().len() <= crate::server::handoff::unix::MAX_RECORD);
        match Msg::decode(&long.encode()) {
            Ok(Msg::BrokerState { last, bytes }) => assert!(last && bytes.len() == STATE_CHUNK),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_long_refusal_is_cut_at_a_character_boundary() {
        let why = "é".repeat(40_000);
        match Msg::decode(&Msg::Refuse(why).encode()) {
            Ok(Msg::Refuse(s)) => assert!(s.len() <= usize::from(u16::MAX) && !s.is_empty()),
            other => panic!("{other:?}"),
        }
    }
}
