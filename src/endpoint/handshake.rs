//! A request being read: a new connection's first request, or the next one
//! of a kept-alive connection. Its head goes to the router
//! (`http::router`), whose decision opens a WebSocket ([`super::echo`],
//! [`super::gateway`]), a stream ([`super::stream`]), or answers over plain
//! HTTP ([`super::http`]). Admission (a trusted proxy's PROXY v2 header
//! and `X-Forwarded-For`, the per-IP count, the handshake rate) is applied
//! here, before anything runs.

use log::{debug, warn};

use super::{admission, gateway, http, stream, Effects, Endpoint, Env, Link};
use crate::auth::AuthError;
use crate::base::query::Query;
use crate::base::OpError;
use crate::gateway::error::error_json;
use crate::http::router::{self, Route, Upgrade};
use crate::http::stream::Kind;
use crate::proto::deflate;
use crate::proto::handshake::{self, Head};
use crate::proto::Error;

/// What the request phase knows of its connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handshake {
    /// A request of this connection was answered (keep-alive): this is not
    /// its first.
    answered: bool,
    /// The peer is a trusted proxy: PROXY v2 or `X-Forwarded-For` names
    /// the client.
    trusted: bool,
    /// The PROXY v2 header was read.
    proxy_done: bool,
    /// A TLS connection took its token of the handshake rate at accept,
    /// before any TLS work; its request does not take another.
    rate_paid: bool,
}

impl Handshake {
    /// A new connection from a trusted proxy.
    pub fn trusted() -> Handshake {
        Handshake {
            trusted: true,
            ..Handshake::default()
        }
    }

    /// A TLS connection that took its token of the handshake rate at
    /// accept (see `Env::take_handshake`).
    pub fn rate_paid(self) -> Handshake {
        Handshake {
            rate_paid: true,
            ..self
        }
    }

    /// Its state for the next process (issue 17): four flags.
    pub(super) fn to_bits(self) -> u8 {
        u8::from(self.answered)
            | u8::from(self.trusted) << 1
            | u8::from(self.proxy_done) << 2
            | u8::from(self.rate_paid) << 3
    }

    /// The state [`Handshake::to_bits`] wrote; None for other bits.
    pub(super) fn from_bits(b: u8) -> Option<Handshake> {
        (b & !0b1111 == 0).then_some(Handshake {
            answered: b & 1 != 0,
            trusted: b & 2 != 0,
            proxy_done: b & 4 != 0,
            rate_paid: b & 8 != 0,
        })
    }

    /// A kept-alive connection, waiting for its next request.
    pub(super) fn kept() -> Handshake {
        Handshake {
            answered: true,
            ..Handshake::default()
        }
    }

    /// Is this the connection's first request?
    pub(super) fn is_first(&self) -> bool {
        !self.answered
    }

    /// Is the client named by the request's `X-Forwarded-For` (a trusted
    /// proxy, without PROXY v2)?
    pub(super) fn reads_forwarded_for(&self, env: &Env) -> bool {
        self.trusted && !env.cfg.admission.proxy_protocol
    }
}

/// One step of the request phase: a PROXY v2 header, or one request.
/// Returns the bytes used (0: incomplete) and what the shell must do.
pub(super) fn step(
    ep: &mut Endpoint,
    h: Handshake,
    env: &mut Env,
    link: &mut Link<'_>,
    data: &[u8],
) -> (usize, Effects) {
    if h.trusted && !h.proxy_done && env.cfg.admission.proxy_protocol {
        return proxy_header(ep, h, env, link, data);
    }
    match request(ep, env, link, data, h.rate_paid) {
        Ok(r) => r,
        Err(e) => {
            debug!("connection {:?}: {e}", link.key);
            env.counts.protocol_errors += 1;
            handshake::write_error(link.out, e);
            link.proto.shutdown(env.now);
            (data.len(), Effects::REARM | Effects::DIRTY)
        }
    }
}

/// A trusted proxy's PROXY v2 header: the client it names is counted per
/// IP.
fn proxy_header(
    ep: &mut Endpoint,
    mut h: Handshake,
    env: &mut Env,
    link: &mut Link<'_>,
    data: &[u8],
) -> (usize, Effects) {
    match admission::parse_proxy(data) {
        Ok(None) => (0, Effects::NONE),
        Ok(Some((source, len))) => {
            h.proxy_done = true;
            *ep = Endpoint::Handshake(h);
            if let Some(src) = source {
                if !env.admit_ip(link.ip_key, src.ip()) {
                    refuse_per_ip(link.out, src.ip());
                    link.proto.shutdown(env.now);
                    return (data.len(), Effects::REARM | Effects::DIRTY);
                }
            }
            (len, Effects::NONE)
        }
        Err(()) => {
            debug!(
                "connection {:?}: bad PROXY header from a trusted proxy",
                link.key
            );
            handshake::write_response(link.out, 400, "", "bad PROXY protocol header");
            link.proto.shutdown(env.now);
            (data.len(), Effects::REARM | Effects::DIRTY)
        }
    }
}

/// Parse one request, route it, answer or upgrade.
fn request(
    ep: &mut Endpoint,
    env: &mut Env,
    link: &mut Link<'_>,
    data: &[u8],
    rate_paid: bool,
) -> Result<(usize, Effects), Error> {
    let cfg = env.cfg.clone();
    let Some(head) = Head::parse(data, cfg.max_head)? else {
        return Ok((0, Effects::NONE));
    };
    let refused = (data.len(), Effects::REARM | Effects::DIRTY);
    let path = head.path();
    // Behind a trusted proxy without PROXY v2: the client is named by
    // X-Forwarded-For, and counted per IP from the first request.
    if let Some(peer) = link.peer.filter(|_| *link.ip_key == 0) {
        let client = admission::forwarded_for(&head, &cfg.admission.trusted, peer);
        if !env.admit_ip(link.ip_key, client) {
            refuse_per_ip(link.out, client);
            link.proto.shutdown(env.now);
            return Ok(refused);
        }
    }
    let routes = router::Routes {
        echo: cfg.echo,
        demo: cfg.gateway.demo,
    };
    let decision = router::route(head.method, path, routes);
    // New long-lived connections are rate limited per worker.
    if decision.rate_limited && !rate_paid && !env.take_handshake() {
        env.counts.refused_handshake_rate += 1;
        warn!(
            "handshake rate {}/s exceeded: 503",
            cfg.admission.handshake_rate
        );
        handshake::write_response(
            link.out,
            503,
            "Retry-After: 1\r\n",
            "handshake rate exceeded",
        );
        link.proto.shutdown(env.now);
        return Ok(refused);
    }
    // Every parameter of the query decodes, or the request gets 400:
    // a malformed cursor, token or channel is never read as absent.
    let query = match Query::parse(head.query()) {
        Ok(q) => q,
        Err(e) => {
            debug!("connection {:?}: {e}: 400", link.key);
            let e = OpError::BadRequest(e.to_string());
            let v = serde_json::json!({ "error": error_json(&e) });
            crate::http::respond_json(link.out, e.http_status(), &v, false);
            link.proto.shutdown(env.now);
            return Ok(refused);
        }
    };
    if let Route::Upgrade(u) = decision.route {
        return upgrade(ep, env, link, &head, query, u).map(|fx| (head.len, fx));
    }
    // The browser transports and the API: a refused Origin gets 403
    // before a stream opens or an op runs.
    if decision.origin_checked && !crate::http::origin_allowed(&head, cfg.origin_check.as_deref()) {
        return Err(Error::OriginRejected);
    }
    // Plain HTTP: the whole body must be here.
    let body_len = match crate::http::body_length(&head, cfg.gateway.max_body) {
        Ok(n) => n,
        Err(e) => {
            crate::http::respond(
                link.out,
                e.status(),
                "text/plain; charset=utf-8",
                e.reason().as_bytes(),
                false,
            );
            link.proto.shutdown(env.now);
            return Ok(refused);
        }
    };
    let total = head.len + body_len;
    if data.len() < total {
        return Ok((0, Effects::NONE));
    }
    let body = &data[head.len..total];
    // A draining server keeps no connection for a next request, and says
    // so in the response.
    let keep = crate::http::keep_alive(&head) && !env.draining();
    env.counts.http_requests += 1;
    let fx = match decision.route {
        Route::Sse => stream::open(ep, env, link, &head, query, Kind::Sse, keep),
        Route::Poll => stream::open(ep, env, link, &head, query, Kind::Poll, keep),
        route => http::request(ep, env, link, &head, query, body, route, keep)?,
    };
    Ok((total, fx))
}

/// A WebSocket upgrade (`/echo`, `/ws`): checked, authenticated (`/ws`),
/// answered with 101 and its subprotocol and permessage-deflate terms.
fn upgrade(
    ep: &mut Endpoint,
    env: &mut Env,
    link: &mut Link<'_>,
    head: &Head<'_>,
    query: Query<'_>,
    route: Upgrade,
) -> Result<Effects, Error> {
    let cfg = env.cfg.clone();
    let up = handshake::check_upgrade(head)?;
    if !crate::http::origin_allowed(head, cfg.origin_check.as_deref()) {
        return Err(Error::OriginRejected);
    }
    // A token, where auth is configured: refused before the upgrade; and
    // the user it names must be a valid user id.
    let session = match route {
        Upgrade::Gateway => {
            let access = match env.authenticate(head) {
                Ok(a) => a,
                Err(e) => return Ok(refuse_auth(env, link, e)),
            };
            let user = match env.user_of(query, &access) {
                Ok(user) => user,
                Err(e) => return Ok(refuse_request(env, link, &e)),
            };
            // `&delta=`: none or `fossil`, else 400 before the upgrade.
            if let Err(e) = crate::gateway::ops::delta_asked(query.value("delta").as_deref()) {
                return Ok(refuse_request(env, link, &e));
            }
            Some((access, user))
        }
        Upgrade::Echo => None,
    };
    // `/ws` also speaks `wsgate.v1` and never echoes a `bearer.` token.
    let protocol = match route {
        Upgrade::Gateway => crate::auth::select_protocol(head, &cfg.protocols),
        Upgrade::Echo => handshake::select_protocol(head, &cfg.protocols),
    };
    // RFC 7692: the first acceptable permessage-deflate offer, or none.
    let offers = head.header_values("sec-websocket-extensions");
    let dfl = deflate::negotiate(offers, &cfg.compression);
    let ext = dfl.as_ref().map(|p| p.to_header());
    if let Some((access, _)) = session
        .as_ref()
        .filter(|(a, _)| super::connect::asks(env, a))
    {
        // No token, and a connect proxy: the 101 waits for its decision
        // (`?user=` is never honoured: the user comes from the backend).
        let up = super::connect::Upgrade {
            key: up.key.to_vec(),
            protocol: protocol.map(str::to_owned),
            deflate: dfl,
            channels: query.values("channel").collect(),
            delta: crate::gateway::ops::delta_asked(query.value("delta").as_deref())
                .unwrap_or(false),
        };
        let headers = env.hook_headers(head);
        let after = super::connect::After::Upgrade(up);
        *ep = super::connect::ask(env, link, access.clone(), after, headers, query);
        return Ok(Effects::REARM | Effects::DIRTY);
    }
    handshake::write_accept(link.out, up.key, protocol, ext.as_deref());
    link.proto.accept(env.now);
    if let Some(p) = &dfl {
        link.proto.set_deflate(p, &cfg.compression);
        env.count_deflate_connection();
    }
    *ep = match session {
        Some((access, user)) => {
            let headers = env.hook_headers(head);
            gateway::open(env, link, query, access, user, headers)
        }
        None => Endpoint::Echo,
    };
    Ok(Effects::REARM | Effects::DIRTY)
}

/// 401 for a missing or invalid token; the connection then closes.
pub(super) fn refuse_auth(env: &mut Env, link: &mut Link<'_>, e: AuthError) -> Effects {
    debug!("auth refused: {}", e.reason());
    env.counts.refused += 1;
    let extra = format!("WWW-Authenticate: {}\r\n", e.www_authenticate());
    handshake::write_response(link.out, e.http_status(), &extra, e.reason());
    link.proto.shutdown(env.now);
    Effects::REARM | Effects::DIRTY
}

/// 400 (or the error's status) with the error's JSON, then close.
fn refuse_request(env: &mut Env, link: &mut Link<'_>, e: &OpError) -> Effects {
    debug!("request refused: {e}");
    env.counts.refused += 1;
    let v = serde_json::json!({ "error": error_json(e) });
    crate::http::respond_json(link.out, e.http_status(), &v, false);
    link.proto.shutdown(env.now);
    Effects::REARM | Effects::DIRTY
}

/// 429 for a client IP at its connection limit.
pub fn refuse_per_ip<O: crate::proto::Output + ?Sized>(out: &mut O, ip: std::net::IpAddr) {
    warn!("connection limit per IP reached: 429 to {ip}");
    handshake::write_response(
        out,
        429,
        "Retry-After: 5\r\n",
        "too many connections from this address",
    );
}
