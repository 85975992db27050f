//! Plain-HTTP helpers: `http::url_decode`, `http::query_values` /
//! `query_value`, and, on a request head, `http::body_length` and
//! `http::keep_alive`; plus `auth::token_from_request` on the same query.
//!
//! Input: `query \0 head` (everything is the query when there is no NUL).
//!
//! Checked: no panic; decoding never grows a string; text without `%` and
//! `+` decodes to itself; encoding then decoding gives the text back;
//! `query_value` is the first of `query_values`; a body length is within
//! the limit.

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
    for name in ["channel", "token", "last_event_id", ""] {
        let all: Vec<String> = http::query_values(&query, name).collect();
        assert_eq!(http::query_value(&query, name), all.first().cloned());
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
        for name in ["channel", "token"] {
            let _ = http::query_values(h.query(), name).count();
        }
        if let Some(t) = wsgate::auth::token_from_head(&h) {
            assert!(!t.token.is_empty());
        }
    }
});
