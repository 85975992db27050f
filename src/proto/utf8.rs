//! Incremental UTF-8 validation for text messages that arrive in pieces.
//!
//! RFC 6455 §8.1: "When an endpoint is to interpret a byte stream as UTF-8
//! but finds that the byte stream is not, in fact, a valid UTF-8 stream, that
//! endpoint MUST _Fail the WebSocket Connection_." We fail as soon as the
//! bytes seen so far cannot begin any valid string, even in the middle of a
//! frame, so a peer cannot make us buffer a message that is already invalid.
//!
//! The bulk work is done by `simdutf8`'s `compat` API, which reports whether
//! an error is a real error or only an incomplete sequence at the end. The
//! state carried between pieces is at most three bytes of such a sequence.

/// Four bytes of state: the pending bytes of a split code point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Utf8State {
    pending: [u8; 3],
    len: u8,
}

/// The input can never become valid UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Invalid;

impl Utf8State {
    /// The state as four bytes (a frozen connection's, issue 17).
    pub fn to_bytes(self) -> [u8; 4] {
        [self.pending[0], self.pending[1], self.pending[2], self.len]
    }

    /// A state from [`Utf8State::to_bytes`]; None when the length is
    /// beyond the three bytes a split code point leaves.
    pub fn from_bytes(b: [u8; 4]) -> Option<Utf8State> {
        (b[3] <= 3).then_some(Utf8State {
            pending: [b[0], b[1], b[2]],
            len: b[3],
        })
    }

    /// Validate the next piece of a message.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), Invalid> {
        if self.len > 0 {
            // Complete the split code point from the front of `data`.
            let need = width(self.pending[0]);
            let have = self.len as usize;
            let take = (need - have).min(data.len());
            let mut cp = [0u8; 4];
            cp[..have].copy_from_slice(&self.pending[..have]);
            cp[have..have + take].copy_from_slice(&data[..take]);
            match simdutf8::compat::from_utf8(&cp[..have + take]) {
                Ok(_) => self.len = 0,
                Err(e) if e.error_len().is_some() => return Err(Invalid),
                Err(_) => {
                    // Still incomplete: `data` was too short to finish it.
                    self.pending[have..have + take].copy_from_slice(&data[..take]);
                    self.len += take as u8;
                    return Ok(());
                }
            }
            data = &data[take..];
        }
        match simdutf8::compat::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(Invalid),
            Err(e) => {
                let rest = &data[e.valid_up_to()..];
                self.pending[..rest.len()].copy_from_slice(rest);
                self.len = rest.len() as u8;
                Ok(())
            }
        }
    }

    /// The message ended: a split code point left over is an error.
    pub fn finish(&mut self) -> Result<(), Invalid> {
        let ok = self.len == 0;
        *self = Self::default();
        if ok {
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    /// Validate a whole message in one go.
    pub fn validate(data: &[u8]) -> Result<(), Invalid> {
        simdutf8::basic::from_utf8(data)
            .map(|_| ())
            .map_err(|_| Invalid)
    }
}

/// Length of the sequence a lead byte starts (only called on a lead byte
/// that `simdutf8` already accepted as the start of an incomplete sequence).
fn width(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_in_pieces(data: &[u8], cut: usize) -> Result<(), Invalid> {
        let mut s = Utf8State::default();
        for piece in data.chunks(cut.max(1)) {
            s.feed(piece)?;
        }
        s.finish()
    }

    #[test]
    fn table() {
        let cases: &[(&[u8], bool)] = &[
            (b"", true),
            (b"hello", true),
            ("κόσμε".as_bytes(), true),
            ("\u{10FFFF}\u{FFFF}\u{7FF}".as_bytes(), true),
            (&[0xF0, 0x90, 0x80, 0x80], true),
            (&[0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xCF], false), // truncated at end
            (&[0xED, 0xA0, 0x80], false),                   // surrogate
            (&[0xF4, 0x90, 0x80, 0x80], false),             // above U+10FFFF
            (&[0xC0, 0xAF], false),                         // overlong
            (&[0xFF], false),
            (&[0x80], false),
        ];
        for (data, valid) in cases {
            for cut in 1..=data.len().max(1) {
                assert_eq!(
                    feed_in_pieces(data, cut).is_ok(),
                    *valid,
                    "{data:x?} cut {cut}"
                );
            }
            assert_eq!(Utf8State::validate(data).is_ok() && *valid, *valid);
        }
    }

    #[test]
    fn fails_fast_before_the_message_ends() {
        // Autobahn 6.4.x: a prefix that can never be valid fails at once.
        let mut s = Utf8State::default();
        s.feed("κόσμε".as_bytes()).unwrap();
        assert_eq!(s.feed(&[0xF4, 0x90]), Err(Invalid));
        let mut s = Utf8State::default();
        s.feed(&[0xF4]).unwrap();
        assert_eq!(s.feed(&[0x90]), Err(Invalid));
    }

    #[test]
    fn every_split_of_multibyte_text() {
        let text = "aé€😀z".repeat(3);
        let bytes = text.as_bytes();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let mut s = Utf8State::default();
                s.feed(&bytes[..i]).unwrap();
                s.feed(&bytes[i..j]).unwrap();
                s.feed(&bytes[j..]).unwrap();
                s.finish().unwrap();
            }
        }
    }
}
