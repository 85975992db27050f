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

/// A [`ConnKey`] in 4 bytes, as a channel's subscriber set holds it (issue
/// 13 part 6: 8-byte keys cost 15.5 B a subscriber at a set's usual load,
/// 4-byte ones 8.6; docs/density.md): the slot, which a worker keeps below
/// 2^24 ([`SubKey::SLOTS`]), and the low 8 bits of its generation. A key
/// left behind by a connection that has gone (none should be: a session
/// leaves its channels when it ends) is taken for the slot's next
/// occupant only if their generations agree in those 8 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubKey(u32);

impl SubKey {
    /// How many slots a worker's table may have.
    pub const SLOTS: u32 = 1 << 24;

    /// The slot.
    pub const fn slot(self) -> u32 {
        self.0 & (Self::SLOTS - 1)
    }

    /// Does it name this generation (in its low 8 bits)?
    pub const fn matches(self, generation: u32) -> bool {
        (self.0 >> 24) == generation & 0xFF
    }
}

impl ConnKey {
    /// Its 4-byte form (the slot is below [`SubKey::SLOTS`]).
    pub const fn sub_key(self) -> SubKey {
        SubKey(self.index() & (SubKey::SLOTS - 1) | (self.generation() & 0xFF) << 24)
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

    #[test]
    fn a_sub_key_is_the_slot_and_the_generations_low_byte() {
        let k = ConnKey::new(SubKey::SLOTS - 1, 0x12_34_56).sub_key();
        assert_eq!(k.slot(), SubKey::SLOTS - 1);
        assert!(k.matches(0x12_34_56));
        assert!(k.matches(0x56), "only the low 8 bits are kept");
        assert!(!k.matches(0x12_34_57));
        assert_eq!(std::mem::size_of::<SubKey>(), 4);
        assert_ne!(ConnKey::new(3, 1).sub_key(), ConnKey::new(3, 2).sub_key());
    }
}
