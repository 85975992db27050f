//! Plain HTTP on the same listener as WebSocket: the backend API, metrics,
//! health, and (later) SSE and long-poll. Requests are parsed in place from
//! the connection's buffer; bodies need a `Content-Length`.

pub mod api;
pub mod metrics;
pub mod resume;
pub mod static_files;
pub mod stream;
pub mod stream_request;

use crate::proto::handshake::{self, Head};
use crate::proto::Output;

/// Why a request's body cannot be read, before any route sees it. (The
/// framing itself, `Content-Length` included, is checked by `Head::parse`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// `Transfer-Encoding` ending in chunked, which is not supported: 411.
    LengthRequired,
    /// Any other `Transfer-Encoding`: 400.
    BadEncoding,
    /// Body over the limit: 413.
    TooLarge,
}

impl BodyError {
    pub fn status(self) -> u16 {
        match self {
            BodyError::LengthRequired => 411,
            BodyError::BadEncoding => 400,
            BodyError::TooLarge => 413,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            BodyError::LengthRequired => "a Content-Length is required",
            BodyError::BadEncoding => "unsupported Transfer-Encoding",
            BodyError::TooLarge => "request body too large",
        }
    }
}

/// The body's length from the head: `Ok(0)` when there is none.
pub fn body_length(head: &Head<'_>, max_body: usize) -> Result<usize, BodyError> {
    if head.header("transfer-encoding").is_some() {
        // RFC 9112 §6.1: "If a Transfer-Encoding header field is present in
        // a request and the chunked transfer coding is not the final
        // encoding, the message body length cannot be determined reliably;
        // the server MUST respond with the 400 (Bad Request) status code
        // and then close the connection." A chunked body is framed, but we
        // read bodies by length only: 411.
        let last = head.tokens("transfer-encoding").last();
        return Err(match last {
            Some(t) if t.eq_ignore_ascii_case(b"chunked") => BodyError::LengthRequired,
            _ => BodyError::BadEncoding,
        });
    }
    match head.content_length {
        None => Ok(0),
        Some(n) if n > max_body as u64 => Err(BodyError::TooLarge),
        Some(n) => Ok(n as usize),
    }
}

/// Should the connection stay open after the response?
pub fn keep_alive(head: &Head<'_>) -> bool {
    if head.has_token("connection", "close") {
        return false;
    }
    head.minor >= 1 || head.has_token("connection", "keep-alive")
}

/// Does `allowed_origins` apply to this plain-HTTP route? The browser
/// transports (`/sse`, `/poll`, `/send`) act for a page like a WebSocket
/// does; `/api/*` is the backend's, but a page on another site can still
/// make a browser send it a simple POST (no preflight), which the API key,
/// when there is one, refuses and the Origin check refuses too. (The
/// WebSocket routes check it at the upgrade.)
pub fn origin_applies(path: &str) -> bool {
    matches!(path, "/sse" | "/poll" | "/send") || api::is_api_path(path)
}

/// Does the request's `Origin` pass `check` (none configured: any does)?
/// A request without `Origin` (not from a browser) is `check`'s to judge;
/// one with several `Origin` fields never passes (RFC 6454 §7: the header
/// holds one origin, and a browser sends one).
pub fn origin_allowed<F>(head: &Head<'_>, check: Option<&F>) -> bool
where
    F: Fn(Option<&[u8]>) -> bool + ?Sized,
{
    let Some(check) = check else {
        return true;
    };
    head.header_count("origin") <= 1 && check(head.header("origin"))
}

/// A whole response with a body.
pub fn respond<O: Output + ?Sized>(
    out: &mut O,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) {
    use std::io::Write;
    let mut head = Vec::with_capacity(200);
    let _ = write!(
        head,
        "HTTP/1.1 {status} {}\r\nServer: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: {}\r\n\r\n",
        handshake::status_text(status),
        handshake::SERVER,
        body.len(),
        if keep_alive { "keep-alive" } else { "close" },
    );
    out.put(&head);
    out.put(body);
}

/// A JSON response.
pub fn respond_json<O: Output + ?Sized>(
    out: &mut O,
    status: u16,
    body: &serde_json::Value,
    keep_alive: bool,
) {
    let mut b = serde_json::to_vec(body).expect("value serializes");
    b.push(b'\n');
    respond(out, status, "application/json", &b, keep_alive);
}

/// Decode one `application/x-www-form-urlencoded` component; `None` when
/// it is not valid percent-encoding (a `%` without two hex digits) of
/// UTF-8.
pub fn url_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                out.push(v);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// A request's query string whose every component decodes
/// ([`Query::parse`] checked them all once), so reading a parameter cannot
/// fail, and a malformed one is never silently taken for an absent one.
#[derive(Clone, Copy, Debug, Default)]
pub struct Query<'q>(&'q str);

/// A query component that is not valid percent-encoded UTF-8: the request
/// gets 400 (error code 3) with a message naming the parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadQuery {
    /// The parameter's name, decoded if it decodes, else as sent
    /// (shortened to 64 bytes).
    pub name: String,
}

impl std::fmt::Display for BadQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "query parameter {:?} is not valid percent-encoded UTF-8",
            self.name
        )
    }
}

impl<'q> Query<'q> {
    /// Check every `name=value` component of `raw` (the query, without `?`).
    pub fn parse(raw: &'q str) -> Result<Query<'q>, BadQuery> {
        for kv in raw.split('&') {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let name = url_decode(k);
            if name.is_none() || url_decode(v).is_none() {
                let mut name = name.unwrap_or_else(|| k.to_string());
                if name.len() > 64 {
                    let mut end = 64;
                    while !name.is_char_boundary(end) {
                        end -= 1;
                    }
                    name.truncate(end);
                }
                return Err(BadQuery { name });
            }
        }
        Ok(Query(raw))
    }

    /// The decoded values of a parameter, in order.
    pub fn values(self, name: &'q str) -> impl Iterator<Item = String> + 'q {
        self.0.split('&').filter_map(move |kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            // Both decode: `Query::parse` checked every component.
            let decoded = |c: &str| url_decode(c).expect("checked by Query::parse");
            (decoded(k) == name).then(|| decoded(v))
        })
    }

    /// The first decoded value of a parameter.
    pub fn value(self, name: &'q str) -> Option<String> {
        self.values(name).next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(req: &str) -> Head<'_> {
        Head::parse(req.as_bytes(), 8192).unwrap().unwrap()
    }

    #[test]
    fn lengths() {
        let cases: &[(&str, Result<usize, BodyError>)] = &[
            ("POST / HTTP/1.1\r\nHost: x\r\n\r\n", Ok(0)),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n", Ok(12)),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", Ok(1000)),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n",
                Err(BodyError::TooLarge),
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                Err(BodyError::TooLarge),
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err(BodyError::LengthRequired),
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, CHUNKED\r\n\r\n",
                Err(BodyError::LengthRequired),
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                Err(BodyError::BadEncoding),
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
                Err(BodyError::BadEncoding),
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n\r\n",
                Err(BodyError::BadEncoding),
            ),
        ];
        for (req, want) in cases {
            assert_eq!(body_length(&head(req), 1000), *want, "{req:?}");
        }
    }

    #[test]
    fn keep_alive_rules() {
        assert!(keep_alive(&head("GET / HTTP/1.1\r\nHost: x\r\n\r\n")));
        assert!(!keep_alive(&head(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )));
        assert!(!keep_alive(&head("GET / HTTP/1.0\r\n\r\n")));
        assert!(keep_alive(&head(
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        )));
    }

    #[test]
    fn query() {
        let q = Query::parse("channel=a&channel=b%3Ac&x=1+2&channel=&%63hannel=d&flag").unwrap();
        assert_eq!(
            q.values("channel").collect::<Vec<_>>(),
            vec!["a", "b:c", "", "d"]
        );
        assert_eq!(q.value("x").as_deref(), Some("1 2"));
        assert_eq!(q.value("flag").as_deref(), Some(""));
        assert_eq!(q.value("y"), None);
        assert_eq!(url_decode("%zz"), None);
        assert_eq!(Query::parse("").unwrap().value("channel"), None);
    }

    /// A component that does not decode refuses the whole query, naming
    /// the parameter: never read as if it were absent.
    #[test]
    fn bad_query_table() {
        let cases: &[(&str, &str)] = &[
            ("cursor=%zz", "cursor"),
            ("channel=a&cursor=abc%", "cursor"),
            ("cursor=%4", "cursor"),
            ("last_event_id=%E2%28%A1", "last_event_id"),
            ("channel=%FF", "channel"),
            ("user=%C0%80", "user"),
            ("token=a%2", "token"),
            ("wait=%", "wait"),
            ("%63hannel=%G0", "channel"),
            ("a%zz=1", "a%zz"),
            ("%FF=1", "%FF"),
        ];
        for (raw, name) in cases {
            let e = Query::parse(raw).expect_err(raw);
            assert_eq!(e.name, *name, "{raw:?}");
            assert!(e.to_string().contains(&format!("{name:?}")), "{e}");
        }
        let long = format!("{}%=1", "n".repeat(100));
        assert_eq!(Query::parse(&long).unwrap_err().name.len(), 64);
    }
}
