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
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedConnectionCommon,
    UnbufferedStatus,
};
use rustls::{ClientConfig, ServerConfig};

use super::error::{TlsError, PLAIN_HTTP_RESPONSE};

/// The largest plaintext of one record (RFC 8446 §5.1: "The length MUST
/// NOT exceed 2^14 bytes").
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// Room for a record's header, nonce, content type and tag (22 bytes with
/// TLS 1.3, 29 with TLS 1.2 AES-GCM), rounded up.
const RECORD_OVERHEAD: usize = 64;
/// The largest record rustls waits for: the 5-byte header and less than
/// 2^14 + 2048 bytes of ciphertext (RFC 5246 §6.2.3's bound; a header that
/// announces more fails the connection at once; TLS 1.3's 2^14 + 256 is
/// checked once the record is decrypted). An incomplete record a caller keeps
/// is shorter than this; during the handshake rustls may also keep the
/// first records of a handshake message split across records in the
/// caller's buffer, up to 64 KiB (its largest handshake message).
pub const MAX_RECORD: usize = 5 + (1 << 14) + 2048 - 1;

/// The two roles of rustls's unbuffered connection, for [`Session`].
pub trait Unbuffered: DerefMut<Target = UnbufferedConnectionCommon<Self::Data>> {
    type Data;
    /// Does the first byte of a connection look like a plaintext HTTP
    /// request? (Only a server answers those.)
    const SERVER: bool;
    /// rustls's `dangerous_extract_secrets`.
    fn extract_secrets(self) -> Result<rustls::ExtractedSecrets, rustls::Error>;
    fn process<'c, 'i>(&'c mut self, tls: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    const SERVER: bool = true;
    fn extract_secrets(self) -> Result<rustls::ExtractedSecrets, rustls::Error> {
        // Deprecated for kTLS use (no tickets, no key updates afterwards),
        // which is all a one-way hand-over needs.
        #[allow(deprecated)]
        self.dangerous_extract_secrets()
    }
    fn process<'c, 'i>(&'c mut self, tls: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(tls)
    }
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    const SERVER: bool = false;
    fn extract_secrets(self) -> Result<rustls::ExtractedSecrets, rustls::Error> {
        // Deprecated for kTLS use (no tickets, no key updates afterwards),
        // which is all a one-way hand-over needs.
        #[allow(deprecated)]
        self.dangerous_extract_secrets()
    }
    fn process<'c, 'i>(&'c mut self, tls: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(tls)
    }
}

/// What one [`Session::feed`] produced.
#[derive(Debug, Clone, PartialEq, Default)]
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
    /// The connection cannot go on (see [`TlsError`]); what the peer must
    /// be told is in `out`. Every later call returns it again.
    pub error: Option<TlsError>,
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
/// state (keys, sequence numbers, the handshake's progress) and 16 bytes of
/// its own; see docs/tls.md for the size and where it goes.
pub struct Session<C: Unbuffered> {
    conn: C,
    phase: Phase,
    /// Did we send a record yet? (Until then an alert may be plaintext.)
    sent_any: bool,
    error: Option<Box<TlsError>>,
}

impl Session<UnbufferedServerConnection> {
    /// A server connection, right after accept.
    pub fn server(config: Arc<ServerConfig>) -> Result<Self, TlsError> {
        let conn =
            UnbufferedServerConnection::new(config).map_err(|e| TlsError::from_rustls(e, false))?;
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
        match s.feed(&mut [], out).error {
            Some(e) => Err(e),
            None => Ok(s),
        }
    }
}

impl<C: Unbuffered> Session<C> {
    fn new(conn: C) -> Self {
        Session {
            conn,
            phase: Phase::Fresh,
            sent_any: false,
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

    /// rustls's connection, for what this type does not wrap (kernel TLS:
    /// `dangerous_into_kernel_connection`, see docs/tls.md).
    pub fn into_connection(self) -> C {
        self.conn
    }

    /// The ALPN protocol agreed, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The peer's leaf certificate (DER), once the handshake has it.
    pub fn peer_leaf(&self) -> Option<Vec<u8>> {
        self.conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
    }

    /// Hand the traffic secrets over (for kernel TLS, or a test that must
    /// write records rustls never would); the session is gone.
    pub fn into_secrets(self) -> Result<rustls::ExtractedSecrets, TlsError> {
        self.conn
            .extract_secrets()
            .map_err(|e| TlsError::from_rustls(e, false))
    }

    /// The negotiated cipher suite, after the handshake.
    pub fn cipher_suite(&self) -> Option<rustls::SupportedCipherSuite> {
        self.conn.negotiated_cipher_suite()
    }

    /// Process the complete records at the front of `buf` (see the module
    /// doc): plaintext goes to `buf[..plaintext]`, handshake records and
    /// alerts to `out`, and `buf[consumed..]` is left to be fed again
    /// with more bytes behind it. When [`Fed::error`] is set the plaintext
    /// before the offending record is still valid: hand it on, then flush
    /// `out` and close.
    pub fn feed(&mut self, buf: &mut [u8], out: &mut Vec<u8>) -> Fed {
        let mut fed = Fed::default();
        if let Some(e) = &self.error {
            fed.error = Some((**e).clone());
            return fed;
        }
        if self.phase == Phase::Fresh {
            let Some(&first) = buf.first() else {
                return fed;
            };
            // RFC 8446 §5.1: every record starts with its content type
            // (20..=23, and 22 for the ClientHello); an upper-case letter
            // is the first of an HTTP method.
            if C::SERVER && first.is_ascii_uppercase() {
                out.extend_from_slice(PLAIN_HTTP_RESPONSE);
                fed.error = Some(self.failed(TlsError::PlainHttp));
                return fed;
            }
            self.phase = Phase::Handshaking;
        }
        let was_handshaking = self.phase == Phase::Handshaking;
        if let Err((e, discard)) = self.process_records(buf, out, &mut fed) {
            // rustls's contract: the next call gets the same buffer less
            // what it said to discard (it may have decrypted a handshake
            // message's first records in place and kept their place).
            let rest = buf.get_mut(fed.consumed + discard..).unwrap_or_default();
            let alert_sent = self.drain_alert(rest, out, &e);
            fed.error = Some(self.failed(TlsError::from_rustls(e, alert_sent)));
        }
        fed.established = was_handshaking && self.phase == Phase::Open;
        fed
    }

    /// [`Session::feed`]'s loop over rustls's states.
    fn process_records(
        &mut self,
        buf: &mut [u8],
        out: &mut Vec<u8>,
        fed: &mut Fed,
    ) -> Result<(), (rustls::Error, usize)> {
        let open_tls12 = C::SERVER
            && self.phase == Phase::Open
            && self.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_2);
        loop {
            let (done, rest) = buf.split_at_mut(fed.consumed);
            let UnbufferedStatus { discard, state } = self.conn.process(rest);
            match state.map_err(|e| (e, discard))? {
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
                        let payload = record.map_err(|e| (e, 0))?.payload;
                        let end = fed.plaintext + payload.len();
                        // Always fits: a record's plaintext is shorter than
                        // the record, and `done` holds every record used.
                        let dst = done.get_mut(fed.plaintext..end).ok_or_else(|| {
                            let e = "plaintext longer than its records".to_string();
                            (rustls::Error::General(e), 0)
                        })?;
                        dst.copy_from_slice(payload);
                        fed.plaintext = end;
                    }
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    fed.consumed += discard;
                    if open_tls12 {
                        // After a TLS 1.2 handshake the server writes only
                        // one record unasked: the answer to a ClientHello.
                        // RFC 5246 §7.2.2, no_renegotiation: "Sent ... by
                        // the server in response to a client hello after
                        // initial handshaking. ... This message is always
                        // a warning." (rustls; the session goes on.)
                        log::info!("tls: TLS 1.2 renegotiation refused (no_renegotiation warning); the session goes on");
                    }
                    encode_into(out, |dst| data.encode(dst));
                    self.sent_any = true;
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    // Everything encoded is in `out`, in order: the caller
                    // sends it with whatever comes after.
                    fed.consumed += discard;
                    transmit.done();
                }
                ConnectionState::WriteTraffic(_) => {
                    fed.consumed += discard;
                    self.phase = Phase::Open;
                    return Ok(());
                }
                ConnectionState::PeerClosed => {
                    fed.consumed += discard;
                    fed.peer_closed = true;
                }
                // BlockedHandshake (more bytes needed), Closed; early data
                // is never accepted (max_early_data_size is 0), and rustls
                // may add states: nothing more to do now.
                _ => {
                    fed.consumed += discard;
                    return Ok(());
                }
            }
        }
    }

    /// Encrypt `chunks`, in order, into records appended to `out`. Small
    /// chunks share a record; a large one is cut into records of
    /// [`MAX_PLAINTEXT`]. Only once the handshake is over.
    ///
    /// `pending` is what the last [`Session::feed`] left unconsumed (the
    /// caller's spill, as it is): rustls may keep its place in those bytes
    /// (the first records of a handshake message split across records),
    /// and every call into it must see them. Empty when nothing is pending.
    pub fn encrypt(
        &mut self,
        pending: &mut [u8],
        chunks: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> Result<(), TlsError> {
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
                let mut wt = self.write_traffic(pending, out)?;
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
    /// nothing before the handshake is over or after an error. `pending`:
    /// as for [`Session::encrypt`].
    pub fn close_notify(&mut self, pending: &mut [u8], out: &mut Vec<u8>) {
        if self.error.is_some() || self.phase != Phase::Open {
            return;
        }
        if let Ok(mut wt) = self.write_traffic(pending, out) {
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
    fn write_traffic<'c>(
        &'c mut self,
        pending: &'c mut [u8],
        out: &mut Vec<u8>,
    ) -> Result<rustls::unbuffered::WriteTraffic<'c, C::Data>, TlsError> {
        // The borrow checker cannot see that the loop's states end with
        // the iteration, so each pass asks for the state anew and only the
        // last one is returned. No state here discards anything: `pending`
        // holds no complete record (feed used them all).
        for _ in 0..64 {
            match self.conn.process(pending).state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode_into(out, |dst| data.encode(dst));
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                Ok(ConnectionState::WriteTraffic(_)) => break,
                Ok(_) => return Err(TlsError::NotReady),
                Err(e) => {
                    let alert_sent = self.drain_alert(pending, out, &e);
                    return Err(self.failed(TlsError::from_rustls(e, alert_sent)));
                }
            }
        }
        match self.conn.process(pending).state {
            Ok(ConnectionState::WriteTraffic(wt)) => Ok(wt),
            _ => Err(TlsError::NotReady),
        }
    }

    /// After an error: move the fatal alert rustls queued to `out`, or
    /// write one ourselves where rustls queues none (some malformed
    /// handshakes) and nothing was sent yet, so it can go in plaintext.
    /// `rest`: the buffer of the failed call less its discard.
    fn drain_alert(&mut self, rest: &mut [u8], out: &mut Vec<u8>, error: &rustls::Error) -> bool {
        let before = out.len();
        // rustls queues the alert behind any handshake records the failed
        // message produced (a TLS 1.3 ServerHello before a missing ALPN
        // protocol is noticed): take them all. But an error of the record
        // layer leaves rustls's state as it was, and asking again would
        // read the offending record again and alert twice; it queued the
        // alert alone, so one call is enough.
        let record_layer = matches!(
            error,
            rustls::Error::InvalidMessage(_)
                | rustls::Error::PeerSentOversizedRecord
                | rustls::Error::DecryptError
                | rustls::Error::PeerMisbehaved(
                    rustls::PeerMisbehaved::IllegalMiddleboxChangeCipherSpec
                )
        );
        for _ in 0..16 {
            match self.conn.process(rest).state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode_into(out, |dst| data.encode(dst));
                }
                _ => break,
            }
            if record_layer {
                break;
            }
        }
        if out.len() > before {
            return true;
        }
        if C::SERVER && !self.sent_any && !matches!(error, rustls::Error::AlertReceived(_)) {
            // RFC 8446 §6.2: "Upon detection of an error, the detecting
            // party MUST send a fatal alert"; before our first record it is
            // a plaintext one: level fatal (2), then the description.
            out.extend_from_slice(&[21, 3, 3, 0, 2, 2, u8::from(alert_for(error))]);
            return true;
        }
        false
    }

    fn failed(&mut self, e: TlsError) -> TlsError {
        log::debug!("tls: {e}");
        self.phase = Phase::Failed;
        self.error = Some(Box::new(e.clone()));
        e
    }
}

/// The alert for an error rustls did not alert for itself.
fn alert_for(error: &rustls::Error) -> rustls::AlertDescription {
    use rustls::AlertDescription as A;
    match error {
        rustls::Error::InvalidMessage(_) => A::DecodeError,
        rustls::Error::PeerSentOversizedRecord => A::RecordOverflow,
        rustls::Error::PeerMisbehaved(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => A::UnexpectedMessage,
        rustls::Error::DecryptError => A::BadRecordMac,
        _ => A::InternalError,
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
