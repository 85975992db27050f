//! An endpoint's part of a connection's frozen state, for the live
//! handoff (issue 17): what it writes in the old process
//! ([`Endpoint::freeze`]), what the next process reads back without a
//! worker ([`Thawed::read`], so that every record is checked before the
//! old process lets go of them), and the endpoint it makes of it in a
//! worker ([`Endpoint::thaw`]).
//!
//! What moves: `/echo` (nothing beyond its protocol state), and a
//! connection whose request is being read or which waits, kept alive, for
//! its next (its four flags; the head is re-read from the spill). What
//! does not, and stays in the old process to be drained like on SIGTERM:
//! a `/ws` session, one waiting for the connect proxy, a plain HTTP
//! request waiting for the broker, SSE and long-poll streams
//! (docs/handoff-status.md).

use super::{Endpoint, Env, Handshake};
use crate::base::state::{StateError, StateReader, StateWriter};
use crate::base::ConnKey;
use crate::gateway::session::{FrozenSession, Session};

const KIND_ECHO: u8 = 1;
const KIND_HANDSHAKE: u8 = 2;
const KIND_GATEWAY: u8 = 3;

/// Why an endpoint stays in the old process.
pub type Stays = &'static str;

/// An endpoint read back from its frozen state, before a worker takes it.
#[derive(Debug)]
pub enum Thawed {
    Echo,
    Handshake(Handshake),
    Gateway(Box<FrozenSession>),
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
                s.freeze(&env.topics, env.now, w)
            }
            Endpoint::Connecting(_) => Err("waiting for the connect proxy"),
            Endpoint::Stream(_) => Err("an SSE or long-poll stream"),
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
            Endpoint::Http { .. } | Endpoint::Connecting(_) => false,
            _ => true,
        }
    }

    /// The connection moved to the next process: let go of what this
    /// process holds for it, without telling anyone it left.
    pub fn forget(&mut self, env: &mut Env, key: ConnKey) {
        if let Endpoint::Gateway(s) = self {
            s.forget(&mut env.ctx(key));
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
            _ => Err(StateError::Invalid("endpoint kind")),
        }
    }
}
