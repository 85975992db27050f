//! Close frames (RFC 6455 §5.5.1, §7.4): parsing the peer's, building ours.

use super::error::Error;
use super::utf8::Utf8State;

/// Is `code` allowed in a close frame received from the peer?
///
/// §7.4.1/§7.4.2: 1005, 1006 and 1015 "MUST NOT be set as a status code in a
/// Close control frame by an endpoint"; codes below 1000 are unused; 1016-2999
/// are reserved for the RFC and its extensions (1012-1014 are registered with
/// IANA and accepted); 3000-4999 belong to libraries and applications.
pub fn is_valid_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parse a close payload into `(code, reason)`; an empty payload has no code.
///
/// §5.5.1: "If there is a body, the first two bytes of the body MUST be a
/// 2-byte unsigned integer ... Following the 2-byte integer, the body MAY
/// contain UTF-8-encoded data".
pub fn parse_payload(payload: &[u8]) -> Result<(Option<u16>, &str), Error> {
    match payload.len() {
        0 => Ok((None, "")),
        1 => Err(Error::CloseOneByte),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !is_valid_code(code) {
                return Err(Error::InvalidCloseCode);
            }
            let reason = &payload[2..];
            Utf8State::validate(reason).map_err(|_| Error::InvalidUtf8)?;
            // Validated just above.
            let reason = std::str::from_utf8(reason).map_err(|_| Error::InvalidUtf8)?;
            Ok((Some(code), reason))
        }
    }
}

/// Build a close payload; the reason is cut at a char boundary so that the
/// frame stays within the 125 bytes of a control frame.
pub fn build_payload(code: u16, reason: &str) -> ([u8; 125], usize) {
    let mut out = [0u8; 125];
    out[..2].copy_from_slice(&code.to_be_bytes());
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    out[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    (out, 2 + end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_table() {
        let valid = [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ];
        let invalid = [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ];
        for c in valid {
            assert!(is_valid_code(c), "{c}");
        }
        for c in invalid {
            assert!(!is_valid_code(c), "{c}");
        }
    }

    #[test]
    fn payload_table() {
        assert_eq!(parse_payload(b""), Ok((None, "")));
        assert_eq!(parse_payload(&[0x03]), Err(Error::CloseOneByte));
        assert_eq!(parse_payload(&[0x03, 0xE8]), Ok((Some(1000), "")));
        assert_eq!(parse_payload(b"\x03\xE8bye"), Ok((Some(1000), "bye")));
        assert_eq!(parse_payload(&[0x03, 0xED]), Err(Error::InvalidCloseCode)); // 1005
        assert_eq!(parse_payload(&[0x03, 0xE8, 0xFF]), Err(Error::InvalidUtf8));
    }

    #[test]
    fn build_truncates_at_char_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let (buf, n) = build_payload(1001, &long);
        assert!(n <= 125);
        let (code, reason) = parse_payload(&buf[..n]).unwrap();
        assert_eq!(code, Some(1001));
        assert!(long.starts_with(reason) && !reason.is_empty());
    }
}
