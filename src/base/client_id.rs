//! Client ids a worker makes, held as a number.
//!
//! A worker names its connections `<prefix><n>`: a prefix of its own (a few
//! random characters, its index and `-`) and a count. Such an id needs no
//! string of its own: [`ClientPrefix::register`] gives the prefix a small
//! index in a process-wide table, and an id is then the index and the count,
//! packed in 63 bits ([`Packed`]). A member without a user or hooks' infos
//! holds only that number (issue 13: an anonymous session's identity costs
//! no allocation; docs/density.md). Any other id (one read back from another
//! node, a restored one, one past the limits here) stays a string: the two
//! forms render the same text and compare by it.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// How many prefixes the table holds (a process registers one per worker;
/// tests that start many in one process may use them up: later ones keep
/// their ids as strings).
const PREFIXES: usize = (1 << PREFIX_BITS) - 1;
const PREFIX_BITS: u32 = 12;
/// Longest prefix that gets an index (a worker's is 8-10 bytes).
const MAX_PREFIX: usize = 24;
/// Bits of the count: ids up to 2^51 - 1 (2 quadrillion connections of
/// one worker).
const COUNT_BITS: u32 = 63 - PREFIX_BITS;
/// Longest count rendered: 16 digits hold 2^51 - 1.
const MAX_DIGITS: usize = 16;
/// Longest rendered id.
const MAX_RENDERED: usize = MAX_PREFIX + MAX_DIGITS;

static TABLE: [OnceLock<Box<str>>; PREFIXES] = [const { OnceLock::new() }; PREFIXES];
static REGISTERED: AtomicUsize = AtomicUsize::new(0);

/// A prefix's index in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientPrefix(u16);

impl ClientPrefix {
    /// Give `prefix` an index; `None` when the table is full or the prefix
    /// is empty, too long or ends in a digit (then `<prefix><n>` would not
    /// say where the count starts).
    pub fn register(prefix: &str) -> Option<ClientPrefix> {
        let ok = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX
            && !prefix.as_bytes()[prefix.len() - 1].is_ascii_digit();
        if !ok {
            return None;
        }
        let i = REGISTERED.fetch_add(1, Ordering::Relaxed);
        if i >= PREFIXES {
            REGISTERED.store(PREFIXES, Ordering::Relaxed);
            return None;
        }
        // Only this call sets slot `i` (the counter handed it out once).
        TABLE[i].set(prefix.into()).ok()?;
        Some(ClientPrefix(i as u16))
    }

    fn text(self) -> &'static str {
        TABLE[self.0 as usize].get().map_or("", |s| s)
    }
}

/// A client id as a number: bit 0 set (so that it can share a word with
/// an aligned pointer, whose bit 0 is clear), the prefix's index in bits
/// 1-12, the count in bits 13-63.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packed(u64);

impl Packed {
    pub const TAG: u64 = 1;

    /// The id `<prefix><count>`, if the count fits.
    pub fn new(prefix: ClientPrefix, count: u64) -> Option<Packed> {
        (count < 1 << COUNT_BITS).then_some(Packed(
            Self::TAG | (prefix.0 as u64) << 1 | count << (1 + PREFIX_BITS),
        ))
    }

    /// `client` as a number, if it is a registered prefix followed by a
    /// count written as `Packed` renders it (no sign, no leading zero).
    pub fn parse(client: &str) -> Option<Packed> {
        let n = REGISTERED.load(Ordering::Relaxed).min(PREFIXES);
        for (i, slot) in TABLE[..n].iter().enumerate() {
            let Some(p) = slot.get() else { continue };
            let Some(rest) = client.strip_prefix(&**p) else {
                continue;
            };
            let b = rest.as_bytes();
            let canonical = !b.is_empty()
                && b.len() <= MAX_DIGITS
                && b.iter().all(u8::is_ascii_digit)
                && (b.len() == 1 || b[0] != b'0');
            // A prefix ends in a non-digit, so no other one can match with
            // a count after it: the first match is the only one.
            return if canonical {
                Packed::new(ClientPrefix(i as u16), rest.parse().ok()?)
            } else {
                None
            };
        }
        None
    }

    pub fn bits(self) -> u64 {
        self.0
    }

    /// The word, if it is one (`TAG` set).
    pub fn from_bits(bits: u64) -> Option<Packed> {
        (bits & Self::TAG != 0).then_some(Packed(bits))
    }

    fn render(self) -> ([u8; MAX_RENDERED], u8) {
        let index = (self.0 >> 1) & ((1 << PREFIX_BITS) - 1);
        let prefix = ClientPrefix(index as u16).text().as_bytes();
        let mut count = self.0 >> (1 + PREFIX_BITS);
        let mut digits = [0u8; MAX_DIGITS];
        let mut d = MAX_DIGITS;
        loop {
            d -= 1;
            digits[d] = b'0' + (count % 10) as u8;
            count /= 10;
            if count == 0 {
                break;
            }
        }
        let mut buf = [0u8; MAX_RENDERED];
        buf[..prefix.len()].copy_from_slice(prefix);
        let len = prefix.len() + MAX_DIGITS - d;
        buf[prefix.len()..len].copy_from_slice(&digits[d..]);
        (buf, len as u8)
    }
}

/// A client id's text: borrowed from a member that holds it as a string,
/// or rendered from a number on the stack.
#[derive(Clone, Copy)]
pub enum ClientName<'a> {
    Str(&'a str),
    Rendered([u8; MAX_RENDERED], u8),
}

impl<'a> ClientName<'a> {
    pub fn of(p: Packed) -> ClientName<'static> {
        let (buf, len) = p.render();
        ClientName::Rendered(buf, len)
    }
}

impl Deref for ClientName<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            ClientName::Str(s) => s,
            // Registered prefixes are `str`s and the count is ASCII digits:
            // never invalid; the empty string would be the outcome if it were.
            ClientName::Rendered(buf, len) => {
                std::str::from_utf8(&buf[..*len as usize]).unwrap_or_default()
            }
        }
    }
}

impl AsRef<str> for ClientName<'_> {
    fn as_ref(&self) -> &str {
        self
    }
}

impl PartialEq for ClientName<'_> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl PartialEq<str> for ClientName<'_> {
    fn eq(&self, other: &str) -> bool {
        &**self == other
    }
}

impl PartialEq<&str> for ClientName<'_> {
    fn eq(&self, other: &&str) -> bool {
        &**self == *other
    }
}

impl serde::Serialize for ClientName<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self)
    }
}

impl<'a> From<&'a str> for ClientName<'a> {
    fn from(s: &'a str) -> ClientName<'a> {
        ClientName::Str(s)
    }
}

impl fmt::Display for ClientName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl fmt::Debug for ClientName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_a_registered_prefix_round_trip_as_numbers() {
        let p = ClientPrefix::register("xQ3_z7w0-").expect("room in the table");
        for n in [0u64, 1, 9, 10, 12345, (1 << COUNT_BITS) - 1] {
            let text = format!("xQ3_z7w0-{n}");
            let packed = Packed::new(p, n).unwrap();
            assert_eq!(&*ClientName::of(packed), text);
            assert_eq!(Packed::parse(&text), Some(packed), "{text}");
            assert_eq!(packed.bits() & Packed::TAG, Packed::TAG);
        }
        assert_eq!(Packed::new(p, 1 << COUNT_BITS), None);
        // Not as the worker writes them: they stay strings.
        for text in [
            "xQ3_z7w0-",
            "xQ3_z7w0-01",
            "xQ3_z7w0-+1",
            "xQ3_z7w0-1a",
            "xQ3_z7w0-12345678901234567",
            "xQ3_z7w0-2251799813685248",
            "yQ3_z7w0-1",
            "xQ3_z7w0",
        ] {
            assert_eq!(Packed::parse(text), None, "{text}");
        }
    }

    #[test]
    fn prefixes_that_would_be_ambiguous_get_no_index() {
        assert_eq!(ClientPrefix::register(""), None);
        assert_eq!(ClientPrefix::register("abc1"), None);
        assert_eq!(ClientPrefix::register(&"a-".repeat(20)), None);
    }
}
