//! The worker's side of paced replays (`gateway::replay`): a replay part
//! from the broker is queued to its connection as room allows, and the
//! next part is asked for when the connection's out queue has drained
//! (after a broker answer, and after a flush).

use log::debug;
use mio::Token;

use super::{Route, Worker, F_STREAM};
use crate::broker::{ReplayChunk, ReplyTo};
use crate::gateway::replay::{Step, StreamSink, WsSink};
use crate::proto::State;

impl Worker {
    /// A part of a replay (`gateway::replay`): queue what fits, join the
    /// live stream at the top, or apply the slow-consumer policy if the
    /// history lost the rest.
    pub(super) fn on_replay(&mut self, token: Token, chunk: ReplayChunk) {
        let core = &mut self.core;
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let stream = c.flags & F_STREAM != 0;
        if !(c.proto.is_open() || stream && c.proto.state() != State::Closed) {
            return;
        }
        let Some(s) = c.session.as_mut() else {
            return;
        };
        let cap = core.cfg.gateway.max_queued_bytes;
        let mut out = c.out.take().unwrap_or_else(|| core.outs.pop());
        let step = match s.stream.as_mut() {
            Some(st) => {
                let mut sink = StreamSink {
                    st,
                    out: out.as_mut(),
                };
                s.replays.on_chunk(chunk, cap, &mut sink)
            }
            None => {
                let mut tx = c.proto.sender(out.as_mut(), &mut core.deflate);
                s.replays.on_chunk(chunk, cap, &mut WsSink(&mut tx))
            }
        };
        c.out = Some(out);
        core.mark_dirty(token, c);
        match step {
            Step::Live(channel) => {
                core.topics.add(&channel, super::key_of(token));
            }
            Step::Lost { channel, after } => {
                debug!("connection {token:?}: the replay of {channel:?} lost its history after {after}");
                // As if offset after + 1 did not fit: the client recovers
                // from `after` (and is told `recovered:false`).
                return self.slow_consumer(token, &channel, after + 1);
            }
            Step::More | Step::Stale => {}
        }
        self.pull_replay(token, false);
    }

    /// Ask for a connection's next replay part if one is due. `wake`: the
    /// answer of a broker that answers at once lands in this worker's own
    /// inbox outside `drain_inbox`, so the loop must not sleep on it.
    pub(super) fn pull_replay(&mut self, token: Token, wake: bool) {
        let core = &mut self.core;
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let sse = c.route == Route::Sse && c.proto.state() != State::Closed;
        if c.route == Route::Poll || !(c.proto.is_open() || sse) {
            return;
        }
        let Some(s) = c.session.as_mut().filter(|s| !s.replays.is_empty()) else {
            return;
        };
        let queued = c.out.as_ref().map_or(0, |o| o.len());
        let cap = core.cfg.gateway.max_queued_bytes;
        if let Some(req) = s.replays.next_request(queued, cap) {
            let reply = ReplyTo {
                worker: core.id,
                conn: super::key_of(token),
                id: None,
                tag: core.tags.fresh(),
            };
            core.broker.replay(core.id, req, reply);
            if wake {
                core.inboxes.wake(core.id);
            }
        }
    }
}
