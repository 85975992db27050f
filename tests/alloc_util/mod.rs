//! A counting allocator for memory tests: the live heap bytes requested
//! (malloc's own headers and rounding not included), and the same as
//! glibc's malloc chunks ([`live_chunks`]: header and rounding included,
//! what RSS pays). A test crate installs
//! it with `#[global_allocator] static A: alloc_util::Counting =
//! alloc_util::Counting;` and keeps to one test function, since it counts
//! every thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

pub struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static CHUNKS: AtomicIsize = AtomicIsize::new(0);

/// The chunk glibc's malloc (x86_64) takes for `size` bytes: an 8-byte
/// header, rounded up to 16, at least 32.
fn chunk(size: usize) -> isize {
    ((size + 8 + 15) & !15).max(32) as isize
}

// SAFETY: forwards to the system allocator; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        CHUNKS.fetch_add(chunk(l.size()), Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        CHUNKS.fetch_sub(chunk(l.size()), Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        CHUNKS.fetch_add(chunk(new) - chunk(l.size()), Ordering::Relaxed);
        // SAFETY: as for `realloc` itself.
        unsafe { System.realloc(p, l, new) }
    }
}

/// Heap bytes live now.
pub fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Bytes of malloc chunks live now (see [`chunk`]).
#[allow(dead_code)] // not every test crate asks
pub fn live_chunks() -> isize {
    CHUNKS.load(Ordering::Relaxed)
}
