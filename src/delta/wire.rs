//! How a delta travels: the publication frame of its delta form, and where
//! a whole publication's `data` lies in its frame.
//!
//! A whole publication's payload is
//! `{"channel":"c","offset":42,"data":<data>}` (`broker::encode_publication`;
//! `data` in its compact form). Its delta form is the same prefix, the
//! delta as a JSON string, and a flag:
//!
//! ```text
//! {"channel":"c","offset":43,"data":"1a\n2H@0,3:7.5W@2J,2ZPTxf;","delta":true}
//! ```
//!
//! The string's characters are the delta's bytes read as UTF-8, escaped as
//! JSON (`serde_json`: `"`, `\` and control characters; nothing else), so
//! a client gets the delta back with `TextEncoder().encode(msg.data)` after
//! `JSON.parse`, as Centrifugo's SDKs do. That needs the delta to be valid
//! UTF-8: [`super::fossil::Encoder::encode_text`] makes it so for any valid
//! UTF-8 `data`, which publications always are. (A delta whose inserts
//! split a character, as a byte-oriented encoder may make, would have
//! bytes that no JSON string carries: Centrifugo's Go server replaces them
//! with U+FFFD, and its clients then fail the checksum.)

use std::ops::Range;
use std::sync::Arc;

use crate::proto::frame::{encode_header, OpCode, MAX_HEADER};

/// The tail of a delta payload, after the data string.
pub const DELTA_SUFFIX: &[u8] = b",\"delta\":true}";

/// Where `data` lies in a whole publication payload
/// `{"channel":<string>,"offset":<digits>,"data":<data>}`, and where it
/// starts. `None` for any other layout.
pub fn data_range(payload: &[u8]) -> Option<Range<usize>> {
    let rest = payload.strip_prefix(b"{\"channel\":\"")?;
    // The channel string: up to its closing quote, escapes skipped.
    let mut i = 0;
    loop {
        match *rest.get(i)? {
            b'"' => break,
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    let rest = rest.get(i + 1..)?.strip_prefix(b",\"offset\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let rest = rest[digits..].strip_prefix(b",\"data\":")?;
    let start = payload.len() - rest.len();
    let end = payload.len().checked_sub(1)?;
    (start < end && payload[end] == b'}').then_some(start..end)
}

/// Append `s` as a JSON string.
pub fn push_json_string(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail, and a str always serializes.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The delta form of a publication: `prefix` (the whole payload up to and
/// including `"data":`), `delta` as a JSON string, [`DELTA_SUFFIX`], in an
/// unmasked text frame. `None` when its payload would not be shorter than
/// `whole_len` (the whole publication's payload): then the whole one goes.
pub fn delta_frame(prefix: &[u8], delta: &str, whole_len: usize) -> Option<Arc<[u8]>> {
    let mut payload = Vec::with_capacity(prefix.len() + delta.len() + 24);
    payload.extend_from_slice(prefix);
    push_json_string(&mut payload, delta);
    payload.extend_from_slice(DELTA_SUFFIX);
    if payload.len() >= whole_len {
        return None;
    }
    let mut head = [0u8; MAX_HEADER];
    let n = encode_header(&mut head, true, 0, OpCode::Text, None, payload.len() as u64);
    let mut frame = Vec::with_capacity(n + payload.len());
    frame.extend_from_slice(&head[..n]);
    frame.extend_from_slice(&payload);
    Some(Arc::from(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_found_in_the_publication_layout() {
        let p = br#"{"channel":"dash:eu","offset":42,"data":{"a":[1,"}"]}}"#;
        let r = data_range(p).unwrap();
        assert_eq!(&p[r], br#"{"a":[1,"}"]}"#);
        let p = br#"{"channel":"a\"b","offset":7,"data":"x"}"#;
        assert_eq!(&p[data_range(p).unwrap()], br#""x""#);
        for bad in [
            &br#"{"channel":"c","offset":1,"data":}"#[..],
            br#"{"channel":"c","offset":,"data":1}"#,
            br#"{"channel":"c","offset":1,"data":1"#,
            br#"{"channel":"c","data":1}"#,
            br#"{"channel":"c"#,
            br#"{"channel":"c\"#,
            b"",
        ] {
            assert_eq!(data_range(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn delta_frames_carry_every_byte_through_a_json_string() {
        let delta = "1a\n2H@0,3:\"é\\\u{1}😀\u{2028}\t7;";
        let prefix = br#"{"channel":"c","offset":2,"data":"#;
        let f = delta_frame(prefix, delta, 1000).unwrap();
        assert_eq!(f[0], 0x81);
        let payload = &f[2..];
        assert_eq!(f[1] as usize, payload.len());
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(v["data"].as_str(), Some(delta));
        assert_eq!(v["delta"], true);
        assert_eq!(v["offset"], 2);
        // Only the characters JSON requires are escaped; none is a raw line break.
        assert!(payload.windows(2).any(|w| w == b"\\n"));
        assert!(!payload.contains(&b'\n'));
        let text = std::str::from_utf8(payload).unwrap();
        assert!(
            text.contains(r#":\"é\\\u0001😀"#) && text.contains("\u{2028}\\t7;\""),
            "{text}"
        );
        // Only when shorter than the whole payload.
        assert!(delta_frame(prefix, delta, payload.len()).is_none());
        assert!(delta_frame(prefix, delta, payload.len() + 1).is_some());
    }
}
