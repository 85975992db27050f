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
    /// The `Content-Length`, checked by [`Head::parse`] (saturated: a
    /// valid length too large for `u64` is still too large).
    pub content_length: Option<u64>,
}

impl<'b> Head<'b> {
    /// Parse a request head from the front of `buf`. `Ok(None)`: incomplete
    /// and still within `max_head` bytes.
    ///
    /// Every request, WebSocket upgrade or plain HTTP, is framed here and
    /// only here (RFC 9112), strictly enough that a proxy in front cannot
    /// read the same bytes as a different request (request smuggling).
    /// httparse enforces the request line (one SP between its parts, a
    /// version of HTTP/1.0 or 1.1), field names of token characters, and
    /// that a field value holds no control character (NUL, DEL, a bare CR:
    /// RFC 9112 §2.2, a recipient of a bare CR "MUST consider that element
    /// to be invalid or replace each bare CR with SP"). It also refuses:
    /// - whitespace between a field name and its colon (§5.1: "A server
    ///   MUST reject, with a response status code of 400 (Bad Request), any
    ///   received request message that contains whitespace between a header
    ///   field name and colon");
    /// - obs-fold (§5.2: a server "MUST either reject the message by sending
    ///   a 400 (Bad Request) [...] or replace each received obs-fold with
    ///   one or more SP octets");
    /// - whitespace before the first field line (§2.2: a recipient "MUST
    ///   either reject the message as invalid or consume each
    ///   whitespace-preceded line without further processing of it").
    ///
    /// The rest is `check_framing`: bare LF line ends, `Host`,
    /// `Content-Length` and `Transfer-Encoding`. Table-tested below
    /// (`framing_table`).
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
        let mut head = Head {
            method,
            target,
            minor,
            headers: out,
            count,
            len,
            content_length: None,
        };
        head.content_length = check_framing(&head, &buf[..len])?;
        Ok(Some(head))
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

/// The framing checks httparse leaves to us, on a complete head (`raw`:
/// its bytes). Returns the `Content-Length`, if any.
fn check_framing(head: &Head<'_>, raw: &[u8]) -> Result<Option<u64>, Error> {
    // RFC 9112 §2.2: "Although the line terminator for the start-line and
    // fields is the sequence CRLF, a recipient MAY recognize a single LF as
    // a line terminator and ignore any preceding CR." We do not: a proxy in
    // front that does not either would see one header line where we see
    // two (request smuggling). httparse accepts a bare LF; refuse it here.
    if raw.first() == Some(&b'\n') || raw.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r') {
        return Err(Error::BareLf);
    }
    // RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status
    // code to any HTTP/1.1 request message that lacks a Host header field
    // and to any request message that contains more than one Host header
    // field line or a Host header field with an invalid field value."
    match head.header_count("host") {
        0 if head.minor >= 1 => return Err(Error::MissingHost),
        0 => {}
        1 if head.header("host").is_some_and(valid_host) => {}
        _ => return Err(Error::BadHost),
    }
    let length = match head.header_count("content-length") {
        0 => None,
        // RFC 9110 §8.6: "Content-Length = 1*DIGIT". RFC 9112 §6.3: a
        // request "with an invalid Content-Length header field" has invalid
        // framing: "the server MUST respond with a 400 (Bad Request) status
        // code and then close the connection". The same section lets a
        // recipient accept a list of identical values; we do not: one
        // field line, digits only (`+27`, ` 27 27`, `0x1b` are refused).
        1 => {
            let v = head.header("content-length").unwrap_or_default();
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                return Err(Error::BadContentLength);
            }
            // Digits only: a length beyond u64 is valid and too large.
            Some(v.iter().fold(0u64, |n, d| {
                n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
            }))
        }
        _ => return Err(Error::BadContentLength),
    };
    // RFC 9112 §6.1: "A server MAY reject a request that contains both
    // Content-Length and Transfer-Encoding [...]. Regardless, the server
    // MUST close the connection after responding to such a request". We
    // reject it (400, and the connection closes).
    if length.is_some() && head.header("transfer-encoding").is_some() {
        return Err(Error::LengthAndEncoding);
    }
    Ok(length)
}

/// `Host = uri-host [ ":" port ]` (RFC 9110 §7.2): the characters of an
/// RFC 3986 authority without user info (reg-name, IP literal, port).
fn valid_host(v: &[u8]) -> bool {
    v.iter()
        .all(|&c| c.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(&c))
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
    // An upgrade request has no body: bytes after its head are frames to
    // us, but a body to any proxy in front (RFC 9110 §9.3.1: content in a
    // GET "has no generally defined semantics"), so the two would read
    // different messages from the same bytes.
    if head.content_length.is_some_and(|n| n > 0) || head.header("transfer-encoding").is_some() {
        return Err(Error::UpgradeWithBody);
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
            // No body on an upgrade: its bytes would be frames to us and a
            // body to a proxy.
            ("Host", "Content-Length: 0\r\nHost", Ok(())),
            (
                "Host",
                "Content-Length: 5\r\nHost",
                Err(Error::UpgradeWithBody),
            ),
            (
                "Host",
                "Transfer-Encoding: chunked\r\nHost",
                Err(Error::UpgradeWithBody),
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

    /// Request framing, httparse-style: every request head, what
    /// `Head::parse` makes of it (the `Content-Length`, or the error).
    #[test]
    fn framing_table() {
        /// The `Content-Length`, or the error.
        type Outcome = Result<Option<u64>, Error>;
        let ok = |n: Option<u64>| -> Outcome { Ok(n) };
        let cases: &[(&[u8], Outcome)] = &[
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", ok(None)),
            (b"GET / HTTP/1.0\r\n\r\n", ok(None)),
            (b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", ok(None)),
            // Bare LF, anywhere (§2.2).
            (b"GET / HTTP/1.1\nHost: x\n\n", Err(Error::BareLf)),
            (b"GET / HTTP/1.1\r\nHost: x\n\r\n", Err(Error::BareLf)),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\n", Err(Error::BareLf)),
            (b"\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", Err(Error::BareLf)),
            // What httparse refuses: bare CR, NUL, DEL and other controls in
            // a value, whitespace before the colon (§5.1), obs-fold (§5.2),
            // whitespace before the first field (§2.2), odd request lines.
            (b"GET / HTTP/1.1\rHost: x\r\n\r\n", Err(Error::MalformedRequest)),
            (b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", Err(Error::MalformedRequest)),
            (b"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", Err(Error::MalformedRequest)),
            (b"GET / HTTP/1.1\r\nHost: a\x7fb\r\n\r\n", Err(Error::MalformedRequest)),
            (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n", Err(Error::MalformedRequest)),
            (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", Err(Error::MalformedRequest)),
            (b"GET / HTTP/1.1\r\nHost\t: x\r\n\r\n", Err(Error::MalformedRequest)),
            (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", Err(Error::MalformedRequest)),
            (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n\tb\r\n\r\n", Err(Error::MalformedRequest)),
            (b"GET / HTTP/1.1\r\n Host: x\r\n\r\n", Err(Error::MalformedRequest)),
            (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", Err(Error::MalformedRequest)),
            (b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n", Err(Error::MalformedRequest)),
            (b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", Err(Error::MalformedRequest)),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\r\n", Err(Error::MalformedRequest)),
            // Host (§3.2): required in 1.1, once, a valid authority.
            (b"GET / HTTP/1.1\r\n\r\n", Err(Error::MissingHost)),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", Err(Error::BadHost)),
            (b"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", Err(Error::BadHost)),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", Err(Error::BadHost)),
            (b"GET / HTTP/1.1\r\nHost: u@evil\r\n\r\n", Err(Error::BadHost)),
            (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", Err(Error::BadHost)),
            (b"GET / HTTP/1.1\r\nHost: gw.example:8080\r\n\r\n", ok(None)),
            (b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", ok(None)),
            (b"GET / HTTP/1.1\r\nHost: \r\n\r\n", ok(None)),
            // Content-Length = 1*DIGIT, once (§6.3); OWS around it is not
            // part of the value (httparse strips it).
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 27\r\n\r\n", ok(Some(27))),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\t007 \r\n\r\n", ok(Some(7))),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", ok(Some(0))),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                ok(Some(u64::MAX)),
            ),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +27\r\n\r\n", Err(Error::BadContentLength)),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", Err(Error::BadContentLength)),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x1b\r\n\r\n", Err(Error::BadContentLength)),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2 7\r\n\r\n", Err(Error::BadContentLength)),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 27, 27\r\n\r\n", Err(Error::BadContentLength)),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1_0\r\n\r\n", Err(Error::BadContentLength)),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n", Err(Error::BadContentLength)),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \u{663}\r\n\r\n".as_bytes(),
                Err(Error::BadContentLength),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                Err(Error::BadContentLength),
            ),
            // Both framings (§6.1): refused, whatever the order.
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err(Error::LengthAndEncoding),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
                Err(Error::LengthAndEncoding),
            ),
            // Transfer-Encoding alone is the body's business (411 or 400).
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", ok(None)),
        ];
        for (req, want) in cases {
            let got = Head::parse(req, 8192).map(|h| h.expect("complete").content_length);
            assert_eq!(got, *want, "{:?}", String::from_utf8_lossy(req));
        }
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
