//! A connection's out queue: frames waiting for the socket, written with one
//! `writev` per flush (corking, as uWebSockets does).
//!
//! Owned bytes (replies, echoes, control frames) are appended to the last
//! owned chunk, so many small frames cost one allocation. Shared chunks
//! (`Arc<[u8]>`, a publication encoded once for many subscribers) are queued
//! by reference.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

use crate::proto::Output;

/// How many chunks go into one `writev` (Linux allows 1024; 64 covers a
/// burst without a large stack array).
const MAX_IOV: usize = 64;
/// A written owned chunk up to this capacity is kept for the next one
/// (one per queue; queues are pooled per worker: [`OutPool`]), so that an
/// echo or reply does not cost a malloc and a free each: measured 0.5 µs
/// per 16 KiB echo with glibc (docs/benchmarks.md).
const SPARE_MAX: usize = 32 * 1024;
/// Chunk-list capacity an empty pooled queue keeps.
const POOLED_CHUNKS: usize = 8;
/// Queues a worker's pool keeps however long it stays idle, and the
/// spare-buffer bytes the pooled queues may hold together. Beyond that
/// count, the pool keeps what the last burst returned (a fan-out to 15,000
/// subscribers takes 15,000 queues per publication, and allocated and
/// freed ~14,000 of them each time with a pool of 1,024) until a whole
/// [`OutPool::trim_idle`] period passes without the pool needing them.
const POOL_QUEUES: usize = 1024;
const POOL_SPARE_BYTES: usize = 1 << 20;

#[derive(Debug)]
enum Chunk {
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(a) => a,
        }
    }
}

/// Outcome of a flush.
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    /// Everything was written.
    Done,
    /// The kernel pushed back; wait for the socket to become writable.
    Blocked,
}

#[derive(Debug, Default)]
pub struct OutQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    head: usize,
    /// Bytes queued and not yet written.
    len: usize,
    /// An empty buffer to reuse for the next owned chunk.
    spare: Vec<u8>,
    /// With TLS: how many chunks at the front are records (encrypted by
    /// [`OutQueue::seal`] or queued by [`OutQueue::push_records`]); only
    /// those are written. Plaintext is never appended to them. Always 0
    /// without TLS.
    sealed: usize,
}

impl OutQueue {
    pub fn new() -> OutQueue {
        OutQueue::default()
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queue a shared frame.
    pub fn push_shared(&mut self, frame: Arc<[u8]>) {
        self.len += frame.len();
        self.chunks.push_back(Chunk::Shared(frame));
    }

    /// Queue `bytes` ahead of everything queued (echoes written straight
    /// from the read buffer that the socket did not take, when something
    /// was queued after them: `direct::write`). Only while nothing of the
    /// queue is written yet and no TLS record is sealed in it.
    pub fn put_front(&mut self, bytes: Vec<u8>) {
        debug_assert!(
            self.head == 0 && self.sealed == 0,
            "put_front behind a partial write"
        );
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        self.chunks.push_front(Chunk::Owned(bytes));
    }

    /// Write as much as the socket takes, `MAX_IOV` chunks per `writev`.
    pub fn flush<W: Write>(&mut self, w: &mut W) -> io::Result<Flush> {
        while self.len > 0 {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, c) in self.chunks.iter().take(MAX_IOV).enumerate() {
                let b = c.bytes();
                iov[i] = IoSlice::new(if i == 0 { &b[self.head..] } else { b });
                n += 1;
            }
            match w.write_vectored(&iov[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.consume(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flush::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Flush::Done)
    }

    fn consume(&mut self, mut written: usize) {
        self.len -= written;
        while written > 0 {
            let front = self.chunks.front().expect("written bytes were queued");
            let left = front.bytes().len() - self.head;
            if written >= left {
                written -= left;
                self.head = 0;
                self.sealed = self.sealed.saturating_sub(1);
                if let Some(Chunk::Owned(mut v)) = self.chunks.pop_front() {
                    if v.capacity() <= SPARE_MAX && v.capacity() > self.spare.capacity() {
                        v.clear();
                        self.spare = v;
                    }
                }
            } else {
                self.head += written;
                written = 0;
            }
        }
    }

    /// Drop everything queued (the connection is going away).
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.head = 0;
        self.len = 0;
        self.sealed = 0;
    }

    /// Every byte not yet written, in order, as one buffer (a frozen
    /// connection's queue, issue 17: shared frames are copied out).
    pub fn unwritten(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for (i, c) in self.chunks.iter().enumerate() {
            let b = c.bytes();
            v.extend_from_slice(if i == 0 { &b[self.head..] } else { b });
        }
        v
    }

    /// With TLS: is there plaintext not yet encrypted?
    pub fn has_plaintext(&self) -> bool {
        self.chunks.len() > self.sealed
    }

    /// With TLS: hand every plaintext chunk, in order, to `encrypt` (as
    /// up to `MAX_IOV` slices per call), which appends the records to its
    /// second argument; the records replace the plaintext in the queue.
    /// On an error the queue is as it was, less nothing: the caller
    /// decides ([`OutQueue::discard_plaintext`]).
    pub fn seal<E>(
        &mut self,
        mut encrypt: impl FnMut(&[&[u8]], &mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        if !self.has_plaintext() {
            return Ok(());
        }
        let mut records = std::mem::take(&mut self.spare);
        let mut plain = 0;
        let mut from = self.sealed;
        while from < self.chunks.len() {
            let mut slices: [&[u8]; MAX_IOV] = [&[]; MAX_IOV];
            let mut n = 0;
            for (i, c) in self.chunks.iter().enumerate().skip(from).take(MAX_IOV) {
                // Written bytes of the front chunk are never plaintext: a
                // TLS queue writes only records.
                let b = if i == 0 {
                    &c.bytes()[self.head..]
                } else {
                    c.bytes()
                };
                plain += b.len();
                slices[n] = b;
                n += 1;
            }
            if let Err(e) = encrypt(&slices[..n], &mut records) {
                self.spare = records;
                self.spare.clear();
                return Err(e);
            }
            from += n;
        }
        for c in self.chunks.drain(self.sealed..) {
            if let Chunk::Owned(mut v) = c {
                if v.capacity() <= SPARE_MAX && v.capacity() > self.spare.capacity() {
                    v.clear();
                    self.spare = v;
                }
            }
        }
        if self.sealed == 0 {
            self.head = 0;
        }
        self.len = self.len - plain + records.len();
        if !records.is_empty() {
            self.chunks.push_back(Chunk::Owned(records));
        }
        self.sealed = self.chunks.len();
        Ok(())
    }

    /// With TLS: queue records (handshake messages, alerts, a
    /// close_notify) behind the records already queued and ahead of any
    /// plaintext, which is encrypted later and so goes after them.
    pub fn push_records(&mut self, records: &[u8]) {
        if records.is_empty() {
            return;
        }
        self.len += records.len();
        self.chunks
            .insert(self.sealed, Chunk::Owned(records.to_vec()));
        self.sealed += 1;
    }

    /// With TLS: drop the plaintext not yet encrypted (the session failed:
    /// it can be encrypted no more).
    pub fn discard_plaintext(&mut self) {
        let records: usize = self
            .chunks
            .iter()
            .take(self.sealed)
            .map(|c| c.bytes().len())
            .sum();
        self.chunks.truncate(self.sealed);
        if self.sealed == 0 {
            self.head = 0;
        }
        self.len = records - self.head;
    }

    /// Make an empty queue cheap to keep in a pool: the chunk list goes
    /// back to a small capacity (a slow subscriber's list can reach
    /// thousands of entries), and the spare buffer goes unless `keep_spare`.
    pub fn trim(&mut self, keep_spare: bool) {
        debug_assert!(self.is_empty(), "only an empty queue is pooled");
        self.clear();
        self.chunks.shrink_to(POOLED_CHUNKS);
        if !keep_spare {
            self.spare = Vec::new();
        }
    }

    /// Heap bytes this queue holds while empty (its pooled cost).
    pub fn held_bytes(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Chunk>() + self.spare.capacity()
    }
}

/// A worker's empty out queues, so that a connection holds one only while
/// it has bytes to write.
///
/// Sized to the last burst and trimmed when idle: every queue given back
/// is kept (there are never more than were out at once, at most one per
/// connection), and [`OutPool::trim_idle`], called every
/// `POOL_TRIM_MS` by the worker, frees those beyond `POOL_QUEUES` that
/// stayed pooled through the whole period. A fan-out every few seconds
/// reuses its queues; an idle worker holds 1,024. The spare buffers the
/// pooled queues keep are bounded (`POOL_SPARE_BYTES`) whatever their
/// count.
#[derive(Debug, Default)]
pub struct OutPool {
    #[allow(clippy::vec_box)] // a queue moves in and out of a connection as a Box
    queues: Vec<Box<OutQueue>>,
    spare_bytes: usize,
    /// The fewest queues pooled since the last trim: that many went unused.
    low: usize,
}

impl OutPool {
    pub fn pop(&mut self) -> Box<OutQueue> {
        match self.queues.pop() {
            Some(q) => {
                self.spare_bytes -= q.spare.capacity();
                self.low = self.low.min(self.queues.len());
                q
            }
            None => {
                self.low = 0;
                Box::default()
            }
        }
    }

    /// Take back an empty queue.
    pub fn push(&mut self, mut q: Box<OutQueue>) {
        let keep_spare = self.spare_bytes + q.spare.capacity() <= POOL_SPARE_BYTES;
        q.trim(keep_spare);
        self.spare_bytes += q.spare.capacity();
        self.queues.push(q);
    }

    /// Does the pool hold more than it keeps when idle (so that the worker
    /// wakes to trim it)?
    pub fn over_idle_size(&self) -> bool {
        self.queues.len() > POOL_QUEUES
    }

    /// End of a period: free the queues beyond `POOL_QUEUES` that no one
    /// took since the last call (the last given back first: the first
    /// ones kept the spare buffers while the budget lasted). Returns how
    /// many were freed.
    pub fn trim_idle(&mut self) -> usize {
        let unused = self.low.min(self.queues.len().saturating_sub(POOL_QUEUES));
        let keep = self.queues.len() - unused;
        for q in self.queues.drain(keep..) {
            self.spare_bytes -= q.spare.capacity();
        }
        if unused > 0 && self.queues.capacity() > 2 * self.queues.len().max(POOL_QUEUES) {
            self.queues.shrink_to(self.queues.len().max(POOL_QUEUES));
        }
        self.low = self.queues.len();
        unused
    }

    /// Queues pooled.
    pub fn len(&self) -> usize {
        self.queues.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Heap bytes held by the pooled queues.
    pub fn held_bytes(&self) -> usize {
        self.queues.iter().map(|q| 8 + q.held_bytes()).sum()
    }
}

impl OutQueue {
    /// The owned chunk new bytes go to: the last one, or a new one (the
    /// spare buffer when it is big enough) for at least `need` bytes.
    fn owned_back(&mut self, need: usize) -> &mut Vec<u8> {
        // Not onto the front chunk once part of it is written: its written
        // bytes are freed only when all of it is, so a queue that is never
        // quite empty (a reader a little slower than a ping flood) kept every
        // byte it ever sent in one growing chunk. A new chunk bounds what is
        // held to about twice what is unwritten.
        let writing_back = self.chunks.len() == 1 && self.head > 0;
        // Never onto a TLS record.
        let onto_record = self.chunks.len() <= self.sealed;
        if writing_back || onto_record || !matches!(self.chunks.back(), Some(Chunk::Owned(_))) {
            let v = if self.spare.capacity() >= need {
                std::mem::take(&mut self.spare)
            } else {
                Vec::with_capacity(need.max(256))
            };
            self.chunks.push_back(Chunk::Owned(v));
        }
        match self.chunks.back_mut() {
            Some(Chunk::Owned(v)) => v,
            _ => unreachable!("an owned chunk was just ensured"),
        }
    }
}

impl Output for OutQueue {
    fn queued(&self) -> usize {
        self.len
    }

    fn put(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        self.owned_back(bytes.len()).extend_from_slice(bytes);
    }

    fn reserve(&mut self, additional: usize) {
        self.owned_back(additional).reserve(additional);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `cap` bytes per call, then blocks.
    struct Trickle {
        got: Vec<u8>,
        cap: usize,
        budget: usize,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.cap - n).min(self.budget - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
            }
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn owned_and_shared_in_order_across_partial_writes() {
        let mut q = OutQueue::new();
        let shared: Arc<[u8]> = Arc::from(&b"SHARED"[..]);
        q.put(b"ab");
        q.put(b"cd");
        q.push_shared(shared.clone());
        q.put(b"ef");
        q.push_shared(shared);
        assert_eq!(q.len(), 18);
        let mut w = Trickle {
            got: Vec::new(),
            cap: 5,
            budget: 7,
            calls: 0,
        };
        assert_eq!(q.flush(&mut w).unwrap(), Flush::Blocked);
        assert_eq!(q.len(), 11);
        // A frozen queue (issue 17): what is left, from inside a chunk.
        assert_eq!(q.unwritten(), b"REDefSHARED");
        w.budget = 100;
        assert_eq!(q.flush(&mut w).unwrap(), Flush::Done);
        assert_eq!(w.got, b"abcdSHAREDefSHARED");
        assert!(q.is_empty());
    }

    #[test]
    fn a_queue_that_never_empties_holds_only_about_what_is_unwritten() {
        // A reader a little slower than the writer, as under a ping flood:
        // the server queues 64 KiB of pongs per read (pausing its reads over
        // 1 MiB queued, as the worker does) and the socket takes 60 KiB per
        // flush, so the queue never empties. Memory must follow what is
        // unwritten, not what was ever sent (all of it, before the fix).
        let mut q = OutQueue::new();
        let mut w = Trickle {
            got: Vec::new(),
            cap: usize::MAX,
            budget: 0,
            calls: 0,
        };
        let frame = [7u8; 127];
        let mut most = 0;
        for _ in 0..2000 {
            if q.len() <= 1 << 20 {
                for _ in 0..516 {
                    q.put(&frame); // 64 KiB of pongs
                }
            }
            most = most.max(q.len());
            w.budget = 60 * 1024;
            assert_eq!(q.flush(&mut w).unwrap(), Flush::Blocked);
            w.got.clear();
        }
        let held: usize = q.chunks.iter().map(|c| c.bytes().len()).sum();
        assert!(
            held <= 2 * most,
            "{held} bytes held for {} unwritten (at most {most})",
            q.len()
        );
    }

    #[test]
    fn many_small_frames_one_writev() {
        let mut q = OutQueue::new();
        for _ in 0..1000 {
            q.put(b"0123456789");
        }
        let mut w = Trickle {
            got: Vec::new(),
            cap: usize::MAX,
            budget: usize::MAX,
            calls: 0,
        };
        q.flush(&mut w).unwrap();
        assert_eq!((w.calls, w.got.len()), (1, 10_000));
    }

    /// An echo (header, then a 16 KiB payload, with the size announced)
    /// takes one allocation, and the next one reuses it once the first is
    /// written; a buffer over `SPARE_MAX` is not kept.
    #[test]
    fn a_written_buffer_is_reused_and_frames_are_reserved_whole() {
        use crate::proto::Output;
        let mut w = Trickle {
            got: Vec::new(),
            cap: usize::MAX,
            budget: usize::MAX,
            calls: 0,
        };
        let payload = vec![7u8; 16 * 1024];
        let mut q = OutQueue::new();
        crate::proto::frame::put_frame(&mut q, crate::proto::frame::OpCode::Binary, &payload);
        let (ptr, cap) = match q.chunks.back() {
            Some(Chunk::Owned(v)) => (v.as_ptr(), v.capacity()),
            _ => panic!("one owned chunk"),
        };
        assert_eq!(q.chunks.len(), 1);
        assert_eq!(cap, 4 + payload.len(), "reserved whole: no regrowth");
        q.flush(&mut w).unwrap();
        assert!(q.is_empty());
        q.put(b"next");
        match q.chunks.back() {
            Some(Chunk::Owned(v)) => assert_eq!(v.as_ptr(), ptr, "the spare buffer is reused"),
            _ => panic!("one owned chunk"),
        }
        q.flush(&mut w).unwrap();

        q.reserve(SPARE_MAX + 1);
        q.put(&vec![1u8; SPARE_MAX + 1]);
        q.flush(&mut w).unwrap();
        assert!(q.spare.capacity() <= SPARE_MAX, "a big buffer is not kept");
        assert_eq!(w.got.len(), 4 + payload.len() + 4 + SPARE_MAX + 1);
    }

    /// A queue that carried a burst (a long chunk list, a big buffer) and
    /// was written out: what the pool keeps of it is bounded, however many
    /// such queues come back.
    #[test]
    fn the_pool_keeps_little_after_a_burst() {
        use crate::proto::Output;
        let mut w = Trickle {
            got: Vec::new(),
            cap: usize::MAX,
            budget: usize::MAX,
            calls: 0,
        };
        let mut pool = OutPool::default();
        let mut queues = Vec::new();
        for _ in 0..POOL_QUEUES + 100 {
            let mut q = pool.pop();
            // A slow subscriber's backlog: many shared frames, then one
            // owned burst that leaves a 32 KiB spare behind.
            let frame: Arc<[u8]> = Arc::from(&b"frame"[..]);
            for _ in 0..1000 {
                q.push_shared(frame.clone());
            }
            q.put(&[1u8; 30 * 1024]);
            assert_eq!(q.flush(&mut w).unwrap(), Flush::Done);
            w.got.clear();
            assert!(q.held_bytes() > 50_000, "the burst left memory behind");
            queues.push(q);
        }
        for q in queues {
            pool.push(q);
        }
        // Two idle periods: the one the burst happened in, then one in
        // which nobody took a queue.
        assert_eq!(pool.trim_idle(), 0, "the burst's period used them all");
        assert_eq!(pool.trim_idle(), 100);
        let limit =
            POOL_QUEUES * (8 + POOLED_CHUNKS * std::mem::size_of::<Chunk>()) + POOL_SPARE_BYTES;
        assert!(
            pool.held_bytes() <= limit,
            "{} > {limit}",
            pool.held_bytes()
        );
        // Up to the budget, queues keep their spare for reuse.
        let with_spare = (0..POOL_QUEUES)
            .map(|_| pool.pop())
            .filter(|q| q.spare.capacity() >= 30 * 1024)
            .count();
        assert_eq!(with_spare, POOL_SPARE_BYTES / (30 * 1024));
    }

    /// A fan-out far wider than the idle pool (15,000 subscribers, each
    /// queue taken, a frame queued and written, the queue given back) takes
    /// the same queues again at the next publication: nothing is allocated
    /// per delivery. They stay while fan-outs keep coming, and once a whole
    /// period passes without one the pool is back to its idle size.
    #[test]
    fn a_wide_fan_out_reuses_its_queues_until_the_pool_is_idle() {
        use std::collections::HashSet;
        let mut w = Trickle {
            got: Vec::new(),
            cap: usize::MAX,
            budget: usize::MAX,
            calls: 0,
        };
        let frame: Arc<[u8]> = Arc::from(&b"publication"[..]);
        let mut pool = OutPool::default();
        let mut fan_out = |pool: &mut OutPool| -> HashSet<usize> {
            let queues: Vec<Box<OutQueue>> = (0..15_000)
                .map(|_| {
                    let mut q = pool.pop();
                    q.push_shared(frame.clone());
                    q
                })
                .collect();
            let addrs = queues
                .iter()
                .map(|q| &**q as *const OutQueue as usize)
                .collect();
            for mut q in queues {
                assert_eq!(q.flush(&mut w).unwrap(), Flush::Done);
                pool.push(q);
            }
            w.got.clear();
            addrs
        };
        let first = fan_out(&mut pool);
        for _ in 0..3 {
            assert_eq!(fan_out(&mut pool), first, "the same queues, none new");
            assert_eq!(pool.trim_idle(), 0, "a period with a fan-out keeps them");
        }
        assert_eq!(pool.len(), 15_000);
        // A whole period without a fan-out: back to the idle size.
        assert_eq!(pool.trim_idle(), 15_000 - POOL_QUEUES);
        assert_eq!(pool.len(), POOL_QUEUES);
        assert!(!pool.over_idle_size());
        assert_eq!(pool.trim_idle(), 0, "the idle size is kept");
    }

    /// A stand-in for TLS: a "record" is `[` + the plaintext + `]`.
    fn bracket(chunks: &[&[u8]], out: &mut Vec<u8>) -> Result<(), ()> {
        out.push(b'[');
        for c in chunks {
            out.extend_from_slice(c);
        }
        out.push(b']');
        Ok(())
    }

    #[test]
    fn sealed_records_go_out_in_order_and_plaintext_never_joins_them() {
        let mut q = OutQueue::new();
        q.put(b"ab");
        q.push_shared(Arc::from(&b"cd"[..]));
        q.seal(bracket).unwrap();
        assert!(!q.has_plaintext());
        assert_eq!(q.len(), 6);
        // Plaintext queued after a seal starts a chunk of its own.
        q.put(b"ef");
        assert!(q.has_plaintext());
        // Records pushed now (a KeyUpdate, an alert) go ahead of that
        // plaintext, which is encrypted after them.
        q.push_records(b"<ku>");
        q.seal(bracket).unwrap();
        let mut w = Trickle {
            got: Vec::new(),
            cap: 3,
            budget: 100,
            calls: 0,
        };
        assert_eq!(q.flush(&mut w).unwrap(), Flush::Done);
        assert_eq!(w.got, b"[abcd]<ku>[ef]");
        assert!(q.is_empty());
    }

    #[test]
    fn a_partly_written_record_stays_and_failed_plaintext_is_dropped() {
        let mut q = OutQueue::new();
        q.put(b"hello");
        q.seal(bracket).unwrap();
        let mut w = Trickle {
            got: Vec::new(),
            cap: 3,
            budget: 3,
            calls: 0,
        };
        assert_eq!(q.flush(&mut w).unwrap(), Flush::Blocked);
        assert_eq!(q.len(), 4);
        q.put(b"more");
        assert_eq!(q.len(), 8);
        // The session failed: the plaintext goes, the record's rest stays.
        assert_eq!(q.seal(|_, _| Err::<(), _>("failed")), Err("failed"));
        assert_eq!(q.len(), 8, "a failed seal leaves the queue as it was");
        q.discard_plaintext();
        assert_eq!(q.len(), 4);
        let mut w2 = Trickle {
            got: Vec::new(),
            cap: 100,
            budget: 100,
            calls: 0,
        };
        assert_eq!(q.flush(&mut w2).unwrap(), Flush::Done);
        assert_eq!([w.got, w2.got].concat(), b"[hello]");
    }
}
