//! Plain-HTTP helpers: `http::url_decode`, `http::Query` (`parse`,
//! `values`, `value`), and, on a request head, `http::body_length` and
//! `http::keep_alive`; plus `auth::token_from_request` on the same query.
//!
//! Input: `query \0 head` (everything is the query when there is no NUL).
//!
//! Checked: no panic; decoding never grows a string; text without `%` and
//! `+` decodes to itself; encoding then decoding gives the text back; a
//! query is refused exactly when one of its components does not decode;
//! `value` is the first of `values`; a body length is within the limit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::http;
use wsgate::proto::handshake::Head;

/// Percent-encode everything but unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let (q, head) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let query = String::from_utf8_lossy(q);

    if let Some(d) = http::url_decode(&query) {
        assert!(d.len() <= query.len(), "decoding grew the text");
        assert_eq!(http::url_decode(&encode(&d)).as_deref(), Some(d.as_str()));
    }
    if !query.contains(['%', '+']) {
        assert_eq!(http::url_decode(&query).as_deref(), Some(&*query));
    }
    let components_decode = query.split('&').all(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        http::url_decode(k).is_some() && http::url_decode(v).is_some()
    });
    match http::Query::parse(&query) {
        Ok(q) => {
            assert!(components_decode, "a malformed query was accepted");
            for name in ["channel", "token", "last_event_id", ""] {
                let all: Vec<String> = q.values(name).collect();
                assert_eq!(q.value(name), all.first().cloned());
            }
        }
        Err(e) => {
            assert!(!components_decode, "a valid query was refused: {e}");
            assert!(e.name.len() <= 64);
        }
    }
    if let Some(t) = wsgate::auth::token_from_request(&query, std::iter::empty(), None) {
        assert!(!t.token.is_empty());
    }

    if let Ok(Some(h)) = Head::parse(head, 8192) {
        match http::body_length(&h, 1000) {
            Ok(n) => assert!(n <= 1000),
            Err(e) => assert!(matches!(e.status(), 400 | 411 | 413)),
        }
        let _ = http::keep_alive(&h);
        let _ = h.query();
        if let Ok(q) = http::Query::parse(h.query()) {
            for name in ["channel", "token"] {
                let _ = q.values(name).count();
            }
        }
        if let Some(t) = wsgate::auth::token_from_head(&h) {
            assert!(!t.token.is_empty());
        }
    }
});
