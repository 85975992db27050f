//! A bounded reader over bytes: every read checks what is left, so a short
//! or hostile input is an error, never a panic, and never allocates more
//! than the input holds. Integers are little-endian; a string is a u16
//! length and UTF-8. The handoff's records and the in-memory broker's
//! state read with it; each maps [`CursorError`] into its own error.

/// What a read found wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CursorError {
    /// The input ended before the field did.
    Short,
    /// A string that is not UTF-8.
    NotUtf8,
}

/// The bytes not read yet.
#[derive(Clone, Copy, Debug)]
pub struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor(bytes)
    }

    /// Bytes left.
    pub fn left(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CursorError> {
        if self.0.len() < n {
            return Err(CursorError::Short);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, CursorError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, CursorError> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(a))
    }

    pub fn u32(&mut self) -> Result<u32, CursorError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }

    pub fn u64(&mut self) -> Result<u64, CursorError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    /// A u16 length, then that many bytes of UTF-8.
    pub fn string(&mut self) -> Result<String, CursorError> {
        let n = self.u16()?;
        let b = self.take(usize::from(n))?;
        String::from_utf8(b.to_vec()).map_err(|_| CursorError::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_at_the_end_without_panic() {
        let mut c = Cursor::new(b"\x01\x02\x00\x03\x00\x00\x00\x02\x00h\xc3");
        assert_eq!(c.u8(), Ok(1));
        assert_eq!(c.u16(), Ok(2));
        assert_eq!(c.u32(), Ok(3));
        assert_eq!(c.left(), 4);
        let mut copy = c;
        assert_eq!(copy.u64(), Err(CursorError::Short));
        assert_eq!(c.string(), Err(CursorError::NotUtf8));
        assert!(c.is_empty());
        assert_eq!(c.take(1), Err(CursorError::Short));
        assert_eq!(Cursor::new(b"\x05\x00ab").string(), Err(CursorError::Short));
    }
}
