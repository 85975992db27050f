//! Per-worker pools of byte buffers, so that an idle connection holds none
//! and an active one borrows one without going to the allocator each time.

/// A free list of `Vec<u8>`s of at least `capacity` bytes. Buffers that grew
/// past `max_keep` (a 16 MiB message, say) are freed instead of pooled, and
/// at most `max_pooled` are kept.
#[derive(Debug)]
pub struct BufPool {
    free: Vec<Vec<u8>>,
    capacity: usize,
    max_keep: usize,
    max_pooled: usize,
}

impl BufPool {
    pub fn new(capacity: usize, max_keep: usize, max_pooled: usize) -> BufPool {
        BufPool {
            free: Vec::new(),
            capacity,
            max_keep,
            max_pooled,
        }
    }

    /// An empty buffer with room for at least `capacity` bytes.
    pub fn get(&mut self) -> Vec<u8> {
        self.free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.capacity))
    }

    /// Give a buffer back.
    pub fn put(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() == 0
            || buf.capacity() > self.max_keep
            || self.free.len() >= self.max_pooled
        {
            return;
        }
        buf.clear();
        self.free.push(buf);
    }

    /// Buffers waiting in the pool.
    pub fn pooled(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_bounds() {
        let mut p = BufPool::new(1024, 4096, 2);
        let mut a = p.get();
        assert!(a.capacity() >= 1024);
        a.extend_from_slice(b"abc");
        let ptr = a.as_ptr();
        p.put(a);
        let b = p.get();
        assert!(b.is_empty());
        assert_eq!(b.as_ptr(), ptr, "the same allocation comes back");
        p.put(Vec::with_capacity(1 << 20)); // too big to keep
        assert_eq!(p.pooled(), 0);
        p.put(b);
        p.put(Vec::with_capacity(10));
        p.put(Vec::with_capacity(10));
        assert_eq!(p.pooled(), 2, "at most max_pooled kept");
    }
}
