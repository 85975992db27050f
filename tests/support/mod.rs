//! Shared helpers for the integration tests: an in-process server with a
//! config tweak, a raw TCP client (hand-made requests and frames, byte-exact
//! reads of the server's responses and frames), a tungstenite client for the
//! "bystander" checks, and small polling helpers.
//!
//! Every wait has a deadline in seconds; nothing asserts on speed.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::Message;
use wsgate::server::{Server, ServerConfig, Shared};

/// The default deadline for anything the server should do "soon".
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A valid `Sec-WebSocket-Key` (RFC 6455 §1.3's example).
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// Its `Sec-WebSocket-Accept`.
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

// ---------------------------------------------------------------- server --

/// Start an in-process server on an ephemeral port with one worker and the
/// default settings, after `tweak` has adjusted them.
pub fn start(tweak: impl FnOnce(&mut ServerConfig)) -> Server {
    let mut cfg = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        ..ServerConfig::default()
    };
    tweak(&mut cfg);
    Server::start(cfg).expect("server starts")
}

/// Stop the server and check that no worker panicked or failed.
pub fn stop(server: Server) {
    server
        .stop()
        .expect("workers end cleanly (a worker panicked or returned an error)");
}

/// A copy of the server's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: usize,
    pub accepted: u64,
    pub closed: u64,
    pub refused: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub protocol_errors: u64,
    pub timeouts: u64,
}

pub fn stats(shared: &Shared) -> Stats {
    let s = &shared.stats();
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    Stats {
        connections: shared.connections.load(Ordering::Acquire),
        accepted: l(&s.accepted),
        closed: l(&s.closed),
        refused: l(&s.refused),
        messages_in: l(&s.messages_in),
        messages_out: l(&s.messages_out),
        bytes_in: l(&s.bytes_in),
        bytes_out: l(&s.bytes_out),
        protocol_errors: l(&s.protocol_errors),
        timeouts: l(&s.timeouts),
    }
}

/// Poll `cond` every 10 ms until it holds; panic with `what` after `within`.
pub fn wait_for(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < end, "timed out after {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Wait until the server holds exactly `n` connections.
pub fn wait_connections(shared: &Shared, n: usize) {
    let mut last = 0;
    wait_for(
        TIMEOUT,
        &format!("server connection count to reach {n}"),
        || {
            last = shared.connections.load(Ordering::Acquire);
            last == n
        },
    );
}

/// This process's resident set size in KiB (the server runs in-process).
pub fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

// ------------------------------------------------------------ tungstenite --

pub type Ws = tungstenite::WebSocket<TcpStream>;

/// A tungstenite client on `path`, with `extra` request headers.
pub fn ws_connect_with(
    addr: SocketAddr,
    path: &str,
    extra: &[(&'static str, &str)],
) -> Result<(Ws, tungstenite::handshake::client::Response), Box<tungstenite::Error>> {
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("valid URL");
    for (k, v) in extra {
        req.headers_mut()
            .append(*k, v.parse().expect("header value"));
    }
    let sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    sock.set_write_timeout(Some(TIMEOUT)).unwrap();
    sock.set_nodelay(true).unwrap();
    tungstenite::client::client(req, sock).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => Box::new(e),
        tungstenite::HandshakeError::Interrupted(_) => {
            panic!("handshake interrupted: blocking socket timed out")
        }
    })
}

/// A tungstenite client on `/echo`.
pub fn ws_connect(addr: SocketAddr) -> Ws {
    ws_connect_with(addr, "/echo", &[])
        .expect("tungstenite handshake")
        .0
}

/// Send `msg` and check that the next message is the same one.
pub fn assert_echo(ws: &mut Ws, msg: Message) {
    ws.send(msg.clone()).expect("send");
    let got = ws.read().expect("read echo");
    assert!(
        got == msg,
        "echo differs: sent {} got {}",
        describe(&msg),
        describe(&got)
    );
}

/// A short description of a message (sizes, not megabytes of payload).
pub fn describe(m: &Message) -> String {
    match m {
        Message::Text(t) => format!("text({} bytes)", t.len()),
        Message::Binary(b) => format!("binary({} bytes)", b.len()),
        Message::Ping(p) => format!("ping({p:02x?})"),
        Message::Pong(p) => format!("pong({p:02x?})"),
        Message::Close(c) => format!("close({c:?})"),
        Message::Frame(f) => format!("frame({f:?})"),
    }
}

// ------------------------------------------------------------------ frames --

/// Build a client frame with any bits: FIN, RSV (3 bits, RSV1 = 0b100),
/// opcode (4 bits), an optional mask, a declared length (which need not
/// match the payload: `payload` may be shorter, e.g. empty) and the payload.
/// The length uses the minimal encoding.
pub fn raw_frame(
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    declared_len: u64,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.push((fin as u8) << 7 | (rsv & 7) << 4 | (opcode & 0x0F));
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    if declared_len < 126 {
        f.push(mbit | declared_len as u8);
    } else if declared_len <= u16::MAX as u64 {
        f.push(mbit | 126);
        f.extend_from_slice(&(declared_len as u16).to_be_bytes());
    } else {
        f.push(mbit | 127);
        f.extend_from_slice(&declared_len.to_be_bytes());
    }
    match mask {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// A mask key that changes from frame to frame (and has no zero byte, so a
/// server that forgets to unmask cannot pass by luck).
pub fn next_mask() -> [u8; 4] {
    use std::sync::atomic::AtomicU32;
    static SEED: AtomicU32 = AtomicU32::new(0x9E37_79B9);
    let mut x = SEED.fetch_add(0x6D2B_79F5, Ordering::Relaxed);
    x ^= x >> 15;
    x = x.wrapping_mul(0x2C1B_3C6D);
    x ^= x >> 12;
    x.to_be_bytes().map(|b| b | 1)
}

/// A masked client frame whose declared length is the payload's.
pub fn frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(
        fin,
        rsv,
        opcode,
        Some(next_mask()),
        payload.len() as u64,
        payload,
    )
}

/// A masked client frame declaring `declared_len` but carrying `payload`
/// (possibly nothing).
pub fn frame_declared(fin: bool, opcode: u8, declared_len: u64, payload: &[u8]) -> Vec<u8> {
    raw_frame(fin, 0, opcode, Some(next_mask()), declared_len, payload)
}

/// A close frame payload: code and reason bytes.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// A frame as the server sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, OP_CLOSE, "not a close frame: {self:?}");
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    pub fn close_reason(&self) -> &[u8] {
        assert_eq!(self.opcode, OP_CLOSE, "not a close frame: {self:?}");
        self.payload.get(2..).unwrap_or(&[])
    }
}

/// How a read ended when it did not deliver what was asked.
#[derive(Debug)]
pub enum End {
    /// The server closed TCP (read returned 0).
    Eof,
    /// The server reset the connection.
    Reset,
    /// Nothing within the deadline.
    Timeout,
    /// Another socket error.
    Other(io::Error),
}

impl End {
    /// Is this how a closed connection looks (FIN or RST)?
    pub fn is_closed(&self) -> bool {
        matches!(self, End::Eof | End::Reset)
    }
}

// -------------------------------------------------------------- raw client --

/// A parsed HTTP response head.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub head: String,
}

impl Response {
    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count()
    }
}

/// An upgrade request for `path` with extra header lines (each ending in
/// `\r\n`).
pub fn upgrade_request(addr: SocketAddr, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A raw TCP client: bytes out as given, bytes in kept in `pending` until
/// parsed.
pub struct Raw {
    pub sock: TcpStream,
    pub pending: Vec<u8>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_nodelay(true).unwrap();
        sock.set_write_timeout(Some(TIMEOUT)).unwrap();
        Raw {
            sock,
            pending: Vec::new(),
        }
    }

    /// Connect, send `request`, and read the response head.
    pub fn request(addr: SocketAddr, request: &[u8]) -> (Raw, Response) {
        let mut c = Raw::connect(addr);
        c.send(request);
        let r = c.read_response();
        (c, r)
    }

    /// Connect and upgrade on `path` with a hand-made request; panics unless
    /// the answer is a valid 101.
    pub fn upgrade(addr: SocketAddr, path: &str) -> Raw {
        let (c, r) = Raw::request(addr, upgrade_request(addr, path, "").as_bytes());
        assert_eq!(r.status, 101, "upgrade refused:\n{}", r.head);
        assert_eq!(r.header("sec-websocket-accept"), Some(ACCEPT), "{}", r.head);
        c
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).expect("send");
    }

    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sock.write_all(bytes)
    }

    /// Read once more into `pending`, waiting until `deadline` at most.
    pub fn fill(&mut self, deadline: Instant) -> Result<usize, End> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(End::Timeout);
        }
        self.sock.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 64 * 1024];
        loop {
            match self.sock.read(&mut buf) {
                Ok(0) => return Err(End::Eof),
                Ok(n) => {
                    self.pending.extend_from_slice(&buf[..n]);
                    return Ok(n);
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        return Err(End::Timeout)
                    }
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                        return Err(End::Reset)
                    }
                    _ => return Err(End::Other(e)),
                },
            }
        }
    }

    /// Read an HTTP response head (up to the blank line); the bytes after it
    /// stay in `pending`.
    pub fn read_response(&mut self) -> Response {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.pending) {
                Ok(httparse::Status::Complete(n)) => {
                    let r = Response {
                        status: resp.code.expect("status"),
                        headers: resp
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_string(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect(),
                        head: String::from_utf8_lossy(&self.pending[..n]).into_owned(),
                    };
                    self.pending.drain(..n);
                    return r;
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => panic!(
                    "invalid HTTP response ({e}): {:?}",
                    String::from_utf8_lossy(&self.pending)
                ),
            }
            if let Err(end) = self.fill(deadline) {
                panic!(
                    "no complete response head ({end:?}); got {:?}",
                    String::from_utf8_lossy(&self.pending)
                );
            }
        }
    }

    /// Read until the server closes TCP (FIN or RST) within `within`; returns
    /// what was read meanwhile (including what was already pending). Panics
    /// if the connection is still open at the deadline.
    pub fn expect_tcp_closed(&mut self, within: Duration) -> (Vec<u8>, End) {
        let deadline = Instant::now() + within;
        loop {
            match self.fill(deadline) {
                Ok(_) => {}
                Err(End::Timeout) => panic!(
                    "server did not close TCP within {within:?} (read {} bytes meanwhile)",
                    self.pending.len()
                ),
                Err(End::Other(e)) => panic!("unexpected read error: {e}"),
                Err(end) => return (std::mem::take(&mut self.pending), end),
            }
        }
    }

    /// Read an HTTP error response: head, body (to EOF), then check that TCP
    /// is closed. Returns (response, body).
    pub fn read_error_response(&mut self) -> (Response, Vec<u8>) {
        let r = self.read_response();
        let (body, _) = self.expect_tcp_closed(TIMEOUT);
        if let Some(len) = r.header("content-length") {
            let len: usize = len.trim().parse().expect("numeric Content-Length");
            assert_eq!(
                body.len(),
                len,
                "body length vs Content-Length:\n{}",
                r.head
            );
        }
        (r, body)
    }

    /// Take exactly `n` bytes (reading more as needed), e.g. an HTTP body.
    pub fn read_exact_pending(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + TIMEOUT;
        while self.pending.len() < n {
            if let Err(end) = self.fill(deadline) {
                panic!("wanted {n} bytes, have {}: {end:?}", self.pending.len());
            }
        }
        self.pending.drain(..n).collect()
    }

    /// Parse one frame from `pending` if complete.
    fn parse_frame(&mut self) -> Option<(Frame, bool)> {
        let p = &self.pending;
        if p.len() < 2 {
            return None;
        }
        let masked = p[1] & 0x80 != 0;
        let (len, mut pos) = match p[1] & 0x7F {
            126 if p.len() < 4 => return None,
            126 => (u16::from_be_bytes([p[2], p[3]]) as u64, 4),
            127 if p.len() < 10 => return None,
            127 => (u64::from_be_bytes(p[2..10].try_into().unwrap()), 10),
            n => (n as u64, 2),
        };
        let mask = if masked {
            if p.len() < pos + 4 {
                return None;
            }
            pos += 4;
            Some([p[pos - 4], p[pos - 3], p[pos - 2], p[pos - 1]])
        } else {
            None
        };
        let end = pos.checked_add(usize::try_from(len).ok()?)?;
        if p.len() < end {
            return None;
        }
        let mut payload = p[pos..end].to_vec();
        if let Some(k) = mask {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= k[i % 4];
            }
        }
        let f = Frame {
            fin: p[0] & 0x80 != 0,
            rsv: (p[0] >> 4) & 7,
            opcode: p[0] & 0x0F,
            payload,
        };
        self.pending.drain(..end);
        Some((f, masked))
    }

    /// Read one server frame within `within`; it must not be masked.
    pub fn try_read_frame(&mut self, within: Duration) -> Result<Frame, End> {
        let deadline = Instant::now() + within;
        loop {
            if let Some((f, masked)) = self.parse_frame() {
                assert!(!masked, "server frame is masked: {f:?}");
                return Ok(f);
            }
            self.fill(deadline)?;
        }
    }

    /// Read one server frame; panics if none comes within `within`.
    pub fn read_frame(&mut self, within: Duration) -> Frame {
        match self.try_read_frame(within) {
            Ok(f) => f,
            Err(end) => panic!(
                "no frame from the server within {within:?}: {end:?} ({} bytes pending)",
                self.pending.len()
            ),
        }
    }

    /// Read frames until a close frame (data frames before it are skipped),
    /// check its code, then check that the server closes TCP (read returns 0
    /// or ECONNRESET) within a few seconds without sending anything more.
    /// Returns the close frame.
    pub fn assert_closed_with(&mut self, code: u16) -> Frame {
        let deadline = Instant::now() + TIMEOUT;
        let close = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = match self.try_read_frame(left) {
                Ok(f) => f,
                Err(end) => panic!("expected close {code}, but the read ended: {end:?}"),
            };
            if f.opcode == OP_CLOSE {
                break f;
            }
        };
        assert_eq!(
            close.close_code(),
            Some(code),
            "close frame {:?} reason {:?}",
            close,
            String::from_utf8_lossy(close.close_reason())
        );
        assert!(
            std::str::from_utf8(close.close_reason()).is_ok(),
            "close reason must be UTF-8"
        );
        assert!(close.payload.len() <= 125, "control frame too long");
        let (rest, _) = self.expect_tcp_closed(Duration::from_secs(5));
        assert!(
            rest.is_empty(),
            "server sent {} bytes after its close frame",
            rest.len()
        );
        close
    }

    /// Send a masked close frame with `code` (ignoring a write error: the
    /// server may already be gone).
    pub fn send_close(&mut self, code: u16, reason: &[u8]) {
        let _ = self.try_send(&frame(true, 0, OP_CLOSE, &close_payload(code, reason)));
    }

    /// Send `bytes` and half-close (shutdown(SHUT_WR)) so that the data and
    /// the FIN leave in one segment: TCP_CORK holds the data back until the
    /// shutdown, which sets FIN on the queued segment. The server then reads
    /// the bytes and the EOF in one go, whatever the scheduling.
    pub fn send_and_half_close(&mut self, bytes: &[u8]) {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with a pointer to a live
        // c_int of the size we pass.
        let r = unsafe {
            libc::setsockopt(
                self.sock.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_CORK,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "TCP_CORK: {}", io::Error::last_os_error());
        self.send(bytes);
        self.sock
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown(SHUT_WR)");
    }

    /// Abort the connection: SO_LINGER 0, then close, so the kernel sends RST.
    pub fn reset(self) {
        use std::os::fd::AsRawFd;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on a socket we own, with a pointer to a live
        // `linger` of the size we pass.
        let r = unsafe {
            libc::setsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "SO_LINGER: {}", io::Error::last_os_error());
        drop(self.sock);
    }
}
