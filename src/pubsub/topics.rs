//! A worker's index of its local subscribers, per channel. Only the worker
//! thread touches it; fan-out iterates each channel's set.
//!
//! The index is also where the worker's channel names live: a session
//! subscribing to a channel that has local subscribers shares the index's
//! name ([`Topics::intern`]) instead of allocating its own.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::base::{ConnKey, SubKey};

/// The connections of this worker subscribed to one channel: a hash set
/// of 4-byte [`SubKey`]s (5 bytes a slot with its control byte, 6-11
/// bytes a member at the table's load), where 8-byte `ConnKey`s took 9
/// and 10-20, and an `IndexSet` paid 16 bytes of entry and 9 of index per
/// member (docs/density.md). The worker walks them in slot order.
#[derive(Debug, Default)]
pub struct Subscribers(HashSet<SubKey>);

impl Subscribers {
    pub fn iter(&self) -> impl Iterator<Item = SubKey> + '_ {
        self.0.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, conn: ConnKey) -> bool {
        self.0.contains(&conn.sub_key())
    }

    fn insert(&mut self, conn: ConnKey) -> bool {
        self.0.insert(conn.sub_key())
    }

    /// Remove; a crowd that left gives its table back (amortised: only
    /// once it is three-quarters empty).
    fn remove(&mut self, conn: ConnKey) -> bool {
        let removed = self.0.remove(&conn.sub_key());
        if self.0.capacity() > 64 && self.0.len() * 4 < self.0.capacity() {
            self.0.shrink_to(self.0.len() * 2);
        }
        removed
    }
}

/// Channel name → the connections of this worker subscribed to it.
#[derive(Debug, Default)]
pub struct Topics {
    channels: HashMap<Arc<str>, Subscribers>,
    /// Per channel, the offset of the last publication fanned out here.
    last: HashMap<Arc<str>, u64>,
    /// Per channel, the epoch its subscribers were answered in (a
    /// subscription's position, with `last`, for the live handoff).
    epochs: HashMap<Arc<str>, Box<str>>,
    subscriptions: usize,
}

impl Topics {
    /// Add; returns true if the channel had no local subscriber before.
    pub fn add(&mut self, channel: &Arc<str>, conn: ConnKey) -> bool {
        let set = self.channels.entry(channel.clone()).or_default();
        let first = set.is_empty();
        if set.insert(conn) {
            self.subscriptions += 1;
        }
        first
    }

    /// Remove; returns true if the channel has no local subscriber left.
    pub fn remove(&mut self, channel: &str, conn: ConnKey) -> bool {
        let Some(set) = self.channels.get_mut(channel) else {
            return false;
        };
        if set.remove(conn) {
            self.subscriptions -= 1;
        }
        if set.is_empty() {
            self.channels.remove(channel);
            self.last.remove(channel);
            self.epochs.remove(channel);
            self.shrink();
            return true;
        }
        false
    }

    /// After a churn of channels, hand the tables' memory back (a hash
    /// table keeps its peak capacity otherwise). Amortised: a table is
    /// rebuilt only once it is three-quarters empty.
    fn shrink(&mut self) {
        if self.channels.capacity() > 64 && self.channels.len() * 4 < self.channels.capacity() {
            self.channels.shrink_to(self.channels.len() * 2);
        }
        if self.last.capacity() > 64 && self.last.len() * 4 < self.last.capacity() {
            self.last.shrink_to(self.last.len() * 2);
        }
        if self.epochs.capacity() > 64 && self.epochs.len() * 4 < self.epochs.capacity() {
            self.epochs.shrink_to(self.epochs.len() * 2);
        }
    }

    /// Note that publication `offset` of `channel` was fanned out.
    pub fn delivered(&mut self, channel: &Arc<str>, offset: u64) {
        if offset > 0 && self.channels.contains_key(&**channel) {
            self.last.insert(channel.clone(), offset);
        }
    }

    /// A local subscriber of `channel` was answered at (`epoch`,
    /// `offset`) and is live. The offset counts only when nothing was
    /// fanned out here yet: otherwise the last fanned-out one stays the
    /// channel's mark, which may be below a newer answer (publications
    /// still on their way) but never above what a live subscriber got,
    /// so that a position taken from it loses nothing (at worst it replays
    /// publications from just before a subscriber's answer).
    pub fn answered(&mut self, channel: &Arc<str>, epoch: &str, offset: u64) {
        if !self.channels.contains_key(&**channel) {
            return;
        }
        if self.epochs.get(&**channel).is_none_or(|e| &**e != epoch) {
            self.epochs.insert(channel.clone(), epoch.into());
        }
        self.last.entry(channel.clone()).or_insert(offset);
    }

    /// Where every live local subscriber of `channel` stands: the epoch it
    /// was answered in and the last publication fanned out to it. None
    /// when no answer was noted.
    pub fn position(&self, channel: &str) -> Option<(&str, u64)> {
        Some((self.epochs.get(channel)?, self.last_offset(channel)))
    }

    /// The offset of the last publication of `channel` fanned out here.
    pub fn last_offset(&self, channel: &str) -> u64 {
        self.last.get(channel).copied().unwrap_or(0)
    }

    pub fn subscribers(&self, channel: &str) -> Option<&Subscribers> {
        self.channels.get(channel)
    }

    /// The index's own name for `channel`, if it has local subscribers
    /// (else a new one): sessions share it instead of allocating one per
    /// subscription.
    pub fn intern(&self, channel: &str) -> Arc<str> {
        match self.channels.get_key_value(channel) {
            Some((name, _)) => name.clone(),
            None => channel.into(),
        }
    }

    pub fn contains(&self, channel: &str, conn: ConnKey) -> bool {
        self.channels.get(channel).is_some_and(|s| s.contains(conn))
    }

    /// Subscriptions held by this worker.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions
    }

    /// Channels with at least one local subscriber.
    pub fn channels(&self) -> usize {
        self.channels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_remove_counts() {
        let mut t = Topics::default();
        let ch: Arc<str> = "chat".into();
        assert!(t.add(&ch, ConnKey::new(1, 1)));
        assert!(!t.add(&ch, ConnKey::new(2, 1)));
        assert!(!t.add(&ch, ConnKey::new(2, 1)));
        assert_eq!((t.subscriptions(), t.channels()), (2, 1));
        assert!(!t.remove("chat", ConnKey::new(1, 1)));
        assert!(t.contains("chat", ConnKey::new(2, 1)));
        assert!(t.remove("chat", ConnKey::new(2, 1)));
        assert_eq!((t.subscriptions(), t.channels()), (0, 0));
        assert!(!t.remove("chat", ConnKey::new(2, 1)));
    }

    #[test]
    fn a_churn_of_channels_gives_its_memory_back() {
        let mut t = Topics::default();
        let names: Vec<Arc<str>> = (0..10_000).map(|i| format!("c{i}").into()).collect();
        for n in &names {
            t.add(n, ConnKey::new(1, 1));
            t.delivered(n, 1);
        }
        let peak = t.channels.capacity();
        for n in &names[1..] {
            t.remove(n, ConnKey::new(1, 1));
        }
        assert_eq!((t.channels(), t.subscriptions()), (1, 1));
        assert!(
            t.channels.capacity() < peak / 16,
            "{} of {peak}",
            t.channels.capacity()
        );
        assert!(t.last.capacity() < peak / 16);
    }
}
