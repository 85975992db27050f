//! An endpoint's part of a connection's frozen state, for the live
//! handoff (issue 17): what it writes in the old process
//! ([`Endpoint::freeze`]), what the next process reads back without a
//! worker ([`Thawed::read`], so that every record is checked before the
//! old process lets go of them), and the endpoint it makes of it in a
//! worker ([`Endpoint::thaw`]).
//!
//! What moves: `/echo` (nothing beyond its protocol state); a connection
//! whose request is being read or which waits, kept alive, for its next
//! (its four flags; the head is re-read from the spill); a `/ws` session
//! and an SSE stream at rest (`gateway::session`, `stream`: each
//! subscription asked again from its position). What does not, and stays
//! in the old process to be drained like on SIGTERM: a session not at
//! rest, one waiting for the connect proxy, a plain HTTP request waiting
//! for the broker, a held long-poll (answered first, see [`Endpoint::is_held_poll`])
//! (docs/handoff-status.md).

use super::stream::{FrozenStream, Stream};
use super::{Endpoint, Env, Handshake};
use crate::base::state::{StateError, StateReader, StateWriter};
use crate::base::ConnKey;
use crate::gateway::session::{FrozenSession, Session};
use crate::pubsub::Position;

const KIND_ECHO: u8 = 1;
const KIND_HANDSHAKE: u8 = 2;
const KIND_GATEWAY: u8 = 3;
const KIND_SSE: u8 = 4;

/// Why an endpoint stays in the old process.
pub type Stays = &'static str;

/// An endpoint read back from its frozen state, before a worker takes it.
#[derive(Debug)]
pub enum Thawed {
    Echo,
    Handshake(Handshake),
    Gateway(Box<FrozenSession>),
    Sse(Box<FrozenStream>),
}

impl Endpoint {
    /// Write this endpoint's state for the next process, or say why it
    /// cannot move.
    pub fn freeze(&self, env: &Env, w: &mut StateWriter<'_>) -> Result<(), Stays> {
        match self {
            Endpoint::Echo => {
                w.u8(KIND_ECHO);
                Ok(())
            }
            // Its request is re-read from the spill in the next process;
            // the handshake deadline is the protocol state's.
            Endpoint::Handshake(h) => {
                w.u8(KIND_HANDSHAKE);
                w.u8(h.to_bits());
                Ok(())
            }
            Endpoint::Gateway(s) => {
                w.u8(KIND_GATEWAY);
                let topics = &env.topics;
                let position = |ch: &str| {
                    let (epoch, offset) = topics.position(ch)?;
                    Some(Position {
                        epoch: epoch.into(),
                        offset,
                    })
                };
                s.freeze(&position, env.now, w)
            }
            Endpoint::Stream(s) if !s.is_poll() => {
                w.u8(KIND_SSE);
                s.freeze(env, w)
            }
            Endpoint::Connecting(_) => Err("waiting for the connect proxy"),
            Endpoint::Stream(_) => Err("a long-poll"),
            Endpoint::Http { .. } => Err("an HTTP request waiting for the broker"),
        }
    }

    /// Nothing asked of the broker or a backend is unanswered (a `/ws`
    /// op, a plain HTTP request, the connect proxy's decision): a
    /// handoff's freeze waits for that (bounded) so that the connection
    /// can move.
    pub fn at_rest(&self) -> bool {
        match self {
            Endpoint::Gateway(s) => !s.has_pending(),
            Endpoint::Stream(s) => s.at_rest(),
            Endpoint::Http { .. } | Endpoint::Connecting(_) => false,
            _ => true,
        }
    }

    /// A held long-poll: a handoff answers it first (with what it
    /// gathered, as a drain does; its client polls again, on the same
    /// kept-alive connection, which then moves).
    pub fn is_held_poll(&self) -> bool {
        matches!(self, Endpoint::Stream(s) if s.is_poll())
    }

    /// The connection moved to the next process: let go of what this
    /// process holds for it, without telling anyone it left.
    pub fn forget(&mut self, env: &mut Env, key: ConnKey) {
        match self {
            Endpoint::Gateway(s) => s.forget(&mut env.ctx(key)),
            Endpoint::Stream(s) => s.session.forget(&mut env.ctx(key)),
            _ => {}
        }
    }

    /// The endpoint of a thawed connection, in the worker that takes it.
    pub fn thaw(t: Thawed, env: &mut Env, key: ConnKey) -> Endpoint {
        match t {
            Thawed::Echo => Endpoint::Echo,
            Thawed::Handshake(h) => Endpoint::Handshake(h),
            Thawed::Gateway(f) => {
                let now = env.now;
                Endpoint::Gateway(Box::new(Session::thawed(*f, &mut env.ctx(key), now)))
            }
            Thawed::Sse(f) => Endpoint::Stream(Box::new(Stream::thawed(*f, env, key))),
        }
    }
}

impl Thawed {
    /// Read what [`Endpoint::freeze`] wrote.
    pub fn read(r: &mut StateReader<'_>) -> Result<Thawed, StateError> {
        match r.u8()? {
            KIND_ECHO => Ok(Thawed::Echo),
            KIND_HANDSHAKE => Handshake::from_bits(r.u8()?)
                .map(Thawed::Handshake)
                .ok_or(StateError::Invalid("request state")),
            KIND_GATEWAY => Ok(Thawed::Gateway(Box::new(Session::thaw(r)?))),
            KIND_SSE => Ok(Thawed::Sse(Box::new(Stream::thaw(r)?))),
            _ => Err(StateError::Invalid("endpoint kind")),
        }
    }
}
