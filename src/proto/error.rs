//! The one error type of the protocol core, and the one place where each
//! violation is mapped to what goes on the wire.
//!
//! Handshake errors become an HTTP status (the connection is then closed);
//! frame errors become a close code (RFC 6455 §7.4.1). Nothing else in the
//! crate decides a status or a code for a protocol violation.

use std::fmt;

/// Close codes used by the server (RFC 6455 §7.4.1).
pub mod code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away (server shutdown, idle timeout).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A data type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Reserved: "no status code was actually present". Never on the wire.
    pub const NO_STATUS: u16 = 1005;
    /// Reserved: abnormal closure. Never on the wire.
    pub const ABNORMAL: u16 = 1006;
    /// Data inconsistent with the message type (invalid UTF-8 in text).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation.
    pub const POLICY: u16 = 1008;
    /// Message too big to process.
    pub const TOO_BIG: u16 = 1009;
    /// Unexpected condition in the server.
    pub const INTERNAL: u16 = 1011;
}

/// Every way a peer can break the protocol, in the handshake or in frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    // --- opening handshake (RFC 6455 §4.2.1) ---
    /// The request head is not valid HTTP/1.x.
    MalformedRequest,
    /// The request head exceeds the configured limit.
    HeadTooLarge,
    /// A line of the head ends in LF without CR (RFC 9112 §2.2).
    BareLf,
    /// `Host` repeated, or not a valid authority (RFC 9112 §3.2).
    BadHost,
    /// `Content-Length` repeated or not digits only (RFC 9112 §6.3).
    BadContentLength,
    /// Both `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.1).
    LengthAndEncoding,
    /// An upgrade request with a body.
    UpgradeWithBody,
    /// Method other than GET.
    MethodNotGet,
    /// HTTP version below 1.1.
    HttpVersion,
    /// No `Host` header.
    MissingHost,
    /// No `Upgrade: websocket` token.
    MissingUpgrade,
    /// No `Upgrade` token in `Connection`.
    MissingConnectionUpgrade,
    /// `Sec-WebSocket-Version` missing or not 13.
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` missing, repeated, or not 16 bytes of base64.
    BadKey,
    /// The Origin hook refused the request.
    OriginRejected,
    /// No route for the request path.
    NotFound,
    /// The server is at its connection limit.
    Unavailable,
    // --- client role: the server's handshake response ---
    /// The server's response is not a valid 101 upgrade for our key.
    BadResponse,

    // --- framing (RFC 6455 §5) ---
    /// RSV1-3 set without a negotiated extension that defines them.
    ReservedBits,
    /// Opcode 0x3-0x7 or 0xB-0xF.
    ReservedOpcode,
    /// A client frame without a mask (server role).
    UnmaskedFrame,
    /// A server frame with a mask (client role).
    MaskedFrame,
    /// A 64-bit payload length with its most significant bit set.
    LengthMsb,
    /// A control frame whose payload exceeds 125 bytes.
    ControlTooLong,
    /// A control frame with FIN clear.
    FragmentedControl,
    /// A continuation frame with no message in progress.
    UnexpectedContinuation,
    /// A new text/binary frame while a fragmented message is in progress.
    ExpectedContinuation,
    /// A message (declared or accumulated) above the configured limit.
    MessageTooBig,
    /// A text message or close reason that is not valid UTF-8.
    InvalidUtf8,
    /// A close frame whose payload is one byte long.
    CloseOneByte,
    /// A close frame carrying a reserved or out-of-range code.
    InvalidCloseCode,
    /// A frame received after the close handshake completed.
    FrameAfterClose,

    // --- permessage-deflate (RFC 7692) ---
    /// RSV1 (compressed) on a control frame or a continuation frame.
    MisplacedRsv1,
    /// A compressed message that does not inflate.
    BadDeflate,
}

/// What the peer is told about an [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP error response with this status, then the TCP connection closes.
    Http(u16),
    /// A close frame with this code, then the close handshake.
    Close(u16),
}

impl Error {
    /// The single mapping from violation to wire outcome.
    pub fn outcome(self) -> Outcome {
        use Error::*;
        match self {
            MalformedRequest
            | BareLf
            | BadHost
            | BadContentLength
            | LengthAndEncoding
            | UpgradeWithBody
            | MethodNotGet
            | HttpVersion
            | MissingHost
            | MissingUpgrade
            | MissingConnectionUpgrade
            | BadKey
            | BadResponse => Outcome::Http(400),
            UnsupportedVersion => Outcome::Http(426),
            HeadTooLarge => Outcome::Http(431),
            OriginRejected => Outcome::Http(403),
            NotFound => Outcome::Http(404),
            Unavailable => Outcome::Http(503),
            ReservedBits
            | ReservedOpcode
            | UnmaskedFrame
            | MaskedFrame
            | LengthMsb
            | ControlTooLong
            | FragmentedControl
            | UnexpectedContinuation
            | ExpectedContinuation
            | CloseOneByte
            | InvalidCloseCode
            | FrameAfterClose
            | MisplacedRsv1 => Outcome::Close(code::PROTOCOL_ERROR),
            InvalidUtf8 | BadDeflate => Outcome::Close(code::INVALID_PAYLOAD),
            MessageTooBig => Outcome::Close(code::TOO_BIG),
        }
    }

    /// A short reason, used as the HTTP body, the close reason and in logs.
    /// Close reasons must fit a 125-byte control frame: these all do.
    pub fn reason(self) -> &'static str {
        use Error::*;
        match self {
            MalformedRequest => "malformed request",
            HeadTooLarge => "request head too large",
            BareLf => "line ends must be CRLF",
            BadHost => "repeated or invalid Host header",
            BadContentLength => "invalid Content-Length",
            LengthAndEncoding => "both Content-Length and Transfer-Encoding",
            UpgradeWithBody => "an upgrade request has no body",
            MethodNotGet => "method must be GET",
            HttpVersion => "HTTP/1.1 or later required",
            MissingHost => "missing Host header",
            MissingUpgrade => "missing Upgrade: websocket",
            MissingConnectionUpgrade => "missing Connection: Upgrade",
            UnsupportedVersion => "unsupported Sec-WebSocket-Version",
            BadKey => "invalid Sec-WebSocket-Key",
            OriginRejected => "origin not allowed",
            NotFound => "not found",
            Unavailable => "server at capacity",
            BadResponse => "invalid handshake response",
            ReservedBits => "reserved bits set",
            ReservedOpcode => "reserved opcode",
            UnmaskedFrame => "client frame not masked",
            MaskedFrame => "server frame masked",
            LengthMsb => "payload length MSB set",
            ControlTooLong => "control frame too long",
            FragmentedControl => "fragmented control frame",
            UnexpectedContinuation => "continuation without a message",
            ExpectedContinuation => "expected continuation frame",
            MessageTooBig => "message too big",
            InvalidUtf8 => "invalid UTF-8",
            CloseOneByte => "close payload of one byte",
            InvalidCloseCode => "invalid close code",
            FrameAfterClose => "frame after close",
            MisplacedRsv1 => "RSV1 on a control or continuation frame",
            BadDeflate => "invalid compressed data",
        }
    }

    /// The HTTP status, when this is a handshake error.
    pub fn http_status(self) -> Option<u16> {
        match self.outcome() {
            Outcome::Http(s) => Some(s),
            Outcome::Close(_) => None,
        }
    }

    /// The close code, when this is a framing error.
    pub fn close_code(self) -> Option<u16> {
        match self.outcome() {
            Outcome::Close(c) => Some(c),
            Outcome::Http(_) => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.outcome() {
            Outcome::Http(s) => write!(f, "{} (HTTP {s})", self.reason()),
            Outcome::Close(c) => write!(f, "{} (close {c})", self.reason()),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_one_outcome() {
        use Error::*;
        let table: &[(Error, Outcome)] = &[
            (MalformedRequest, Outcome::Http(400)),
            (HeadTooLarge, Outcome::Http(431)),
            (BareLf, Outcome::Http(400)),
            (BadHost, Outcome::Http(400)),
            (BadContentLength, Outcome::Http(400)),
            (LengthAndEncoding, Outcome::Http(400)),
            (UpgradeWithBody, Outcome::Http(400)),
            (MethodNotGet, Outcome::Http(400)),
            (HttpVersion, Outcome::Http(400)),
            (MissingHost, Outcome::Http(400)),
            (MissingUpgrade, Outcome::Http(400)),
            (MissingConnectionUpgrade, Outcome::Http(400)),
            (UnsupportedVersion, Outcome::Http(426)),
            (BadKey, Outcome::Http(400)),
            (OriginRejected, Outcome::Http(403)),
            (NotFound, Outcome::Http(404)),
            (Unavailable, Outcome::Http(503)),
            (ReservedBits, Outcome::Close(1002)),
            (ReservedOpcode, Outcome::Close(1002)),
            (UnmaskedFrame, Outcome::Close(1002)),
            (MaskedFrame, Outcome::Close(1002)),
            (LengthMsb, Outcome::Close(1002)),
            (ControlTooLong, Outcome::Close(1002)),
            (FragmentedControl, Outcome::Close(1002)),
            (UnexpectedContinuation, Outcome::Close(1002)),
            (ExpectedContinuation, Outcome::Close(1002)),
            (MessageTooBig, Outcome::Close(1009)),
            (InvalidUtf8, Outcome::Close(1007)),
            (CloseOneByte, Outcome::Close(1002)),
            (InvalidCloseCode, Outcome::Close(1002)),
            (MisplacedRsv1, Outcome::Close(1002)),
            (BadDeflate, Outcome::Close(1007)),
        ];
        for (e, want) in table {
            assert_eq!(e.outcome(), *want, "{e:?}");
            assert!(
                e.reason().len() <= 123,
                "{e:?} reason must fit a close frame"
            );
        }
    }
}
