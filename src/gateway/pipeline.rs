//! The order of a connection's replies, and the ops that wait their turn.
//!
//! A client may write many ops at once (`subscribe r`, `unsubscribe r`,
//! `subscribe r` in one TCP write). Each gets exactly one reply, in the
//! order sent, and the outcome is as if the ops had been applied one at a
//! time in that order. Some ops are answered at once (ping, unsubscribe,
//! any error); others by the broker, later, through the worker's inbox.
//! Two queues keep the order:
//!
//! - **slots**, one per op dispatched, in order. A slot is answered at once
//!   or when the broker's answer with its [`Tag`] arrives, and slots are
//!   written from the head only: a reply never overtakes an earlier one that
//!   still waits for the broker. A subscribe answered while an earlier slot
//!   waits is already in the worker's index (so that nothing published
//!   after its position is missed), but the publications that reach it go
//!   into its slot, after its reply and replay, until the slot is written.
//! - **held** ops: an op that depends on one still waiting for the broker is
//!   kept as received and dispatched once that one is answered (see
//!   [`must_wait`]); every op after a held one is held too (first in, first
//!   out), so ops are always dispatched in the order sent.
//!
//! Ops that do not depend on each other go to the broker at once: a client
//! pipelining a hundred publishes gets them into one Redis pipeline, not a
//! hundred round trips.
//!
//! Both queues are bounded: once a connection has
//! [`GatewayConfig::max_pending_ops`](super::GatewayConfig) ops unanswered,
//! or `max_queued_bytes` of held ops and unwritten replies, the worker stops
//! reading it until replies drain (nothing is refused or lost).

use std::collections::VecDeque;
use std::sync::Arc;

use super::ops::Op;
use crate::broker::Tag;
use crate::pubsub::Frame;

/// Something to write, in order: a JSON message, or a frame encoded
/// beforehand (a replayed or live publication).
#[derive(Debug)]
pub enum Piece {
    Json(Vec<u8>),
    Frame(Frame),
    /// A long replay, begun (paced by the out queue) once the pieces before
    /// it are written.
    Replay(std::sync::Arc<str>, Box<crate::broker::Subscribed>),
}

impl Piece {
    fn len(&self) -> usize {
        match self {
            Piece::Json(j) => j.len(),
            Piece::Frame(f) => f.len(),
            Piece::Replay(..) => 0,
        }
    }
}

/// What a waiting slot asked the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    Subscribe,
    Publish,
    /// A publish the backend's publish proxy decides first (then it is a
    /// `Publish`): a later publish of the channel waits for it, so that
    /// the broker gets the channel's publications in the order sent.
    HookPublish,
    Presence,
    History,
    /// An `rpc`, answered by the backend.
    Rpc,
}

#[derive(Debug)]
struct Slot {
    /// The request's tag: routes the broker's answer and, for an answered
    /// subscribe, the publications that reach it before it is written.
    tag: Option<Tag>,
    /// What is asked, on which channel, until the answer arrives.
    waits: Option<(Asked, Arc<str>)>,
    pieces: Vec<Piece>,
}

/// An op kept as received until the ones it depends on are answered.
#[derive(Debug)]
pub struct HeldOp {
    pub text: bool,
    pub data: Box<[u8]>,
}

/// A connection's unanswered ops (boxed in its session only while there
/// are any).
#[derive(Debug, Default)]
pub struct Pipeline {
    slots: VecDeque<Slot>,
    held: VecDeque<HeldOp>,
    /// Bytes of held ops and of answered pieces not yet written.
    bytes: usize,
}

impl Pipeline {
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.held.is_empty()
    }

    /// Ops not yet replied to.
    pub fn ops(&self) -> usize {
        self.slots.len() + self.held.len()
    }

    /// Bytes held: ops waiting to be dispatched, and replies (with their
    /// replays and the publications held behind them) waiting to be written.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Is any slot queued (answered or not)? Then a new reply goes behind it.
    pub fn has_slots(&self) -> bool {
        !self.slots.is_empty()
    }

    /// A reply known at once, behind the earlier ones.
    pub fn push_answered(&mut self, pieces: Vec<Piece>) {
        self.bytes += pieces.iter().map(Piece::len).sum::<usize>();
        self.slots.push_back(Slot {
            tag: None,
            waits: None,
            pieces,
        });
    }

    /// A reply the broker gives (its answer carries `tag`).
    pub fn push_waiting(&mut self, tag: Tag, asked: Asked, channel: Arc<str>) {
        self.slots.push_back(Slot {
            tag: Some(tag),
            waits: Some((asked, channel)),
            pieces: Vec::new(),
        });
    }

    /// The slot of `tag`, still waiting, now waits for `asked` (a hook
    /// allowed its op, which went on to the broker).
    pub fn reask(&mut self, tag: Tag, asked: Asked) {
        if let Some((a, _)) = self.slot_mut(tag, true).and_then(|s| s.waits.as_mut()) {
            *a = asked;
        }
    }

    /// The first slot still waiting for the broker.
    pub fn waiting_tag(&self) -> Option<Tag> {
        self.slots.iter().find(|s| s.waits.is_some())?.tag
    }

    /// The slot of `tag`, if it is still waiting (`waiting`) or answered.
    fn slot_mut(&mut self, tag: Tag, waiting: bool) -> Option<&mut Slot> {
        self.slots
            .iter_mut()
            .find(|s| s.tag == Some(tag) && s.waits.is_some() == waiting)
    }

    /// Is the slot of `tag` waiting for the broker?
    pub fn waits_for(&self, tag: Tag) -> bool {
        self.slots
            .iter()
            .any(|s| s.tag == Some(tag) && s.waits.is_some())
    }

    /// The broker answered `tag`: its slot holds `pieces` from now on.
    /// False if no slot waits for `tag`.
    pub fn answer(&mut self, tag: Tag, pieces: Vec<Piece>) -> bool {
        let added = pieces.iter().map(Piece::len).sum::<usize>();
        let Some(slot) = self.slot_mut(tag, true) else {
            return false;
        };
        slot.waits = None;
        slot.pieces = pieces;
        self.bytes += added;
        true
    }

    /// Add to the answered slot of `tag` (a publication, a notice). False
    /// if there is no such slot.
    pub fn append(&mut self, tag: Tag, piece: Piece) -> bool {
        let added = piece.len();
        let Some(slot) = self.slot_mut(tag, false) else {
            return false;
        };
        slot.pieces.push(piece);
        self.bytes += added;
        true
    }

    /// The head slot, if it is answered: its tag and what to write.
    pub fn pop_answered(&mut self) -> Option<(Option<Tag>, Vec<Piece>)> {
        if self.slots.front()?.waits.is_some() {
            return None;
        }
        let slot = self.slots.pop_front()?;
        self.bytes -= slot.pieces.iter().map(Piece::len).sum::<usize>();
        Some((slot.tag, slot.pieces))
    }

    fn waits_on(&self, channel: &str, kinds: &[Asked]) -> bool {
        self.slots.iter().any(|s| {
            s.waits
                .as_ref()
                .is_some_and(|(a, c)| &**c == channel && kinds.contains(a))
        })
    }

    fn waits_any(&self, kinds: &[Asked]) -> bool {
        self.slots
            .iter()
            .any(|s| s.waits.as_ref().is_some_and(|(a, _)| kinds.contains(a)))
    }

    pub fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    pub fn hold(&mut self, text: bool, data: &[u8]) {
        self.bytes += data.len();
        self.held.push_back(HeldOp {
            text,
            data: data.into(),
        });
    }

    /// The oldest held op (put it back with [`Pipeline::unhold`] if it must
    /// still wait).
    pub fn take_held(&mut self) -> Option<HeldOp> {
        let op = self.held.pop_front()?;
        self.bytes -= op.data.len();
        Some(op)
    }

    pub fn unhold(&mut self, op: HeldOp) {
        self.bytes += op.data.len();
        self.held.push_front(op);
    }

    /// Every held op, oldest first (the connection is gone).
    pub fn into_held(self) -> VecDeque<HeldOp> {
        self.held
    }
}

/// Must `op` wait for an earlier op still at the broker? Only where the
/// order of effects matters:
///
/// | op | waits for an earlier … still at the broker |
/// |---|---|
/// | `subscribe c`, `unsubscribe c` | any op on `c` (its state, its position, its presence) |
/// | `subscribe c` at the channel limit | any subscribe (a refused one frees a place) |
/// | `publish c`, `presence c` | a subscribe of `c` (it sees its own publication, counts itself) |
/// | `publish c` | a publish of `c` still at the publish proxy (the broker gets them in order) |
/// | `history c` | a publish or a subscribe of `c` (it sees its own publications; in a `subscribe_proxy` namespace it needs the subscription) |
/// | `refresh` | anything (later ops are checked against the new token) |
/// | `ping`, `rpc` | nothing |
///
/// Publishes do not wait for each other: a broker keeps one connection's
/// publications of a channel in the order it was given them.
pub fn must_wait(p: &Pipeline, op: &Op<'_>, subscriptions: usize, max_channels: usize) -> bool {
    use Asked::*;
    const ALL: &[Asked] = &[Subscribe, Publish, HookPublish, Presence, History, Rpc];
    match op {
        Op::Subscribe { channel, .. } => {
            p.waits_on(channel, ALL) || (subscriptions >= max_channels && p.waits_any(&[Subscribe]))
        }
        Op::Unsubscribe { channel } => p.waits_on(channel, ALL),
        Op::Publish { channel, .. } => p.waits_on(channel, &[Subscribe, HookPublish]),
        Op::Presence { channel } => p.waits_on(channel, &[Subscribe]),
        Op::History { channel, .. } => p.waits_on(channel, &[Publish, HookPublish, Subscribe]),
        Op::Refresh { .. } => p.waits_any(ALL),
        Op::Ping | Op::Rpc { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::ops::parse;

    fn json(s: &str) -> Piece {
        Piece::Json(s.as_bytes().to_vec())
    }

    fn texts(pieces: Vec<Piece>) -> Vec<String> {
        pieces
            .into_iter()
            .map(|p| match p {
                Piece::Json(j) => String::from_utf8(j).unwrap(),
                Piece::Frame(f) => format!("frame {}", f.len()),
                Piece::Replay(ch, _) => format!("replay {ch}"),
            })
            .collect()
    }

    #[test]
    fn answers_are_written_in_the_order_of_the_slots() {
        let mut p = Pipeline::default();
        p.push_waiting(Tag(1), Asked::Publish, "a".into());
        p.push_answered(vec![json("pong")]);
        p.push_waiting(Tag(2), Asked::Subscribe, "b".into());
        assert!(p.pop_answered().is_none(), "the head waits");
        assert!(p.answer(Tag(2), vec![json("subscribed b")]));
        assert!(!p.answer(Tag(2), vec![json("twice")]), "answered once");
        assert!(p.append(
            Tag(2),
            Piece::Frame(crate::base::Frame::publication(
                b"\x81\x02li".to_vec(),
                2,
                1
            ))
        ));
        assert!(!p.append(Tag(1), json("x")), "not answered yet");
        assert!(p.pop_answered().is_none());
        assert!(!p.answer(Tag(9), vec![]), "no such request");
        assert!(p.answer(Tag(1), vec![json("published")]));
        let mut out = Vec::new();
        while let Some((_, pieces)) = p.pop_answered() {
            out.extend(texts(pieces));
        }
        assert_eq!(out, ["published", "pong", "subscribed b", "frame 4"]);
        assert!(p.is_empty());
        assert_eq!(p.bytes(), 0);
    }

    #[test]
    fn held_ops_keep_their_bytes_counted() {
        let mut p = Pipeline::default();
        p.hold(true, b"12345");
        p.hold(true, b"678");
        assert_eq!((p.ops(), p.bytes()), (2, 8));
        let op = p.take_held().unwrap();
        assert_eq!(&*op.data, b"12345");
        p.unhold(op);
        assert_eq!(p.bytes(), 8);
        assert_eq!(p.into_held().len(), 2);
    }

    #[test]
    fn what_waits_for_what() {
        let mut p = Pipeline::default();
        p.push_waiting(Tag(1), Asked::Subscribe, "r".into());
        p.push_waiting(Tag(2), Asked::Publish, "p".into());
        let waits = |text: &str, subs: usize| {
            let (_, op) = parse(text.as_bytes()).unwrap();
            must_wait(&p, &op, subs, 10)
        };
        assert!(waits(r#"{"op":"subscribe","channel":"r"}"#, 2));
        assert!(waits(r#"{"op":"unsubscribe","channel":"r"}"#, 2));
        assert!(waits(r#"{"op":"publish","channel":"r","data":1}"#, 2));
        assert!(waits(r#"{"op":"presence","channel":"r"}"#, 2));
        assert!(!waits(r#"{"op":"subscribe","channel":"x"}"#, 2));
        assert!(
            waits(r#"{"op":"subscribe","channel":"x"}"#, 10),
            "at the limit"
        );
        assert!(waits(r#"{"op":"subscribe","channel":"p"}"#, 2));
        assert!(!waits(r#"{"op":"publish","channel":"p","data":1}"#, 2));
        assert!(!waits(r#"{"op":"presence","channel":"p"}"#, 2));
        assert!(waits(r#"{"op":"refresh","token":"t"}"#, 2));
        assert!(!waits(r#"{"op":"ping"}"#, 2));
    }
}
