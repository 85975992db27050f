//! Plain HTTP on the same listener as WebSocket: the backend API, metrics,
//! health, and (later) SSE and long-poll. Requests are parsed in place from
//! the connection's buffer; bodies need a `Content-Length`.

pub mod api;
pub mod metrics;
pub mod resume;
pub mod static_files;
pub mod stream;

use crate::proto::handshake::{self, Head};
use crate::proto::Output;

/// Why a request cannot be served, before any route sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// `Transfer-Encoding` (chunked) is not supported: 411.
    LengthRequired,
    /// `Content-Length` unparsable: 400.
    BadLength,
    /// Body over the limit: 413.
    TooLarge,
}

impl BodyError {
    pub fn status(self) -> u16 {
        match self {
            BodyError::LengthRequired => 411,
            BodyError::BadLength => 400,
            BodyError::TooLarge => 413,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            BodyError::LengthRequired => "a Content-Length is required",
            BodyError::BadLength => "invalid Content-Length",
            BodyError::TooLarge => "request body too large",
        }
    }
}

/// The body's length from the head: `Ok(0)` when there is none.
pub fn body_length(head: &Head<'_>, max_body: usize) -> Result<usize, BodyError> {
    if head.header("transfer-encoding").is_some() {
        return Err(BodyError::LengthRequired);
    }
    let Some(v) = head.header("content-length") else {
        return Ok(0);
    };
    if head.header_count("content-length") != 1 {
        return Err(BodyError::BadLength);
    }
    let n: usize = std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or(BodyError::BadLength)?;
    if n > max_body {
        return Err(BodyError::TooLarge);
    }
    Ok(n)
}

/// Should the connection stay open after the response?
pub fn keep_alive(head: &Head<'_>) -> bool {
    if head.has_token("connection", "close") {
        return false;
    }
    head.minor >= 1 || head.has_token("connection", "keep-alive")
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

/// Decode one `application/x-www-form-urlencoded` component.
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

/// The decoded values of a query parameter, in order.
pub fn query_values<'q>(query: &'q str, name: &'q str) -> impl Iterator<Item = String> + 'q {
    query
        .split('&')
        .filter_map(move |kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (url_decode(k).as_deref() == Some(name)).then(|| url_decode(v))
        })
        .flatten()
}

/// The first decoded value of a query parameter.
pub fn query_value(query: &str, name: &str) -> Option<String> {
    query_values(query, name).next()
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
            ("POST / HTTP/1.1\r\n\r\n", Ok(0)),
            ("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n", Ok(12)),
            (
                "POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                Err(BodyError::BadLength),
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                Err(BodyError::BadLength),
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 2000\r\n\r\n",
                Err(BodyError::TooLarge),
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err(BodyError::LengthRequired),
            ),
        ];
        for (req, want) in cases {
            assert_eq!(body_length(&head(req), 1000), *want, "{req:?}");
        }
    }

    #[test]
    fn keep_alive_rules() {
        assert!(keep_alive(&head("GET / HTTP/1.1\r\n\r\n")));
        assert!(!keep_alive(&head(
            "GET / HTTP/1.1\r\nConnection: close\r\n\r\n"
        )));
        assert!(!keep_alive(&head("GET / HTTP/1.0\r\n\r\n")));
        assert!(keep_alive(&head(
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        )));
    }

    #[test]
    fn query() {
        let q = "channel=a&channel=b%3Ac&x=1+2&channel=";
        assert_eq!(
            query_values(q, "channel").collect::<Vec<_>>(),
            vec!["a", "b:c", ""]
        );
        assert_eq!(query_value(q, "x").as_deref(), Some("1 2"));
        assert_eq!(query_value(q, "y"), None);
        assert_eq!(url_decode("%zz"), None);
    }
}
