//! JWT verification (RFC 7519, JWS compact form) with the `jsonwebtoken`
//! crate and its RustCrypto backend: HS256 with a shared secret, RS256 or
//! ES256 with a PEM public key.
//!
//! The crate checks the shape, the header's `alg` against the one configured
//! algorithm (so `none`, and an HMAC token signed with an RSA public key as
//! its "secret", never pass), the signature, and `iss`/`aud` when
//! configured. The time claims are checked here, against a `now` passed in,
//! so that the checks are testable without a clock (the crate would read the
//! system clock itself).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::claims::{check_patterns, check_sub, Claims};
use super::error::AuthError;

/// The shortest HS256 secret accepted: RFC 7518 §3.2, "a key of the same
/// size as the hash output (for instance, 256 bits for "HS256") or larger
/// MUST be used".
pub const MIN_HS256_SECRET: usize = 32;

/// What is checked besides the signature.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checks {
    /// Required `iss`, if any.
    pub issuer: Option<String>,
    /// Required member of `aud`, if any. Without it, a token that carries
    /// an `aud` is refused (RFC 7519 §4.1.3).
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub leeway: u64,
}

/// Verifies tokens of one algorithm with one key.
pub struct JwtVerifier {
    alg: Algorithm,
    key: DecodingKey,
    validation: Validation,
    leeway: u64,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key (a shared secret, for HS256).
        f.debug_struct("JwtVerifier")
            .field("alg", &self.alg)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// HS256 with a shared secret of at least [`MIN_HS256_SECRET`] bytes.
    pub fn hs256(secret: &[u8], checks: &Checks) -> Result<JwtVerifier, String> {
        if secret.len() < MIN_HS256_SECRET {
            return Err(format!(
                "the HS256 secret must be at least {MIN_HS256_SECRET} bytes (RFC 7518 §3.2), \
                 got {}",
                secret.len()
            ));
        }
        Ok(JwtVerifier::new(
            Algorithm::HS256,
            DecodingKey::from_secret(secret),
            checks,
        ))
    }

    /// RS256 with an RSA public key in PEM (`PUBLIC KEY` or
    /// `RSA PUBLIC KEY`).
    pub fn rs256_pem(pem: &[u8], checks: &Checks) -> Result<JwtVerifier, String> {
        refuse_private_pem(pem)?;
        let key = DecodingKey::from_rsa_pem(pem)
            .map_err(|e| format!("not an RSA public key in PEM: {e}"))?;
        Ok(JwtVerifier::new(Algorithm::RS256, key, checks))
    }

    /// ES256 with a P-256 public key in PEM (`PUBLIC KEY`).
    pub fn es256_pem(pem: &[u8], checks: &Checks) -> Result<JwtVerifier, String> {
        refuse_private_pem(pem)?;
        let key = DecodingKey::from_ec_pem(pem)
            .map_err(|e| format!("not an EC public key in PEM: {e}"))?;
        let v = JwtVerifier::new(Algorithm::ES256, key, checks);
        // The P-256 point is only parsed when a token is verified: verify a
        // dummy token now, so that a key of another curve fails at start.
        let dummy = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256"}"#),
            URL_SAFE_NO_PAD.encode(b"{}"),
            URL_SAFE_NO_PAD.encode([1u8; 64]),
        );
        match jsonwebtoken::decode::<Value>(&dummy, &v.key, &v.validation) {
            Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => Ok(v),
            Err(e) => Err(format!("not a usable P-256 public key: {e}")),
            Ok(_) => Err("not a usable P-256 public key".into()),
        }
    }

    fn new(alg: Algorithm, key: DecodingKey, checks: &Checks) -> JwtVerifier {
        let mut validation = Validation::new(alg);
        // Time claims are checked in `verify`, against the `now` passed in.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        validation.validate_aud = true;
        if let Some(iss) = &checks.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        if let Some(aud) = &checks.audience {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".into());
        }
        JwtVerifier {
            alg,
            key,
            validation,
            leeway: checks.leeway,
        }
    }

    /// The algorithm's JOSE name (`HS256`, `RS256`, `ES256`).
    pub fn algorithm(&self) -> &'static str {
        match self.alg {
            Algorithm::HS256 => "HS256",
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            _ => "?",
        }
    }

    /// Verify `token` at `now` (Unix seconds) and return its claims.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<RawClaims>(token, &self.key, &self.validation)
            .map_err(|e| self.classify(e.kind(), token))?;
        let c = data.claims;
        // RFC 7519 §4.1.4: "The processing of the "exp" claim requires that
        // the current date/time MUST be before the expiration date/time".
        let exp = numeric_date(c.exp, "exp", f64::floor)?.ok_or(AuthError::MissingClaim("exp"))?;
        // §4.1.5: "the current date/time MUST be after or equal to the
        // not-before date/time".
        let nbf = numeric_date(c.nbf, "nbf", f64::ceil)?;
        if now >= exp.saturating_add(self.leeway) {
            return Err(AuthError::Expired);
        }
        if nbf.is_some_and(|nbf| nbf > now.saturating_add(self.leeway)) {
            return Err(AuthError::NotYetValid);
        }
        let sub = match c.sub {
            None | Some(Value::Null) => return Err(AuthError::MissingClaim("sub")),
            Some(Value::String(s)) => s,
            Some(_) => return Err(AuthError::InvalidClaim("sub")),
        };
        check_sub(&sub)?;
        let subs = patterns(c.subscribe, "subscribe")?;
        let pubs = patterns(c.publish, "publish")?;
        Ok(Claims {
            sub,
            exp,
            subs,
            pubs,
        })
    }

    /// Map the crate's error to ours. A header the crate cannot read (an
    /// `alg` it does not know, such as `none`) is still a wrong algorithm
    /// when the header is otherwise readable.
    fn classify(&self, kind: &ErrorKind, token: &str) -> AuthError {
        match kind {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::MissingAlgorithm => AuthError::WrongAlgorithm,
            ErrorKind::InvalidIssuer => AuthError::BadIssuer,
            ErrorKind::InvalidAudience => AuthError::BadAudience,
            ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(claim_name(c)),
            ErrorKind::InvalidClaimFormat(c) => AuthError::InvalidClaim(claim_name(c)),
            ErrorKind::Json(_) | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                match header_alg(token) {
                    Some(alg) if alg != self.algorithm() => AuthError::WrongAlgorithm,
                    _ => AuthError::Malformed,
                }
            }
            ErrorKind::InvalidToken => AuthError::Malformed,
            // Key errors (a key the backend could not use) and anything
            // newer: the token did not verify.
            _ => AuthError::BadSignature,
        }
    }
}

/// Refuse a private key where a public one is expected: the gateway only
/// verifies, it must not hold the signing key.
fn refuse_private_pem(pem: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("PRIVATE KEY-----") {
        return Err(
            "this is a private key: give the gateway the public key only \
                    (openssl pkey -in private.pem -pubout)"
                .into(),
        );
    }
    Ok(())
}

fn claim_name(c: &str) -> &'static str {
    match c {
        "exp" => "exp",
        "nbf" => "nbf",
        "iss" => "iss",
        "aud" => "aud",
        "sub" => "sub",
        _ => "claims",
    }
}

/// The `alg` of a header that is base64url JSON with a string `alg`.
fn header_alg(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct H {
        alg: String,
    }
    let (head, _) = token.split_once('.')?;
    let json = URL_SAFE_NO_PAD.decode(head).ok()?;
    serde_json::from_slice::<H>(&json).ok().map(|h| h.alg)
}

/// The claims as the token has them; types are checked in `verify` so that a
/// wrong type is reported as that claim's fault.
#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    exp: Option<Value>,
    #[serde(default)]
    nbf: Option<Value>,
    #[serde(default)]
    subscribe: Option<Value>,
    #[serde(default)]
    publish: Option<Value>,
}

/// A NumericDate (RFC 7519 §2): non-negative seconds, maybe fractional;
/// `round` picks the stricter side for the claim.
fn numeric_date(
    v: Option<Value>,
    claim: &'static str,
    round: fn(f64) -> f64,
) -> Result<Option<u64>, AuthError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                return Ok(Some(u));
            }
            match n.as_f64() {
                Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => {
                    Ok(Some(round(f) as u64))
                }
                _ => Err(AuthError::InvalidClaim(claim)),
            }
        }
        Some(_) => Err(AuthError::InvalidClaim(claim)),
    }
}

fn patterns(v: Option<Value>, claim: &'static str) -> Result<Vec<String>, AuthError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(AuthError::InvalidClaim(claim)),
    };
    let list: Vec<String> = list
        .into_iter()
        .map(|p| match p {
            Value::String(s) => Ok(s),
            _ => Err(AuthError::InvalidClaim(claim)),
        })
        .collect::<Result<_, _>>()?;
    check_patterns(&list, claim)?;
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_700_000_000;

    fn key(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn hs(claims: &Value) -> String {
        sign_hs(claims, SECRET)
    }

    fn sign_hs(claims: &Value, secret: &[u8]) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn rs(claims: &Value) -> String {
        let k = EncodingKey::from_rsa_pem(&key("rs256-private.pem")).unwrap();
        encode(&Header::new(Algorithm::RS256), claims, &k).unwrap()
    }

    fn es(claims: &Value) -> String {
        let k = EncodingKey::from_ec_pem(&key("es256-private.pem")).unwrap();
        encode(&Header::new(Algorithm::ES256), claims, &k).unwrap()
    }

    /// A token with any header and payload JSON and a given signature.
    fn raw(header: &str, payload: &Value, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload.to_string()),
            URL_SAFE_NO_PAD.encode(sig)
        )
    }

    fn good() -> Value {
        json!({"sub":"alice","exp":NOW + 60,"subscribe":["chat:*"],"publish":["chat:lobby"]})
    }

    fn with(mut v: Value, k: &str, x: Value) -> Value {
        v[k] = x;
        v
    }

    fn without(mut v: Value, k: &str) -> Value {
        v.as_object_mut().unwrap().remove(k);
        v
    }

    fn checks() -> Checks {
        Checks {
            issuer: None,
            audience: None,
            leeway: 5,
        }
    }

    fn want_claims() -> Claims {
        Claims {
            sub: "alice".into(),
            exp: NOW + 60,
            subs: vec!["chat:*".into()],
            pubs: vec!["chat:lobby".into()],
        }
    }

    #[test]
    fn hs256_table() {
        let v = JwtVerifier::hs256(SECRET, &checks()).unwrap();
        let ok = Ok(want_claims());
        let hs_with_header = |h: Header| encode(&h, &good(), &EncodingKey::from_secret(SECRET));
        let cases: Vec<(&str, String, Result<Claims, AuthError>)> = vec![
            ("valid", hs(&good()), ok.clone()),
            (
                "no patterns",
                hs(&json!({"sub":"bob","exp":NOW + 1})),
                Ok(Claims {
                    sub: "bob".into(),
                    exp: NOW + 1,
                    ..Claims::default()
                }),
            ),
            (
                "fractional exp",
                hs(&with(good(), "exp", json!((NOW + 60) as f64 + 0.7))),
                ok.clone(),
            ),
            (
                "typ and kid in the header are fine",
                hs_with_header(Header {
                    kid: Some("k1".into()),
                    ..Header::new(Algorithm::HS256)
                })
                .unwrap(),
                ok.clone(),
            ),
            (
                "extra claims ignored",
                hs(&with(good(), "iat", json!(NOW))),
                ok.clone(),
            ),
            // Time.
            (
                "expired long ago",
                hs(&with(good(), "exp", json!(NOW - 3600))),
                Err(AuthError::Expired),
            ),
            (
                "expired within the leeway",
                hs(&with(good(), "exp", json!(NOW - 4))),
                Ok(Claims {
                    exp: NOW - 4,
                    ..want_claims()
                }),
            ),
            (
                "expired at the leeway's end",
                hs(&with(good(), "exp", json!(NOW - 5))),
                Err(AuthError::Expired),
            ),
            (
                "not yet valid",
                hs(&with(good(), "nbf", json!(NOW + 60))),
                Err(AuthError::NotYetValid),
            ),
            (
                "nbf within the leeway",
                hs(&with(good(), "nbf", json!(NOW + 5))),
                ok.clone(),
            ),
            (
                "nbf past",
                hs(&with(good(), "nbf", json!(NOW - 60))),
                ok.clone(),
            ),
            (
                "missing exp",
                hs(&without(good(), "exp")),
                Err(AuthError::MissingClaim("exp")),
            ),
            (
                "null exp",
                hs(&with(good(), "exp", Value::Null)),
                Err(AuthError::MissingClaim("exp")),
            ),
            (
                "string exp",
                hs(&with(good(), "exp", json!("tomorrow"))),
                Err(AuthError::InvalidClaim("exp")),
            ),
            (
                "negative exp",
                hs(&with(good(), "exp", json!(-1))),
                Err(AuthError::InvalidClaim("exp")),
            ),
            (
                "huge exp",
                hs(&with(good(), "exp", json!(u64::MAX))),
                Ok(Claims {
                    exp: u64::MAX,
                    ..want_claims()
                }),
            ),
            (
                "string nbf",
                hs(&with(good(), "nbf", json!("x"))),
                Err(AuthError::InvalidClaim("nbf")),
            ),
            // Our claims.
            (
                "missing sub",
                hs(&without(good(), "sub")),
                Err(AuthError::MissingClaim("sub")),
            ),
            (
                "numeric sub",
                hs(&with(good(), "sub", json!(42))),
                Err(AuthError::InvalidClaim("sub")),
            ),
            (
                "empty sub",
                hs(&with(good(), "sub", json!(""))),
                Err(AuthError::InvalidClaim("sub")),
            ),
            (
                "subscribe not a list",
                hs(&with(good(), "subscribe", json!("chat:*"))),
                Err(AuthError::InvalidClaim("subscribe")),
            ),
            (
                "publish with a number",
                hs(&with(good(), "publish", json!(["a", 1]))),
                Err(AuthError::InvalidClaim("publish")),
            ),
            (
                "pattern with a newline",
                hs(&with(good(), "publish", json!(["a\nb"]))),
                Err(AuthError::InvalidClaim("publish")),
            ),
            (
                "payload not an object",
                raw(r#"{"alg":"HS256"}"#, &json!([1]), b"x"),
                Err(AuthError::BadSignature),
            ),
            // Signature.
            (
                "other secret",
                sign_hs(&good(), b"another secret, also 32 bytes long"),
                Err(AuthError::BadSignature),
            ),
            (
                "tampered payload",
                {
                    let t = hs(&good());
                    let other = hs(&with(good(), "sub", json!("mallory")));
                    let p: Vec<&str> = t.split('.').collect();
                    let q: Vec<&str> = other.split('.').collect();
                    format!("{}.{}.{}", p[0], q[1], p[2])
                },
                Err(AuthError::BadSignature),
            ),
            (
                "signature stripped",
                {
                    let t = hs(&good());
                    t[..t.rfind('.').unwrap() + 1].to_string()
                },
                Err(AuthError::BadSignature),
            ),
            // Algorithm.
            (
                "alg none, no signature",
                raw(r#"{"alg":"none","typ":"JWT"}"#, &good(), b""),
                Err(AuthError::WrongAlgorithm),
            ),
            (
                "alg None",
                raw(r#"{"alg":"None"}"#, &good(), b""),
                Err(AuthError::WrongAlgorithm),
            ),
            (
                "alg HS512",
                hs_with_header(Header::new(Algorithm::HS512)).unwrap(),
                Err(AuthError::WrongAlgorithm),
            ),
            (
                "alg RS256 to an HS256 key",
                rs(&good()),
                Err(AuthError::WrongAlgorithm),
            ),
            (
                "alg missing",
                raw(r#"{"typ":"JWT"}"#, &good(), b"x"),
                Err(AuthError::Malformed),
            ),
            // Shape.
            ("empty", String::new(), Err(AuthError::Malformed)),
            ("one part", "abc".into(), Err(AuthError::Malformed)),
            ("two parts", "abc.def".into(), Err(AuthError::Malformed)),
            ("four parts", "a.b.c.d".into(), Err(AuthError::Malformed)),
            (
                "header not base64",
                {
                    let t = hs(&good());
                    format!("!!{}", &t[t.find('.').unwrap()..])
                },
                Err(AuthError::Malformed),
            ),
            (
                "payload not JSON",
                {
                    let t = hs(&good());
                    let p: Vec<&str> = t.split('.').collect();
                    format!("{}.{}.{}", p[0], URL_SAFE_NO_PAD.encode("{"), p[2])
                },
                Err(AuthError::BadSignature),
            ),
        ];
        for (name, token, want) in cases {
            assert_eq!(v.verify(&token, NOW), want, "{name}: {token}");
        }
    }

    #[test]
    fn unsigned_payloads_that_are_not_json() {
        // A token correctly signed over a payload that is not JSON.
        let v = JwtVerifier::hs256(SECRET, &checks()).unwrap();
        let unsigned = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#),
            URL_SAFE_NO_PAD.encode("not json")
        );
        use hmac_sig::sign;
        let token = format!("{unsigned}.{}", sign(SECRET, unsigned.as_bytes()));
        assert_eq!(v.verify(&token, NOW), Err(AuthError::Malformed));
    }

    /// HMAC-SHA256 by the crate's own signer, to sign arbitrary bytes.
    mod hmac_sig {
        use super::*;
        pub fn sign(secret: &[u8], msg: &[u8]) -> String {
            jsonwebtoken::crypto::sign(msg, &EncodingKey::from_secret(secret), Algorithm::HS256)
                .unwrap()
        }
    }

    #[test]
    fn rs256_and_es256() {
        let rsv = JwtVerifier::rs256_pem(&key("rs256-public.pem"), &checks()).unwrap();
        let esv = JwtVerifier::es256_pem(&key("es256-public.pem"), &checks()).unwrap();
        let other = JwtVerifier::rs256_pem(&key("rs256-other-public.pem"), &checks()).unwrap();
        assert_eq!((rsv.algorithm(), esv.algorithm()), ("RS256", "ES256"));
        let ok = Ok(want_claims());
        assert_eq!(rsv.verify(&rs(&good()), NOW), ok);
        assert_eq!(esv.verify(&es(&good()), NOW), ok);
        assert_eq!(
            rsv.verify(&rs(&with(good(), "exp", json!(NOW - 60))), NOW),
            Err(AuthError::Expired)
        );
        assert_eq!(
            esv.verify(&es(&with(good(), "nbf", json!(NOW + 60))), NOW),
            Err(AuthError::NotYetValid)
        );
        // Another key, another algorithm.
        assert_eq!(
            other.verify(&rs(&good()), NOW),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            rsv.verify(&es(&good()), NOW),
            Err(AuthError::WrongAlgorithm)
        );
        assert_eq!(
            esv.verify(&rs(&good()), NOW),
            Err(AuthError::WrongAlgorithm)
        );
        assert_eq!(
            rsv.verify(&hs(&good()), NOW),
            Err(AuthError::WrongAlgorithm)
        );
        // The classic confusion: an HS256 token whose "secret" is the RSA
        // public key. Refused on the algorithm, before any HMAC is computed.
        let confused = sign_hs(&good(), &key("rs256-public.pem"));
        assert_eq!(rsv.verify(&confused, NOW), Err(AuthError::WrongAlgorithm));
        // A tampered ES256 signature.
        let t = es(&good());
        let mut sig = URL_SAFE_NO_PAD
            .decode(&t[t.rfind('.').unwrap() + 1..])
            .unwrap();
        sig[10] ^= 1;
        let bad = format!(
            "{}.{}",
            &t[..t.rfind('.').unwrap()],
            URL_SAFE_NO_PAD.encode(sig)
        );
        assert_eq!(esv.verify(&bad, NOW), Err(AuthError::BadSignature));
        assert_eq!(
            esv.verify(&raw(r#"{"alg":"none"}"#, &good(), b""), NOW),
            Err(AuthError::WrongAlgorithm)
        );
    }

    #[test]
    fn bad_keys_fail_at_start() {
        let c = checks();
        assert!(JwtVerifier::hs256(b"short", &c)
            .unwrap_err()
            .contains("32 bytes"));
        assert!(JwtVerifier::rs256_pem(b"hello", &c).is_err());
        assert!(JwtVerifier::es256_pem(b"hello", &c).is_err());
        let e = JwtVerifier::rs256_pem(&key("rs256-private.pem"), &c).unwrap_err();
        assert!(e.contains("private key"), "{e}");
        assert!(JwtVerifier::es256_pem(&key("es256-private.pem"), &c).is_err());
        // A key of the other family.
        assert!(JwtVerifier::es256_pem(&key("rs256-public.pem"), &c).is_err());
        assert!(JwtVerifier::rs256_pem(&key("es256-public.pem"), &c).is_err());
    }

    #[test]
    fn issuer_and_audience() {
        let c = Checks {
            issuer: Some("https://auth.example".into()),
            audience: Some("wsgate".into()),
            leeway: 0,
        };
        let v = JwtVerifier::hs256(SECRET, &c).unwrap();
        let full = with(
            with(good(), "iss", json!("https://auth.example")),
            "aud",
            json!("wsgate"),
        );
        let cases: Vec<(&str, Value, Result<(), AuthError>)> = vec![
            ("both right", full.clone(), Ok(())),
            (
                "aud in a list",
                with(full.clone(), "aud", json!(["other", "wsgate"])),
                Ok(()),
            ),
            (
                "wrong iss",
                with(full.clone(), "iss", json!("https://evil")),
                Err(AuthError::BadIssuer),
            ),
            (
                "no iss",
                without(full.clone(), "iss"),
                Err(AuthError::MissingClaim("iss")),
            ),
            (
                "wrong aud",
                with(full.clone(), "aud", json!("api")),
                Err(AuthError::BadAudience),
            ),
            (
                "no aud",
                without(full.clone(), "aud"),
                Err(AuthError::MissingClaim("aud")),
            ),
        ];
        for (name, claims, want) in cases {
            assert_eq!(v.verify(&hs(&claims), NOW).map(|_| ()), want, "{name}");
        }
        // Without an audience configured, a token naming one is refused.
        let open = JwtVerifier::hs256(SECRET, &checks()).unwrap();
        assert_eq!(
            open.verify(&hs(&with(good(), "aud", json!("x"))), NOW),
            Err(AuthError::BadAudience)
        );
        // Without an issuer configured, any iss passes.
        assert!(open
            .verify(&hs(&with(good(), "iss", json!("x"))), NOW)
            .is_ok());
    }

    #[test]
    fn leeway_zero_is_exact() {
        let v = JwtVerifier::hs256(
            SECRET,
            &Checks {
                leeway: 0,
                ..checks()
            },
        )
        .unwrap();
        let t = hs(&with(good(), "exp", json!(NOW)));
        assert_eq!(v.verify(&t, NOW), Err(AuthError::Expired));
        assert!(v.verify(&t, NOW - 1).is_ok());
        let t = hs(&with(good(), "nbf", json!(NOW)));
        assert!(v.verify(&t, NOW).is_ok());
        assert_eq!(v.verify(&t, NOW - 1), Err(AuthError::NotYetValid));
    }

    #[test]
    fn debug_hides_the_secret() {
        let v = JwtVerifier::hs256(SECRET, &checks()).unwrap();
        let d = format!("{v:?}");
        assert!(!d.contains("0123456789"), "{d}");
    }
}
