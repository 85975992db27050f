//! A connection's frozen record (issue 17, the live handoff): what the
//! shell keeps of it (its per-IP count, the spill with an incomplete frame
//! or ops waiting their turn, the out queue not yet written), then its
//! protocol state (`proto::Conn::freeze`) and its endpoint's
//! (`Endpoint::freeze`), in the layout of `wire::STATE_VERSION`. The
//! descriptor travels beside it, on the same record.
//!
//! The shell's flags do not move: a connection that is closing, half
//! closed (`F_EOF`) or shut (`F_WRITE_SHUT`) stays in the old process;
//! being dirty, paused or listed for a read is worked out again by the
//! worker that takes it. Its timer is its endpoint's deadline, computed
//! from the rebased protocol times.

use crate::base::state::{StateError, StateReader, StateWriter};
use crate::endpoint::{Endpoint, Env, Stays, Thawed};
use crate::proto::{Conn, Limits};

/// What the shell hands over of one connection.
pub(crate) struct Parts<'a> {
    pub ip_key: u32,
    pub spill: &'a [u8],
    pub out: &'a [u8],
    pub proto: Conn,
    pub endpoint: Thawed,
}

/// The record of a connection that can move, or why it cannot.
pub(crate) fn write(
    env: &Env,
    ip_key: u32,
    spill: &[u8],
    out: &[u8],
    proto: &Conn,
    endpoint: &Endpoint,
) -> Result<Vec<u8>, Stays> {
    proto.movable().map_err(|e| match e {
        crate::proto::conn::Unmovable::NotOpen => "not open",
        crate::proto::conn::Unmovable::DeflateContext => {
            "its deflate stream state cannot be exported"
        }
    })?;
    if proto.frame_done() as usize > spill.len() {
        return Err("its incomplete frame is not in the spill");
    }
    let mut b = Vec::with_capacity(64 + spill.len() + out.len());
    let mut w = StateWriter(&mut b);
    w.u32(ip_key);
    w.bytes(spill);
    w.bytes(out);
    proto.freeze(env.now, &mut w);
    endpoint.freeze(env, &mut w)?;
    Ok(b)
}

/// Read a record back, with times rebased to `now`; `limits` bounds a
/// message in progress. Every field is checked: an error names the first
/// that is wrong.
pub(crate) fn read<'a>(rec: &'a [u8], now: u64, limits: &Limits) -> Result<Parts<'a>, StateError> {
    let mut r = StateReader(rec);
    let ip_key = r.u32()?;
    let spill = r.bytes()?;
    let out = r.bytes()?;
    let proto = Conn::thaw(&mut r, now, limits)?;
    if proto.frame_done() as usize > spill.len() {
        return Err(StateError::Invalid("unmasked bytes beyond the spill"));
    }
    let endpoint = Thawed::read(&mut r)?;
    if !r.is_empty() {
        return Err(StateError::Invalid("bytes after the connection"));
    }
    Ok(Parts {
        ip_key,
        spill,
        out,
        proto,
        endpoint,
    })
}
