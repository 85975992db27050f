//! The connection table: a slab whose keys carry a generation, so that an
//! event or a timer for a connection that has gone and whose slot was reused
//! is recognised as stale (as h2 does with its stream slab).
//!
//! The generation is kept by the value itself ([`Generational`]), in 3 bytes
//! a connection's layout leaves as padding, so that a slot costs what the
//! connection does (80 B, where a separate `u32` beside it made 88 B:
//! docs/density.md). 24 bits: a stale token is taken for a new connection
//! only if its slot was reused 16,777,216 times while it was held (a timer
//! is cancelled when its connection goes; a broker reply waits seconds).

use mio::Token;
use slab::Slab;

use crate::base::ConnKey;

/// The key of the connection registered with `token` (the server alone
/// speaks in tokens).
pub fn key_of(token: Token) -> ConnKey {
    ConnKey::from_bits(token.0 as u64)
}

/// The token a connection's socket is registered with.
pub fn token_of(key: ConnKey) -> Token {
    Token(key.to_bits() as usize)
}

/// The slot a token names (its order in the table: [`ConnTable`] hands
/// out the lowest free slot, so slot order is about the order of accept).
pub fn slot_of(token: Token) -> usize {
    token.0 & 0xFFFF_FFFF
}

/// `keys` replaced by `subscribers` sorted by slot (a fan-out walks its
/// subscribers in the order of the table, not of a hash set).
pub fn in_slot_order(subscribers: impl Iterator<Item = ConnKey>, keys: &mut Vec<ConnKey>) {
    keys.clear();
    keys.extend(subscribers);
    keys.sort_unstable_by_key(|k| slot_of(token_of(*k)));
}

/// Tokens at or above this are reserved for the listener and the waker.
pub const RESERVED: usize = usize::MAX - 16;

/// A slot's generation: 24 bits, never 0 (so `Token(index)` alone is never
/// valid, and a token is never zero).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gen([u8; 3]);

impl Gen {
    const MAX: u32 = (1 << 24) - 1;

    fn new(g: u32) -> Gen {
        let [a, b, c, _] = g.to_le_bytes();
        Gen([a, b, c])
    }

    fn get(self) -> u32 {
        let [a, b, c] = self.0;
        u32::from_le_bytes([a, b, c, 0])
    }
}

/// A value the table holds: it keeps its slot's generation.
pub trait Generational {
    fn generation(&self) -> Gen;
    fn set_generation(&mut self, g: Gen);
}

/// A slab of `T` addressed by `Token(index | generation << 32)`.
#[derive(Debug)]
pub struct ConnTable<T> {
    slab: Slab<T>,
    next_gen: u32,
}

impl<T: Generational> Default for ConnTable<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Generational> ConnTable<T> {
    pub fn new() -> Self {
        ConnTable {
            slab: Slab::new(),
            next_gen: 1,
        }
    }

    pub fn with_capacity(n: usize) -> Self {
        ConnTable {
            slab: Slab::with_capacity(n),
            next_gen: 1,
        }
    }

    /// Insert and return the new entry's token.
    pub fn insert(&mut self, mut value: T) -> Token {
        let gen = self.next_gen;
        // Generation 0 is never used, so Token(index) alone is never valid.
        self.next_gen = if gen == Gen::MAX { 1 } else { gen + 1 };
        value.set_generation(Gen::new(gen));
        let idx = self.slab.insert(value);
        assert!(idx < u32::MAX as usize, "connection table full");
        Token(idx | (gen as usize) << 32)
    }

    fn split(token: Token) -> (usize, u32) {
        (slot_of(token), (token.0 >> 32) as u32)
    }

    pub fn get(&self, token: Token) -> Option<&T> {
        let (idx, gen) = Self::split(token);
        self.slab.get(idx).filter(|s| s.generation().get() == gen)
    }

    pub fn get_mut(&mut self, token: Token) -> Option<&mut T> {
        let (idx, gen) = Self::split(token);
        self.slab
            .get_mut(idx)
            .filter(|s| s.generation().get() == gen)
    }

    /// The token of the entry in `slot`, if one is there (whatever its
    /// generation: for what names a connection by its slot alone).
    pub fn token_at(&self, slot: usize) -> Option<Token> {
        let s = self.slab.get(slot)?;
        Some(Token(slot | (s.generation().get() as usize) << 32))
    }

    pub fn remove(&mut self, token: Token) -> Option<T> {
        let (idx, gen) = Self::split(token);
        match self.slab.get(idx) {
            Some(s) if s.generation().get() == gen => Some(self.slab.remove(idx)),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Every live token.
    pub fn tokens(&self) -> Vec<Token> {
        self.slab
            .iter()
            .map(|(i, s)| Token(i | (s.generation().get() as usize) << 32))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct V(&'static str, Gen);

    impl Generational for V {
        fn generation(&self) -> Gen {
            self.1
        }
        fn set_generation(&mut self, g: Gen) {
            self.1 = g;
        }
    }

    fn v(s: &'static str) -> V {
        V(s, Gen::default())
    }

    #[test]
    fn stale_tokens_do_not_reach_a_reused_slot() {
        let mut t = ConnTable::new();
        let a = t.insert(v("a"));
        assert_eq!(t.get(a).map(|v| v.0), Some("a"));
        assert_eq!(t.remove(a).map(|v| v.0), Some("a"));
        let b = t.insert(v("b"));
        assert_eq!(a.0 & 0xFFFF_FFFF, b.0 & 0xFFFF_FFFF, "slot reused");
        assert!(t.get(a).is_none());
        assert!(t.remove(a).is_none());
        assert_eq!(t.get_mut(b).map(|v| v.0), Some("b"));
        assert_eq!(
            t.get(Token(b.0 & 0xFFFF_FFFF)),
            None,
            "generation 0 never valid"
        );
        assert_eq!(t.tokens(), vec![b]);
        assert_eq!(
            t.token_at(slot_of(a)),
            Some(b),
            "the slot's present occupant"
        );
        assert_eq!(t.token_at(slot_of(b) + 1), None);
    }

    #[test]
    fn slot_order_is_insertion_order_whatever_the_generations() {
        let mut t = ConnTable::new();
        let mut toks: Vec<Token> = ["a", "b", "c", "d"].map(|s| t.insert(v(s))).to_vec();
        t.remove(toks[1]);
        toks[1] = t.insert(v("e")); // slot 1 again, a later generation
        assert!(toks[1].0 > toks[3].0, "a token's order is its generation's");
        toks.reverse();
        toks.sort_unstable_by_key(|t| slot_of(*t));
        let names: Vec<_> = toks.iter().map(|k| t.get(*k).map(|v| v.0)).collect();
        assert_eq!(names, [Some("a"), Some("e"), Some("c"), Some("d")]);
    }

    /// A fan-out's subscribers come out of their hash set in any order
    /// and are walked in slot order, reusing the scratch list.
    #[test]
    fn a_fan_out_walks_its_subscribers_in_slot_order() {
        let mut t = ConnTable::new();
        let mut toks: Vec<Token> = ["a", "b", "c", "d", "f"].map(|s| t.insert(v(s))).to_vec();
        t.remove(toks[2]);
        toks[2] = t.insert(v("e")); // slot 2 again, the newest token
        let set: std::collections::HashSet<ConnKey> = toks.iter().map(|t| key_of(*t)).collect();
        let mut keys = vec![key_of(toks[0]); 9]; // stale content is replaced
        in_slot_order(set.iter().copied(), &mut keys);
        let names: Vec<_> = keys
            .iter()
            .map(|k| t.get(token_of(*k)).map(|v| v.0))
            .collect();
        assert_eq!(
            names,
            [Some("a"), Some("b"), Some("e"), Some("d"), Some("f")]
        );
    }

    #[test]
    fn the_generation_wraps_past_24_bits_and_skips_zero() {
        let mut t = ConnTable::new();
        t.next_gen = Gen::MAX;
        let a = t.insert(v("a"));
        assert_eq!(a.0 >> 32, Gen::MAX as usize);
        assert_eq!(t.get(a).map(|v| v.0), Some("a"));
        t.remove(a);
        let b = t.insert(v("b"));
        assert_eq!(b.0 >> 32, 1, "after the last generation, 1 (never 0)");
        assert!(t.get(a).is_none());
        assert_eq!(t.tokens(), vec![b]);
    }
}
