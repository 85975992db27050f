//! [`Frame`]: a server frame encoded once and shared by every subscriber of
//! a worker, which knows what the transports need of it without parsing it
//! again.

use std::ops::Deref;
use std::sync::Arc;

/// What a frame carries to subscribers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// `{"channel":…,"offset":…,"data":…}`: a publication, with its offset.
    Publication,
    /// Another event of a channel (presence: `join`, `leave`); no offset.
    Event,
    /// `{"channel":…,"resync":{"epoch":…,"offset":…}}`: the channel's
    /// stream broke; the stream's position moves (its JSON says where).
    Resync,
}

/// A whole unmasked WebSocket frame (header + payload) of the server,
/// encoded once and shared by reference, with its header length and its
/// kind and publication offset, so that SSE, long-poll and
/// permessage-deflate take its payload without reading the header again,
/// and SSE skips a duplicate without parsing the JSON.
///
/// 24 bytes: the header length (at most 10), the kind and the offset
/// (below 2^56) share one word.
#[derive(Clone, Debug)]
pub struct Frame {
    bytes: Arc<[u8]>,
    /// offset << 8 | kind << 4 | header length.
    meta: u64,
}

impl Frame {
    /// A frame of `kind` whose payload starts at `header_len`; `offset` is
    /// a publication's (0 for other kinds).
    pub fn new(bytes: Arc<[u8]>, header_len: u8, kind: FrameKind, offset: u64) -> Frame {
        debug_assert!(header_len < 16 && (header_len as usize) <= bytes.len());
        debug_assert!(offset < 1 << 56);
        let kind_bits = match kind {
            FrameKind::Publication => 0,
            FrameKind::Event => 1,
            FrameKind::Resync => 2,
        };
        Frame {
            bytes,
            meta: offset << 8 | kind_bits << 4 | (header_len & 0x0F) as u64,
        }
    }

    /// Publication `offset`, encoded.
    pub fn publication(bytes: Vec<u8>, header_len: u8, offset: u64) -> Frame {
        Frame::new(bytes.into(), header_len, FrameKind::Publication, offset)
    }

    /// A channel event that is not a publication.
    pub fn event(bytes: Vec<u8>, header_len: u8, kind: FrameKind) -> Frame {
        Frame::new(bytes.into(), header_len, kind, 0)
    }

    /// The whole frame, shared.
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.bytes
    }

    pub fn header_len(&self) -> usize {
        (self.meta & 0x0F) as usize
    }

    /// The JSON payload.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[self.header_len()..]
    }

    pub fn kind(&self) -> FrameKind {
        match (self.meta >> 4) & 0x0F {
            0 => FrameKind::Publication,
            1 => FrameKind::Event,
            _ => FrameKind::Resync,
        }
    }

    /// A publication's offset (0 for other kinds).
    pub fn offset(&self) -> u64 {
        self.meta >> 8
    }

    /// The same frame in an allocation of its own (one per worker, so that
    /// the reference count of a frame never bounces between cores).
    pub fn copy(&self) -> Frame {
        Frame {
            bytes: Arc::from(&self.bytes[..]),
            meta: self.meta,
        }
    }
}

/// Frames are equal when their bytes and what they say of them are.
impl PartialEq for Frame {
    fn eq(&self, other: &Frame) -> bool {
        self.meta == other.meta && self.bytes == other.bytes
    }
}

impl Eq for Frame {}

impl Deref for Frame {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_survive_the_packing() {
        let f = Frame::publication(b"\x81\x03abc".to_vec(), 2, (1 << 56) - 1);
        assert_eq!((f.header_len(), f.payload(), f.len()), (2, &b"abc"[..], 5));
        assert_eq!(
            (f.kind(), f.offset()),
            (FrameKind::Publication, (1 << 56) - 1)
        );
        let c = f.copy();
        assert!(!Arc::ptr_eq(c.bytes(), f.bytes()));
        assert_eq!((c.offset(), c.payload()), (f.offset(), f.payload()));
        let e = Frame::event(vec![0x81, 0x7E, 0, 1, b'x'], 4, FrameKind::Resync);
        assert_eq!(
            (e.kind(), e.offset(), e.payload()),
            (FrameKind::Resync, 0, &b"x"[..])
        );
        assert_eq!(std::mem::size_of::<Frame>(), 24);
    }
}
