//! `/echo`: every message comes back, text as text, binary as binary
//! (compressed when permessage-deflate is on). Autobahn, benchmarks and
//! smoke checks use it.

use super::{failed, Env, Link};
use crate::proto::{Event, Output};

/// Frames from the client: each whole message is echoed.
pub(super) fn handle_bytes(env: &mut Env, link: &mut Link<'_>, data: &mut [u8]) -> usize {
    let now = env.now;
    let limits = env.cfg.limits;
    let counts = &mut env.counts;
    let result = link.proto.decode_with(
        data,
        now,
        &limits,
        &mut env.deflate,
        link.out,
        &mut |ev, tx| {
            if let Event::Message { text, data } = ev {
                counts.messages_in += 1;
                tx.put_message(text, data);
                counts.messages_out += 1;
            }
        },
    );
    match result {
        Ok(used) => used,
        Err(e) => failed(link, now, &mut env.counts, e, data.len()),
    }
}
