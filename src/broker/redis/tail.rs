//! A channel's tail: the node's most recent deliveries of it, contiguous,
//! ending at the last one. It answers most recoveries and replay parts
//! without a Redis read; it is a cache (Redis holds the history), so
//! dropping some of it only costs a read.
//!
//! Bounded per channel by the channel's history size (at most
//! `TAIL_MAX`), age and bytes, and over the node by
//! `limits.history_memory`: when the tails together are over it, the tail
//! being pushed to drops its oldest entries until they are not (or it is
//! empty). Its bytes are counted as they change, and given back when the
//! tail is dropped with its channel.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::pubsub::history::{HistoryLimits, Publication};

/// The node's tails together.
#[derive(Debug)]
pub(crate) struct TailBytes {
    pub used: AtomicUsize,
    pub limit: usize,
}

impl TailBytes {
    pub fn new(limit: usize) -> Arc<TailBytes> {
        Arc::new(TailBytes {
            used: AtomicUsize::new(0),
            limit,
        })
    }
}

#[derive(Debug)]
pub(crate) struct Tail {
    q: VecDeque<Publication>,
    bytes: usize,
    node: Arc<TailBytes>,
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.node.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Tail {
    pub fn new(node: Arc<TailBytes>) -> Tail {
        Tail {
            q: VecDeque::new(),
            bytes: 0,
            node,
        }
    }

    /// Append the next delivery; keep at most `count` entries, none older
    /// than the history's age, at most its bytes, and the node's tails
    /// under their budget.
    pub fn push(&mut self, p: Publication, count: usize, limits: &HistoryLimits) {
        if count == 0 {
            return;
        }
        let now = p.at_ms;
        self.bytes += p.frame.len();
        self.node.used.fetch_add(p.frame.len(), Ordering::Relaxed);
        self.q.push_back(p);
        while let Some(f) = self.q.front() {
            let over = self.q.len() > count
                || now.saturating_sub(f.at_ms) >= limits.ttl_ms
                || self.bytes > limits.bytes
                || self.node.used.load(Ordering::Relaxed) > self.node.limit;
            if !over {
                break;
            }
            self.pop_front();
        }
    }

    pub fn pop_front(&mut self) -> Option<Publication> {
        let p = self.q.pop_front()?;
        self.bytes -= p.frame.len();
        self.node.used.fetch_sub(p.frame.len(), Ordering::Relaxed);
        Some(p)
    }

    pub fn clear(&mut self) {
        self.node.used.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = 0;
        self.q = VecDeque::new();
    }

    pub fn front(&self) -> Option<&Publication> {
        self.q.front()
    }

    pub fn back(&self) -> Option<&Publication> {
        self.q.back()
    }

    pub fn iter(&self) -> std::collections::vec_deque::Iter<'_, Publication> {
        self.q.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publ(offset: u64, at_ms: u64, len: usize) -> Publication {
        Publication {
            offset,
            at_ms,
            frame: crate::base::Frame::publication(vec![0u8; len], 2, offset),
        }
    }

    #[test]
    fn bounded_by_count_age_bytes_and_the_node() {
        let node = TailBytes::new(250);
        let limits = HistoryLimits {
            size: 100,
            bytes: 120,
            ttl_ms: 1000,
        };
        let mut a = Tail::new(node.clone());
        for o in 1..=5 {
            a.push(publ(o, 0, 50), 3, &limits);
        }
        // 120 bytes hold two 50-byte frames.
        assert_eq!(a.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![4, 5]);
        a.push(publ(6, 2000, 10), 3, &limits);
        assert_eq!(
            a.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![6],
            "by age"
        );
        let mut b = Tail::new(node.clone());
        for o in 1..=3 {
            b.push(
                publ(o, 2000, 100),
                10,
                &HistoryLimits {
                    bytes: 1000,
                    ..limits
                },
            );
        }
        // The node holds at most 250: b keeps what fits beside a's 10.
        assert_eq!(node.used.load(Ordering::Relaxed), 210);
        assert_eq!(b.iter().count(), 2);
        drop(b);
        assert_eq!(node.used.load(Ordering::Relaxed), 10);
        a.clear();
        assert_eq!(node.used.load(Ordering::Relaxed), 0);
    }
}
