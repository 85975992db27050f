//! Token verification (`auth::Authenticator::verify`) on arbitrary strings,
//! with each of the three algorithms; and, since no fuzzer forges a
//! signature, arbitrary *payloads* signed with the HS256 secret, so that
//! the claim checks behind the signature are reached too.
//!
//! Input: `[mode] [now: 4 bytes LE] rest…`
//! - mode even: `rest` is the whole token, tried on HS256, RS256 and ES256;
//! - mode odd: `rest` is the payload (any bytes), with the header
//!   `{"alg":"HS256"}`, signed with the secret.
//!
//! Checked: no panic; an accepted token's claims are within the rules
//! (user id, unexpired at `now`, patterns); their compact `Grants` answer
//! like the claims; an HS256 token never passes the RS256/ES256 keys.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wsgate::auth::{AuthConfig, Authenticator, Claims};

const SECRET: &str = "fuzzing-secret-0123456789abcdef0123";

struct Auths {
    hs: Authenticator,
    rs: Authenticator,
    es: Authenticator,
}

fn auths() -> &'static Auths {
    static A: OnceLock<Auths> = OnceLock::new();
    A.get_or_init(|| {
        let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/keys/");
        let make = |cfg: AuthConfig| Authenticator::new(&cfg).expect("auth config");
        Auths {
            hs: make(AuthConfig {
                jwt_hs256_secret: SECRET.into(),
                ..AuthConfig::default()
            }),
            rs: make(AuthConfig {
                jwt_rs256_public_key_file: format!("{keys}rs256-public.pem"),
                ..AuthConfig::default()
            }),
            es: make(AuthConfig {
                jwt_es256_public_key_file: format!("{keys}es256-public.pem"),
                ..AuthConfig::default()
            }),
        }
    })
}

fn check_claims(c: &Claims, now: u64, leeway: u64) {
    // A user id: the characters of channel names, so that `$user:<sub>`
    // is a channel like any other.
    assert!(wsgate::pubsub::valid_user(&c.sub, usize::MAX).is_ok(), "{:?}", c.sub);
    assert!(wsgate::pubsub::valid_channel(&format!("user:{}", c.sub), 255).is_ok());
    assert!(
        now < c.exp.saturating_add(leeway),
        "an expired token passed"
    );
    let g = c.grants();
    assert_eq!(g.user(), c.sub);
    assert_eq!(g.exp(), c.exp);
    assert!(g.subs().eq(c.subs.iter().map(String::as_str)));
    assert!(g.pubs().eq(c.pubs.iter().map(String::as_str)));
    let own = format!("$user:{}", c.sub);
    assert!(c.may_subscribe(&own) && g.may_subscribe(&own));
    for p in c.subs.iter().chain(&c.pubs) {
        // Each pattern, read as a channel, gets the same answers from both.
        assert_eq!(c.may_subscribe(p), g.may_subscribe(p));
        assert_eq!(c.may_publish(p), g.may_publish(p));
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, n0, n1, n2, n3, rest @ ..] = data else {
        return;
    };
    let now = u64::from(u32::from_le_bytes([*n0, *n1, *n2, *n3]));
    let a = auths();
    if mode & 1 == 0 {
        let token = String::from_utf8_lossy(rest);
        for auth in [&a.hs, &a.rs, &a.es] {
            // Seeds hold tokens signed with the test keys: mutations of
            // them reach the claim checks (and must not pass unless intact).
            if let Ok(c) = auth.verify(&token, now) {
                check_claims(&c, now, auth.leeway());
            }
        }
    } else {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let signing_input = format!("{}.{}", b64.encode(r#"{"alg":"HS256"}"#), b64.encode(rest));
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        let sig = jsonwebtoken::crypto::sign(
            signing_input.as_bytes(),
            &key,
            jsonwebtoken::Algorithm::HS256,
        )
        .expect("HMAC signs anything");
        let token = format!("{signing_input}.{sig}");
        if let Ok(c) = a.hs.verify(&token, now) {
            check_claims(&c, now, a.hs.leeway());
        }
        // The same payload must not pass the asymmetric verifiers.
        assert!(a.rs.verify(&token, now).is_err());
        assert!(a.es.verify(&token, now).is_err());
    }
});
