//! Where a client puts its token, on every transport (WebSocket, SSE,
//! long-poll), and the subprotocol answer when the token rode in
//! `Sec-WebSocket-Protocol`.
//!
//! Looked for in this order; the first one present is used, the others are
//! ignored:
//!
//! 1. `Authorization: Bearer <token>` (RFC 6750 §2.1): non-browser clients,
//!    and `fetch`-based long-poll.
//! 2. `Sec-WebSocket-Protocol: wsgate.v1, bearer.<token>`: browsers, whose
//!    `WebSocket` cannot set headers: `new WebSocket(url, ["wsgate.v1",
//!    "bearer." + token])`. A JWT is base64url and dots, all valid in a
//!    protocol token. The server answers `Sec-WebSocket-Protocol:
//!    wsgate.v1` ([`select_protocol`]) and never echoes the `bearer.` entry.
//!    The client must offer `wsgate.v1` (or another protocol the server
//!    speaks) beside it: a browser fails a connection whose answer names no
//!    protocol when it offered some.
//! 3. `?token=<token>` in the query (RFC 6750 §2.3): `EventSource`, which
//!    can set neither headers nor protocols. URLs end up in logs and
//!    browser history: prefer the others where they work, and keep such
//!    tokens short-lived.

use std::borrow::Cow;

use crate::proto::handshake::Head;

/// The subprotocol of the gateway's JSON ops, answered when offered.
pub const PROTOCOL: &str = "wsgate.v1";
/// The prefix of a `Sec-WebSocket-Protocol` entry that carries a token.
pub const BEARER_PROTOCOL_PREFIX: &str = "bearer.";

/// Which part of the request carried the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Authorization,
    Protocol,
    Query,
}

/// A token found in a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSource<'a> {
    pub token: Cow<'a, str>,
    pub via: Via,
}

/// Find the token in a request's query string (without `?`), its
/// `Sec-WebSocket-Protocol` header values (each maybe a comma-separated
/// list) and its `Authorization` header value. Empty tokens count as none.
pub fn token_from_request<'a, I>(
    query: &'a str,
    protocols: I,
    authorization: Option<&'a [u8]>,
) -> Option<TokenSource<'a>>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    if let Some(t) = authorization.and_then(bearer) {
        return Some(TokenSource {
            token: Cow::Borrowed(t),
            via: Via::Authorization,
        });
    }
    let from_protocol = protocols
        .into_iter()
        .flat_map(|v| v.split(|&c| c == b','))
        .find_map(|p| strip_prefix_ignore_case(p.trim_ascii(), BEARER_PROTOCOL_PREFIX))
        .filter(|t| !t.is_empty())
        .and_then(|t| std::str::from_utf8(t).ok());
    if let Some(t) = from_protocol {
        return Some(TokenSource {
            token: Cow::Borrowed(t),
            via: Via::Protocol,
        });
    }
    query_token(query).map(|token| TokenSource {
        token,
        via: Via::Query,
    })
}

/// [`token_from_request`] on a parsed request head.
pub fn token_from_head<'a>(head: &Head<'a>) -> Option<TokenSource<'a>> {
    let protocols: Vec<&'a [u8]> = head
        .headers()
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
        .map(|h| h.value)
        .collect();
    token_from_request(head.query(), protocols, head.header("authorization"))
}

/// The subprotocol to answer: the first one offered, in the client's order
/// (as `handshake::select_protocol`), that the server speaks: one of
/// `supported`, or [`PROTOCOL`], which `/ws` always speaks. A `bearer.`
/// entry is never answered, even if `supported` named it.
pub fn select_protocol<'s>(head: &Head<'_>, supported: &'s [String]) -> Option<&'s str> {
    head.tokens("sec-websocket-protocol")
        .filter(|offered| strip_prefix_ignore_case(offered, BEARER_PROTOCOL_PREFIX).is_none())
        .find_map(|offered| {
            let ours = (offered == PROTOCOL.as_bytes()).then_some(PROTOCOL);
            supported
                .iter()
                .find(|s| s.as_bytes() == offered)
                .map(String::as_str)
                .or(ours)
        })
}

/// `Bearer <token>`: the scheme is case-insensitive (RFC 7235 §2.1).
fn bearer(value: &[u8]) -> Option<&str> {
    let v = value.trim_ascii();
    let rest = strip_prefix_ignore_case(v, "bearer ")?;
    let t = std::str::from_utf8(rest.trim_ascii()).ok()?;
    (!t.is_empty()).then_some(t)
}

fn strip_prefix_ignore_case<'v>(v: &'v [u8], prefix: &str) -> Option<&'v [u8]> {
    let p = prefix.as_bytes();
    (v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p)).then(|| &v[p.len()..])
}

/// The first non-empty `token` parameter, percent-decoded when it needs to
/// be (a JWT never does).
fn query_token(query: &str) -> Option<Cow<'_, str>> {
    query.split('&').find_map(|kv| {
        let v = kv.strip_prefix("token=")?;
        if v.is_empty() {
            None
        } else if v.contains(['%', '+']) {
            crate::base::query::url_decode(v).map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(v))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(query: &str, protocols: &[&str], auth: Option<&str>) -> Option<(String, Via)> {
        token_from_request(
            query,
            protocols.iter().map(|p| p.as_bytes()),
            auth.map(str::as_bytes),
        )
        .map(|s| (s.token.into_owned(), s.via))
    }

    /// (query, protocol header values, authorization, token and source).
    type Case<'a> = (
        &'a str,
        &'a [&'a str],
        Option<&'a str>,
        Option<(String, Via)>,
    );

    #[test]
    fn sources_table() {
        use Via::*;
        let t = |s: &str, via| Some((s.to_string(), via));
        let cases: &[Case<'_>] = &[
            ("", &[], None, None),
            ("token=abc.def.ghi", &[], None, t("abc.def.ghi", Query)),
            ("channel=a&token=x.y.z&user=b", &[], None, t("x.y.z", Query)),
            ("token=&token=second", &[], None, t("second", Query)),
            ("token=a%2Eb", &[], None, t("a.b", Query)),
            ("token=%zz", &[], None, None),
            ("xtoken=a", &[], None, None),
            ("token", &[], None, None),
            (
                "",
                &["wsgate.v1, bearer.abc.def"],
                None,
                t("abc.def", Protocol),
            ),
            ("", &["wsgate.v1", "Bearer.abc"], None, t("abc", Protocol)),
            ("", &["bearer."], None, None),
            ("", &["wsgate.v1"], None, None),
            ("", &[], Some("Bearer abc"), t("abc", Authorization)),
            ("", &[], Some("bearer   abc  "), t("abc", Authorization)),
            ("", &[], Some("Basic dXNlcjpwYXNz"), None),
            ("", &[], Some("Bearer "), None),
            ("", &[], Some("Bearerabc"), None),
            // Order: Authorization, then the protocol, then the query.
            (
                "token=q",
                &["bearer.p"],
                Some("Bearer h"),
                t("h", Authorization),
            ),
            ("token=q", &["bearer.p"], None, t("p", Protocol)),
            ("token=q", &["bearer.p"], Some("Basic x"), t("p", Protocol)),
        ];
        for (query, protocols, auth, want) in cases {
            assert_eq!(
                &find(query, protocols, *auth),
                want,
                "{query:?} {protocols:?} {auth:?}"
            );
        }
    }

    fn head(extra: &str) -> String {
        format!(
            "GET /ws?token=fromquery HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    #[test]
    fn from_a_parsed_head() {
        let req =
            head("Sec-WebSocket-Protocol: wsgate.v1\r\nSec-WebSocket-Protocol: bearer.tok\r\n");
        let h = Head::parse(req.as_bytes(), 8192).unwrap().unwrap();
        let s = token_from_head(&h).unwrap();
        assert_eq!((&*s.token, s.via), ("tok", Via::Protocol));
        let req = head("");
        let h = Head::parse(req.as_bytes(), 8192).unwrap().unwrap();
        let s = token_from_head(&h).unwrap();
        assert_eq!((&*s.token, s.via), ("fromquery", Via::Query));
        assert!(matches!(s.token, Cow::Borrowed(_)));
    }

    #[test]
    fn protocol_answer_never_echoes_the_token() {
        let answer = |offered: &str, supported: &[&str]| {
            let req = head(&format!("Sec-WebSocket-Protocol: {offered}\r\n"));
            let h = Head::parse(req.as_bytes(), 8192).unwrap().unwrap();
            let sup: Vec<String> = supported.iter().map(|s| s.to_string()).collect();
            select_protocol(&h, &sup).map(str::to_string)
        };
        assert_eq!(
            answer("wsgate.v1, bearer.x", &[]).as_deref(),
            Some("wsgate.v1")
        );
        assert_eq!(
            answer("bearer.x, wsgate.v1", &[]).as_deref(),
            Some("wsgate.v1")
        );
        assert_eq!(
            answer("chat, wsgate.v1", &["chat"]).as_deref(),
            Some("chat")
        );
        assert_eq!(
            answer("wsgate.v1, chat", &["chat"]).as_deref(),
            Some("wsgate.v1")
        );
        assert_eq!(answer("bearer.x", &["bearer.x"]), None);
        assert_eq!(answer("bearer.x", &[]), None);
        assert_eq!(answer("mqtt", &[]), None);
    }
}
