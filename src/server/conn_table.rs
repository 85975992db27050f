//! The connection table: a slab whose keys carry a generation, so that an
//! event or a timer for a connection that has gone and whose slot was reused
//! is recognised as stale (as h2 does with its stream slab).

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

/// Tokens at or above this are reserved for the listener and the waker.
pub const RESERVED: usize = usize::MAX - 16;

#[derive(Debug)]
struct Slot<T> {
    gen: u32,
    value: T,
}

/// A slab of `T` addressed by `Token(index | generation << 32)`.
#[derive(Debug)]
pub struct ConnTable<T> {
    slab: Slab<Slot<T>>,
    next_gen: u32,
}

impl<T> Default for ConnTable<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> ConnTable<T> {
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
    pub fn insert(&mut self, value: T) -> Token {
        let gen = self.next_gen;
        // Generation 0 is never used, so Token(index) alone is never valid.
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let idx = self.slab.insert(Slot { gen, value });
        assert!(idx < u32::MAX as usize, "connection table full");
        Token(idx | (gen as usize) << 32)
    }

    fn split(token: Token) -> (usize, u32) {
        (token.0 & 0xFFFF_FFFF, (token.0 >> 32) as u32)
    }

    pub fn get(&self, token: Token) -> Option<&T> {
        let (idx, gen) = Self::split(token);
        self.slab
            .get(idx)
            .filter(|s| s.gen == gen)
            .map(|s| &s.value)
    }

    pub fn get_mut(&mut self, token: Token) -> Option<&mut T> {
        let (idx, gen) = Self::split(token);
        self.slab
            .get_mut(idx)
            .filter(|s| s.gen == gen)
            .map(|s| &mut s.value)
    }

    pub fn remove(&mut self, token: Token) -> Option<T> {
        let (idx, gen) = Self::split(token);
        match self.slab.get(idx) {
            Some(s) if s.gen == gen => Some(self.slab.remove(idx).value),
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
            .map(|(i, s)| Token(i | (s.gen as usize) << 32))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_tokens_do_not_reach_a_reused_slot() {
        let mut t = ConnTable::new();
        let a = t.insert("a");
        assert_eq!(t.get(a), Some(&"a"));
        assert_eq!(t.remove(a), Some("a"));
        let b = t.insert("b");
        assert_eq!(a.0 & 0xFFFF_FFFF, b.0 & 0xFFFF_FFFF, "slot reused");
        assert_eq!(t.get(a), None);
        assert_eq!(t.remove(a), None);
        assert_eq!(t.get_mut(b).map(|v| *v), Some("b"));
        assert_eq!(
            t.get(Token(b.0 & 0xFFFF_FFFF)),
            None,
            "generation 0 never valid"
        );
        assert_eq!(t.tokens(), vec![b]);
    }
}
