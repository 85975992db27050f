//! `/echo`: every message comes back, text as text, binary as binary
//! (compressed when permessage-deflate is on). Autobahn, benchmarks and
//! smoke checks use it.

use super::direct::DirectEcho;
use super::{failed, Env, Link};
use crate::proto::{Event, Output};

/// Frames from the client: each whole message is echoed. `data` starts
/// `at` bytes into the bytes the worker handed over.
///
/// With `link.direct`, a message whose unmasked payload lies in `data` (a
/// single, uncompressed frame) is not copied while nothing is queued: it is
/// recorded there, and the worker writes it from the read buffer
/// (`direct`).
pub(super) fn handle_bytes(
    env: &mut Env,
    link: &mut Link<'_>,
    data: &mut [u8],
    at: usize,
) -> usize {
    let now = env.now;
    let limits = env.cfg.limits;
    let counts = &mut env.counts;
    // Where `data` lies, to tell a payload in it from one reassembled from
    // fragments or inflated elsewhere.
    let base = data.as_ptr() as usize;
    let end = base + data.len();
    let mut direct = link.direct.as_deref_mut();
    let result = link.proto.decode_with(
        data,
        now,
        &limits,
        &mut env.deflate,
        link.out,
        &mut |ev, tx| {
            if let Event::Message { text, data } = ev {
                counts.messages_in += 1;
                let p = data.as_ptr() as usize;
                match direct.as_deref_mut() {
                    Some(d)
                        if tx.queued() == 0
                            && !tx.compressing()
                            && p >= base
                            && p + data.len() <= end =>
                    {
                        d.push(DirectEcho::new(text, p - base..p - base + data.len()).shifted(at));
                    }
                    _ => tx.put_message(text, data),
                }
                counts.messages_out += 1;
            }
        },
    );
    match result {
        Ok(used) => used,
        Err(e) => failed(link, now, &mut env.counts, e, data.len()),
    }
}
