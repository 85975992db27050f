//! The one form in which a publication's `data` is stored and sent: the
//! JSON the publisher gave, without the whitespace between its tokens.
//!
//! JSON allows space, tab, CR and LF between tokens (RFC 8259 §2), and a
//! publisher's pretty-printed JSON holds raw line breaks. Such a byte ends an
//! SSE field (WHATWG HTML §9.2.6: "Lines must be separated by either a U+000D
//! CARRIAGE RETURN U+000A LINE FEED (CRLF) character pair, a single U+000A
//! LINE FEED (LF) character, or a single U+000D CARRIAGE RETURN (CR)
//! character"), so a publication spliced byte for byte into a `data:` line
//! broke the stream for SSE readers only. Removing it once, when the
//! publication is encoded, gives every transport, the history, Redis and
//! recovery the same bytes, and leaves no line break in them at all: inside a
//! string JSON forbids raw control characters ("All Unicode characters may be
//! placed within the quotation marks, except for the characters that MUST be
//! escaped: quotation mark, reverse solidus, and the control characters
//! (U+0000 through U+001F)", RFC 8259 §7), so the only raw CR or LF a valid
//! JSON text can hold is whitespace between tokens.
//!
//! The value is unchanged: strings (their spaces included), numbers and key
//! order are copied as they are; only the bytes between tokens go. The input
//! has been validated as JSON (it arrives as a [`RawValue`]), so tracking
//! strings and their escapes is all the scan needs.

use std::borrow::Cow;

use serde_json::value::RawValue;

/// JSON whitespace (RFC 8259 §2: `ws = *( %x20 / %x09 / %x0A / %x0D )`).
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The runs of a JSON text between its insignificant whitespace, in order:
/// their concatenation is the compact form.
pub struct Runs<'a> {
    json: &'a [u8],
    pos: usize,
    in_string: bool,
}

/// The compact form of `json`, as the runs to copy.
pub fn runs(json: &[u8]) -> Runs<'_> {
    Runs {
        json,
        pos: 0,
        in_string: false,
    }
}

impl<'a> Iterator for Runs<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let j = self.json;
        while !self.in_string && self.pos < j.len() && is_ws(j[self.pos]) {
            self.pos += 1;
        }
        if self.pos >= j.len() {
            return None;
        }
        let start = self.pos;
        let mut i = start;
        while i < j.len() {
            let b = j[i];
            if self.in_string {
                match b {
                    b'\\' => i += 1, // the escaped byte is part of the string
                    b'"' => self.in_string = false,
                    _ => {}
                }
            } else if b == b'"' {
                self.in_string = true;
            } else if is_ws(b) {
                break;
            }
            i += 1;
        }
        self.pos = i.min(j.len());
        Some(&j[start..self.pos])
    }
}

/// Append the compact form of `json` to `out`.
pub fn write_compact(out: &mut Vec<u8>, json: &[u8]) {
    for r in runs(json) {
        out.extend_from_slice(r);
    }
}

/// The compact form of `data`: borrowed when it already is compact (no
/// copy), else a new string.
pub fn compact(data: &RawValue) -> Cow<'_, str> {
    let s = data.get();
    let mut it = runs(s.as_bytes());
    match it.next() {
        Some(first) if first.len() == s.len() => Cow::Borrowed(s),
        None => Cow::Borrowed(s),
        Some(first) => {
            let mut out = Vec::with_capacity(s.len());
            out.extend_from_slice(first);
            for r in it {
                out.extend_from_slice(r);
            }
            // Whole UTF-8 sequences were copied: only ASCII whitespace was
            // left out.
            Cow::Owned(String::from_utf8(out).expect("JSON minus ASCII whitespace is UTF-8"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compacted(s: &str) -> String {
        let mut out = Vec::new();
        write_compact(&mut out, s.as_bytes());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn whitespace_between_tokens_goes_strings_stay() {
        for (input, want) in [
            ("1", "1"),
            ("  1 ", "1"),
            ("{\"a\": 1}", "{\"a\":1}"),
            ("{\r\n  \"a\" :\t[1, 2 ,\r3]\n}", "{\"a\":[1,2,3]}"),
            ("\"a b\\t c\"", "\"a b\\t c\""),
            ("\"\\\" \"", "\"\\\" \""), // an escaped quote does not end the string
            ("[\"\\\\\", \" \"]", "[\"\\\\\",\" \"]"), // an escaped backslash does
            ("{\"k\\u0020\" : \"é ü\"}", "{\"k\\u0020\":\"é ü\"}"),
            ("[ ]", "[]"),
            ("\n\r\t ", ""),
        ] {
            assert_eq!(compacted(input), want, "{input:?}");
        }
    }

    #[test]
    fn the_value_is_unchanged_and_no_line_break_is_left() {
        let inputs = [
            "{\n  \"text\": \"hello, world\",\r\n  \"n\": 1.50e3,\r  \"z\": null, \"a\": [true,\tfalse]\n}",
            "[\"line\\nbreak\", \"cr\\r\", {\"deep\": {\"x\": [ [ ] , { } ]}}]",
        ];
        for input in inputs {
            let raw = RawValue::from_string(input.into()).unwrap();
            let c = compact(&raw);
            assert!(!c.bytes().any(|b| b == b'\n' || b == b'\r'), "{c}");
            let before: serde_json::Value = serde_json::from_str(input).unwrap();
            let after: serde_json::Value = serde_json::from_str(&c).unwrap();
            assert_eq!(before, after);
            // Key order and number text are kept as given.
            assert!(c.contains("1.50e3") || !input.contains("1.50e3"));
        }
    }

    #[test]
    fn compact_input_is_borrowed() {
        let raw = RawValue::from_string("{\"a\":\"b c\"}".into()).unwrap();
        assert!(matches!(compact(&raw), Cow::Borrowed(_)));
        let raw = RawValue::from_string("{\"a\": \"b c\"}".into()).unwrap();
        assert!(matches!(compact(&raw), Cow::Owned(s) if s == "{\"a\":\"b c\"}"));
    }
}
