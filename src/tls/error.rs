//! The one error type of TLS connections, and what each means on the wire.

use std::fmt;

use rustls::AlertDescription;

/// The answer to plaintext HTTP on the TLS port: like nginx, a 400 in
/// plaintext that says what went wrong, then the connection is closed.
/// (A TLS alert would be unreadable to the HTTP client that sent it.)
pub const PLAIN_HTTP_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\n\
Content-Length: 57\r\n\
Connection: close\r\n\
\r\n\
This port speaks TLS: use https:// or wss:// to reach it\n";

/// Why a TLS connection cannot go on. When it is returned, whatever the
/// peer must be told (a fatal alert, or [`PLAIN_HTTP_RESPONSE`]) has
/// already been appended to the caller's out queue: flush it, then close
/// the socket. Nothing more is read.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsError {
    /// The first bytes were a plaintext HTTP request (an `http://` URL
    /// sent to the TLS port): answered with [`PLAIN_HTTP_RESPONSE`].
    PlainHttp,
    /// The peer broke the protocol (a malformed or oversized record, a
    /// garbage or truncated ClientHello, a message out of order such as a
    /// renegotiation, a record that fails to decrypt, no common cipher or
    /// protocol): the fatal alert RFC 8446 §6 requires went out.
    Protocol {
        error: rustls::Error,
        /// Whether a fatal alert went into the out queue (rustls sends one
        /// for every error it detects; it is encrypted once the handshake
        /// keys are in use).
        alert_sent: bool,
    },
    /// The peer sent a fatal alert: nothing is sent back (RFC 8446 §6.2:
    /// the connection is closed at once).
    PeerAlert(AlertDescription),
    /// Data was given to encrypt before the handshake finished, or after
    /// our close_notify: the caller's bug, not the peer's.
    NotReady,
}

impl TlsError {
    /// A short name, for counters and log lines.
    pub fn reason(&self) -> &'static str {
        match self {
            TlsError::PlainHttp => "plaintext HTTP on the TLS port",
            TlsError::Protocol { .. } => "TLS protocol error",
            TlsError::PeerAlert(_) => "TLS alert from the peer",
            TlsError::NotReady => "TLS not ready for data",
        }
    }

    /// Map rustls's error to ours: the alert rustls sends for each error
    /// is its own mapping (`AlertDescription::from(PeerMisbehaved)` and
    /// friends); we only tell an alert received from one sent.
    pub(crate) fn from_rustls(error: rustls::Error, alert_sent: bool) -> Self {
        match error {
            rustls::Error::AlertReceived(desc) => TlsError::PeerAlert(desc),
            error => TlsError::Protocol { error, alert_sent },
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::PlainHttp => f.write_str("plaintext HTTP on the TLS port: answered 400"),
            TlsError::Protocol {
                error,
                alert_sent: true,
            } => write!(f, "TLS protocol error: {error} (fatal alert sent)"),
            TlsError::Protocol { error, .. } => write!(f, "TLS protocol error: {error}"),
            TlsError::PeerAlert(a) => write!(f, "the peer sent TLS alert {a:?}"),
            TlsError::NotReady => f.write_str("TLS connection not ready for application data"),
        }
    }
}

impl std::error::Error for TlsError {}
