//! The gateway's one error type for client ops and API calls, and the one
//! place where each error gets its numeric code and HTTP status.
//!
//! | code | name | HTTP | when |
//! |---|---|---|---|
//! | 1 | `malformed` | 400 | the frame or body is not JSON |
//! | 2 | `unknown_op` | 400 | `op` is not one the gateway knows |
//! | 3 | `bad_request` | 400 | JSON of the wrong shape: a field missing or of the wrong type |
//! | 4 | `bad_channel` | 400 | the channel name is empty, too long, or has other characters |
//! | 5 | `too_many_channels` | 429 | the connection is at its channel limit, or subscribes faster than its channel rate |
//! | 6 | `already_subscribed` | 409 | subscribe to a channel already subscribed |
//! | 7 | `not_subscribed` | 404 | unsubscribe from a channel not subscribed |
//! | 8 | `permission_denied` | 403 | the connection may not do this on this channel |
//! | 9 | `too_big` | 413 | the message or body is over its limit |
//! | 10 | `unavailable` | 503 | the broker cannot serve the request now |
//! | 11 | `unauthorized` | 401 | missing or wrong credentials |
//! | 12 | `not_found` | 404 | no such API route |
//! | 13 | `outcome_unknown` | 504 | a publish was sent to the broker and not answered in time: it may have been made, and can no longer be |
//! | 14 | `backend_unavailable` | 502 | a backend hook (proxy) could not decide: down, slow, a bad answer; nothing was applied |
//! | 400..=1999 | the backend's | the code when 400..=599, else 400 | a backend hook refused the op with a code of its own (`docs/hooks.md`) |

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpError {
    Malformed(String),
    UnknownOp(String),
    BadRequest(String),
    BadChannel(&'static str),
    TooManyChannels(usize),
    /// Subscribing faster than this many channels per second.
    ChannelRate(u32),
    AlreadySubscribed,
    NotSubscribed,
    PermissionDenied,
    TooBig(usize),
    Unavailable(&'static str),
    Unauthorized,
    NotFound,
    /// The broker was asked and did not answer in time: the request may
    /// have taken effect; by the time this is answered it no longer can
    /// (see `broker::redis`).
    OutcomeUnknown(&'static str),
    /// A backend hook could not decide (down, timeout, 5xx, a bad or huge
    /// answer, overloaded): nothing was applied. Code 14.
    BackendUnavailable(String),
    /// A backend hook refused with a code of its own (400..=1999, checked
    /// when its answer was decoded), passed on to the client as is.
    Backend {
        code: u16,
        message: String,
        temporary: bool,
    },
}

impl OpError {
    /// The numeric code clients match on.
    pub fn code(&self) -> u16 {
        use OpError::*;
        match self {
            Malformed(_) => 1,
            UnknownOp(_) => 2,
            BadRequest(_) => 3,
            BadChannel(_) => 4,
            TooManyChannels(_) | ChannelRate(_) => 5,
            AlreadySubscribed => 6,
            NotSubscribed => 7,
            PermissionDenied => 8,
            TooBig(_) => 9,
            Unavailable(_) => 10,
            Unauthorized => 11,
            NotFound => 12,
            OutcomeUnknown(_) => 13,
            BackendUnavailable(_) => 14,
            Backend { code, .. } => *code,
        }
    }

    /// The HTTP status for a numeric code (for replies already encoded).
    pub fn http_status_of_code(code: u64) -> u16 {
        match code {
            5 => 429,
            6 => 409,
            7 | 12 => 404,
            8 => 403,
            9 => 413,
            10 => 503,
            11 => 401,
            13 => 504,
            14 => 502,
            // A backend's own code (400..=1999): itself when an HTTP status.
            c @ 400..=599 => c as u16,
            _ => 400,
        }
    }

    /// The HTTP status of the same error on the backend API.
    pub fn http_status(&self) -> u16 {
        use OpError::*;
        match self {
            Malformed(_) | UnknownOp(_) | BadRequest(_) | BadChannel(_) => 400,
            TooManyChannels(_) | ChannelRate(_) => 429,
            AlreadySubscribed => 409,
            NotSubscribed | NotFound => 404,
            PermissionDenied => 403,
            TooBig(_) => 413,
            Unavailable(_) => 503,
            Unauthorized => 401,
            OutcomeUnknown(_) => 504,
            BackendUnavailable(_) => 502,
            Backend { code, .. } => Self::http_status_of_code(*code as u64),
        }
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use OpError::*;
        match self {
            Malformed(e) => write!(f, "malformed JSON: {e}"),
            UnknownOp(op) => write!(f, "unknown op {op:?}"),
            BadRequest(e) => write!(f, "bad request: {e}"),
            BadChannel(e) => f.write_str(e),
            TooManyChannels(n) => write!(f, "at most {n} channels per connection"),
            ChannelRate(n) => write!(
                f,
                "subscribing faster than {n} channels per second: retry later"
            ),
            AlreadySubscribed => f.write_str("already subscribed"),
            NotSubscribed => f.write_str("not subscribed"),
            PermissionDenied => f.write_str("permission denied"),
            TooBig(n) => write!(f, "over the limit of {n} bytes"),
            Unavailable(why) => write!(f, "unavailable: {why}"),
            Unauthorized => f.write_str("unauthorized"),
            NotFound => f.write_str("not found"),
            OutcomeUnknown(why) => write!(f, "outcome unknown: {why}"),
            BackendUnavailable(why) => write!(f, "backend unavailable: {why}"),
            Backend { message, .. } => f.write_str(message),
        }
    }
}

impl std::error::Error for OpError {}

/// The error object of a reply: `{"code":…,"message":"…"}`.
/// A backend's refusal that it marked `temporary` (Centrifugo's flag: the
/// client may retry) carries `"temporary":true`; error 14 always does.
pub fn error_json(e: &OpError) -> serde_json::Value {
    let mut v = serde_json::json!({ "code": e.code(), "message": e.to_string() });
    if matches!(
        e,
        OpError::BackendUnavailable(_)
            | OpError::Backend {
                temporary: true,
                ..
            }
    ) {
        v["temporary"] = serde_json::Value::Bool(true);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_statuses_are_errors() {
        let all = [
            OpError::Malformed("x".into()),
            OpError::UnknownOp("x".into()),
            OpError::BadRequest("x".into()),
            OpError::BadChannel("x"),
            OpError::TooManyChannels(1),
            OpError::ChannelRate(1),
            OpError::AlreadySubscribed,
            OpError::NotSubscribed,
            OpError::PermissionDenied,
            OpError::TooBig(1),
            OpError::Unavailable("x"),
            OpError::Unauthorized,
            OpError::NotFound,
            OpError::OutcomeUnknown("x"),
            OpError::BackendUnavailable("x".into()),
        ];
        let mut codes: Vec<u16> = all.iter().map(OpError::code).collect();
        codes.dedup();
        assert_eq!(codes, (1..=14).collect::<Vec<_>>());
        assert!(all.iter().all(|e| (400..600).contains(&e.http_status())));
        for e in &all {
            assert_eq!(
                OpError::http_status_of_code(e.code() as u64),
                e.http_status(),
                "{e:?}"
            );
        }
    }
}
