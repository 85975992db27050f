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

use crate::base::{ConnKey, SubKey};

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
pub fn in_slot_order(subscribers: impl Iterator<Item = SubKey>, keys: &mut Vec<SubKey>) {
    keys.clear();
    keys.extend(subscribers);
    keys.sort_unstable_by_key(|k| k.slot());
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
    /// Most entries at once: [`SubKey::SLOTS`] (a channel's subscriber
    /// set keeps 24 bits of slot), fewer in tests.
    limit: usize,
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
            limit: SubKey::SLOTS as usize,
        }
    }

    pub fn with_capacity(n: usize) -> Self {
        ConnTable {
            slab: Slab::with_capacity(n),
            next_gen: 1,
            limit: SubKey::SLOTS as usize,
        }
    }

    /// Does it hold as many entries as it may (16,777,216: for a worker,
    /// 64 GB of kernel socket memory)? The worker then refuses a new
    /// connection (closes it, with a log line) rather than insert it.
    pub fn is_full(&self) -> bool {
        self.slab.len() >= self.limit
    }

    /// Insert and return the new entry's token (not when full: the slab
    /// hands out the lowest free slot, so slots stay below the limit
    /// while entries do).
    pub fn insert(&mut self, mut value: T) -> Token {
        assert!(!self.is_full(), "connection table full");
        let gen = self.next_gen;
        // Generation 0 is never used, so Token(index) alone is never valid.
        self.next_gen = if gen == Gen::MAX { 1 } else { gen + 1 };
        value.set_generation(Gen::new(gen));
        let idx = self.slab.insert(value);
        Token(idx | (gen as usize) << 32)
    }

    /// The entry a channel's subscriber names, with its token, if it is
    /// still there (its generation agrees).
    pub fn get_mut_sub(&mut self, key: SubKey) -> Option<(Token, &mut T)> {
        let slot = key.slot() as usize;
        let s = self.slab.get_mut(slot)?;
        let gen = s.generation().get();
        key.matches(gen)
            .then_some((Token(slot | (gen as usize) << 32), s))
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
        let set: std::collections::HashSet<SubKey> =
            toks.iter().map(|t| key_of(*t).sub_key()).collect();
        let mut keys = vec![key_of(toks[0]).sub_key(); 9]; // stale content is replaced
        in_slot_order(set.iter().copied(), &mut keys);
        let names: Vec<_> = keys
            .iter()
            .map(|k| t.get_mut_sub(*k).map(|(tok, v)| (v.0, tok)))
            .collect();
        assert_eq!(
            names,
            [("a", 0), ("b", 1), ("e", 2), ("d", 3), ("f", 4)].map(|(n, i)| Some((n, toks[i])))
        );
    }

    /// A subscriber key left behind by a connection that has gone does not
    /// reach the slot's next occupant (unless 256 generations passed).
    #[test]
    fn a_stale_subscriber_key_is_not_the_next_occupants() {
        let mut t = ConnTable::new();
        let a = t.insert(v("a"));
        let stale = key_of(a).sub_key();
        t.remove(a);
        let b = t.insert(v("b"));
        assert_eq!(slot_of(b), slot_of(a), "the slot is reused");
        assert!(t.get_mut_sub(stale).is_none());
        assert_eq!(
            t.get_mut_sub(key_of(b).sub_key()).map(|(_, v)| v.0),
            Some("b")
        );
    }

    /// At its limit the table says so (the worker refuses the connection);
    /// a slot freed makes room again.
    #[test]
    fn a_full_table_says_so() {
        let mut t = ConnTable::new();
        t.limit = 2;
        let a = t.insert(v("a"));
        assert!(!t.is_full());
        t.insert(v("b"));
        assert!(t.is_full());
        t.remove(a);
        assert!(!t.is_full());
        let c = t.insert(v("c"));
        assert!(slot_of(c) < 2, "slots stay below the limit");
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
