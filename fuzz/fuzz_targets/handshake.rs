//! The opening handshake: the server parses any request head
//! (`Head::parse`), checks it (`check_upgrade`), picks a subprotocol
//! (`select_protocol`, and auth's variant that never answers a `bearer.`
//! entry), finds a token (`auth::token_from_head`) and answers
//! (`write_accept` or `write_error`); the client checks that answer
//! (`parse_response`). The input is also given to `parse_response` as a
//! server's answer.
//!
//! Input: `[max_head selector] request…`
//!
//! Checked: no panic; a parsed head's length is within the input and the
//! limit; every accepted upgrade's 101 is accepted by the client for the
//! same key and answers a protocol that was offered and is not a token;
//! every error response is a complete HTTP response with the error's status.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::auth;
use wsgate::proto::handshake::{self, Head};

fuzz_target!(|data: &[u8]| {
    let [sel, req @ ..] = data else {
        return;
    };
    let max_head = [64usize, 256, 1024, 8192][usize::from(sel & 3)];
    let supported = [
        "chat".to_string(),
        "wsgate.v1".to_string(),
        "bearer.x".to_string(),
    ];

    // The client's side on arbitrary bytes: no panic, a sane length.
    if let Ok(Some(r)) = handshake::parse_response(req, "dGhlIHNhbXBsZSBub25jZQ==") {
        assert!(r.len <= req.len());
    }

    let head = match Head::parse(req, max_head) {
        Ok(Some(h)) => h,
        Ok(None) => {
            assert!(req.len() < max_head, "an incomplete head past the limit");
            return;
        }
        Err(e) => {
            check_error_response(e);
            return;
        }
    };
    assert!(head.len <= req.len() && head.len <= max_head);
    let _ = (head.path(), head.query(), head.wants_upgrade());
    for h in head.headers() {
        let _ = head.has_token(h.name, "upgrade");
    }

    if let Some(src) = auth::token_from_head(&head) {
        assert!(!src.token.is_empty());
    }
    let plain = handshake::select_protocol(&head, &supported);
    let ours = auth::select_protocol(&head, &supported);
    for p in [plain, ours].into_iter().flatten() {
        assert!(head
            .tokens("sec-websocket-protocol")
            .any(|t| t == p.as_bytes()));
    }
    if let Some(p) = ours {
        assert!(!p.starts_with("bearer."), "a token entry was answered");
    }

    match handshake::check_upgrade(&head) {
        Ok(up) => {
            let key = std::str::from_utf8(up.key).expect("a valid key is base64");
            let mut resp = Vec::new();
            handshake::write_accept(&mut resp, up.key, ours, Some("permessage-deflate"));
            let r = handshake::parse_response(&resp, key)
                .expect("the client accepts our 101")
                .expect("our 101 is complete");
            assert_eq!(r.len, resp.len());
            assert_eq!(r.protocol.as_deref(), ours);
        }
        Err(e) => check_error_response(e),
    }
});

fn check_error_response(e: wsgate::proto::Error) {
    let status = e.http_status().expect("a handshake error maps to a status");
    let mut out = Vec::new();
    handshake::write_error(&mut out, e);
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(&out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("incomplete error response: {other:?}"),
    };
    assert_eq!(resp.code, Some(status));
    let len: usize = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
        .expect("a Content-Length");
    assert_eq!(n + len, out.len(), "Content-Length matches the body");
}
