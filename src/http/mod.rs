//! Plain HTTP on the same listener as WebSocket: the backend API, metrics,
//! health, and (later) SSE and long-poll. Requests are parsed in place from
//! the connection's buffer; bodies need a `Content-Length`.

pub mod api;
pub mod metrics;
pub mod resume;
pub mod router;
pub mod static_files;
pub mod stream;
pub mod stream_request;

use crate::proto::handshake::{self, Head};
use crate::proto::Output;

pub use crate::base::query::{url_decode, BadQuery, Query};

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
}
