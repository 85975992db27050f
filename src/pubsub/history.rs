//! A channel's recent publications: a ring bounded by count, bytes and age,
//! with an epoch and monotonically increasing offsets.
//!
//! Recovery never replays part of a gap: either every publication after the
//! client's offset is still held (and is replayed in order), or the answer
//! is that recovery failed.

use std::collections::VecDeque;

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
}

impl Publication {
    /// The JSON object, without the WebSocket header.
    pub fn json(&self) -> &[u8] {
        self.frame.payload()
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

/// One incarnation of a channel: 64 random bits, shown to clients as 11
/// base64url characters. It changes when the channel's history is lost, so
/// an offset is only meaningful with it. Kept as bits: an idle channel's
/// position costs 16 bytes, not a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch a client sent back, if it is one of ours (any other text
    /// cannot match a channel's epoch).
    pub fn parse(text: &str) -> Option<Epoch> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        if text.len() != 11 {
            return None;
        }
        // Room for the decoder's estimate (9); 11 characters make 8 bytes.
        let mut b = [0u8; 9];
        match URL_SAFE_NO_PAD.decode_slice(text.as_bytes(), &mut b) {
            Ok(8) => Some(Epoch(u64::from_be_bytes([
                b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
            ]))),
            _ => None,
        }
    }
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let mut b = [0u8; 11];
        let n = URL_SAFE_NO_PAD
            .encode_slice(self.0.to_be_bytes(), &mut b)
            .map_err(|_| std::fmt::Error)?;
        f.write_str(std::str::from_utf8(&b[..n]).map_err(|_| std::fmt::Error)?)
    }
}

#[derive(Debug)]
pub struct History {
    epoch: Epoch,
    /// The last offset assigned (0: nothing published yet).
    top: u64,
    ring: VecDeque<Publication>,
    bytes: usize,
    limits: HistoryLimits,
}

impl History {
    pub fn new(epoch: Epoch, limits: HistoryLimits) -> History {
        History::resume(epoch, 0, limits)
    }

    /// A channel whose history is empty, at `top` in `epoch` (an idle
    /// channel coming back within its grace).
    pub fn resume(epoch: Epoch, top: u64, limits: HistoryLimits) -> History {
        History {
            epoch,
            top,
            ring: VecDeque::new(),
            bytes: 0,
            limits,
        }
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
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
        if self.ring.is_empty() && self.ring.capacity() > 0 {
            // An emptied ring of a busy channel held its peak capacity.
            self.ring = VecDeque::new();
        }
    }

    /// Drop the oldest publication held before its age (the node's
    /// history budget is full): offsets and epoch stay, so a client whose
    /// gap starts before what is left is told that it is lost, never given
    /// part of it.
    pub fn pop_front(&mut self) -> Option<Publication> {
        let p = self.ring.pop_front()?;
        self.bytes -= p.frame.len();
        if self.ring.is_empty() {
            self.ring = VecDeque::new();
        }
        Some(p)
    }

    /// When the oldest publication held leaves by age (ms on the broker's
    /// clock), if any is held.
    pub fn next_expiry(&self) -> Option<u64> {
        self.ring
            .front()
            .map(|p| p.at_ms.saturating_add(self.limits.ttl_ms))
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Frame bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// The most recent publication held.
    pub fn latest(&self) -> Option<&Publication> {
        self.ring.back()
    }

    /// Is everything after `since` held? `Some(n)`: yes, `n` publications
    /// (possibly none); `None`: some of it is gone, or the epoch differs.
    pub fn gap(&self, since: &Position) -> Option<u64> {
        if Epoch::parse(&since.epoch) != Some(self.epoch) || since.offset > self.top {
            return None;
        }
        if since.offset == self.top {
            return Some(0);
        }
        match self.ring.front() {
            Some(first) if first.offset <= since.offset + 1 => Some(self.top - since.offset),
            _ => None,
        }
    }

    /// Everything after `since`, or [`Recovery::Lost`] if any of it is gone.
    pub fn since(&self, since: &Position) -> Recovery {
        self.since_at_most(since, usize::MAX)
    }

    /// The first `limit` publications after `since`, or [`Recovery::Lost`]
    /// if any of the gap is gone (the history API: a page of a gap that
    /// is held whole).
    pub fn since_at_most(&self, since: &Position, limit: usize) -> Recovery {
        match self.gap(since) {
            None => Recovery::Lost,
            Some(0) => Recovery::Recovered(Vec::new()),
            Some(_) => Recovery::Recovered(self.after(since.offset, limit)),
        }
    }

    /// The publications right after `after`, in order, as long as their
    /// frames add up to at most `max_bytes` (and at least the first one, so
    /// that a replay always moves); `None` if the one right after `after`
    /// is no longer held. Empty when `after` is the top.
    pub fn chunk(&self, after: u64, max_bytes: usize) -> Option<Vec<super::Frame>> {
        if after >= self.top {
            return Some(Vec::new());
        }
        let first = self.ring.front()?.offset;
        if first > after + 1 {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for p in self.ring.range((after + 1 - first) as usize..) {
            if !out.is_empty() && bytes + p.frame.len() > max_bytes {
                break;
            }
            bytes += p.frame.len();
            out.push(p.frame.clone());
        }
        Some(out)
    }

    /// Up to `limit` publications after `offset` (for the history API; no
    /// epoch check: the caller shows the epoch).
    pub fn after(&self, offset: u64, limit: usize) -> Vec<Publication> {
        let skip = match self.ring.front() {
            Some(f) if offset >= f.offset => (offset + 1 - f.offset) as usize,
            _ => 0,
        };
        self.ring
            .range(skip.min(self.ring.len())..)
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E1: Epoch = Epoch(1);
    const E0: Epoch = Epoch(0xE0);

    fn publ(h: &History, at_ms: u64) -> Publication {
        Publication {
            offset: h.next_offset(),
            at_ms,
            frame: Frame::publication(vec![0u8; 10], 2, h.next_offset()),
        }
    }

    fn pos(epoch: Epoch, offset: u64) -> Position {
        Position {
            epoch: epoch.to_string(),
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
    fn epochs_print_and_parse_back() {
        for bits in [0, 1, 0xE0, u64::MAX, 0x0123_4567_89AB_CDEF] {
            let text = Epoch(bits).to_string();
            assert_eq!(text.len(), 11, "{text}");
            assert_eq!(Epoch::parse(&text), Some(Epoch(bits)), "{text}");
        }
        for bad in [
            "",
            "not-the-epoch",
            "AAAAAAAAAAA=",
            "AAAAAAAAAA",
            "AAAAAAAAAAAA",
            "AAAAAAAAAA!",
        ] {
            assert_eq!(Epoch::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn recovery_is_whole_or_nothing() {
        let limits = HistoryLimits {
            size: 5,
            bytes: 1 << 20,
            ttl_ms: 1000,
        };
        let mut h = History::new(E1, limits);
        for _ in 0..8 {
            let p = publ(&h, 0);
            h.push(p);
        }
        assert_eq!(h.top(), 8);
        assert_eq!(h.len(), 5); // offsets 4..=8 held
        let table: &[(Position, Option<Vec<u64>>)] = &[
            (pos(E1, 8), Some(vec![])),
            (pos(E1, 5), Some(vec![6, 7, 8])),
            (pos(E1, 3), Some(vec![4, 5, 6, 7, 8])),
            (pos(E1, 2), None), // 3 is gone: no partial replay
            (pos(E1, 9), None), // from the future
            (pos(E0, 8), None), // another epoch
        ];
        for (p, want) in table {
            assert_eq!(offsets(h.since(p)), *want, "{p:?}");
            assert_eq!(h.gap(p), want.as_ref().map(|v| v.len() as u64), "{p:?}");
        }
        assert_eq!(offsets(h.since_at_most(&pos(E1, 3), 2)), Some(vec![4, 5]));
        assert_eq!(offsets(h.since_at_most(&pos(E1, 2), 2)), None);
    }

    #[test]
    fn chunks_are_bounded_by_bytes_and_always_move() {
        let limits = HistoryLimits {
            size: 100,
            bytes: 1 << 20,
            ttl_ms: 1000,
        };
        let mut h = History::new(E1, limits);
        for _ in 0..10 {
            let p = publ(&h, 0); // 10-byte frames
            h.push(p);
        }
        let n = |c: Option<Vec<crate::pubsub::Frame>>| c.map(|v| v.len());
        assert_eq!(n(h.chunk(0, 35)), Some(3), "35 bytes hold three frames");
        assert_eq!(n(h.chunk(8, 35)), Some(2), "only two are left after 8");
        assert_eq!(
            n(h.chunk(3, 1)),
            Some(1),
            "at least one, whatever the budget"
        );
        assert_eq!(n(h.chunk(10, 35)), Some(0), "nothing after the top");
        for _ in 0..95 {
            let p = publ(&h, 0);
            h.push(p);
        }
        // 6..=105 held: the publication after 4 is gone.
        assert_eq!(n(h.chunk(4, 100)), None);
        assert_eq!(n(h.chunk(5, 100)), Some(10));
    }

    #[test]
    fn bounded_by_bytes_and_age() {
        let limits = HistoryLimits {
            size: 100,
            bytes: 35,
            ttl_ms: 1000,
        };
        let mut h = History::new(E1, limits);
        for t in [0, 10, 20, 30, 40] {
            let p = publ(&h, t);
            h.push(p);
        }
        assert_eq!(h.len(), 3, "35 bytes hold three 10-byte frames");
        assert_eq!((h.bytes(), h.next_expiry()), (30, Some(1020)));
        h.trim(1035);
        assert_eq!(
            h.after(0, 10).iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![5]
        );
        h.trim(2000);
        assert!(h.is_empty());
        assert_eq!((h.bytes(), h.next_expiry()), (0, None));
        assert_eq!(h.top(), 5, "offsets keep increasing after trimming");
        assert!(matches!(h.since(&pos(E1, 4)), Recovery::Lost));
        assert!(matches!(h.since(&pos(E1, 5)), Recovery::Recovered(ref v) if v.is_empty()));
    }

    #[test]
    fn evicted_history_keeps_its_position() {
        let mut h = History::new(E1, HistoryLimits::default());
        for _ in 0..3 {
            let p = publ(&h, 0);
            h.push(p);
        }
        assert_eq!(h.pop_front().map(|p| p.offset), Some(1));
        assert!(matches!(h.since(&pos(E1, 0)), Recovery::Lost), "1 is gone");
        assert_eq!(offsets(h.since(&pos(E1, 1))), Some(vec![2, 3]));
        h.pop_front();
        h.pop_front();
        assert!(h.pop_front().is_none());
        assert_eq!((h.len(), h.bytes(), h.top()), (0, 0, 3));
        assert!(
            matches!(h.since(&pos(E1, 1)), Recovery::Lost),
            "the gap is gone"
        );
        assert!(matches!(h.since(&pos(E1, 3)), Recovery::Recovered(ref v) if v.is_empty()));
        let back = History::resume(E1, 3, HistoryLimits::default());
        assert_eq!((back.position(), back.next_offset()), (pos(E1, 3), 4));
    }

    #[test]
    fn no_history_configured() {
        let mut h = History::new(
            E1,
            HistoryLimits {
                size: 0,
                ..Default::default()
            },
        );
        let p = publ(&h, 0);
        h.push(p);
        assert_eq!((h.top(), h.len()), (1, 0));
        assert!(matches!(h.since(&pos(E1, 0)), Recovery::Lost));
    }
}
