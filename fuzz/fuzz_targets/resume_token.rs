//! The resume token decoder (`http::resume::ResumeToken::decode`), which
//! reads both the SSE `Last-Event-ID` / `?last_event_id=` and the
//! long-poll `cursor`: any string a client sends back.
//!
//! Input: `[max_channels] token…`
//!
//! Checked: no panic; a decoded token holds at most `max_channels`
//! positions; encoding it gives base64url (safe in an SSE `id:` line and a
//! query string) that decodes to the same token; `set` / `advance` / `get`
//! keep their promises (one entry per channel, offsets never go back).

#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::http::resume::{ResumeToken, MAX_TOKEN};
use wsgate::pubsub::Position;

fuzz_target!(|data: &[u8]| {
    let [max, rest @ ..] = data else {
        return;
    };
    let max = usize::from(*max % 16);
    let text = String::from_utf8_lossy(rest);
    let Ok(mut t) = ResumeToken::decode(&text, max) else {
        return;
    };
    assert!(t.positions.len() <= max);

    let enc = t.encode();
    assert!(
        enc.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "not base64url: {enc}"
    );
    if enc.len() <= MAX_TOKEN {
        assert_eq!(
            ResumeToken::decode(&enc, max).as_ref(),
            Ok(&t),
            "round trip"
        );
    }

    // Updates on a decoded token.
    let Some((ch, before)) = t.positions.first().cloned() else {
        return;
    };
    let first = t.get(&ch).cloned().expect("a decoded channel is found");
    t.advance(&ch, before.offset / 2);
    assert_eq!(
        t.get(&ch).map(|p| p.offset),
        Some(first.offset),
        "advance went back"
    );
    t.advance(&ch, before.offset.saturating_add(1));
    assert!(t.get(&ch).unwrap().offset > first.offset || first.offset == u64::MAX);
    let n = t.positions.len();
    t.set(
        &ch,
        Position {
            epoch: "new".into(),
            offset: 0,
        },
    );
    assert_eq!(t.positions.len(), n, "set added a second entry");
    assert_eq!(t.get(&ch).map(|p| p.epoch.as_str()), Some("new"));
});
