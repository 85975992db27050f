//! The one error type of authentication, and the one place where each
//! failure is mapped to what the client is told: an HTTP status (with its
//! `WWW-Authenticate` header) before the upgrade, a close code on an open
//! connection, an error reply to a `refresh` op.
//!
//! | error | HTTP | close | op error |
//! |---|---|---|---|
//! | `Missing` (no token, `auth.required`) | 401 | 4500 | 11 `unauthorized` |
//! | `Malformed`, `BadSignature`, `WrongAlgorithm`, `MissingClaim`, `InvalidClaim`, `BadIssuer`, `BadAudience` | 401 | 4500 | 11 |
//! | `Expired` | 401 | **4501** | 11 |
//! | `NotYetValid` | 401 | 4500 | 11 |
//! | `UserMismatch` (a `refresh` token for another user) | 403 | 4500 | 11 |
//! | `NotConfigured` (a `refresh` op in open mode) | 400 | — | 3 `bad_request` |
//!
//! Close codes follow the gateway's rule (see `gateway::close_code`):
//! 4500-4999 mean "reconnecting will not work until something changes",
//! here: until the client has a new token.

use std::fmt;

use crate::base::OpError;

/// Close codes of authentication (RFC 6455 §7.4.2 leaves 4000-4999 to
/// applications; the gateway keeps 4500-4999 for "do not reconnect as is").
pub mod close_code {
    /// The token is missing or invalid (bad signature, wrong algorithm,
    /// wrong issuer or audience, not yet valid...). Reconnecting with the
    /// same token will fail again: get a new token first.
    pub const UNAUTHORIZED: u16 = 4500;
    /// The connection's token expired and no `refresh` op replaced it in
    /// time. Get a new token, then reconnect (and subscribe with `since` to
    /// recover what was missed).
    pub const TOKEN_EXPIRED: u16 = 4501;
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No token in the request, and `auth.required` is on.
    Missing,
    /// Not a JWT: not three base64url parts, or a part is not JSON.
    Malformed,
    /// The signature does not match the configured key.
    BadSignature,
    /// The header's `alg` is not the configured algorithm (this includes
    /// `none`, and an HMAC token presented to an RSA/EC key).
    WrongAlgorithm,
    /// `exp` (plus the leeway) is past.
    Expired,
    /// `nbf` (minus the leeway) is still ahead.
    NotYetValid,
    /// A required claim is absent (`exp`, `sub`; `iss`/`aud` when
    /// configured).
    MissingClaim(&'static str),
    /// A claim has the wrong type or an unacceptable value.
    InvalidClaim(&'static str),
    /// `iss` is not the configured issuer.
    BadIssuer,
    /// `aud` does not name the configured audience (or names one when none
    /// is configured: RFC 7519 §4.1.3).
    BadAudience,
    /// A `refresh` op carried a token for another user than the
    /// connection's.
    UserMismatch,
    /// Authentication is not configured (open mode): there is nothing to
    /// verify a token with.
    NotConfigured,
}

impl AuthError {
    /// The HTTP status of a refused request (WebSocket upgrade, SSE,
    /// long-poll) that carried this token.
    pub fn http_status(self) -> u16 {
        match self {
            AuthError::UserMismatch => 403,
            AuthError::NotConfigured => 400,
            _ => 401,
        }
    }

    /// The close code when an open connection ends for this reason.
    pub fn close_code(self) -> u16 {
        match self {
            AuthError::Expired => close_code::TOKEN_EXPIRED,
            _ => close_code::UNAUTHORIZED,
        }
    }

    /// The error of a reply to a `refresh` op that failed. The connection
    /// stays open (on its previous token) after such a reply.
    pub fn op_error(self) -> OpError {
        match self {
            AuthError::NotConfigured => OpError::BadRequest(self.reason().into()),
            _ => OpError::Unauthorized,
        }
    }

    /// A short reason: HTTP body, close reason (fits a 125-byte close
    /// frame), log line. Never contains the token.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "token required",
            AuthError::Malformed => "malformed token",
            AuthError::BadSignature => "invalid token signature",
            AuthError::WrongAlgorithm => "token algorithm not accepted",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid",
            AuthError::MissingClaim("exp") => "token has no exp claim",
            AuthError::MissingClaim("sub") => "token has no sub claim",
            AuthError::MissingClaim("iss") => "token has no iss claim",
            AuthError::MissingClaim("aud") => "token has no aud claim",
            AuthError::MissingClaim(_) => "token lacks a required claim",
            AuthError::InvalidClaim("exp") => "token exp claim is invalid",
            AuthError::InvalidClaim("nbf") => "token nbf claim is invalid",
            AuthError::InvalidClaim("sub") => "token sub claim is invalid",
            AuthError::InvalidClaim("subscribe") => "token subscribe claim is invalid",
            AuthError::InvalidClaim("publish") => "token publish claim is invalid",
            AuthError::InvalidClaim(_) => "token has an invalid claim",
            AuthError::BadIssuer => "token issuer not accepted",
            AuthError::BadAudience => "token audience not accepted",
            AuthError::UserMismatch => "token is for another user",
            AuthError::NotConfigured => "authentication is not configured",
        }
    }

    /// The value of the `WWW-Authenticate` header of a refusal (RFC 6750
    /// §3): no error code when no token was sent, `invalid_token` (with the
    /// reason) otherwise. Write it as `WWW-Authenticate: {value}\r\n`.
    pub fn www_authenticate(self) -> String {
        match self {
            AuthError::Missing | AuthError::NotConfigured => "Bearer realm=\"wsgate\"".into(),
            _ => format!(
                "Bearer realm=\"wsgate\", error=\"invalid_token\", error_description=\"{}\"",
                self.reason()
            ),
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for AuthError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_in_one_place() {
        use AuthError::*;
        let table: &[(AuthError, u16, u16, u16)] = &[
            (Missing, 401, 4500, 11),
            (Malformed, 401, 4500, 11),
            (BadSignature, 401, 4500, 11),
            (WrongAlgorithm, 401, 4500, 11),
            (Expired, 401, 4501, 11),
            (NotYetValid, 401, 4500, 11),
            (MissingClaim("exp"), 401, 4500, 11),
            (MissingClaim("sub"), 401, 4500, 11),
            (InvalidClaim("subscribe"), 401, 4500, 11),
            (BadIssuer, 401, 4500, 11),
            (BadAudience, 401, 4500, 11),
            (UserMismatch, 403, 4500, 11),
            (NotConfigured, 400, 4500, 3),
        ];
        for &(e, status, close, op) in table {
            assert_eq!(
                (e.http_status(), e.close_code(), e.op_error().code()),
                (status, close, op),
                "{e:?}"
            );
            assert!(
                e.reason().len() <= 123,
                "{e:?}: reason must fit a close frame"
            );
            assert!((4500..5000).contains(&e.close_code()));
        }
        assert_eq!(Missing.www_authenticate(), "Bearer realm=\"wsgate\"");
        assert_eq!(
            Expired.www_authenticate(),
            "Bearer realm=\"wsgate\", error=\"invalid_token\", \
             error_description=\"token expired\""
        );
        for e in [Malformed, UserMismatch, NotConfigured, MissingClaim("sub")] {
            let v = e.www_authenticate();
            assert!(
                v.starts_with("Bearer realm=") && !v.contains(['\r', '\n']),
                "{v}"
            );
        }
    }
}
