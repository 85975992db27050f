//! One TLS connection, sans-IO: ciphertext in, plaintext out, on rustls's
//! unbuffered API. No socket, no clock, and no buffer kept between calls.
//!
//! ```text
//!  socket ──read──▶ caller's buffer ──feed──▶ plaintext at its front ──▶ proto
//!                    (per-worker)       │      + how many bytes were records
//!                                       └──▶ handshake records, alerts ──▶ out
//!  proto's frames ──encrypt──▶ records ──▶ out ──flush──▶ socket
//! ```
//!
//! [`Session::feed`] takes the bytes read (the caller's spill of an
//! incomplete record first, then what the socket gave) and processes every
//! complete record: handshake records are answered into the out queue, and
//! the plaintext of application-data records is written, in order, to the
//! front of the same buffer. It returns how many bytes of plaintext are
//! there and how many bytes of records were used up; the bytes after those
//! are an incomplete record, for the caller to keep until more arrive.
//! rustls decrypts each record in place in the caller's buffer; its 0.23
//! API then hands the plaintext over through a short-lived `Vec` of its
//! own, which we copy back over the record it came from (a record's
//! plaintext is always shorter than the record), so nothing outlives the
//! call. When rustls's `ReadTraffic` decrypts into the caller's buffer
//! (planned upstream), that copy goes and nothing else changes.
//!
//! [`Session::encrypt`] turns plaintext (the frames of an out queue, any
//! number of slices) into records of up to 16 KiB appended to the out
//! queue; small frames are gathered into one record, so a corked batch of
//! frames costs one record's overhead (22 bytes with TLS 1.3), not one per
//! frame.
//!
//! Errors are [`TlsError`]: by the time one is returned, what the peer
//! must be told (a fatal alert, or a plaintext 400 for HTTP sent to the TLS
//! port) is in the out queue; the caller flushes it and closes. The
//! handshake deadline is the caller's timer: [`Session::is_handshaking`]
//! says whether it still applies.

use std::ops::DerefMut;
use std::sync::Arc;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError,
    UnbufferedConnectionCommon, UnbufferedStatus,
};
use rustls::{ClientConfig, ServerConfig};

use super::error::{TlsError, PLAIN_HTTP_RESPONSE};

/// The largest plaintext of one record (RFC 8446 §5.1: "The length MUST
/// NOT exceed 2^14 bytes").
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// Room for a record's header, nonce, content type and tag (22 bytes with
/// TLS 1.3, 29 with TLS 1.2 AES-GCM), rounded up.
const RECORD_OVERHEAD: usize = 64;
/// The largest record a peer may send us (RFC 8446 §5.2: 2^14 + 256 bytes
/// of ciphertext, plus the 5-byte header): the most a caller ever has to
/// keep of an incomplete record.
pub const MAX_RECORD: usize = 5 + (1 << 14) + 256;

/// The two roles of rustls's unbuffered connection, for [`Session`].
pub trait Unbuffered: DerefMut<Target = UnbufferedConnectionCommon<Self::Data>> {
    type Data;
    /// Does the first byte of a connection look like a plaintext HTTP
    /// request? (Only a server answers those.)
    const SERVER: bool;
    fn process<'c, 'i>(&'c mut self, tls: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    const SERVER: bool = true;
    fn process<'c, 'i>(&'c mut self, tls: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(tls)
    }
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    const SERVER: bool = false;
    fn process<'c, 'i>(&'c mut self, tls: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(tls)
    }
}

/// What one [`Session::feed`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fed {
    /// Bytes of plaintext now at the front of the buffer.
    pub plaintext: usize,
    /// Bytes of complete records used up; `buf[consumed..]` is an
    /// incomplete record to keep and feed again, with what comes next,
    /// in front.
    pub consumed: usize,
    /// The handshake finished during this call: application data may now
    /// be encrypted (and the handshake deadline is over).
    pub established: bool,
    /// The peer's close_notify came: it sends nothing more. The plaintext
    /// of this call is still whole and valid.
    pub peer_closed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No byte seen yet.
    Fresh,
    Handshaking,
    Open,
    /// An error was returned; every later call returns it again.
    Failed,
}

/// One TLS connection over rustls's unbuffered API. It holds rustls's
/// state (keys, sequence numbers, the handshake's progress) and a byte of
/// its own; see docs/tls.md for the size and where it goes.
pub struct Session<C: Unbuffered> {
    conn: C,
    phase: Phase,
    peer_closed: bool,
    error: Option<Box<TlsError>>,
}

impl Session<UnbufferedServerConnection> {
    /// A server connection, right after accept.
    pub fn server(config: Arc<ServerConfig>) -> Result<Self, TlsError> {
        let conn = UnbufferedServerConnection::new(config)
            .map_err(|e| TlsError::from_rustls(e, false))?;
        Ok(Session::new(conn))
    }
}

impl Session<UnbufferedClientConnection> {
    /// A client connection to `name`; its ClientHello is in `out` at once.
    pub fn client(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        out: &mut Vec<u8>,
    ) -> Result<Self, TlsError> {
        let conn = UnbufferedClientConnection::new(config, name)
            .map_err(|e| TlsError::from_rustls(e, false))?;
        let mut s = Session::new(conn);
        s.phase = Phase::Handshaking;
        s.feed(&mut [], out)?;
        Ok(s)
    }
}

impl<C: Unbuffered> Session<C> {
    fn new(conn: C) -> Self {
        Session {
            conn,
            phase: Phase::Fresh,
            peer_closed: false,
            error: None,
        }
    }

    /// Is the handshake still under way (the deadline applies)?
    pub fn is_handshaking(&self) -> bool {
        matches!(self.phase, Phase::Fresh | Phase::Handshaking)
    }

    /// May application data be encrypted?
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Was the handshake a resumption (a session ticket or session id)?
    pub fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// The negotiated protocol version, after the handshake.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// The ALPN protocol agreed, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The negotiated cipher suite, after the handshake.
    pub fn cipher_suite(&self) -> Option<rustls::SupportedCipherSuite> {
        self.conn.negotiated_cipher_suite()
    }

    /// Process the complete records at the front of `buf` (see the module
    /// doc): plaintext goes to `buf[..plaintext]`, handshake records and
    /// alerts to `out`, and `buf[consumed..]` is left to be fed again
    /// with more bytes behind it.
    pub fn feed(&mut self, buf: &mut [u8], out: &mut Vec<u8>) -> Result<Fed, TlsError> {
        if let Some(e) = &self.error {
            return Err((**e).clone());
        }
        if self.phase == Phase::Fresh {
            let Some(&first) = buf.first() else {
                return Ok(Fed::default());
            };
            // RFC 8446 §5.1: every record starts with its content type
            // (20..=23, and 22 for the ClientHello); an upper-case letter
            // is the first of an HTTP method.
            if C::SERVER && first.is_ascii_uppercase() {
                out.extend_from_slice(PLAIN_HTTP_RESPONSE);
                return Err(self.failed(TlsError::PlainHttp));
            }
            self.phase = Phase::Handshaking;
        }
        let was_handshaking = self.phase == Phase::Handshaking;
        let mut fed = Fed::default();
        loop {
            let (done, rest) = buf.split_at_mut(fed.consumed);
            let UnbufferedStatus { discard, state } = self.conn.process(rest);
            let state = match state {
                Ok(s) => s,
                Err(e) => {
                    let alert_sent = self.drain_alert(out);
                    return Err(self.failed(TlsError::from_rustls(e, alert_sent)));
                }
            };
            match state {
                ConnectionState::ReadTraffic(mut records) => {
                    if discard > 0 {
                        // The records this plaintext came from are still
                        // borrowed as `rest`: count them as used, then ask
                        // again (rustls keeps the plaintext until popped),
                        // so that it can be written over them in `done`.
                        drop(records);
                        fed.consumed += discard;
                        continue;
                    }
                    while let Some(record) = records.next_record() {
                        let record = match record {
                            Ok(r) => r,
                            Err(e) => {
                                drop(records);
                                let alert_sent = self.drain_alert(out);
                                return Err(self.failed(TlsError::from_rustls(e, alert_sent)));
                            }
                        };
                        let end = fed.plaintext + record.payload.len();
                        // Always fits: a record's plaintext is shorter than
                        // the record, and `done` holds every record used.
                        let Some(dst) = done.get_mut(fed.plaintext..end) else {
                            drop(records);
                            let e = rustls::Error::General("plaintext longer than its records".into());
                            return Err(self.failed(TlsError::from_rustls(e, false)));
                        };
                        dst.copy_from_slice(record.payload);
                        fed.plaintext = end;
                    }
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    fed.consumed += discard;
                    encode_into(out, |dst| data.encode(dst));
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    // Everything encoded is in `out`, in order: the caller
                    // sends it with whatever comes after.
                    fed.consumed += discard;
                    transmit.done();
                }
                ConnectionState::BlockedHandshake => {
                    fed.consumed += discard;
                    break;
                }
                ConnectionState::WriteTraffic(_) => {
                    fed.consumed += discard;
                    self.phase = Phase::Open;
                    break;
                }
                ConnectionState::PeerClosed => {
                    fed.consumed += discard;
                    fed.peer_closed = true;
                    self.peer_closed = true;
                }
                ConnectionState::Closed => {
                    fed.consumed += discard;
                    break;
                }
                // Early data is never accepted (max_early_data_size is 0),
                // and rustls may add states: treat as "nothing to do".
                _ => {
                    fed.consumed += discard;
                    break;
                }
            }
        }
        fed.established = was_handshaking && self.phase == Phase::Open;
        if self.peer_closed && self.phase == Phase::Handshaking {
            // A close_notify in the middle of the handshake ends it.
            self.phase = Phase::Open;
        }
        Ok(fed)
    }

    /// Encrypt `chunks`, in order, into records appended to `out`. Small
    /// chunks share a record; a large one is cut into records of
    /// [`MAX_PLAINTEXT`]. Only once the handshake is over.
    pub fn encrypt(&mut self, chunks: &[&[u8]], out: &mut Vec<u8>) -> Result<(), TlsError> {
        if let Some(e) = &self.error {
            return Err((**e).clone());
        }
        if self.phase != Phase::Open {
            return Err(TlsError::NotReady);
        }
        let total: usize = chunks.iter().map(|c| c.len()).sum();
        let mut cursor = Cursor::default();
        let mut left = total;
        while left > 0 {
            let take = left.min(MAX_PLAINTEXT);
            let mut room = take + RECORD_OVERHEAD;
            loop {
                let mut wt = self.write_traffic(out)?;
                // out: [queued][room for the record][plaintext staged]
                let start = out.len();
                out.resize(start + room, 0);
                let mut staged = cursor;
                staged.copy(chunks, take, out);
                let (head, plain) = out.split_at_mut(start + room);
                match wt.encrypt(plain, &mut head[start..]) {
                    Ok(n) => {
                        out.truncate(start + n);
                        cursor = staged;
                        left -= take;
                        break;
                    }
                    Err(EncryptError::InsufficientSize(InsufficientSizeError {
                        required_size,
                    })) => {
                        // A peer that asked for smaller records
                        // (max_fragment_length): more records, more room.
                        out.truncate(start);
                        room = required_size;
                    }
                    Err(EncryptError::EncryptExhausted) => {
                        out.truncate(start);
                        let e = rustls::Error::EncryptError;
                        return Err(self.failed(TlsError::from_rustls(e, false)));
                    }
                }
            }
        }
        Ok(())
    }

    /// Append our close_notify to `out` (RFC 8446 §6.1: "Each party MUST
    /// send a "close_notify" alert before closing its write side"). Does
    /// nothing before the handshake is over or after an error.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) {
        if self.error.is_some() || self.phase != Phase::Open {
            return;
        }
        if let Ok(mut wt) = self.write_traffic(out) {
            encode_into(out, |dst| {
                wt.queue_close_notify(dst).map_err(|e| match e {
                    EncryptError::InsufficientSize(s) => EncodeError::InsufficientSize(s),
                    EncryptError::EncryptExhausted => EncodeError::AlreadyEncoded,
                })
            });
        }
    }

    /// The `WriteTraffic` state, after appending to `out` whatever rustls
    /// has to send first (a KeyUpdate, a session ticket).
    fn write_traffic(
        &mut self,
        out: &mut Vec<u8>,
    ) -> Result<rustls::unbuffered::WriteTraffic<'_, C::Data>, TlsError> {
        // The borrow checker cannot see that the loop's states end with
        // the iteration, so each pass asks for the state anew and only the
        // last one is returned.
        for _ in 0..64 {
            match self.conn.process(&mut []).state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode_into(out, |dst| data.encode(dst));
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                Ok(ConnectionState::WriteTraffic(_)) => break,
                Ok(_) => return Err(TlsError::NotReady),
                Err(e) => {
                    let alert_sent = self.drain_alert(out);
                    return Err(self.failed(TlsError::from_rustls(e, alert_sent)));
                }
            }
        }
        match self.conn.process(&mut []).state {
            Ok(ConnectionState::WriteTraffic(wt)) => Ok(wt),
            _ => Err(TlsError::NotReady),
        }
    }

    /// After an error rustls has queued a fatal alert: move it to `out`.
    fn drain_alert(&mut self, out: &mut Vec<u8>) -> bool {
        let before = out.len();
        for _ in 0..4 {
            match self.conn.process(&mut []).state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode_into(out, |dst| data.encode(dst));
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => break,
            }
        }
        out.len() > before
    }

    fn failed(&mut self, e: TlsError) -> TlsError {
        log::debug!("tls: {e}");
        self.phase = Phase::Failed;
        self.error = Some(Box::new(e.clone()));
        e
    }
}

/// Run rustls's `encode` into the end of `out`, growing it to the size
/// rustls asks for.
fn encode_into(out: &mut Vec<u8>, mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>) {
    let start = out.len();
    let mut room = 1024;
    loop {
        out.resize(start + room, 0);
        match encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return;
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size }))
                if required_size > room =>
            {
                room = required_size;
            }
            Err(_) => {
                out.truncate(start);
                return;
            }
        }
    }
}

/// A position in a list of slices.
#[derive(Clone, Copy, Debug, Default)]
struct Cursor {
    chunk: usize,
    offset: usize,
}

impl Cursor {
    /// Append the next `n` bytes of `chunks` to `out`, moving on.
    fn copy(&mut self, chunks: &[&[u8]], mut n: usize, out: &mut Vec<u8>) {
        while n > 0 {
            let Some(c) = chunks.get(self.chunk) else {
                return;
            };
            let avail = &c[self.offset..];
            let k = avail.len().min(n);
            out.extend_from_slice(&avail[..k]);
            n -= k;
            self.offset += k;
            if self.offset == c.len() {
                self.chunk += 1;
                self.offset = 0;
            }
        }
    }
}
