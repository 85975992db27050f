//! Per-worker pools of byte buffers, so that an idle connection holds none
//! and an active one borrows one without going to the allocator each time.

/// A free list of `Vec<u8>`s of at least `capacity` bytes. Buffers that grew
/// past `max_keep` (a 16 MiB message, say) are freed instead of pooled, and
/// at most `max_bytes` of capacity is kept: after a burst (a thousand
/// flooding clients' spills, grown to tens of KiB each) the pool must not
/// hold the burst's peak for good. Counting buffers was not enough: 1,024
/// spills of ~40 KiB kept 40 MiB per worker resident after the flood left
/// (`tests/memory_trim.rs`).
#[derive(Debug)]
pub struct BufPool {
    free: Vec<Vec<u8>>,
    capacity: usize,
    max_keep: usize,
    max_bytes: usize,
    /// Sum of the pooled buffers' capacities.
    bytes: usize,
}

impl BufPool {
    pub fn new(capacity: usize, max_keep: usize, max_bytes: usize) -> BufPool {
        BufPool {
            free: Vec::new(),
            capacity,
            max_keep,
            max_bytes,
            bytes: 0,
        }
    }

    /// An empty buffer with room for at least `capacity` bytes.
    pub fn get(&mut self) -> Vec<u8> {
        match self.free.pop() {
            Some(b) => {
                self.bytes -= b.capacity();
                b
            }
            None => Vec::with_capacity(self.capacity),
        }
    }

    /// Give a buffer back (freed instead when it is too big to keep or the
    /// pool holds its budget already).
    pub fn put(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() == 0
            || buf.capacity() > self.max_keep
            || self.bytes + buf.capacity() > self.max_bytes
        {
            return;
        }
        buf.clear();
        self.bytes += buf.capacity();
        self.free.push(buf);
    }

    /// Bytes of capacity waiting in the pool.
    pub fn pooled_bytes(&self) -> usize {
        self.bytes
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
        let mut p = BufPool::new(1024, 4096, 1040);
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
        assert_eq!(p.pooled(), 2, "the third did not fit the byte budget");
        assert_eq!(p.pooled_bytes(), 1034);
    }

    #[test]
    fn a_burst_of_grown_buffers_is_kept_only_up_to_the_budget() {
        // A thousand spills grown to 40 KiB each come back after a flood.
        let mut p = BufPool::new(4096, 1 << 20, 4 << 20);
        for _ in 0..1000 {
            p.put(Vec::with_capacity(40 << 10));
        }
        assert!(p.pooled_bytes() <= 4 << 20, "{}", p.pooled_bytes());
        assert_eq!(p.pooled(), (4 << 20) / (40 << 10));
        // Taking one out gives its bytes back to the budget.
        let before = p.pooled_bytes();
        let b = p.get();
        assert_eq!(p.pooled_bytes(), before - b.capacity());
    }
}
