//! Resume tokens: where a fallback-transport client stands in every channel
//! of its stream, carried by the client so that no node has to remember it
//! (no sticky sessions).
//!
//! One format serves both transports: the `id:` of every SSE event (sent
//! back by the browser as `Last-Event-ID`, or as `?last_event_id=` on the
//! first request) and the long-poll `cursor`. It is base64url (no padding)
//! of a JSON array of `[channel, epoch, offset]` triples: opaque to clients,
//! easy to inspect when debugging (`base64 -d`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::pubsub::Position;

/// The positions of a stream's channels, in the order they were named.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResumeToken {
    pub positions: Vec<(String, Position)>,
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    TooLong,
    NotBase64,
    BadShape,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenError::TooLong => "resume token too long",
            TokenError::NotBase64 => "resume token is not base64url",
            TokenError::BadShape => "resume token is not a list of [channel, epoch, offset]",
        })
    }
}

/// The longest token accepted (it travels in a header and a query string).
pub const MAX_TOKEN: usize = 4096;

impl ResumeToken {
    pub fn get(&self, channel: &str) -> Option<&Position> {
        self.positions
            .iter()
            .find(|(c, _)| c == channel)
            .map(|(_, p)| p)
    }

    /// Record a position (replacing the channel's previous one).
    pub fn set(&mut self, channel: &str, pos: Position) {
        match self.positions.iter_mut().find(|(c, _)| c == channel) {
            Some((_, p)) => *p = pos,
            None => self.positions.push((channel.to_string(), pos)),
        }
    }

    /// Advance a channel's offset (a publication was sent).
    pub fn advance(&mut self, channel: &str, offset: u64) {
        if let Some((_, p)) = self.positions.iter_mut().find(|(c, _)| c == channel) {
            p.offset = p.offset.max(offset);
        }
    }

    pub fn encode(&self) -> String {
        let triples: Vec<(&str, &str, u64)> = self
            .positions
            .iter()
            .map(|(c, p)| (c.as_str(), p.epoch.as_str(), p.offset))
            .collect();
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&triples).expect("serializes"))
    }

    /// Decode a token; at most `max_channels` entries.
    pub fn decode(token: &str, max_channels: usize) -> Result<ResumeToken, TokenError> {
        let token = token.trim();
        if token.len() > MAX_TOKEN {
            return Err(TokenError::TooLong);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token.trim_end_matches('='))
            .map_err(|_| TokenError::NotBase64)?;
        let triples: Vec<(String, String, u64)> =
            serde_json::from_slice(&bytes).map_err(|_| TokenError::BadShape)?;
        if triples.len() > max_channels {
            return Err(TokenError::BadShape);
        }
        Ok(ResumeToken {
            positions: triples
                .into_iter()
                .map(|(c, epoch, offset)| (c, Position { epoch, offset }))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(e: &str, o: u64) -> Position {
        Position {
            epoch: e.into(),
            offset: o,
        }
    }

    #[test]
    fn round_trip_and_updates() {
        let mut t = ResumeToken::default();
        t.set("chat", pos("e1", 4));
        t.set("news:eu", pos("e2", 0));
        t.advance("chat", 7);
        t.advance("chat", 5); // never goes back
        t.set("news:eu", pos("e3", 1));
        let s = t.encode();
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let back = ResumeToken::decode(&s, 10).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.get("chat"), Some(&pos("e1", 7)));
        assert_eq!(back.get("news:eu"), Some(&pos("e3", 1)));
        assert_eq!(back.get("other"), None);
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(ResumeToken::decode("!!!", 10), Err(TokenError::NotBase64));
        let not_triples = URL_SAFE_NO_PAD.encode(br#"{"a":1}"#);
        assert_eq!(
            ResumeToken::decode(&not_triples, 10),
            Err(TokenError::BadShape)
        );
        let neg = URL_SAFE_NO_PAD.encode(br#"[["a","e",-1]]"#);
        assert_eq!(ResumeToken::decode(&neg, 10), Err(TokenError::BadShape));
        let many = URL_SAFE_NO_PAD.encode(br#"[["a","e",1],["b","e",1]]"#);
        assert_eq!(ResumeToken::decode(&many, 1), Err(TokenError::BadShape));
        assert_eq!(
            ResumeToken::decode(&"A".repeat(5000), 10),
            Err(TokenError::TooLong)
        );
        assert_eq!(ResumeToken::decode("", 10), Err(TokenError::BadShape));
    }
}
