//! Where a session writes: each transport implements these (a WebSocket
//! connection through its `proto::Sender`, compressing when
//! permessage-deflate is on; an SSE stream or a long-poll through its own
//! encoder), so that the gateway knows no transport.

use crate::base::Frame;

/// Publications and events of a channel, encoded beforehand (a replay, a
/// live publication held behind a reply).
pub trait Sink {
    /// Bytes already queued for the client and not yet written (its out
    /// queue, or a long-poll's answer being gathered): replays are paced
    /// by it.
    fn queued(&self) -> usize;
    /// Queue one frame of `channel`.
    fn frame(&mut self, channel: &str, frame: &Frame);
}

/// A client that gets op replies in order (a WebSocket).
pub trait ReplySink: Sink {
    /// One message of the client protocol's JSON (a reply, a notice).
    fn message(&mut self, json: &[u8]);
    /// A publication or event frame written in the replies' order.
    fn publication(&mut self, frame: &Frame);
}

/// Where the writes of a connection that can no longer write go (after
/// its close frame): the session still takes its answers.
#[derive(Debug, Default)]
pub struct Discard;

impl Sink for Discard {
    fn queued(&self) -> usize {
        0
    }

    fn frame(&mut self, _: &str, _: &Frame) {}
}

impl ReplySink for Discard {
    fn message(&mut self, _: &[u8]) {}

    fn publication(&mut self, _: &Frame) {}
}

/// Bytes as a WebSocket server would write them (unmasked, uncompressed
/// frames): what tests and fuzz harnesses read back.
impl Sink for Vec<u8> {
    fn queued(&self) -> usize {
        0
    }

    fn frame(&mut self, _: &str, frame: &Frame) {
        self.extend_from_slice(frame);
    }
}

impl ReplySink for Vec<u8> {
    fn message(&mut self, json: &[u8]) {
        crate::proto::frame::put_frame(self, crate::proto::frame::OpCode::Text, json);
    }

    fn publication(&mut self, frame: &Frame) {
        self.extend_from_slice(frame);
    }
}
