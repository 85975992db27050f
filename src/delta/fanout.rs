//! One publication on its way to one worker's subscribers of its channel:
//! the frame each subscriber is sent, and each form's frame compressed at
//! most once for permessage-deflate.
//!
//! The worker's fan-out makes one [`Fanout`] per `Deliver`, asks
//! [`Fanout::pick`] per subscriber (with the subscription's cursor when it
//! asked for deltas) and queues [`Fanout::for_conn`] of what it picked (or
//! holds [`Fanout::plain`] behind a waiting reply). A channel without delta
//! subscribers on the worker costs a hash lookup per publication; every
//! subscriber then gets the whole frame, as before.

use std::sync::Arc;

use super::state::{DeltaChannels, DeltaCursor, Pick, Prepared};
use crate::proto::deflate::{Engine, SharedFrame};
use crate::proto::Conn;

/// Which of a publication's two frames a subscriber is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Whole,
    Delta,
}

/// A publication's frames for one worker (see the module doc).
#[derive(Debug)]
pub struct Fanout<'a> {
    /// `None`: an event, or a channel without delta subscribers here.
    prepared: Option<Prepared<'a>>,
    whole: SharedFrame,
    whole_plain: Arc<[u8]>,
    /// The delta form, once a subscriber took it (one per publication).
    delta: Option<(Arc<[u8]>, SharedFrame)>,
}

impl<'a> Fanout<'a> {
    /// `frame` of `channel` at `offset` (0: an event; a `resync` makes the
    /// channel's next publication whole for every delta subscriber).
    pub fn new(
        deltas: &'a mut DeltaChannels,
        channel: &str,
        offset: u64,
        frame: &Arc<[u8]>,
    ) -> Fanout<'a> {
        let prepared = if offset == 0 {
            deltas.event(channel, frame);
            None
        } else {
            deltas.publish(channel, frame)
        };
        Fanout {
            prepared,
            whole: SharedFrame::new(frame),
            whole_plain: frame.clone(),
            delta: None,
        }
    }

    /// Does any subscriber's cursor matter for this frame? (When not, the
    /// worker need not look them up.)
    pub fn has_deltas(&self) -> bool {
        self.prepared.is_some()
    }

    /// The form to send a subscriber: whole, unless it asked for deltas
    /// (`cursor`) and was sent the previous publication through this
    /// state. The cursor moves to this publication: queue what this says
    /// (or end the subscription or the connection: a subscriber that
    /// misses a frame must not take the next delta).
    pub fn pick(&mut self, cursor: Option<&mut DeltaCursor>) -> Form {
        let (Some(p), Some(c)) = (self.prepared.as_mut(), cursor) else {
            return Form::Whole;
        };
        match p.pick(c) {
            Pick::Whole => Form::Whole,
            Pick::Delta(f) => {
                if self.delta.is_none() {
                    let shared = SharedFrame::new(&f);
                    self.delta = Some((f, shared));
                }
                Form::Delta
            }
        }
    }

    /// The uncompressed frame of `form` (to hold behind a waiting reply,
    /// which its connection's sender compresses when it is written).
    pub fn plain(&self, form: Form) -> &Arc<[u8]> {
        match (form, &self.delta) {
            (Form::Delta, Some((f, _))) => f,
            _ => &self.whole_plain,
        }
    }

    /// The frame of `form` to queue for `conn`, compressed once per worker
    /// for the connections that negotiated permessage-deflate (the delta
    /// form on its own: usually under `compression.min_size`, so plain).
    pub fn for_conn(&mut self, form: Form, conn: &mut Conn, engine: &mut Engine) -> Arc<[u8]> {
        match (form, self.delta.as_mut()) {
            (Form::Delta, Some((_, shared))) => shared.for_conn(conn, engine),
            _ => self.whole.for_conn(conn, engine),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::DeltaLimits;

    fn frame(offset: u64, data: &str) -> Arc<[u8]> {
        let payload = format!(r#"{{"channel":"c","offset":{offset},"data":{data}}}"#);
        let mut f = vec![0x81, 126];
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        f.extend_from_slice(payload.as_bytes());
        Arc::from(f)
    }

    fn event(payload: &[u8]) -> Arc<[u8]> {
        let mut f = vec![0x81, payload.len() as u8];
        f.extend_from_slice(payload);
        Arc::from(f)
    }

    fn data(n: u32) -> String {
        let v: Vec<String> = (0..60)
            .map(|i| format!("{}", if i == 7 { n } else { i }))
            .collect();
        format!("[{}]", v.join(","))
    }

    #[test]
    fn subscribers_without_a_cursor_get_the_whole_frame_and_a_resync_restarts_whole() {
        let mut d = DeltaChannels::new(DeltaLimits::default());
        let ch: Arc<str> = Arc::from("c");
        let mut cur = d.join(&ch);
        let f1 = frame(1, &data(1));
        let mut fo = Fanout::new(&mut d, "c", 1, &f1);
        assert!(fo.has_deltas());
        assert_eq!(fo.pick(Some(&mut cur)), Form::Whole);
        assert_eq!(fo.pick(None), Form::Whole);
        let f2 = frame(2, &data(2));
        let mut fo = Fanout::new(&mut d, "c", 2, &f2);
        assert_eq!(fo.pick(None), Form::Whole);
        assert_eq!(fo.pick(Some(&mut cur)), Form::Delta);
        assert!(fo.plain(Form::Delta).len() < f2.len() / 2);
        assert!(Arc::ptr_eq(fo.plain(Form::Whole), &f2));
        // A presence event changes nothing; a resync does.
        let join = event(br#"{"channel":"c","join":{"client":"x"}}"#);
        assert!(!Fanout::new(&mut d, "c", 0, &join).has_deltas());
        let mut fo = Fanout::new(&mut d, "c", 3, &frame(3, &data(3)));
        assert_eq!(fo.pick(Some(&mut cur)), Form::Delta);
        let resync = event(br#"{"channel":"c","resync":{"epoch":"e","offset":3}}"#);
        Fanout::new(&mut d, "c", 0, &resync);
        let mut fo = Fanout::new(&mut d, "c", 4, &frame(4, &data(4)));
        assert_eq!(fo.pick(Some(&mut cur)), Form::Whole);
        assert_eq!(d.stats.resets, 1);
        // No delta subscriber of the channel: nothing prepared.
        d.leave("c");
        assert!(!Fanout::new(&mut d, "c", 5, &frame(5, &data(5))).has_deltas());
    }
}
