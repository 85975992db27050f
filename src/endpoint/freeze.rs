//! An endpoint's part of a connection's frozen state, for the live
//! handoff (issue 17): what it writes in the old process
//! ([`Endpoint::freeze`]), what the next process reads back without a
//! worker ([`Thawed::read`], so that every record is checked before the
//! old process lets go of them), and the endpoint it makes of it in a
//! worker ([`Endpoint::thaw`]).
//!
//! What moves: `/echo` (nothing beyond its protocol state). What does not,
//! and stays in the old process to be drained with close 4000 like on
//! SIGTERM: a request being read, a `/ws` waiting for the connect proxy,
//! a plain HTTP request waiting for the broker, SSE and long-poll
//! streams (docs/handoff-status.md).

use super::{Endpoint, Env};
use crate::base::state::{StateError, StateReader, StateWriter};

const KIND_ECHO: u8 = 1;

/// Why an endpoint stays in the old process.
pub type Stays = &'static str;

/// An endpoint read back from its frozen state, before a worker takes it.
#[derive(Debug)]
pub enum Thawed {
    Echo,
}

impl Endpoint {
    /// Write this endpoint's state for the next process, or say why it
    /// cannot move.
    pub fn freeze(&self, _env: &Env, w: &mut StateWriter<'_>) -> Result<(), Stays> {
        match self {
            Endpoint::Echo => {
                w.u8(KIND_ECHO);
                Ok(())
            }
            Endpoint::Handshake(_) => Err("its request is being read"),
            Endpoint::Gateway(_) => Err("a /ws session"),
            Endpoint::Connecting(_) => Err("waiting for the connect proxy"),
            Endpoint::Stream(_) => Err("an SSE or long-poll stream"),
            Endpoint::Http { .. } => Err("an HTTP request waiting for the broker"),
        }
    }

    /// The connection moved to the next process: let go of what this
    /// process holds for it, without telling anyone it left.
    pub fn forget(&mut self, _env: &mut Env, _key: crate::base::ConnKey) {
        match self {
            Endpoint::Echo => {}
            _ => {}
        }
    }

    /// The endpoint of a thawed connection, in the worker that takes it.
    pub fn thaw(t: Thawed, _env: &mut Env) -> Endpoint {
        match t {
            Thawed::Echo => Endpoint::Echo,
        }
    }
}

impl Thawed {
    /// Read what [`Endpoint::freeze`] wrote.
    pub fn read(r: &mut StateReader<'_>) -> Result<Thawed, StateError> {
        match r.u8()? {
            KIND_ECHO => Ok(Thawed::Echo),
            _ => Err(StateError::Invalid("endpoint kind")),
        }
    }
}
