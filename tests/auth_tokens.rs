//! Auth end to end through the public API, as the worker will use it: a raw
//! upgrade (or SSE / long-poll) request, the token found in it, the access
//! decided, the 101 answered without echoing the token, the 401 written,
//! permissions, expiry and refresh.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

use wsgate::auth::{self, close_code, Access, AuthConfig, AuthError, Authenticator, Via, PROTOCOL};
use wsgate::proto::handshake::{self, Head};

const NOW: u64 = 1_700_000_000;

fn key_path(name: &str) -> String {
    format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn rs256_token(sub: &str, exp: u64) -> String {
    let pem = std::fs::read(key_path("rs256-private.pem")).unwrap();
    encode(
        &Header::new(Algorithm::RS256),
        &json!({
            "sub": sub, "exp": exp, "iss": "https://auth.test",
            "subscribe": ["chat:*", "news"], "publish": ["chat:lobby"]
        }),
        &EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap()
}

fn rs256_auth() -> Authenticator {
    Authenticator::new(&AuthConfig {
        jwt_rs256_public_key_file: key_path("rs256-public.pem"),
        issuer: "https://auth.test".into(),
        ..AuthConfig::default()
    })
    .unwrap()
}

fn upgrade(target: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// What the worker does at the upgrade: find the token, decide the access.
fn access_of(
    auth: &Authenticator,
    req: &str,
    now: u64,
) -> Result<(Access, Option<Via>), AuthError> {
    let head = Head::parse(req.as_bytes(), 8192).unwrap().unwrap();
    let src = auth::token_from_head(&head);
    let access = auth.authenticate(src.as_ref(), now)?;
    Ok((access, src.map(|s| s.via)))
}

#[test]
fn every_transport_carries_the_token() {
    let auth = rs256_auth();
    let t = rs256_token("alice", NOW + 600);
    let requests = [
        (upgrade(&format!("/ws?token={t}"), ""), Via::Query),
        (
            upgrade(
                "/ws",
                &format!("Sec-WebSocket-Protocol: wsgate.v1, bearer.{t}\r\n"),
            ),
            Via::Protocol,
        ),
        (
            upgrade("/ws", &format!("Authorization: Bearer {t}\r\n")),
            Via::Authorization,
        ),
        // SSE (EventSource: the query only) and long-poll (any).
        (
            format!("GET /sse?channel=chat:a&token={t} HTTP/1.1\r\nHost: gw\r\n\r\n"),
            Via::Query,
        ),
        (
            format!("POST /poll HTTP/1.1\r\nHost: gw\r\nAuthorization: bearer {t}\r\n\r\n"),
            Via::Authorization,
        ),
    ];
    for (req, via) in requests {
        let (access, got_via) = access_of(&auth, &req, NOW).unwrap();
        assert_eq!(got_via, Some(via), "{req}");
        assert_eq!(access.user(), Some("alice"));
        assert_eq!(access.exp(), Some(NOW + 600));
    }
}

#[test]
fn the_101_never_echoes_the_token() {
    let t = rs256_token("alice", NOW + 600);
    let req = upgrade(
        "/ws",
        &format!("Sec-WebSocket-Protocol: bearer.{t}, wsgate.v1\r\n"),
    );
    let head = Head::parse(req.as_bytes(), 8192).unwrap().unwrap();
    let up = handshake::check_upgrade(&head).unwrap();
    let protocol = auth::select_protocol(&head, &[]);
    assert_eq!(protocol, Some(PROTOCOL));
    let mut resp = Vec::new();
    handshake::write_accept(&mut resp, up.key, protocol, None);
    let text = String::from_utf8(resp).unwrap();
    assert!(text.contains("\r\nSec-WebSocket-Protocol: wsgate.v1\r\n"));
    assert!(!text.contains(&t[..20]), "token echoed: {text}");
}

#[test]
fn refused_requests_get_401_with_www_authenticate() {
    let auth = rs256_auth();
    let cases = [
        (upgrade("/ws", ""), AuthError::Missing),
        (
            upgrade(
                &format!("/ws?token={}", rs256_token("alice", NOW - 600)),
                "",
            ),
            AuthError::Expired,
        ),
        (upgrade("/ws?token=not.a.jwt", ""), AuthError::Malformed),
        (
            // An HS256 token signed with the RSA public key as the secret.
            upgrade(
                &format!(
                    "/ws?token={}",
                    encode(
                        &Header::new(Algorithm::HS256),
                        &json!({"sub":"mallory","exp":NOW + 600,"iss":"https://auth.test"}),
                        &EncodingKey::from_secret(
                            &std::fs::read(key_path("rs256-public.pem")).unwrap()
                        ),
                    )
                    .unwrap()
                ),
                "",
            ),
            AuthError::WrongAlgorithm,
        ),
    ];
    for (req, want) in cases {
        let err = access_of(&auth, &req, NOW).unwrap_err();
        assert_eq!(err, want);
        // As the worker writes it: the value goes after the header's name.
        let mut out = Vec::new();
        let header = format!("WWW-Authenticate: {}\r\n", err.www_authenticate());
        handshake::write_response(&mut out, err.http_status(), &header, err.reason());
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(&out).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("incomplete response"),
        };
        assert_eq!(resp.code, Some(401));
        let get = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| std::str::from_utf8(h.value).unwrap())
        };
        assert_eq!(get("www-authenticate"), Some(&*err.www_authenticate()));
        assert!(get("www-authenticate")
            .unwrap()
            .starts_with("Bearer realm=\"wsgate\""));
        let len: usize = get("content-length").unwrap().parse().unwrap();
        assert_eq!(n + len, out.len(), "the body is what Content-Length says");
    }
}

#[test]
fn permissions_expiry_and_refresh() {
    let auth = rs256_auth();
    let req = upgrade(&format!("/ws?token={}", rs256_token("alice", NOW + 60)), "");
    let (access, _) = access_of(&auth, &req, NOW).unwrap();
    for (ch, sub, publ) in [
        ("chat:lobby", true, true),
        ("chat:dev", true, false),
        ("news", true, false),
        ("$user:alice", true, false),
        ("$user:bob", false, false),
        ("admin", false, false),
    ] {
        assert_eq!(
            (
                auth.may_subscribe(&access, ch),
                auth.may_publish(&access, ch)
            ),
            (sub, publ),
            "{ch}"
        );
    }
    // Expiry: exp + leeway (5 s by default).
    assert!(!auth.is_expired(&access, NOW + 64));
    assert!(auth.is_expired(&access, NOW + 65));
    assert_eq!(auth.expires_in_ms(&access, NOW * 1000 + 500), Some(64_500));
    // A refresh before that extends it; another user's token does not.
    let renewed = auth
        .refresh(&access, &rs256_token("alice", NOW + 3600), NOW + 50)
        .unwrap();
    assert!(!auth.is_expired(&renewed, NOW + 65));
    let e = auth
        .refresh(&access, &rs256_token("bob", NOW + 3600), NOW + 50)
        .unwrap_err();
    assert_eq!(e, AuthError::UserMismatch);
    assert_eq!(e.op_error().code(), 11);
    // Without a refresh, the close code tells the client to get a new token.
    assert_eq!(AuthError::Expired.close_code(), close_code::TOKEN_EXPIRED);
    assert_eq!(close_code::TOKEN_EXPIRED, 4501);
    assert_eq!(close_code::UNAUTHORIZED, 4500);
}

#[test]
fn es256_keys_work_too() {
    let auth = Authenticator::new(&AuthConfig {
        jwt_es256_public_key_file: key_path("es256-public.pem"),
        ..AuthConfig::default()
    })
    .unwrap();
    let pem = std::fs::read(key_path("es256-private.pem")).unwrap();
    let t = encode(
        &Header::new(Algorithm::ES256),
        &json!({"sub":"alice","exp":NOW + 60}),
        &EncodingKey::from_ec_pem(&pem).unwrap(),
    )
    .unwrap();
    let (access, _) = access_of(
        &auth,
        &upgrade("/ws", &format!("Authorization: Bearer {t}\r\n")),
        NOW,
    )
    .unwrap();
    assert_eq!(access.user(), Some("alice"));
    assert!(auth.may_subscribe(&access, "$user:alice"));
    assert!(!auth.may_subscribe(&access, "chat:x"));
}
