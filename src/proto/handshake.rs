//! The opening handshake (RFC 6455 §4): parsing the upgrade request with
//! httparse, computing `Sec-WebSocket-Accept`, writing responses; and the
//! client's side of it, for the load generator.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha1::{Digest, Sha1};

use super::conn::Output;
use super::error::Error;

/// The GUID of RFC 6455 §1.3.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// How many header lines a request may carry.
pub const MAX_HEADERS: usize = 32;
/// The fixed `Server` header.
pub const SERVER: &str = concat!("wsgate/", env!("CARGO_PKG_VERSION"));

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key ++ GUID)) (§4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID);
    B64.encode(h.finalize())
}

/// A parsed HTTP/1.x request head; every field borrows the read buffer.
#[derive(Debug)]
pub struct Head<'b> {
    pub method: &'b str,
    /// Path and query, as sent.
    pub target: &'b str,
    /// The minor HTTP version (1 for HTTP/1.1).
    pub minor: u8,
    headers: [httparse::Header<'b>; MAX_HEADERS],
    count: usize,
    /// Bytes taken by the head, including the blank line.
    pub len: usize,
}

impl<'b> Head<'b> {
    /// Parse a request head from the front of `buf`. `Ok(None)`: incomplete
    /// and still within `max_head` bytes.
    pub fn parse(buf: &'b [u8], max_head: usize) -> Result<Option<Head<'b>>, Error> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let status = match req.parse(buf) {
            Ok(s) => s,
            Err(httparse::Error::TooManyHeaders) => return Err(Error::HeadTooLarge),
            Err(_) => return Err(Error::MalformedRequest),
        };
        let len = match status {
            httparse::Status::Partial if buf.len() >= max_head => return Err(Error::HeadTooLarge),
            httparse::Status::Partial => return Ok(None),
            httparse::Status::Complete(n) if n > max_head => return Err(Error::HeadTooLarge),
            httparse::Status::Complete(n) => n,
        };
        let method = req.method.ok_or(Error::MalformedRequest)?;
        let target = req.path.ok_or(Error::MalformedRequest)?;
        let minor = req.version.ok_or(Error::MalformedRequest)?;
        let count = req.headers.len();
        let mut out = [httparse::EMPTY_HEADER; MAX_HEADERS];
        out[..count].copy_from_slice(req.headers);
        Ok(Some(Head {
            method,
            target,
            minor,
            headers: out,
            count,
            len,
        }))
    }

    /// All header lines.
    pub fn headers(&self) -> &[httparse::Header<'b>] {
        &self.headers[..self.count]
    }

    /// The first value of a header (names are case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        self.headers()
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// The values of every occurrence of a header.
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'b [u8]> + 's {
        self.headers()
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// How many times a header occurs.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers()
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    }

    /// Does any occurrence of a comma-separated header contain `token`
    /// (case-insensitive)?
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.tokens(name)
            .any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
    }

    /// The comma-separated elements of every occurrence of a header, trimmed.
    pub fn tokens<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'b [u8]> + 's {
        self.headers()
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| h.value.split(|&c| c == b','))
            .map(|t| t.trim_ascii())
            .filter(|t| !t.is_empty())
    }

    /// The path without the query.
    pub fn path(&self) -> &'b str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query string, without `?`.
    pub fn query(&self) -> &'b str {
        self.target.split_once('?').map(|(_, q)| q).unwrap_or("")
    }

    /// Does this request ask for a WebSocket upgrade at all? (Used by the
    /// router to tell WebSocket requests from plain HTTP ones.)
    pub fn wants_upgrade(&self) -> bool {
        self.header("upgrade").is_some()
    }
}

/// A validated upgrade request.
#[derive(Debug, Clone, Copy)]
pub struct Upgrade<'b> {
    pub key: &'b [u8],
    pub origin: Option<&'b [u8]>,
}

/// Check the upgrade request against RFC 6455 §4.2.1.
pub fn check_upgrade<'b>(head: &Head<'b>) -> Result<Upgrade<'b>, Error> {
    // §4.2.1 (1): "An HTTP/1.1 or higher GET request".
    if head.method != "GET" {
        return Err(Error::MethodNotGet);
    }
    if head.minor < 1 {
        return Err(Error::HttpVersion);
    }
    // §4.2.1 (2): "A |Host| header field containing the server's authority."
    if head.header("host").is_none() {
        return Err(Error::MissingHost);
    }
    // §4.2.1 (3): "An |Upgrade| header field containing the value
    // "websocket", treated as an ASCII case-insensitive value."
    if !head.has_token("upgrade", "websocket") {
        return Err(Error::MissingUpgrade);
    }
    // §4.2.1 (4): "A |Connection| header field that includes the token
    // "Upgrade", treated as an ASCII case-insensitive value."
    if !head.has_token("connection", "upgrade") {
        return Err(Error::MissingConnectionUpgrade);
    }
    // §4.2.1 (6): "A |Sec-WebSocket-Version| header field, with a value of
    // 13." §4.4: otherwise the server "MUST abort the WebSocket handshake"
    // and answer with the versions it supports (426 + Sec-WebSocket-Version).
    match head.header("sec-websocket-version") {
        Some(v) if v.trim_ascii() == b"13" && head.header_count("sec-websocket-version") == 1 => {}
        _ => return Err(Error::UnsupportedVersion),
    }
    // §4.2.1 (5): "A |Sec-WebSocket-Key| header field with a base64-encoded
    // value that, when decoded, is 16 bytes in length."
    let key = head
        .header("sec-websocket-key")
        .ok_or(Error::BadKey)?
        .trim_ascii();
    if head.header_count("sec-websocket-key") != 1 || !is_valid_key(key) {
        return Err(Error::BadKey);
    }
    Ok(Upgrade {
        key,
        origin: head.header("origin"),
    })
}

fn is_valid_key(key: &[u8]) -> bool {
    let mut out = [0u8; 18];
    key.len() == 24 && matches!(B64.decode_slice(key, &mut out), Ok(16))
}

/// Pick the first subprotocol the client offers that the server supports.
/// §4.2.2: the server selects "one or none of the acceptable protocols".
pub fn select_protocol<'s>(head: &Head<'_>, supported: &'s [String]) -> Option<&'s str> {
    head.tokens("sec-websocket-protocol").find_map(|offered| {
        supported
            .iter()
            .find(|s| s.as_bytes() == offered)
            .map(|s| s.as_str())
    })
}

/// Write the 101 response.
pub fn write_accept<O: Output + ?Sized>(
    out: &mut O,
    key: &[u8],
    protocol: Option<&str>,
    extensions: Option<&str>,
) {
    let sink = out;
    let mut resp = Vec::with_capacity(256);
    let out = &mut resp;
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nServer: ");
    out.extend_from_slice(SERVER.as_bytes());
    out.extend_from_slice(b"\r\nSec-WebSocket-Accept: ");
    out.extend_from_slice(accept_key(key).as_bytes());
    if let Some(p) = protocol {
        out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
    }
    if let Some(e) = extensions {
        out.extend_from_slice(b"\r\nSec-WebSocket-Extensions: ");
        out.extend_from_slice(e.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
    sink.put(&resp);
}

/// The reason phrase for the statuses the gateway sends.
pub fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Write a plain-text HTTP response that closes the connection.
pub fn write_response<O: Output + ?Sized>(
    out: &mut O,
    status: u16,
    extra_headers: &str,
    body: &str,
) {
    use std::io::Write;
    let mut buf = Vec::with_capacity(192 + body.len());
    let _ = write!(
        buf,
        "HTTP/1.1 {status} {}\r\nServer: {SERVER}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        status_text(status),
        body.len() + 1,
    );
    buf.push(b'\n');
    out.put(&buf);
}

/// Write the HTTP error response for a handshake error.
pub fn write_error<O: Output + ?Sized>(out: &mut O, err: Error) {
    let status = err.http_status().unwrap_or(400);
    let extra = if err == Error::UnsupportedVersion {
        "Sec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    write_response(out, status, extra, err.reason());
}

// --- client role ---

/// Write a client upgrade request; `key` is 16 random bytes.
pub fn write_client_request(
    out: &mut Vec<u8>,
    host: &str,
    target: &str,
    key: &[u8; 16],
    protocols: Option<&str>,
    extensions: Option<&str>,
) -> String {
    use std::io::Write;
    let key = B64.encode(key);
    let _ = write!(
        out,
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocols {
        let _ = write!(out, "Sec-WebSocket-Protocol: {p}\r\n");
    }
    if let Some(e) = extensions {
        let _ = write!(out, "Sec-WebSocket-Extensions: {e}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    key
}

/// The server's 101, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientResponse {
    pub protocol: Option<String>,
    pub extensions: Option<String>,
    /// Bytes taken by the response head.
    pub len: usize,
}

/// Parse and check the server's response to our key (§4.1, "the client MUST
/// validate the server's response"). `Ok(None)`: incomplete.
pub fn parse_response(buf: &[u8], key_b64: &str) -> Result<Option<ClientResponse>, Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < 16 * 1024 => return Ok(None),
        _ => return Err(Error::BadResponse),
    };
    if resp.code != Some(101) {
        return Err(Error::BadResponse);
    }
    let get = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let has = |name: &str, token: &str| {
        resp.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| h.value.split(|&c| c == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    if !has("upgrade", "websocket") || !has("connection", "upgrade") {
        return Err(Error::BadResponse);
    }
    let want = accept_key(key_b64.as_bytes());
    if get("sec-websocket-accept").map(|v| v.trim_ascii()) != Some(want.as_bytes()) {
        return Err(Error::BadResponse);
    }
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    Ok(Some(ClientResponse {
        protocol: get("sec-websocket-protocol").map(text),
        extensions: get("sec-websocket-extensions").map(text),
        len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_accept_key() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    const GOOD: &str = "GET /echo?x=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    fn check(req: &str) -> Result<(), Error> {
        let head = Head::parse(req.as_bytes(), 8192)?.expect("complete");
        check_upgrade(&head).map(|_| ())
    }

    #[test]
    fn upgrade_table() {
        let cases: &[(&str, &str, Result<(), Error>)] = &[
            ("", "", Ok(())),
            ("GET /echo", "POST /echo", Err(Error::MethodNotGet)),
            (
                "HTTP/1.1\r\nHost",
                "HTTP/1.0\r\nHost",
                Err(Error::HttpVersion),
            ),
            ("Host: example.com\r\n", "", Err(Error::MissingHost)),
            (
                "Upgrade: websocket",
                "Upgrade: h2c",
                Err(Error::MissingUpgrade),
            ),
            ("Upgrade: websocket", "Upgrade: WebSocket", Ok(())),
            ("Upgrade: websocket", "Upgrade: foo, WEBSOCKET", Ok(())),
            (
                "Connection: Upgrade",
                "Connection: keep-alive",
                Err(Error::MissingConnectionUpgrade),
            ),
            (
                "Connection: Upgrade",
                "Connection: keep-alive, upgrade",
                Ok(()),
            ),
            (
                "Connection: Upgrade",
                "Connection: keep-alive\r\nConnection: Upgrade",
                Ok(()),
            ),
            (
                "Sec-WebSocket-Version: 13",
                "Sec-WebSocket-Version: 8",
                Err(Error::UnsupportedVersion),
            ),
            (
                "Sec-WebSocket-Version: 13\r\n",
                "",
                Err(Error::UnsupportedVersion),
            ),
            (
                "dGhlIHNhbXBsZSBub25jZQ==",
                "dGhlIHNhbXBsZSBub25j",
                Err(Error::BadKey),
            ),
            (
                "dGhlIHNhbXBsZSBub25jZQ==",
                "!!!!!!!!!!!!!!!!!!!!!!==",
                Err(Error::BadKey),
            ),
            (
                "dGhlIHNhbXBsZSBub25jZQ==",
                "dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                Err(Error::BadKey),
            ),
            (
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                "",
                Err(Error::BadKey),
            ),
        ];
        for (from, to, want) in cases {
            let req = GOOD.replacen(from, to, 1);
            assert_eq!(check(&req), *want, "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn head_limits_and_garbage() {
        assert_eq!(
            Head::parse(b"GET / HTTP/1.1\r\n", 8192)
                .unwrap()
                .map(|h| h.len),
            None
        );
        assert_eq!(
            Head::parse(b"\x16\x03\x01\x02\x00garbage", 8192).unwrap_err(),
            Error::MalformedRequest
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000));
        assert_eq!(
            Head::parse(big.as_bytes(), 8192).unwrap_err(),
            Error::HeadTooLarge
        );
        let many: String = (0..40).map(|i| format!("X{i}: y\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            Head::parse(req.as_bytes(), 8192).unwrap_err(),
            Error::HeadTooLarge
        );
        let head = Head::parse(GOOD.as_bytes(), 8192).unwrap().unwrap();
        assert_eq!(
            (head.path(), head.query(), head.len),
            ("/echo", "x=1", GOOD.len())
        );
    }

    #[test]
    fn subprotocol_negotiation_follows_client_order() {
        let req = GOOD.replacen(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Protocol: chat, json\r\n\r\n",
            1,
        );
        let head = Head::parse(req.as_bytes(), 8192).unwrap().unwrap();
        let sup = vec!["json".to_string(), "chat".to_string()];
        assert_eq!(select_protocol(&head, &sup), Some("chat"));
        assert_eq!(select_protocol(&head, &["mqtt".to_string()]), None);
    }

    #[test]
    fn error_responses() {
        let mut out = Vec::new();
        write_error(&mut out, Error::UnsupportedVersion);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        let mut out = Vec::new();
        write_error(&mut out, Error::HeadTooLarge);
        assert!(out.starts_with(b"HTTP/1.1 431 "));
    }

    #[test]
    fn client_and_server_agree() {
        let mut req = Vec::new();
        let key = write_client_request(&mut req, "h", "/echo", &[7; 16], Some("chat"), None);
        let head = Head::parse(&req, 8192).unwrap().unwrap();
        let up = check_upgrade(&head).unwrap();
        let mut resp = Vec::new();
        write_accept(&mut resp, up.key, Some("chat"), None);
        let r = parse_response(&resp, &key).unwrap().unwrap();
        assert_eq!((r.protocol.as_deref(), r.len), (Some("chat"), resp.len()));
        assert_eq!(
            parse_response(&resp, "AAAAAAAAAAAAAAAAAAAAAA=="),
            Err(Error::BadResponse)
        );
    }
}
