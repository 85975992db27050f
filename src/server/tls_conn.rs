//! A connection's TLS as the shell hosts it (docs/tls.md, "What part 2
//! does in the shell"): the sans-IO [`Session`], the bytes of an
//! incomplete record (a pooled buffer, empty while idle), and whether our
//! side is done. The shell reads into its per-worker buffer behind
//! `pending`, feeds the whole to the session, hands the plaintext to the
//! endpoint as it hands plain bytes, and encrypts the out queue's
//! plaintext at flush time ([`TlsConn::seal`]).

use rustls::server::UnbufferedServerConnection;

use crate::base::counters::Counters;
use crate::endpoint::OutQueue;
use crate::tls::{Session, TlsError};

/// The most bytes of records kept between reads: an incomplete record
/// (at most `MAX_RECORD`), or, during the handshake, the records of one
/// handshake message rustls keeps its place in (at most 64 KiB of
/// message). More than this (a ClientHello cut into thousands of tiny
/// records) fails the connection: the buffer stays bounded.
pub(crate) const MAX_PENDING: usize = (64 << 10) + crate::tls::session::MAX_RECORD;

/// What the shell reads before the ClientHello (docs/tls.md, "PROXY
/// protocol before TLS").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Preface {
    /// A trusted proxy on a port with `admission.proxy_protocol`: a PROXY
    /// header (v2 or v1) must come first; it names the client.
    ProxyHeader,
    /// Any other peer: a PROXY header from it is refused, not handed to
    /// rustls as a malformed record.
    RefuseProxyHeader,
    /// Read: TLS records from here on.
    Done,
}

/// One connection's TLS. Boxed once per TLS connection; the shell's
/// connection entry pays 8 bytes for it (through `Held`).
pub(crate) struct TlsConn {
    pub(crate) session: Session<UnbufferedServerConnection>,
    /// What the last feed left: an incomplete record, kept as it is and
    /// fed again in front of the next bytes. Pooled; no heap when empty.
    pub(crate) pending: Vec<u8>,
    /// Our close_notify is queued: nothing more is encrypted.
    pub(crate) notified: bool,
    /// The session failed (an error was returned): what the peer must be
    /// told is queued; nothing more is read or encrypted.
    pub(crate) failed: bool,
    /// Counted in the worker's open TLS connections (its handshake
    /// finished).
    pub(crate) open_counted: bool,
    /// What comes before the first record.
    pub(crate) preface: Preface,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("handshaking", &self.session.is_handshaking())
            .field("pending", &self.pending.len())
            .field("notified", &self.notified)
            .field("failed", &self.failed)
            .finish()
    }
}

impl TlsConn {
    pub(crate) fn new(session: Session<UnbufferedServerConnection>, preface: Preface) -> TlsConn {
        TlsConn {
            session,
            pending: Vec::new(),
            notified: false,
            failed: false,
            open_counted: false,
            preface,
        }
    }

    /// Encrypt the out queue's plaintext into records that replace it;
    /// with `closing` (the WebSocket close is queued, or the peer's
    /// close_notify or FIN came and nothing more is owed), then our
    /// close_notify, once (RFC 8446 §6.1: "Each party MUST send a
    /// "close_notify" alert before closing its write side of the
    /// connection").
    ///
    /// Plaintext that cannot be encrypted (the session failed, or the
    /// handshake is not over: the endpoint never writes before it sees a
    /// request, so only a bug would) is dropped rather than written in
    /// the clear. An error is returned once, when the session fails here.
    pub(crate) fn seal(&mut self, out: &mut OutQueue, closing: bool) -> Result<(), TlsError> {
        if self.failed || self.notified || !self.session.is_open() {
            if out.has_plaintext() {
                log::debug!("tls: plaintext dropped: the session cannot encrypt it");
                out.discard_plaintext();
            }
            return Ok(());
        }
        let TlsConn {
            session, pending, ..
        } = self;
        if let Err(e) = out.seal(|chunks, records| session.encrypt(pending, chunks, records)) {
            self.failed = true;
            out.discard_plaintext();
            return Err(e);
        }
        if closing {
            let mut notify = Vec::new();
            self.session.close_notify(&mut self.pending, &mut notify);
            out.push_records(&notify);
            self.notified = true;
        }
        Ok(())
    }
}

/// Count a failed TLS connection by its reason.
pub(crate) fn count_failure(counts: &mut Counters, e: &TlsError) {
    match e {
        TlsError::PlainHttp => counts.tls_failed_plain_http += 1,
        TlsError::PeerAlert(_) => counts.tls_failed_peer_alert += 1,
        TlsError::Protocol { .. } | TlsError::NotReady => counts.tls_failed_protocol += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-connection TLS state's inline size (docs/tls.md, "Where
    /// every byte goes"): rustls's connection and ours around it. A
    /// rustls upgrade that grows it shows here.
    #[test]
    fn tls_state_size() {
        let session = std::mem::size_of::<Session<UnbufferedServerConnection>>();
        let conn = std::mem::size_of::<TlsConn>();
        println!("Session {session} B, TlsConn {conn} B");
        assert!(
            conn <= session + 40,
            "TlsConn {conn} B around a {session} B session"
        );
        assert!(session <= 1_200, "Session {session} B");
    }
}
