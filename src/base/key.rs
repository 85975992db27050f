//! [`ConnKey`]: which connection of a worker something is for.

/// A connection of a worker: the index of its slot in the worker's table
/// and the slot's generation, so that an answer or a timer for a connection
/// that has gone, whose slot was reused, is recognised as stale (as h2 does
/// with its stream slab). Generation 0 is never given out.
///
/// The broker answers to `(worker, ConnKey, Tag)`, the worker's index of
/// subscribers holds `ConnKey`s, and only the server converts one to the
/// `mio::Token` it registers the socket with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey(u64);

impl ConnKey {
    pub const fn new(index: u32, generation: u32) -> ConnKey {
        ConnKey(index as u64 | (generation as u64) << 32)
    }

    pub const fn index(self) -> u32 {
        self.0 as u32
    }

    pub const fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The key as one number (index in the low 32 bits).
    pub const fn to_bits(self) -> u64 {
        self.0
    }

    pub const fn from_bits(bits: u64) -> ConnKey {
        ConnKey(bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let k = ConnKey::new(7, 3);
        assert_eq!((k.index(), k.generation()), (7, 3));
        assert_eq!(ConnKey::from_bits(k.to_bits()), k);
        assert_ne!(ConnKey::new(7, 4), k);
    }
}
