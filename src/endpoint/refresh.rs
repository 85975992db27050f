//! The refresh proxy (issue 15): when the `expire_at` a connect proxy gave
//! a connection comes, the backend is asked whether it lives on. The call
//! never blocks the loop: the connection's timer asks (the session keeps
//! the call's tag), the decision comes back through the worker's inbox and
//! is matched by that tag, like every hook's.
//!
//! - `{"result":{"expire_at":…}}`: the new expiry (`0` or absent: never);
//!   `info` replaces the connection's. An `expire_at` already past ends
//!   the connection as `expired` does.
//! - `{"result":{"expired":true}}` (or HTTP 401/403): close `4501`; an SSE
//!   stream ends.
//! - `{"disconnect":…}`: close with its code and reason.
//! - The backend down, slow, 5xx, a bad answer, an `error`: the connection
//!   is kept and asked about again after `Proxy::refresh_retry` (Centrifugo
//!   gives such a connection one more minute and asks again).
//!
//! A long-poll request is not refreshed: it ends at its expiry (its next
//! request is judged again). A token's expiry is never the refresh
//! proxy's: the client's `refresh` op renews it.

use log::{debug, info, warn};

use super::{unix_now_ms, Effects, Endpoint, Env, Link};
use crate::broker::Tag;
use crate::hooks::proxy::{Hook, RefreshDecision};
use crate::proto::State;

/// The close code of an expired connection (the token's: `auth`).
const EXPIRED: u16 = crate::auth::close_code::TOKEN_EXPIRED;

/// The connection's expiry came. `Some` when the refresh proxy takes it:
/// asked (or still asked), and the connection kept until the decision or
/// the retry delay; `None` when it ends as before (no refresh proxy, a
/// token's expiry, a long-poll).
pub(super) fn due(ep: &mut Endpoint, env: &mut Env, link: &mut Link<'_>) -> Option<Effects> {
    let proxy = env.cfg.gateway.proxy.clone()?;
    if !proxy.has(Hook::Refresh) || matches!(ep, Endpoint::Stream(s) if s.is_poll()) {
        return None;
    }
    let s = ep.session_mut().filter(|s| s.proxy_expiry())?;
    let retry = proxy.refresh_retry().as_millis() as u64;
    if s.refreshing().is_none() {
        match s.ask_refresh(&mut env.ctx(link.key), &proxy) {
            Ok(tag) => s.set_refreshing(Some(tag)),
            Err(d) => warn!(
                "connection {:?}: refresh proxy not asked ({d:?}): kept, asked again in {retry} ms",
                link.key
            ),
        }
    }
    // Kept meanwhile; asked again then if nothing decided.
    s.set_expires_at_ms(Some(env.now + retry));
    Some(Effects::REARM)
}

/// The refresh proxy decided (the call of `tag`).
pub(super) fn decided(
    ep: &mut Endpoint,
    env: &mut Env,
    link: &mut Link<'_>,
    tag: Tag,
    decision: RefreshDecision,
) -> Effects {
    let Some(s) = ep.session_mut().filter(|s| s.refreshing() == Some(tag)) else {
        debug!(
            "connection {:?}: a refresh decision it no longer waits for: dropped",
            link.key
        );
        return Effects::NONE;
    };
    s.set_refreshing(None);
    if link.proto.state() == State::Closed {
        return Effects::NONE;
    }
    match decision {
        RefreshDecision::Prolong { expire_at, info } => {
            if let Some(i) = info {
                s.set_info(i);
            }
            let Some(at) = expire_at else {
                s.set_expires_at_ms(None);
                return Effects::REARM;
            };
            let (at, now) = (at.saturating_mul(1000), unix_now_ms());
            if at > now {
                s.set_expires_at_ms(Some(env.now + (at - now)));
                return Effects::REARM;
            }
            debug!("connection {:?}: refreshed to a past expiry", link.key);
            end(ep, env, link, EXPIRED, "connection expired")
        }
        RefreshDecision::Expired => end(ep, env, link, EXPIRED, "connection expired"),
        RefreshDecision::Disconnect(d) => {
            info!(
                "connection {:?}: the refresh proxy disconnects it ({} {})",
                link.key, d.code, d.reason
            );
            end(ep, env, link, d.code, &d.reason)
        }
        RefreshDecision::Retry(f) => {
            // The expiry is already the retry's (`due`).
            info!(
                "connection {:?}: refresh not decided ({f}): kept, asked again later",
                link.key
            );
            Effects::REARM
        }
    }
}

/// The backend ended the connection: a WebSocket closes with `code`, an
/// SSE stream ends.
fn end(ep: &mut Endpoint, env: &mut Env, link: &mut Link<'_>, code: u16, reason: &str) -> Effects {
    if let Some(s) = ep.session_mut() {
        s.set_expires_at_ms(None);
    }
    match ep {
        Endpoint::Gateway(s) => {
            s.close_code.get_or_insert(code);
            link.proto.close(link.out, env.now, code, reason);
            Effects::REARM | Effects::DIRTY
        }
        Endpoint::Stream(s) => s.expired(env, link),
        _ => {
            link.proto.shutdown(env.now);
            Effects::REARM | Effects::DIRTY
        }
    }
}
