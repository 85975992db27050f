//! Replays paced by the connection's out queue.
//!
//! A subscribe with `since` whose gap is still held is answered
//! `recovered:true` at once; the gap itself reaches the client a part at a
//! time, so that a client asking to replay many channels of big history
//! never has more than `limits.max_queued_bytes` queued for it, whatever it
//! reads:
//!
//! - the broker's answer carries the first part (at most half the cap) and
//!   says where it ends ([`Subscribed::replay_after`]); the rest is read
//!   from the history with [`Broker::replay`], one part at a time per
//!   connection, asked when the out queue has drained below a quarter of
//!   the cap and sized to fill it to at most half: the other half stays
//!   free for the live traffic of the connection's other channels;
//! - until a part reaches the broker's top, the connection is not in the
//!   worker's index ([`Topics`]) for that channel: live publications are
//!   not queued to it but read later from the history, where they also are.
//!   The broker orders each part with the channel's publications (as it
//!   does a subscribe answer), so once a part ends at its top, everything
//!   later reaches the worker after it, live: nothing lost, doubled or
//!   reordered. (Presence events of the channel reach the connection once
//!   it is live.)
//! - if the history no longer holds the next publication (trimmed by age or
//!   count, or evicted by the node's budget while the client read slowly),
//!   the replay cannot go on: the worker applies the slow-consumer policy
//!   (close `4001`, or the drop notice with the last offset sent), and the
//!   client, resuming from there, is told `recovered:false`;
//! - a long-poll answers with what fits of the first part and a cursor at
//!   its end; the next poll continues from there (`recovered:true` again).
//!
//! A part always holds at least one publication, so a replay moves even when
//! a single publication is bigger than half the cap.
//!
//! [`Subscribed::replay_after`]: crate::broker::Subscribed::replay_after
//! [`Broker::replay`]: crate::broker::Broker::replay
//! [`Topics`]: crate::pubsub::topics::Topics

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::broker::{ReplayChunk, ReplayRequest, Subscribed};

pub use super::sink::Sink;

/// How a subscribe answer's replay went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// Everything was queued: the subscriber joins the live stream now.
    Live,
    /// More is to be read as the queue drains (WebSocket, SSE).
    Paced,
    /// A long-poll got what fits: it answers now, its cursor at the end of
    /// what it got.
    Cut,
}

/// What a replay part did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Not for a replay in progress (it was stopped since).
    Stale,
    /// Queued; more to come.
    More,
    /// Queued up to the top: the subscriber joins the live stream.
    Live(Arc<str>),
    /// The history no longer holds the next publication: `after` is the
    /// last offset the client was sent.
    Lost { channel: Arc<str>, after: u64 },
}

/// One channel's replay in progress.
#[derive(Debug)]
struct Replay {
    channel: Arc<str>,
    epoch: String,
    /// The last offset queued to the client.
    after: u64,
    /// The tag of the part asked for (0: none in flight).
    asked: u64,
}

/// A connection's replays, served one part at a time, in the order they
/// began. Empty for almost every connection: then one null pointer in the
/// session (8 bytes, where a `Vec` took 24), and no heap.
#[derive(Debug, Default)]
#[allow(clippy::box_collection)] // the box is the point: 8 bytes idle
pub struct Replays(Option<Box<Vec<Replay>>>);

/// May a replay frame of `len` bytes go behind `queued` bytes? Up to half
/// the cap, and always into an empty queue (a part moves the replay).
fn fits(queued: usize, len: usize, cap: usize) -> bool {
    queued == 0 || queued + len <= cap / 2
}

/// Tags of replay parts: distinct per process.
fn next_tag() -> u64 {
    static TAG: AtomicU64 = AtomicU64::new(1);
    TAG.fetch_add(1, Ordering::Relaxed)
}

impl Replays {
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Back to no heap once the last replay ended.
    fn tidy(&mut self) {
        if self.0.as_ref().is_some_and(|v| v.is_empty()) {
            self.0 = None;
        }
    }

    /// A subscribe answer for `channel`: queue its replay as room allows
    /// (`paced`: and read the rest later; otherwise a long-poll cuts it).
    pub fn begin<S: Sink + ?Sized>(
        &mut self,
        channel: &Arc<str>,
        s: &Subscribed,
        cap: usize,
        paced: bool,
        sink: &mut S,
    ) -> Begin {
        if s.recovered != Some(true) {
            // The latest publication of a `deliver_latest` channel: one.
            for f in &s.replay {
                sink.frame(channel, f);
            }
            return Begin::Live;
        }
        // The replay holds the gap's first publications, in order.
        let end = s.replay_after.unwrap_or(s.position.offset);
        let mut after = end.saturating_sub(s.replay.len() as u64);
        for f in &s.replay {
            if !fits(sink.queued(), f.len(), cap) {
                break;
            }
            sink.frame(channel, f);
            after += 1;
        }
        if after >= s.position.offset {
            return Begin::Live;
        }
        if !paced {
            return Begin::Cut;
        }
        self.0.get_or_insert_with(Default::default).push(Replay {
            channel: channel.clone(),
            epoch: s.position.epoch.clone(),
            after,
            asked: 0,
        });
        Begin::Paced
    }

    /// The channel was left (unsubscribed, dropped): its replay ends.
    pub fn stop(&mut self, channel: &str) {
        if let Some(v) = &mut self.0 {
            v.retain(|r| &*r.channel != channel);
        }
        self.tidy();
    }

    /// The next part to ask for, if one is due: none in flight, and the out
    /// queue below a quarter of the cap.
    pub fn next_request(&mut self, queued: usize, cap: usize) -> Option<ReplayRequest> {
        let r = self.0.as_mut()?.first_mut()?;
        if r.asked != 0 || queued > cap / 4 {
            return None;
        }
        r.asked = next_tag();
        Some(ReplayRequest {
            channel: r.channel.clone(),
            epoch: r.epoch.clone(),
            after: r.after,
            max_bytes: (cap / 2).saturating_sub(queued).max(1),
            tag: r.asked,
        })
    }

    /// A part arrived: queue what fits (the rest is asked again later).
    pub fn on_chunk<S: Sink + ?Sized>(
        &mut self,
        chunk: ReplayChunk,
        cap: usize,
        sink: &mut S,
    ) -> Step {
        let step = self.step(chunk, cap, sink);
        self.tidy();
        step
    }

    fn step<S: Sink + ?Sized>(&mut self, chunk: ReplayChunk, cap: usize, sink: &mut S) -> Step {
        let Some(v) = self.0.as_mut() else {
            return Step::Stale;
        };
        let Some(i) = v.iter().position(|r| r.asked == chunk.tag) else {
            return Step::Stale;
        };
        let r = &mut v[i];
        r.asked = 0;
        let Some(frames) = chunk.frames else {
            let r = v.remove(i);
            return Step::Lost {
                channel: r.channel,
                after: r.after,
            };
        };
        let mut all = true;
        for f in &frames {
            if !fits(sink.queued(), f.len(), cap) {
                all = false;
                break;
            }
            sink.frame(&r.channel, f);
            r.after += 1;
        }
        if all && r.after >= chunk.top {
            Step::Live(v.remove(i).channel)
        } else {
            Step::More
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::Frame;
    use crate::broker::publication_frame;
    use crate::pubsub::Position;
    use serde_json::value::RawValue;

    /// Publication `off` of `ch` with a payload of about `size` bytes.
    fn publication(ch: &str, off: u64, size: usize) -> Frame {
        let data = RawValue::from_string(format!("\"{}\"", "x".repeat(size))).unwrap();
        publication_frame(ch, off, &data)
    }

    /// A sink that records offsets, with a queue that can be drained.
    #[derive(Default)]
    struct Recorder {
        queued: usize,
        got: Vec<u64>,
    }

    impl Sink for Recorder {
        fn queued(&self) -> usize {
            self.queued
        }
        fn frame(&mut self, _: &str, frame: &Frame) {
            #[derive(serde::Deserialize)]
            struct O {
                offset: u64,
            }
            let o: O = serde_json::from_slice(frame.payload()).unwrap();
            self.queued += frame.len();
            self.got.push(o.offset);
        }
    }

    fn part(ch: &Arc<str>, tag: u64, frames: Option<Vec<Frame>>, top: u64) -> ReplayChunk {
        ReplayChunk {
            channel: ch.clone(),
            tag,
            frames,
            top,
        }
    }

    fn answer(top: u64, replay: Vec<Frame>, replay_after: Option<u64>) -> Subscribed {
        Subscribed {
            position: Position {
                epoch: "e".into(),
                offset: top,
            },
            recovered: Some(true),
            replay,
            replay_after,
        }
    }

    #[test]
    fn a_whole_gap_that_fits_goes_live_at_once() {
        let ch: Arc<str> = "a".into();
        let mut r = Replays::default();
        let mut sink = Recorder::default();
        let s = answer(7, (6..=7).map(|o| publication("a", o, 10)).collect(), None);
        assert_eq!(r.begin(&ch, &s, 4096, true, &mut sink), Begin::Live);
        assert_eq!(sink.got, vec![6, 7]);
        assert!(r.is_empty());
    }

    #[test]
    fn parts_fill_half_the_cap_and_go_live_at_the_top() {
        let ch: Arc<str> = "a".into();
        let cap = 4000;
        let mut r = Replays::default();
        let mut sink = Recorder::default();
        // The broker sent 1..=3 (of a gap up to 20); ~500-byte frames.
        let s = answer(
            20,
            (1..=3).map(|o| publication("a", o, 450)).collect(),
            Some(3),
        );
        assert_eq!(r.begin(&ch, &s, cap, true, &mut sink), Begin::Paced);
        assert_eq!(sink.got, vec![1, 2, 3]);
        // Over a quarter of the cap queued: nothing asked yet.
        assert!(r.next_request(sink.queued, cap).is_none());
        sink.queued = 0; // the client read it
        let req = r.next_request(sink.queued, cap).expect("a part is due");
        assert_eq!((req.after, req.max_bytes, &*req.epoch), (3, cap / 2, "e"));
        assert!(r.next_request(0, cap).is_none(), "one part in flight");
        // The broker answers with more than fits: what does not fit is
        // asked again later, from the last offset queued.
        let frames = (4..=10).map(|o| publication("a", o, 450)).collect();
        let step = r.on_chunk(part(&ch, req.tag, Some(frames), 10), cap, &mut sink);
        assert_eq!(step, Step::More);
        assert_eq!(sink.got, vec![1, 2, 3, 4, 5, 6, 7]);
        assert!(sink.queued <= cap / 2 + 500);
        sink.queued = 0;
        let req = r.next_request(0, cap).unwrap();
        assert_eq!(req.after, 7);
        // A stale answer (an earlier tag) is ignored.
        let stale = part(&ch, req.tag - 1, Some(vec![]), 10);
        assert_eq!(r.on_chunk(stale, cap, &mut sink), Step::Stale);
        let frames = (8..=10).map(|o| publication("a", o, 450)).collect();
        let step = r.on_chunk(part(&ch, req.tag, Some(frames), 10), cap, &mut sink);
        assert_eq!(step, Step::Live(ch.clone()));
        assert_eq!(sink.got, (1..=10).collect::<Vec<_>>());
        assert!(r.is_empty());
    }

    #[test]
    fn a_lost_part_reports_the_last_offset_sent() {
        let ch: Arc<str> = "a".into();
        let mut r = Replays::default();
        let mut sink = Recorder::default();
        let s = answer(9, vec![publication("a", 5, 10)], Some(5));
        assert_eq!(r.begin(&ch, &s, 4096, true, &mut sink), Begin::Paced);
        let req = r.next_request(0, 4096).unwrap();
        let lost = part(&ch, req.tag, None, 9);
        assert_eq!(
            r.on_chunk(lost, 4096, &mut sink),
            Step::Lost {
                channel: ch,
                after: 5
            }
        );
        assert!(r.is_empty());
    }

    #[test]
    fn a_poll_is_cut_and_a_stopped_replay_asks_nothing() {
        let ch: Arc<str> = "a".into();
        let mut r = Replays::default();
        let mut sink = Recorder::default();
        let s = answer(
            9,
            (1..=5).map(|o| publication("a", o, 900)).collect(),
            Some(5),
        );
        assert_eq!(r.begin(&ch, &s, 4000, false, &mut sink), Begin::Cut);
        assert_eq!(sink.got, vec![1, 2], "half the cap, then cut");
        assert!(r.is_empty(), "a poll never asks for more");
        let mut sink = Recorder::default();
        assert_eq!(r.begin(&ch, &s, 4000, true, &mut sink), Begin::Paced);
        r.stop("a");
        assert!(r.next_request(0, 4000).is_none());
    }
}
