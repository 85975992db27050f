//! A channel's recent publications: a ring bounded by count, bytes and age,
//! with an epoch and monotonically increasing offsets.
//!
//! Recovery never replays part of a gap: either every publication after the
//! client's offset is still held (and is replayed in order), or the answer
//! is that recovery failed.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{Frame, Position};

/// How much history a channel keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryLimits {
    /// Publications kept (0: no history, recovery always fails).
    pub size: usize,
    /// Payload bytes kept.
    pub bytes: usize,
    /// Age after which a publication is dropped, in milliseconds.
    pub ttl_ms: u64,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            size: 1000,
            bytes: 4 << 20,
            ttl_ms: 300_000,
        }
    }
}

/// One publication as kept: its offset, when it was published (ms on the
/// broker's clock), and the encoded frame whose payload is the JSON object
/// `{"channel":…,"offset":…,"data":…}`.
#[derive(Clone, Debug)]
pub struct Publication {
    pub offset: u64,
    pub at_ms: u64,
    pub frame: Frame,
    pub header_len: u8,
}

impl Publication {
    /// The JSON object, without the WebSocket header.
    pub fn json(&self) -> &[u8] {
        &self.frame[self.header_len as usize..]
    }
}

/// The answer to "what did I miss since this position?".
#[derive(Debug)]
pub enum Recovery {
    /// Everything after the position, in order (possibly nothing).
    Recovered(Vec<Publication>),
    /// The gap is no longer held, or the epoch changed.
    Lost,
}

#[derive(Debug)]
pub struct History {
    epoch: Arc<str>,
    /// The last offset assigned (0: nothing published yet).
    top: u64,
    ring: VecDeque<Publication>,
    bytes: usize,
    limits: HistoryLimits,
}

impl History {
    pub fn new(epoch: Arc<str>, limits: HistoryLimits) -> History {
        History {
            epoch,
            top: 0,
            ring: VecDeque::new(),
            bytes: 0,
            limits,
        }
    }

    pub fn epoch(&self) -> &Arc<str> {
        &self.epoch
    }

    /// The last offset assigned.
    pub fn top(&self) -> u64 {
        self.top
    }

    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch.to_string(),
            offset: self.top,
        }
    }

    /// The next offset, to encode into the frame before [`History::push`].
    pub fn next_offset(&self) -> u64 {
        self.top + 1
    }

    /// Keep a publication whose offset is [`History::next_offset`].
    pub fn push(&mut self, p: Publication) {
        debug_assert_eq!(p.offset, self.top + 1);
        self.top = p.offset;
        if self.limits.size == 0 {
            return;
        }
        self.bytes += p.frame.len();
        self.ring.push_back(p);
        let now = self.ring.back().map_or(0, |p| p.at_ms);
        self.trim(now);
    }

    /// Drop what is over the count, the bytes or the age.
    pub fn trim(&mut self, now_ms: u64) {
        while let Some(front) = self.ring.front() {
            let old = now_ms.saturating_sub(front.at_ms) >= self.limits.ttl_ms;
            if self.ring.len() > self.limits.size || self.bytes > self.limits.bytes || old {
                self.bytes -= front.frame.len();
                self.ring.pop_front();
            } else {
                break;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// The most recent publication held.
    pub fn latest(&self) -> Option<&Publication> {
        self.ring.back()
    }

    /// Everything after `since`, or [`Recovery::Lost`] if any of it is gone.
    pub fn since(&self, since: &Position) -> Recovery {
        if *self.epoch != *since.epoch || since.offset > self.top {
            return Recovery::Lost;
        }
        if since.offset == self.top {
            return Recovery::Recovered(Vec::new());
        }
        match self.ring.front() {
            Some(first) if first.offset <= since.offset + 1 => {
                let skip = (since.offset + 1 - first.offset) as usize;
                Recovery::Recovered(self.ring.iter().skip(skip).cloned().collect())
            }
            _ => Recovery::Lost,
        }
    }

    /// Up to `limit` publications after `offset` (for the history API; no
    /// epoch check: the caller shows the epoch).
    pub fn after(&self, offset: u64, limit: usize) -> Vec<Publication> {
        self.ring
            .iter()
            .filter(|p| p.offset > offset)
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publ(h: &History, at_ms: u64) -> Publication {
        Publication {
            offset: h.next_offset(),
            at_ms,
            frame: Arc::from(vec![0u8; 10]),
            header_len: 2,
        }
    }

    fn pos(epoch: &str, offset: u64) -> Position {
        Position {
            epoch: epoch.into(),
            offset,
        }
    }

    fn offsets(r: Recovery) -> Option<Vec<u64>> {
        match r {
            Recovery::Recovered(v) => Some(v.iter().map(|p| p.offset).collect()),
            Recovery::Lost => None,
        }
    }

    #[test]
    fn recovery_is_whole_or_nothing() {
        let limits = HistoryLimits {
            size: 5,
            bytes: 1 << 20,
            ttl_ms: 1000,
        };
        let mut h = History::new("e1".into(), limits);
        for _ in 0..8 {
            let p = publ(&h, 0);
            h.push(p);
        }
        assert_eq!(h.top(), 8);
        assert_eq!(h.len(), 5); // offsets 4..=8 held
        let table: &[(Position, Option<Vec<u64>>)] = &[
            (pos("e1", 8), Some(vec![])),
            (pos("e1", 5), Some(vec![6, 7, 8])),
            (pos("e1", 3), Some(vec![4, 5, 6, 7, 8])),
            (pos("e1", 2), None), // 3 is gone: no partial replay
            (pos("e1", 9), None), // from the future
            (pos("e0", 8), None), // another epoch
        ];
        for (p, want) in table {
            assert_eq!(offsets(h.since(p)), *want, "{p:?}");
        }
    }

    #[test]
    fn bounded_by_bytes_and_age() {
        let limits = HistoryLimits {
            size: 100,
            bytes: 35,
            ttl_ms: 1000,
        };
        let mut h = History::new("e".into(), limits);
        for t in [0, 10, 20, 30, 40] {
            let p = publ(&h, t);
            h.push(p);
        }
        assert_eq!(h.len(), 3, "35 bytes hold three 10-byte frames");
        h.trim(1035);
        assert_eq!(
            h.after(0, 10).iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![5]
        );
        h.trim(2000);
        assert!(h.is_empty());
        assert_eq!(h.top(), 5, "offsets keep increasing after trimming");
        assert!(matches!(h.since(&pos("e", 4)), Recovery::Lost));
        assert!(matches!(h.since(&pos("e", 5)), Recovery::Recovered(ref v) if v.is_empty()));
    }

    #[test]
    fn no_history_configured() {
        let mut h = History::new(
            "e".into(),
            HistoryLimits {
                size: 0,
                ..Default::default()
            },
        );
        let p = publ(&h, 0);
        h.push(p);
        assert_eq!((h.top(), h.len()), (1, 0));
        assert!(matches!(h.since(&pos("e", 0)), Recovery::Lost));
    }
}
