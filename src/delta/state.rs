//! One worker's delta state: for each channel with delta subscribers on
//! the worker, its previous publication; per publication, the delta form
//! computed at most once; per subscriber, whether it can take it.
//!
//! A subscriber can take a delta only against the publication it was sent
//! just before, through this state, on this channel. Each publication the
//! state sees gets a sequence number of the worker's (never reused), and
//! each delta subscription keeps the number of the last one it was sent
//! (its [`DeltaCursor`]). The delta form goes only to a subscriber whose
//! cursor is the base's number, so every other case gets the whole
//! publication without a rule of its own: the first after subscribing or
//! recovering (a fresh cursor), after a drop notice (a new subscription),
//! after a publication it missed or one sent whole to everybody, after a
//! [`DeltaChannels::reset`] (a resync), and after a base that was not kept.
//!
//! Memory: the base is the previous publication's whole frame, shared
//! (`Arc`) with the out queues that still hold it, so keeping it costs
//! nothing until they drain, then its size. It is kept only while the
//! channel has delta subscribers on this worker, only if its `data` is at
//! most [`DeltaLimits::max_base`] bytes, and only while the worker's bases
//! stay within [`DeltaLimits::max_total`]; the next publication of the
//! channel replaces it, and the last delta subscriber's leaving drops it.
//! A publication not kept as a base makes the next one whole, nothing else.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use super::fossil::Encoder;
use super::wire;

/// Bounds on what one worker keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaLimits {
    /// A publication whose `data` is larger is not kept as a base: the
    /// channel's next publication goes whole. Also bounds the CPU of one
    /// delta (linear in both sizes).
    pub max_base: usize,
    /// Bytes of bases (whole frames) one worker keeps at once; a
    /// publication that would pass it is not kept.
    pub max_total: usize,
}

impl Default for DeltaLimits {
    fn default() -> Self {
        DeltaLimits {
            max_base: 256 << 10,
            max_total: 64 << 20,
        }
    }
}

/// Where a delta subscription stands: the last publication it was sent
/// through [`DeltaChannels`]. The default (a new subscription) takes the
/// next one whole.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeltaCursor(u64);

/// Counters of one worker's delta state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeltaStats {
    /// Deltas computed: at most one per publication per worker, and only
    /// when a subscriber can take it.
    pub encoded: u64,
    /// Of those, not sent because their frame was not shorter than the
    /// whole one (or, which publications never are, not UTF-8).
    pub not_smaller: u64,
    /// Frames queued to delta subscribers: delta forms and whole ones.
    pub delta_deliveries: u64,
    pub whole_deliveries: u64,
    /// Publications not kept as a base: `data` over `max_base`, or the
    /// worker's bases at `max_total`.
    pub base_too_large: u64,
    pub base_over_budget: u64,
    /// Bytes the delta forms saved: per delta delivery, the whole frame's
    /// length less the delta frame's (before any compression).
    pub bytes_saved: u64,
    /// `resync` events that made a channel's next publication whole.
    pub resets: u64,
}

/// The previous publication of a channel.
#[derive(Debug)]
struct Base {
    frame: Arc<[u8]>,
    /// Its `data`, within `frame`.
    data: Range<usize>,
    seq: u64,
}

#[derive(Debug, Default)]
struct Channel {
    subscribers: u32,
    base: Option<Base>,
}

/// One worker's delta state (see the module doc).
#[derive(Debug, Default)]
pub struct DeltaChannels {
    channels: HashMap<Arc<str>, Channel>,
    encoder: Encoder,
    scratch: Vec<u8>,
    last_seq: u64,
    held: usize,
    limits: DeltaLimits,
    pub stats: DeltaStats,
}

/// What a subscriber is sent for one publication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pick {
    /// The whole publication's frame (the one every other subscriber gets).
    Whole,
    /// This frame, the delta form, shared by every subscriber that takes it.
    Delta(Arc<[u8]>),
}

/// The header length of an unmasked, unfragmented text frame, if `frame`
/// is one whole such frame.
fn text_payload_start(frame: &[u8]) -> Option<usize> {
    if *frame.first()? != 0x81 {
        return None;
    }
    let (start, len) = match *frame.get(1)? {
        n @ 0..=125 => (2, u64::from(n)),
        126 => (
            4,
            u64::from(u16::from_be_bytes([*frame.get(2)?, *frame.get(3)?])),
        ),
        127 => {
            let b: [u8; 8] = frame.get(2..10)?.try_into().ok()?;
            (10, u64::from_be_bytes(b))
        }
        _ => return None, // masked: not a server frame
    };
    (frame.len() as u64 - start as u64 == len).then_some(start)
}

impl DeltaChannels {
    pub fn new(limits: DeltaLimits) -> DeltaChannels {
        DeltaChannels {
            limits,
            ..DeltaChannels::default()
        }
    }

    /// A subscriber that asked for deltas now receives `channel`'s
    /// publications on this worker. Its cursor takes the next one whole.
    pub fn join(&mut self, channel: &Arc<str>) -> DeltaCursor {
        match self.channels.get_mut(&**channel) {
            Some(c) => c.subscribers += 1,
            None => {
                self.channels.insert(
                    channel.clone(),
                    Channel {
                        subscribers: 1,
                        base: None,
                    },
                );
            }
        }
        DeltaCursor::default()
    }

    /// A delta subscriber of `channel` left (unsubscribe, drop notice,
    /// refresh, close). The last one's leaving drops the base.
    pub fn leave(&mut self, channel: &str) {
        let Some(c) = self.channels.get_mut(channel) else {
            return;
        };
        c.subscribers = c.subscribers.saturating_sub(1);
        if c.subscribers == 0 {
            if let Some(b) = self.channels.remove(channel).and_then(|c| c.base) {
                self.held -= b.frame.len();
            }
        }
    }

    /// Forget `channel`'s base: its next publication goes whole to every
    /// subscriber. For a `resync` (the stream broke, or a new epoch).
    pub fn reset(&mut self, channel: &str) {
        if let Some(b) = self.channels.get_mut(channel).and_then(|c| c.base.take()) {
            self.held -= b.frame.len();
        }
    }

    /// An event of `channel` (a frame with offset 0): a `resync` forgets
    /// the base (see [`DeltaChannels::reset`]); presence events leave it.
    pub fn event(&mut self, channel: &str, frame: &[u8]) {
        if !self.channels.contains_key(channel) {
            return;
        }
        let Some(start) = text_payload_start(frame) else {
            return;
        };
        if wire::is_resync(&frame[start..]) {
            self.stats.resets += 1;
            self.reset(channel);
        }
    }

    /// Bytes of bases held (whole frames).
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// Channels with delta subscribers on this worker.
    pub fn channels(&self) -> usize {
        self.channels.len()
    }

    /// The counts `/metrics` shows, in the order of
    /// `base::counters::DeltaGauges`: deliveries as deltas, whole, deltas
    /// computed, not smaller, bases not kept, bytes saved, resets, bytes
    /// held, channels.
    pub fn gauge_values(&self) -> [u64; 9] {
        let s = &self.stats;
        [
            s.delta_deliveries,
            s.whole_deliveries,
            s.encoded,
            s.not_smaller,
            s.base_too_large + s.base_over_budget,
            s.bytes_saved,
            s.resets,
            self.held_bytes() as u64,
            self.channels() as u64,
        ]
    }

    /// A publication of `channel` arrived, as its whole frame (the frame of
    /// `broker::encode_publication`). `None` when the channel has no delta
    /// subscriber here, or `whole` is not a publication frame (a presence
    /// event): send `whole` as before. Otherwise the publication becomes
    /// the channel's base, and [`Prepared::pick`] tells each delta
    /// subscriber which frame to queue.
    pub fn publish(&mut self, channel: &str, whole: &Arc<[u8]>) -> Option<Prepared<'_>> {
        let ch = self.channels.get_mut(channel)?;
        let start = text_payload_start(whole)?;
        let data = wire::data_range(&whole[start..])?;
        let data = start + data.start..start + data.end;
        self.last_seq += 1;
        let seq = self.last_seq;
        let prev = ch.base.take();
        if let Some(p) = &prev {
            self.held -= p.frame.len();
        }
        if data.len() > self.limits.max_base {
            self.stats.base_too_large += 1;
        } else if self.held + whole.len() > self.limits.max_total {
            self.stats.base_over_budget += 1;
        } else {
            self.held += whole.len();
            ch.base = Some(Base {
                frame: whole.clone(),
                data: data.clone(),
                seq,
            });
        }
        Some(Prepared {
            encoder: &mut self.encoder,
            scratch: &mut self.scratch,
            stats: &mut self.stats,
            prev,
            whole: whole.clone(),
            payload_start: start,
            data,
            seq,
            delta: None,
        })
    }
}

/// One publication on its way to a channel's delta subscribers.
#[derive(Debug)]
pub struct Prepared<'a> {
    encoder: &'a mut Encoder,
    scratch: &'a mut Vec<u8>,
    stats: &'a mut DeltaStats,
    /// The previous publication (the delta's source), if it was kept.
    prev: Option<Base>,
    whole: Arc<[u8]>,
    payload_start: usize,
    data: Range<usize>,
    seq: u64,
    /// The delta form once computed (`Some(None)`: not worth sending).
    delta: Option<Option<Arc<[u8]>>>,
}

impl Prepared<'_> {
    /// What to queue to a subscriber whose cursor is `cursor`; the cursor
    /// moves to this publication. Queue what it says, or end the
    /// subscription (a subscriber that misses a frame must not take the
    /// next delta: its cursor would say it has the base).
    pub fn pick(&mut self, cursor: &mut DeltaCursor) -> Pick {
        let had_base = cursor.0 != 0 && self.prev.as_ref().is_some_and(|p| p.seq == cursor.0);
        cursor.0 = self.seq;
        let frame = if had_base { self.delta_frame() } else { None };
        match frame {
            Some(f) => {
                self.stats.delta_deliveries += 1;
                self.stats.bytes_saved += (self.whole.len() - f.len()) as u64;
                Pick::Delta(f)
            }
            None => {
                self.stats.whole_deliveries += 1;
                Pick::Whole
            }
        }
    }

    /// The delta form, computed on first use.
    fn delta_frame(&mut self) -> Option<Arc<[u8]>> {
        if self.delta.is_none() {
            self.delta = Some(self.encode());
        }
        self.delta.clone().flatten()
    }

    fn encode(&mut self) -> Option<Arc<[u8]>> {
        let prev = self.prev.as_ref()?;
        let source = &prev.frame[prev.data.clone()];
        let target = &self.whole[self.data.clone()];
        self.scratch.clear();
        let encoded = self.encoder.encode_text(source, target, self.scratch);
        self.stats.encoded += 1;
        let frame = encoded
            .ok()
            .filter(|()| self.scratch.len() < target.len())
            .and_then(|()| std::str::from_utf8(self.scratch).ok())
            .and_then(|delta| {
                wire::delta_frame(
                    &self.whole[self.payload_start..self.data.start],
                    delta,
                    self.whole.len() - self.payload_start,
                )
            });
        if frame.is_none() {
            self.stats.not_smaller += 1;
        }
        // A large scratch buffer is not kept for the next publication.
        if self.scratch.capacity() > 1 << 20 {
            *self.scratch = Vec::new();
        }
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::fossil::apply;

    /// A publication frame as `broker::encode_publication` makes it.
    fn whole(channel: &str, offset: u64, data: &str) -> Arc<[u8]> {
        let payload = format!(r#"{{"channel":"{channel}","offset":{offset},"data":{data}}}"#);
        let mut h = [0u8; crate::proto::frame::MAX_HEADER];
        let n = crate::proto::frame::encode_header(
            &mut h,
            true,
            0,
            crate::proto::frame::OpCode::Text,
            None,
            payload.len() as u64,
        );
        let mut f = h[..n].to_vec();
        f.extend_from_slice(payload.as_bytes());
        Arc::from(f)
    }

    fn metrics(tick: u32) -> String {
        let fields: Vec<String> = (0..40)
            .map(|i| format!(r#""m{i:02}":{}"#, if i == tick % 40 { tick } else { i }))
            .collect();
        format!("{{{}}}", fields.join(","))
    }

    /// The client's side: the `data` a frame carries, given the previous.
    fn decode(frame: &[u8], prev: &[u8]) -> Vec<u8> {
        let start = text_payload_start(frame).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&frame[start..]).unwrap();
        if v["delta"] == true {
            let d = v["data"].as_str().unwrap();
            apply(prev, d.as_bytes(), 1 << 20).unwrap()
        } else {
            let r = wire::data_range(&frame[start..]).unwrap();
            frame[start + r.start..start + r.end].to_vec()
        }
    }

    #[test]
    fn first_publication_whole_then_deltas_that_decode() {
        let mut s = DeltaChannels::new(DeltaLimits::default());
        let ch: Arc<str> = Arc::from("dash");
        let mut a = s.join(&ch);
        let mut have = Vec::new();
        for tick in 1..=5 {
            let w = whole("dash", tick.into(), &metrics(tick));
            let mut p = s.publish("dash", &w).unwrap();
            let pick = p.pick(&mut a);
            let frame = match (&pick, tick) {
                (Pick::Whole, 1) => w.clone(),
                (Pick::Delta(f), 2..) => {
                    assert!(f.len() < w.len() / 4, "{} vs {}", f.len(), w.len());
                    f.clone()
                }
                other => panic!("tick {tick}: {other:?}"),
            };
            have = decode(&frame, &have);
            assert_eq!(have, metrics(tick).as_bytes());
        }
        assert_eq!(s.stats.encoded, 4);
        assert_eq!((s.stats.delta_deliveries, s.stats.whole_deliveries), (4, 1));
    }

    #[test]
    fn one_delta_per_publication_shared_by_positioned_subscribers() {
        let mut s = DeltaChannels::new(DeltaLimits::default());
        let ch: Arc<str> = Arc::from("dash");
        let mut subs: Vec<DeltaCursor> = (0..3).map(|_| s.join(&ch)).collect();
        let w1 = whole("dash", 1, &metrics(1));
        let mut p = s.publish("dash", &w1).unwrap();
        for c in &mut subs {
            assert_eq!(p.pick(c), Pick::Whole);
        }
        // A subscriber joins between two publications: whole for it only.
        let mut late = s.join(&ch);
        let w2 = whole("dash", 2, &metrics(2));
        let mut p = s.publish("dash", &w2).unwrap();
        let picks: Vec<Pick> = subs.iter_mut().map(|c| p.pick(c)).collect();
        assert_eq!(p.pick(&mut late), Pick::Whole);
        let Pick::Delta(f) = &picks[0] else {
            panic!("{picks:?}")
        };
        assert!(picks
            .iter()
            .all(|x| matches!(x, Pick::Delta(g) if Arc::ptr_eq(f, g))));
        assert_eq!(s.stats.encoded, 1, "computed once");
        // Everybody is positioned now.
        let w3 = whole("dash", 3, &metrics(3));
        let mut p = s.publish("dash", &w3).unwrap();
        assert!(matches!(p.pick(&mut late), Pick::Delta(_)));
    }

    #[test]
    fn a_missed_publication_or_a_reset_means_whole() {
        let mut s = DeltaChannels::new(DeltaLimits::default());
        let ch: Arc<str> = Arc::from("dash");
        let mut a = s.join(&ch);
        let mut b = s.join(&ch);
        let mut p = s.publish("dash", &whole("dash", 1, &metrics(1))).unwrap();
        p.pick(&mut a);
        p.pick(&mut b);
        // `b` is not sent publication 2 (it left and came back, say).
        let mut p = s.publish("dash", &whole("dash", 2, &metrics(2))).unwrap();
        assert!(matches!(p.pick(&mut a), Pick::Delta(_)));
        let mut p = s.publish("dash", &whole("dash", 3, &metrics(3))).unwrap();
        assert!(matches!(p.pick(&mut a), Pick::Delta(_)));
        assert_eq!(p.pick(&mut b), Pick::Whole);
        // A resync: everybody whole.
        s.reset("dash");
        let mut p = s.publish("dash", &whole("dash", 1, &metrics(4))).unwrap();
        assert_eq!(p.pick(&mut a), Pick::Whole);
        assert_eq!(p.pick(&mut b), Pick::Whole);
        // A cursor of another channel never matches.
        let other: Arc<str> = Arc::from("other");
        let mut o = s.join(&other);
        let mut p = s.publish("other", &whole("other", 1, &metrics(1))).unwrap();
        p.pick(&mut o);
        let mut p = s.publish("dash", &whole("dash", 2, &metrics(5))).unwrap();
        assert_eq!(p.pick(&mut o), Pick::Whole);
        assert!(matches!(p.pick(&mut a), Pick::Delta(_)));
    }

    #[test]
    fn a_delta_not_smaller_than_the_whole_is_not_sent() {
        let mut s = DeltaChannels::new(DeltaLimits::default());
        let ch: Arc<str> = Arc::from("c");
        let mut a = s.join(&ch);
        let mut p = s
            .publish("c", &whole("c", 1, r#""aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa""#))
            .unwrap();
        p.pick(&mut a);
        let mut p = s.publish("c", &whole("c", 2, r#"[1,2]"#)).unwrap();
        assert_eq!(p.pick(&mut a), Pick::Whole);
        assert_eq!((s.stats.encoded, s.stats.not_smaller), (1, 1));
        // The cursor moved on: the next similar one is a delta again.
        let long = format!("[{}]", "7,".repeat(100) + "7");
        let mut p = s.publish("c", &whole("c", 3, &long)).unwrap();
        p.pick(&mut a);
        let longer = format!("[{}]", "7,".repeat(100) + "8");
        let mut p = s.publish("c", &whole("c", 4, &longer)).unwrap();
        assert!(matches!(p.pick(&mut a), Pick::Delta(_)));
    }

    #[test]
    fn memory_is_bounded_and_returned() {
        let limits = DeltaLimits {
            max_base: 1000,
            max_total: 3000,
        };
        let mut s = DeltaChannels::new(limits);
        let names: Vec<Arc<str>> = (0..5).map(|i| Arc::from(format!("ch{i}"))).collect();
        let mut cursors: Vec<DeltaCursor> = names.iter().map(|n| s.join(n)).collect();
        let data = format!("[{}]", "1,".repeat(400) + "1"); // ~800 bytes
        for round in 0..3 {
            for (n, c) in names.iter().zip(&mut cursors) {
                let mut p = s.publish(n, &whole(n, round, &data)).unwrap();
                p.pick(c);
            }
            assert!(s.held_bytes() <= limits.max_total, "{}", s.held_bytes());
        }
        // Three bases fit; the other two channels go whole every time.
        assert_eq!(s.held_bytes(), 3 * whole("ch0", 2, &data).len());
        assert_eq!(s.stats.base_over_budget, 6);
        // Over max_base: not kept, and the next one is whole.
        let big = format!("[{}]", "1,".repeat(600) + "2");
        let mut p = s.publish("ch0", &whole("ch0", 9, &big)).unwrap();
        assert!(matches!(p.pick(&mut cursors[0]), Pick::Delta(_)));
        let mut p = s.publish("ch0", &whole("ch0", 10, &data)).unwrap();
        assert_eq!(p.pick(&mut cursors[0]), Pick::Whole);
        assert_eq!(s.stats.base_too_large, 1);
        // Leaving drops the bases; a channel nobody asks deltas of is ignored.
        for n in &names {
            s.leave(n);
        }
        assert_eq!((s.held_bytes(), s.channels()), (0, 0));
        assert!(s.publish("ch0", &whole("ch0", 11, &data)).is_none());
        s.leave("ch0");
        assert_eq!(s.held_bytes(), 0);
    }

    #[test]
    fn events_and_odd_frames_leave_the_base_alone() {
        let mut s = DeltaChannels::new(DeltaLimits::default());
        let ch: Arc<str> = Arc::from("c");
        let mut a = s.join(&ch);
        let mut p = s.publish("c", &whole("c", 1, &metrics(1))).unwrap();
        p.pick(&mut a);
        let join = {
            let payload = br#"{"channel":"c","join":{"client":"x"}}"#;
            let mut f = vec![0x81, payload.len() as u8];
            f.extend_from_slice(payload);
            Arc::<[u8]>::from(f)
        };
        assert!(s.publish("c", &join).is_none());
        let mut truncated = whole("c", 2, &metrics(2)).to_vec();
        truncated.pop();
        assert!(s.publish("c", &Arc::from(truncated)).is_none());
        let mut p = s.publish("c", &whole("c", 2, &metrics(2))).unwrap();
        assert!(matches!(p.pick(&mut a), Pick::Delta(_)));
    }
}
