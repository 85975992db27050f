//! A connection's frozen state, as bytes (issue 17, the live handoff):
//! each layer writes its part of a connection (`proto::Conn`, the
//! endpoint, the session) with a [`StateWriter`] and reads it back in the
//! next process with a [`StateReader`], a bounded cursor that never panics
//! on short or hostile input. Integers are little-endian; byte strings
//! are a u32 length and the bytes; strings are UTF-8 byte strings.
//!
//! Times never cross as instants: each process counts milliseconds from
//! its own start, so a time is frozen as an age (`now - t`) or a delay
//! (`t - now`) and rebased against the next process's clock.

use std::fmt;

use super::channel::Position;

/// What is wrong with frozen state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateError {
    /// Shorter than its fields say.
    Truncated,
    /// A field out of range (an unknown tag, a string not UTF-8...).
    Invalid(&'static str),
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Truncated => write!(f, "connection state truncated"),
            StateError::Invalid(what) => write!(f, "invalid connection state: {what}"),
        }
    }
}

impl std::error::Error for StateError {}

/// Appends fields to a record.
#[derive(Debug)]
pub struct StateWriter<'a>(pub &'a mut Vec<u8>);

impl StateWriter<'_> {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    pub fn bool(&mut self, v: bool) {
        self.0.push(u8::from(v));
    }

    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// A byte string (at most `u32::MAX` bytes: what a connection holds is
    /// bounded far below that by its limits).
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }

    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    /// An optional u64 (a flag byte, then the value).
    pub fn opt_u64(&mut self, v: Option<u64>) {
        self.bool(v.is_some());
        self.u64(v.unwrap_or(0));
    }

    /// An optional string.
    pub fn opt_str(&mut self, v: Option<&str>) {
        self.bool(v.is_some());
        self.str(v.unwrap_or(""));
    }

    /// Channels with their positions (a subscription list, a resume token).
    pub fn positions<'p>(&mut self, list: impl ExactSizeIterator<Item = (&'p str, &'p Position)>) {
        self.u32(list.len() as u32);
        for (channel, p) in list {
            self.str(channel);
            self.str(&p.epoch);
            self.u64(p.offset);
        }
    }
}

/// Reads fields back; every read checks what is left.
#[derive(Debug)]
pub struct StateReader<'a>(pub &'a [u8]);

impl<'a> StateReader<'a> {
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        if self.0.len() < n {
            return Err(StateError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.take(1)?[0])
    }

    pub fn bool(&mut self) -> Result<bool, StateError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(StateError::Invalid("boolean")),
        }
    }

    pub fn u16(&mut self) -> Result<u16, StateError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, StateError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Result<u64, StateError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], StateError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    pub fn string(&mut self) -> Result<String, StateError> {
        std::str::from_utf8(self.bytes()?)
            .map(str::to_owned)
            .map_err(|_| StateError::Invalid("string not UTF-8"))
    }

    pub fn opt_u64(&mut self) -> Result<Option<u64>, StateError> {
        let some = self.bool()?;
        let v = self.u64()?;
        Ok(some.then_some(v))
    }

    pub fn opt_string(&mut self) -> Result<Option<String>, StateError> {
        let some = self.bool()?;
        let v = self.string()?;
        Ok(some.then_some(v))
    }

    /// What [`StateWriter::positions`] wrote (each entry takes 16 bytes at
    /// least: a count beyond what is left is refused before allocating).
    pub fn positions(&mut self) -> Result<Vec<(String, Position)>, StateError> {
        let n = self.u32()? as usize;
        if n > self.0.len() / 16 {
            return Err(StateError::Truncated);
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let channel = self.string()?;
            let epoch = self.string()?;
            let offset = self.u64()?;
            v.push((channel, Position { epoch, offset }));
        }
        Ok(v)
    }

    /// Everything was read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_every_prefix_is_refused() {
        let mut b = Vec::new();
        let mut w = StateWriter(&mut b);
        w.u8(7);
        w.bool(true);
        w.u16(513);
        w.u32(70_000);
        w.u64(1 << 40);
        w.bytes(b"\x00\xff");
        w.str("é");
        w.opt_u64(None);
        w.opt_str(Some("x"));
        let read = |b: &[u8]| -> Result<_, StateError> {
            let mut r = StateReader(b);
            Ok((
                r.u8()?,
                r.bool()?,
                r.u16()?,
                r.u32()?,
                r.u64()?,
                r.bytes()?.to_vec(),
                r.string()?,
                r.opt_u64()?,
                r.opt_string()?,
                r.is_empty(),
            ))
        };
        assert_eq!(
            read(&b),
            Ok((
                7,
                true,
                513,
                70_000,
                1 << 40,
                vec![0, 255],
                "é".into(),
                None,
                Some("x".into()),
                true
            ))
        );
        for cut in 0..b.len() {
            assert!(read(&b[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_huge_length_is_truncated_not_allocated() {
        let b = [0xff, 0xff, 0xff, 0xff, 1];
        assert_eq!(StateReader(&b).bytes(), Err(StateError::Truncated));
        assert_eq!(
            StateReader(&[2]).bool(),
            Err(StateError::Invalid("boolean"))
        );
        assert_eq!(
            StateReader(&[1, 0, 0, 0, 0xff]).string(),
            Err(StateError::Invalid("string not UTF-8"))
        );
    }
}
