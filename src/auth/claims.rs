//! What a verified token says: who the user is, until when, and which
//! channels it may subscribe and publish to.
//!
//! # Claims (the JSON payload of the token)
//!
//! ```json
//! {
//!   "sub": "alice",                      // user id (required)
//!   "exp": 1767225600,                   // expiry, Unix seconds (required)
//!   "nbf": 1767222000,                   // not before, Unix seconds (optional)
//!   "iss": "https://auth.example.com",   // checked when auth.issuer is set
//!   "aud": "wsgate",                     // checked when auth.audience is set
//!   "subscribe": ["chat:*", "news"],     // channel patterns to subscribe to (optional)
//!   "publish": ["chat:*"]                // channel patterns to publish to (optional)
//! }
//! ```
//!
//! Other claims (`iat`, `jti`, …) are ignored.
//!
//! - `sub`: a user id, as every path that names a user requires
//!   ([`crate::base::channel::valid_user`]), of at most [`MAX_SUB`] bytes:
//!   `A-Z a-z 0-9 _ - : . @ / =`, the characters of channel names, since it
//!   names the personal channel `$user:<sub>` (and Redis keys, log lines).
//!   A token with any other `sub` is refused (401, `invalid claim sub`):
//!   tokens are minted for wsgate by the application (they carry its
//!   channel patterns), which maps identifiers such as `auth0|5f3a` to a
//!   valid id (`auth0:5f3a`), injectively, itself.
//! - `exp`, `nbf`: NumericDate (RFC 7519 §2): a non-negative number of
//!   seconds; a fraction is allowed.
//! - `subscribe`, `publish`: arrays of patterns, at most [`MAX_PATTERNS`]
//!   each, each 1 to [`MAX_PATTERN`] bytes with no control characters.
//!
//! # Patterns
//!
//! - `news` grants exactly the channel `news`.
//! - A trailing `*` grants every channel that starts with what comes before
//!   it: `chat:*` grants `chat:lobby` and `chat:a:b`; `*` alone grants every
//!   channel. A `*` anywhere else is an ordinary character (and, as channel
//!   names cannot hold one, matches nothing).
//! - Wildcards never reach the server's own channels (names that start
//!   with `$`) unless the pattern itself starts with `$`: `*` does not grant
//!   `$user:bob`, `$user:*` does (a token for a trusted backend process).
//! - Implicitly, a user may always subscribe to its own personal channel
//!   `$user:<sub>`. Publishing to it needs an explicit grant.

use super::error::AuthError;

/// Longest accepted `sub`, in bytes (so that `$user:<sub>` stays within the
/// default channel length limit of 255).
pub const MAX_SUB: usize = 200;
/// Longest accepted pattern, in bytes.
pub const MAX_PATTERN: usize = 256;
/// Most patterns accepted in each of `subscribe` and `publish`.
pub const MAX_PATTERNS: usize = 256;

/// The prefix of a user's personal channel (as `pubsub::user_channel`).
const USER_PREFIX: &str = "$user:";

/// The claims of a verified token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    /// The user id (JSON `sub`).
    pub sub: String,
    /// Expiry, Unix seconds (JSON `exp`).
    pub exp: u64,
    /// Channel patterns the user may subscribe to (JSON `subscribe`).
    pub subs: Vec<String>,
    /// Channel patterns the user may publish to (JSON `publish`).
    pub pubs: Vec<String>,
}

impl Claims {
    /// May this user subscribe to `channel`? (Its own `$user:<sub>`
    /// always.)
    pub fn may_subscribe(&self, channel: &str) -> bool {
        is_own_channel(&self.sub, channel) || self.subs.iter().any(|p| matches(p, channel))
    }

    /// May this user publish to `channel`?
    pub fn may_publish(&self, channel: &str) -> bool {
        self.pubs.iter().any(|p| matches(p, channel))
    }

    /// The same rights in the compact form a connection keeps.
    pub fn grants(&self) -> Grants {
        Grants::new(&self.sub, self.exp, &self.subs, &self.pubs)
    }
}

/// Does `pattern` grant `channel`? (See the module doc for the rules.)
pub fn matches(pattern: &str, channel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => {
            channel.starts_with(prefix) && (prefix.starts_with('$') || !channel.starts_with('$'))
        }
        None => pattern == channel,
    }
}

fn is_own_channel(user: &str, channel: &str) -> bool {
    !user.is_empty() && channel.strip_prefix(USER_PREFIX) == Some(user)
}

/// Check the claims that are wsgate's own (after the signature and the
/// registered claims were checked).
pub(crate) fn check_sub(sub: &str) -> Result<(), AuthError> {
    let max_channel = MAX_SUB + crate::base::channel::USER_PREFIX.len();
    crate::base::channel::valid_user(sub, max_channel).map_err(|_| AuthError::InvalidClaim("sub"))
}

pub(crate) fn check_patterns(list: &[String], claim: &'static str) -> Result<(), AuthError> {
    let bad = |p: &String| p.is_empty() || p.len() > MAX_PATTERN || p.chars().any(char::is_control);
    if list.len() > MAX_PATTERNS || list.iter().any(bad) {
        return Err(AuthError::InvalidClaim(claim));
    }
    Ok(())
}

/// A connection's rights, in one allocation: the user id, the expiry and
/// both pattern lists. 32 bytes inline, for the per-connection session.
///
/// The text is `sub`, then each subscribe pattern, then each publish
/// pattern, every one followed by `\n` (which none may contain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grants {
    text: Box<str>,
    exp: u64,
    /// End of the user id's line.
    user_end: u32,
    /// End of the last subscribe pattern's line.
    subs_end: u32,
}

impl Grants {
    /// Build from the parts. Patterns must hold no `\n` (verified claims
    /// never do; any that does is dropped here).
    pub fn new(user: &str, exp: u64, subs: &[String], pubs: &[String]) -> Grants {
        let ok = |p: &&String| !p.contains('\n') && !p.is_empty();
        let mut text = String::with_capacity(
            user.len() + 1 + subs.iter().chain(pubs).map(|p| p.len() + 1).sum::<usize>(),
        );
        text.push_str(&user.replace('\n', ""));
        text.push('\n');
        let user_end = text.len() as u32;
        for p in subs.iter().filter(ok) {
            text.push_str(p);
            text.push('\n');
        }
        let subs_end = text.len() as u32;
        for p in pubs.iter().filter(ok) {
            text.push_str(p);
            text.push('\n');
        }
        Grants {
            text: text.into_boxed_str(),
            exp,
            user_end,
            subs_end,
        }
    }

    /// Rights with no user and no expiry (anonymous connections): only the
    /// given subscribe patterns, no publishing.
    pub fn anonymous(subs: &[String]) -> Grants {
        Grants::new("", u64::MAX, subs, &[])
    }

    /// The user id; empty for anonymous rights.
    pub fn user(&self) -> &str {
        &self.text[..self.user_end as usize - 1]
    }

    /// Expiry, Unix seconds (`u64::MAX`: never).
    pub fn exp(&self) -> u64 {
        self.exp
    }

    /// The subscribe patterns.
    pub fn subs(&self) -> impl Iterator<Item = &str> {
        self.text[self.user_end as usize..self.subs_end as usize].split_terminator('\n')
    }

    /// The publish patterns.
    pub fn pubs(&self) -> impl Iterator<Item = &str> {
        self.text[self.subs_end as usize..].split_terminator('\n')
    }

    /// May this connection subscribe to `channel`?
    pub fn may_subscribe(&self, channel: &str) -> bool {
        is_own_channel(self.user(), channel) || self.subs().any(|p| matches(p, channel))
    }

    /// May this connection publish to `channel`?
    pub fn may_publish(&self, channel: &str) -> bool {
        self.pubs().any(|p| matches(p, channel))
    }
}

impl From<&Claims> for Grants {
    fn from(c: &Claims) -> Grants {
        c.grants()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("news", "news", true),
            ("news", "news2", false),
            ("news", "new", false),
            ("news", "NEWS", false),
            ("chat:*", "chat:lobby", true),
            ("chat:*", "chat:a:b", true),
            ("chat:*", "chat:", true),
            ("chat:*", "chat", false),
            ("chat:*", "chatter", false),
            ("chat*", "chatter", true),
            ("*", "anything", true),
            ("*", "a", true),
            // Wildcards do not reach the server's own channels...
            ("*", "$user:bob", false),
            ("$user", "$user:bob", false),
            // ...unless the pattern names them.
            ("$user:*", "$user:bob", true),
            ("$*", "$user:bob", true),
            ("$user:bob", "$user:bob", true),
            // A `*` elsewhere is literal.
            ("a*b", "axb", false),
            ("a*b", "a*b", true),
            ("*:x", "a:x", false),
            ("chat:**", "chat:*x", true),
            ("chat:**", "chat:x", false),
        ];
        for &(p, ch, want) in cases {
            assert_eq!(matches(p, ch), want, "{p:?} vs {ch:?}");
        }
    }

    fn claims() -> Claims {
        Claims {
            sub: "alice".into(),
            exp: 100,
            subs: vec!["chat:*".into(), "news".into()],
            pubs: vec!["chat:lobby".into()],
        }
    }

    #[test]
    fn claims_and_grants_agree() {
        let c = claims();
        let g = c.grants();
        assert_eq!(g.user(), "alice");
        assert_eq!(g.exp(), 100);
        assert_eq!(g.subs().collect::<Vec<_>>(), ["chat:*", "news"]);
        assert_eq!(g.pubs().collect::<Vec<_>>(), ["chat:lobby"]);
        let table: &[(&str, bool, bool)] = &[
            ("chat:lobby", true, true),
            ("chat:other", true, false),
            ("news", true, false),
            ("weather", false, false),
            ("$user:alice", true, false),
            ("$user:alic", false, false),
            ("$user:alicex", false, false),
            ("$user:bob", false, false),
        ];
        for &(ch, sub, publ) in table {
            assert_eq!(
                (c.may_subscribe(ch), c.may_publish(ch)),
                (sub, publ),
                "{ch}"
            );
            assert_eq!(
                (g.may_subscribe(ch), g.may_publish(ch)),
                (sub, publ),
                "{ch}"
            );
        }
        assert_eq!(std::mem::size_of::<Grants>(), 32);
    }

    #[test]
    fn empty_and_anonymous_grants() {
        let g = Grants::new("bob", 5, &[], &[]);
        assert_eq!(
            (g.user(), g.subs().count(), g.pubs().count()),
            ("bob", 0, 0)
        );
        assert!(g.may_subscribe("$user:bob"));
        assert!(!g.may_subscribe("chat"));
        assert!(!g.may_publish("$user:bob"));
        let a = Grants::anonymous(&["public:*".into()]);
        assert_eq!((a.user(), a.exp()), ("", u64::MAX));
        assert!(a.may_subscribe("public:x"));
        assert!(
            !a.may_subscribe("$user:"),
            "no personal channel without a user"
        );
        assert!(!a.may_publish("public:x"));
    }

    #[test]
    fn claim_checks() {
        assert!(check_sub("alice").is_ok());
        assert!(check_sub("auth0:5f3a").is_ok());
        assert!(check_sub(&"x".repeat(MAX_SUB)).is_ok());
        // Only the characters of channel names: `sub` names `$user:<sub>`.
        for bad in [
            "",
            "a\nb",
            "a\r\nb",
            "a\0b",
            "a\"b",
            "a b",
            "auth0|5f3a",
            "{x}",
            "ü",
        ] {
            assert!(check_sub(bad).is_err(), "{bad:?}");
        }
        assert!(check_sub(&"x".repeat(MAX_SUB + 1)).is_err());
        assert!(check_patterns(&["chat:*".into()], "subscribe").is_ok());
        assert!(check_patterns(&["".into()], "subscribe").is_err());
        assert!(check_patterns(&["a\nb".into()], "publish").is_err());
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| i.to_string()).collect();
        assert_eq!(
            check_patterns(&many, "publish"),
            Err(AuthError::InvalidClaim("publish"))
        );
    }
}
