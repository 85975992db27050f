//! Authentication: JWT connection tokens that say who the user is, until
//! when, and which channels it may subscribe and publish to.
//!
//! Sans-IO like [`crate::proto`]: the key is read once at start
//! ([`Authenticator::new`]); after that, every check takes the request's
//! parts and `now` (Unix seconds) and reads no clock and no file.
//!
//! Reading order: [`error`] (every refusal and what the client is told:
//! HTTP status, close code, op error), [`claims`] (the token's payload and
//! the channel patterns), [`jwt`] (signature and time checks), [`source`]
//! (where a request carries its token), then [`Authenticator`] here.
//!
//! # Modes
//!
//! | configured | a request without a token | with a token |
//! |---|---|---|
//! | no key | [`Access::Open`]: anything goes (the gateway warns at start) | ignored: [`Access::Open`] |
//! | a key, `required` (the default with a key) | refused: 401 / close 4500 | verified: [`Access::User`] or refused |
//! | a key, `required = false` | [`Access::Anonymous`]: may subscribe to `anonymous_subscribe`, publish nowhere | verified: [`Access::User`] or refused |
//!
//! A token that is present but invalid is always refused, never downgraded
//! to anonymous.

pub mod claims;
pub mod error;
pub mod jwt;
pub mod source;

pub use crate::config::AuthConfig;
pub use claims::{Claims, Grants};
pub use error::{close_code, AuthError};
pub use jwt::{Checks, JwtVerifier};
pub use source::{
    select_protocol, token_from_head, token_from_request, TokenSource, Via, PROTOCOL,
};

/// Who a connection is and what it may do: decided once per request (at
/// the upgrade, or per SSE / long-poll request), replaced by a `refresh`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// No auth configured: everything is allowed (open mode).
    Open,
    /// Auth configured, optional, and no token given.
    Anonymous,
    /// A verified token.
    User(Grants),
}

impl Access {
    /// The verified user id, if any.
    pub fn user(&self) -> Option<&str> {
        match self {
            Access::User(g) => Some(g.user()),
            _ => None,
        }
    }

    /// The token's expiry (Unix seconds), if this access has one.
    pub fn exp(&self) -> Option<u64> {
        match self {
            Access::User(g) => Some(g.exp()),
            _ => None,
        }
    }
}

/// Verifies tokens and answers permission questions. Built once at start;
/// `Send + Sync`: share it between workers behind an `Arc`.
#[derive(Debug)]
pub struct Authenticator {
    verifier: Option<JwtVerifier>,
    required: bool,
    anonymous: Vec<String>,
    /// Seconds.
    leeway: u64,
}

impl Authenticator {
    /// Read the key (the only file access) and check the settings.
    pub fn new(cfg: &AuthConfig) -> Result<Authenticator, String> {
        let checks = Checks {
            issuer: (!cfg.issuer.is_empty()).then(|| cfg.issuer.clone()),
            audience: (!cfg.audience.is_empty()).then(|| cfg.audience.clone()),
            leeway: cfg.leeway.0.div_ceil(1000),
        };
        let keys = [
            &cfg.jwt_hs256_secret,
            &cfg.jwt_hs256_secret_file,
            &cfg.jwt_rs256_public_key_file,
            &cfg.jwt_es256_public_key_file,
        ];
        if keys.iter().filter(|k| !k.is_empty()).count() > 1 {
            return Err(
                "auth: configure only one of jwt_hs256_secret, jwt_hs256_secret_file, \
                        jwt_rs256_public_key_file, jwt_es256_public_key_file"
                    .into(),
            );
        }
        let read =
            |path: &str| std::fs::read(path).map_err(|e| format!("auth: cannot read {path}: {e}"));
        fn with_path(path: &str) -> impl Fn(String) -> String + '_ {
            move |e| format!("auth: {path}: {e}")
        }
        let verifier = if !cfg.jwt_hs256_secret.is_empty() {
            Some(
                JwtVerifier::hs256(cfg.jwt_hs256_secret.as_bytes(), &checks)
                    .map_err(|e| format!("auth: jwt_hs256_secret: {e}"))?,
            )
        } else if !cfg.jwt_hs256_secret_file.is_empty() {
            let path = &cfg.jwt_hs256_secret_file;
            let mut secret = read(path)?;
            while secret.last().is_some_and(|&c| c == b'\n' || c == b'\r') {
                secret.pop();
            }
            Some(JwtVerifier::hs256(&secret, &checks).map_err(with_path(path))?)
        } else if !cfg.jwt_rs256_public_key_file.is_empty() {
            let path = &cfg.jwt_rs256_public_key_file;
            Some(JwtVerifier::rs256_pem(&read(path)?, &checks).map_err(with_path(path))?)
        } else if !cfg.jwt_es256_public_key_file.is_empty() {
            let path = &cfg.jwt_es256_public_key_file;
            Some(JwtVerifier::es256_pem(&read(path)?, &checks).map_err(with_path(path))?)
        } else {
            None
        };
        let required = match (cfg.required, &verifier) {
            (Some(true), None) => {
                return Err("auth.required = true, but no key is configured \
                            (jwt_hs256_secret_file, jwt_rs256_public_key_file or \
                            jwt_es256_public_key_file)"
                    .into())
            }
            (r, v) => v.is_some() && r.unwrap_or(true),
        };
        if verifier.is_none() && (checks.issuer.is_some() || checks.audience.is_some()) {
            return Err("auth: issuer/audience are set, but no key is configured".into());
        }
        if verifier.is_none() && !cfg.anonymous_subscribe.is_empty() {
            return Err("auth: anonymous_subscribe is set, but no key is configured".into());
        }
        if required && !cfg.anonymous_subscribe.is_empty() {
            return Err("auth: anonymous_subscribe needs required = false".into());
        }
        claims::check_patterns(&cfg.anonymous_subscribe, "anonymous_subscribe")
            .map_err(|_| "auth: anonymous_subscribe has an empty or invalid pattern".to_string())?;
        Ok(Authenticator {
            verifier,
            required,
            anonymous: cfg.anonymous_subscribe.clone(),
            leeway: checks.leeway,
        })
    }

    /// An authenticator for open mode (no auth), as with an empty config.
    pub fn open() -> Authenticator {
        Authenticator {
            verifier: None,
            required: false,
            anonymous: Vec::new(),
            leeway: 0,
        }
    }

    /// No key configured: every request gets [`Access::Open`].
    pub fn is_open(&self) -> bool {
        self.verifier.is_none()
    }

    /// Are requests without a token refused?
    pub fn is_required(&self) -> bool {
        self.required
    }

    /// The leeway on `exp` and `nbf`, seconds.
    pub fn leeway(&self) -> u64 {
        self.leeway
    }

    /// What to log at start: a loud warning in open mode, else one line
    /// that says how tokens are checked.
    pub fn startup_notice(&self) -> (log::Level, String) {
        match &self.verifier {
            None => (
                log::Level::Warn,
                "AUTH IS OFF: the gateway is OPEN. Any client may connect, name any user \
                 (?user=), and subscribe and publish to any channel. Configure [auth] \
                 (jwt_hs256_secret_file, jwt_rs256_public_key_file or \
                 jwt_es256_public_key_file) to require tokens."
                    .into(),
            ),
            Some(v) => (
                log::Level::Info,
                format!(
                    "auth: {} tokens {}, leeway {}s",
                    v.algorithm(),
                    if self.required {
                        "required".to_string()
                    } else {
                        format!(
                            "optional (anonymous connections may subscribe to {:?})",
                            self.anonymous
                        )
                    },
                    self.leeway
                ),
            ),
        }
    }

    /// Verify a token at `now_unix` (seconds).
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Claims, AuthError> {
        self.verifier
            .as_ref()
            .ok_or(AuthError::NotConfigured)?
            .verify(token, now_unix)
    }

    /// Decide a request's access from the token it carried, if any (see
    /// [`token_from_head`]).
    pub fn authenticate(
        &self,
        token: Option<&TokenSource<'_>>,
        now_unix: u64,
    ) -> Result<Access, AuthError> {
        if self.is_open() {
            return Ok(Access::Open);
        }
        match token {
            Some(t) => Ok(Access::User(self.verify(&t.token, now_unix)?.grants())),
            None if self.required => Err(AuthError::Missing),
            None => Ok(Access::Anonymous),
        }
    }

    /// A `refresh` op: a new token for the same user (or a first one for an
    /// anonymous connection) replaces the connection's access. On error the
    /// connection keeps its current access (until it expires).
    pub fn refresh(
        &self,
        current: &Access,
        token: &str,
        now_unix: u64,
    ) -> Result<Access, AuthError> {
        if self.is_open() {
            return Err(AuthError::NotConfigured);
        }
        let claims = self.verify(token, now_unix)?;
        if let Some(user) = current.user() {
            if user != claims.sub {
                return Err(AuthError::UserMismatch);
            }
        }
        Ok(Access::User(claims.grants()))
    }

    /// Has this access expired at `now_unix` (with the leeway)? Then the
    /// connection is closed with [`close_code::TOKEN_EXPIRED`].
    pub fn is_expired(&self, access: &Access, now_unix: u64) -> bool {
        access
            .exp()
            .is_some_and(|exp| now_unix >= exp.saturating_add(self.leeway))
    }

    /// Milliseconds from `now_unix_ms` until this access expires (0: it
    /// has), for a timer; `None`: never.
    pub fn expires_in_ms(&self, access: &Access, now_unix_ms: u64) -> Option<u64> {
        let exp = access.exp()?;
        let at = exp.saturating_add(self.leeway).saturating_mul(1000);
        Some(at.saturating_sub(now_unix_ms))
    }

    /// May this connection subscribe to `channel`? (Check the channel's
    /// name first: this only answers permission.)
    pub fn may_subscribe(&self, access: &Access, channel: &str) -> bool {
        match access {
            Access::Open => true,
            Access::Anonymous => self.anonymous.iter().any(|p| claims::matches(p, channel)),
            Access::User(g) => g.may_subscribe(channel),
        }
    }

    /// May this connection publish to `channel`? (Channel options such as
    /// `client_publish = false` apply on top.)
    pub fn may_publish(&self, access: &Access, channel: &str) -> bool {
        match access {
            Access::Open => true,
            Access::Anonymous => false,
            Access::User(g) => g.may_publish(channel),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Millis;
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_700_000_000;

    fn keys(name: &str) -> String {
        format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn token(sub: &str, exp: u64) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": sub, "exp": exp, "subscribe": ["chat:*"], "publish": ["chat:a"]}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn hs(required: Option<bool>) -> Authenticator {
        Authenticator::new(&AuthConfig {
            jwt_hs256_secret: SECRET.into(),
            required,
            ..AuthConfig::default()
        })
        .unwrap()
    }

    fn src(t: &str) -> TokenSource<'_> {
        TokenSource {
            token: t.into(),
            via: Via::Query,
        }
    }

    #[test]
    fn config_table() {
        let dir = std::env::temp_dir().join(format!("wsgate-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret_file = dir.join("secret");
        std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
        let secret_file = secret_file.to_str().unwrap().to_string();
        let base = AuthConfig::default;
        let cases: Vec<(&str, AuthConfig, Result<(), &str>)> = vec![
            ("empty: open", base(), Ok(())),
            (
                "secret",
                AuthConfig {
                    jwt_hs256_secret: SECRET.into(),
                    ..base()
                },
                Ok(()),
            ),
            (
                "secret file",
                AuthConfig {
                    jwt_hs256_secret_file: secret_file.clone(),
                    ..base()
                },
                Ok(()),
            ),
            (
                "rs256",
                AuthConfig {
                    jwt_rs256_public_key_file: keys("rs256-public.pem"),
                    issuer: "i".into(),
                    audience: "a".into(),
                    ..base()
                },
                Ok(()),
            ),
            (
                "es256",
                AuthConfig {
                    jwt_es256_public_key_file: keys("es256-public.pem"),
                    ..base()
                },
                Ok(()),
            ),
            (
                "two keys",
                AuthConfig {
                    jwt_hs256_secret: SECRET.into(),
                    jwt_es256_public_key_file: keys("es256-public.pem"),
                    ..base()
                },
                Err("only one"),
            ),
            (
                "short secret",
                AuthConfig {
                    jwt_hs256_secret: "hunter2".into(),
                    ..base()
                },
                Err("at least 32 bytes"),
            ),
            (
                "missing file",
                AuthConfig {
                    jwt_rs256_public_key_file: "/nonexistent/key.pem".into(),
                    ..base()
                },
                Err("cannot read /nonexistent/key.pem"),
            ),
            (
                "private key",
                AuthConfig {
                    jwt_rs256_public_key_file: keys("rs256-private.pem"),
                    ..base()
                },
                Err("private key"),
            ),
            (
                "required without a key",
                AuthConfig {
                    required: Some(true),
                    ..base()
                },
                Err("no key"),
            ),
            (
                "issuer without a key",
                AuthConfig {
                    issuer: "i".into(),
                    ..base()
                },
                Err("no key"),
            ),
            (
                "anonymous while required",
                AuthConfig {
                    jwt_hs256_secret: SECRET.into(),
                    anonymous_subscribe: vec!["public:*".into()],
                    ..base()
                },
                Err("required = false"),
            ),
            (
                "anonymous",
                AuthConfig {
                    jwt_hs256_secret: SECRET.into(),
                    required: Some(false),
                    anonymous_subscribe: vec!["public:*".into()],
                    ..base()
                },
                Ok(()),
            ),
        ];
        for (name, cfg, want) in cases {
            match (Authenticator::new(&cfg), want) {
                (Ok(_), Ok(())) => {}
                (Err(e), Err(part)) => assert!(e.contains(part), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        let a = Authenticator::new(&AuthConfig {
            jwt_hs256_secret_file: secret_file,
            ..base()
        })
        .unwrap();
        assert!(
            a.verify(&token("alice", NOW + 60), NOW).is_ok(),
            "newline trimmed"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_reads_from_toml() {
        let cfg: AuthConfig = toml::from_str(
            r#"
            jwt_es256_public_key_file = "k.pem"
            audience = "wsgate"
            leeway = "1500ms"
            required = false
            "#,
        )
        .unwrap();
        assert_eq!(cfg.leeway, Millis(1500));
        assert_eq!(cfg.required, Some(false));
        let back: AuthConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        let d = AuthConfig::default();
        assert_eq!(toml::from_str::<AuthConfig>("").unwrap(), d);
        assert_eq!(
            toml::from_str::<AuthConfig>(&toml::to_string(&d).unwrap()).unwrap(),
            d
        );
        assert!(toml::from_str::<AuthConfig>("secret = 1").is_err());
    }

    #[test]
    fn modes() {
        let open = Authenticator::new(&AuthConfig::default()).unwrap();
        assert!(open.is_open() && !open.is_required());
        assert_eq!(open.startup_notice().0, log::Level::Warn);
        assert!(open.startup_notice().1.contains("OPEN"));
        let t = token("alice", NOW + 60);
        assert_eq!(open.authenticate(None, NOW), Ok(Access::Open));
        assert_eq!(open.authenticate(Some(&src(&t)), NOW), Ok(Access::Open));
        assert_eq!(open.verify(&t, NOW), Err(AuthError::NotConfigured));
        assert!(open.may_subscribe(&Access::Open, "$user:bob"));
        assert!(open.may_publish(&Access::Open, "x"));

        let req = hs(None);
        assert!(req.is_required());
        assert_eq!(req.startup_notice().0, log::Level::Info);
        assert_eq!(req.authenticate(None, NOW), Err(AuthError::Missing));
        let a = req.authenticate(Some(&src(&t)), NOW).unwrap();
        assert_eq!((a.user(), a.exp()), (Some("alice"), Some(NOW + 60)));
        assert!(req.may_subscribe(&a, "chat:x") && req.may_subscribe(&a, "$user:alice"));
        assert!(!req.may_subscribe(&a, "news") && !req.may_subscribe(&a, "$user:bob"));
        assert!(req.may_publish(&a, "chat:a") && !req.may_publish(&a, "chat:b"));
        assert_eq!(
            req.authenticate(Some(&src(&token("alice", NOW - 60))), NOW),
            Err(AuthError::Expired)
        );
        assert_eq!(
            req.authenticate(Some(&src("garbage")), NOW),
            Err(AuthError::Malformed)
        );

        let opt = Authenticator::new(&AuthConfig {
            jwt_hs256_secret: SECRET.into(),
            required: Some(false),
            anonymous_subscribe: vec!["public:*".into()],
            ..AuthConfig::default()
        })
        .unwrap();
        let anon = opt.authenticate(None, NOW).unwrap();
        assert_eq!(anon, Access::Anonymous);
        assert!(opt.may_subscribe(&anon, "public:news"));
        assert!(!opt.may_subscribe(&anon, "chat:x"));
        assert!(!opt.may_publish(&anon, "public:news"));
        // A bad token is refused, not downgraded to anonymous.
        assert_eq!(
            opt.authenticate(Some(&src("garbage")), NOW),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn refresh_and_expiry() {
        let a = hs(None);
        let access = a
            .authenticate(Some(&src(&token("alice", NOW + 10))), NOW)
            .unwrap();
        // leeway 5 s: expires at NOW + 15.
        assert!(!a.is_expired(&access, NOW + 14));
        assert!(a.is_expired(&access, NOW + 15));
        assert_eq!(a.expires_in_ms(&access, NOW * 1000), Some(15_000));
        assert_eq!(a.expires_in_ms(&access, (NOW + 20) * 1000), Some(0));
        assert_eq!(a.expires_in_ms(&Access::Open, 0), None);
        assert!(!a.is_expired(&Access::Anonymous, u64::MAX));

        let later = NOW + 14;
        let renewed = a
            .refresh(&access, &token("alice", NOW + 3600), later)
            .unwrap();
        assert_eq!(renewed.exp(), Some(NOW + 3600));
        assert!(!a.is_expired(&renewed, NOW + 100));
        assert_eq!(
            a.refresh(&access, &token("bob", NOW + 3600), later),
            Err(AuthError::UserMismatch)
        );
        assert_eq!(
            a.refresh(&access, &token("alice", NOW), later),
            Err(AuthError::Expired)
        );
        // An anonymous connection may log in.
        let user = a
            .refresh(&Access::Anonymous, &token("carol", NOW + 60), NOW)
            .unwrap();
        assert_eq!(user.user(), Some("carol"));
        assert_eq!(
            Authenticator::open().refresh(&Access::Open, "x", NOW),
            Err(AuthError::NotConfigured)
        );
    }

    #[test]
    fn shared_between_workers() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Authenticator>();
        send_sync::<Access>();
    }
}
