//! A hashed timing wheel: O(1) insert and cancel, and an `advance` whose cost
//! grows with what it expires, not with the number of timers.
//!
//! The wheel is sans-clock, like the rest of the core: the caller passes the
//! current time in as `u64` milliseconds (any epoch, monotonic) and gets the
//! expired values back. It drives the per-connection deadlines of a worker
//! (handshake deadline, ping interval, pong deadline, idle timeout, close
//! linger); see `DESIGN.md`, "Timers".
//!
//! # Structure
//!
//! * Time is cut into ticks of `tick_ms` milliseconds. Tick `t` covers
//!   `[t * tick_ms, (t + 1) * tick_ms)`. The wheel has `slots` slots (a power
//!   of two); tick `t` maps to slot `t & (slots - 1)`. One *rotation* is
//!   `slots * tick_ms` milliseconds.
//! * Every timer is an entry in a `Vec`-based arena with a free list (freed
//!   entries are reused, last freed first). Links are `u32` arena indices with
//!   `u32::MAX` as nil.
//! * Each slot is the head of an intrusive doubly-linked list threaded through
//!   the entries. The first entry of a list has, instead of a `prev` index, the
//!   number of its slot (tagged with the top bit), so cancel can unlink any
//!   entry in O(1) without searching and without storing the slot separately.
//! * A bitmap with one bit per slot says which slots are non-empty, so
//!   [`TimerWheel::next_expiry`] and long jumps in [`TimerWheel::advance`] skip
//!   64 empty slots per word read.
//! * An entry with deadline `d` lives in the slot of tick `d / tick_ms`. A
//!   deadline that is already due (`d <= now`) goes into the slot of the
//!   current tick, which the next `advance` always visits, so it fires then.
//!
//! `advance(now)` visits the slots of the ticks from the current one up to
//! `now`'s (at most `slots` of them: after one full rotation every slot has
//! been visited, so a long sleep costs at most one rotation of slot visits).
//! In each visited slot it walks the list and fires every entry whose deadline
//! is `<= now`. Entries of the visited slot that are not yet due stay: they
//! either belong to a later rotation or fall later in the current tick. This
//! per-entry check is what makes firing exact (never early, never late with
//! respect to `now`) rather than rounded to a tick.
//!
//! # Cost
//!
//! * `insert`, `cancel`: O(1).
//! * `advance`: O(expired + entries sharing the visited slots + visited slots
//!   / 64). Deadlines farther than one rotation stay in their slot and are
//!   skipped (after a deadline check) each time their slot is visited, so
//!   **callers should keep deadlines within one rotation** (choose
//!   `slots * tick_ms` above the longest timeout in use) for the best cost.
//! * `next_expiry`: O(1) when nothing is pending, otherwise at most
//!   `slots / 64` bitmap words; it never looks at the entries.
//!
//! # Memory
//!
//! The wheel holds 4 bytes (list head) plus 1 bit (bitmap) per slot, and one
//! [`Entry`] per timer: 12 bytes of bookkeeping (three `u32`s: the two
//! 24-bit links, the 8-bit generation and the 39-bit deadline packed in
//! them) plus `Option<T>`. For a 4-byte value that is never zero
//! (`NonZeroU32`: the worker's connection slots) an entry is 16 bytes; for
//! `T = u32` 20, for `T = u64` 32. The arena keeps its high-water mark
//! (freed entries are reused, not returned).
//!
//! # Keys and reuse
//!
//! A [`TimerKey`] is 4 bytes: the arena index (low 24 bits, so at most
//! 2^24 - 1 = 16,777,215 live timers per wheel) and an 8-bit generation (high 8
//! bits). Freeing an entry (fire or cancel) bumps its generation, so the key
//! of a fired or cancelled timer does not cancel the next timer that reuses
//! the entry: a stale key is rejected for the next 255 reuses of its entry.
//! Callers should still drop a key once its value has fired (the fired value
//! tells them which timer it was); the generation is a guard, not a licence.
//!
//! # Limits
//!
//! Deadlines are stored on 39 bits: a deadline above `2^39 - 1` ms (about
//! 17.4 years on the caller's clock; the worker's starts at 0) is clamped to
//! it. Time never runs backwards: an
//! `advance` to an instant before the last one is treated as an advance to
//! the last one.

use std::fmt;
use std::num::NonZeroU32;

/// Bits of a [`TimerKey`] (and of a link) that hold the arena index.
const INDEX_BITS: u32 = 24;
/// Mask of the arena index in a key.
const INDEX_MASK: u32 = (1 << INDEX_BITS) - 1;
/// Most entries the arena can hold.
const MAX_ENTRIES: usize = (1 << INDEX_BITS) - 1;
/// Most slots a wheel can have (a slot number must fit beside `HEAD`).
const MAX_SLOTS: usize = 1 << INDEX_BITS;
/// Nil link (end of a slot list, end of the free list, empty slot).
const NIL: u32 = u32::MAX;
/// Tag of a `prev` link that holds a slot number: the entry is its list's head.
const HEAD: u32 = 1 << 31;
/// Bits of the deadline: 32 in `Entry::lo`, 7 in `Entry::prev`.
const DEADLINE_BITS: u32 = 39;
/// Bits 24..31 of `Entry::prev`: the deadline's high 7 bits.
const HIGH_MASK: u32 = !(HEAD | INDEX_MASK);
/// The end of a list in `Entry::next`'s 24 link bits.
const LINK_NIL: u32 = INDEX_MASK;
/// Largest deadline the wheel stores; later ones are clamped to it.
const MAX_DEADLINE: u64 = (1 << DEADLINE_BITS) - 1;

/// Handle to a scheduled timer, returned by [`TimerWheel::insert`] and taken
/// by [`TimerWheel::cancel`].
///
/// Packs the arena index (low 24 bits) and the entry's generation (high 8
/// bits), so a key whose timer has fired or been cancelled does not cancel a
/// later timer that reuses the same entry.
///
/// Stored plus one, so that `Option<TimerKey>` is 4 bytes (a connection
/// holds one); the arena stops one entry short of 2^24 so that the sum
/// never wraps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerKey(NonZeroU32);

impl TimerKey {
    fn new(index: u32, generation: u8) -> Self {
        let packed = u32::from(generation) << INDEX_BITS | index;
        debug_assert!(index < INDEX_MASK, "index 2^24 - 1 is never used");
        TimerKey(NonZeroU32::new(packed.wrapping_add(1)).expect("index < 2^24 - 1"))
    }

    fn packed(self) -> u32 {
        self.0.get() - 1
    }

    fn index(self) -> usize {
        (self.packed() & INDEX_MASK) as usize
    }

    fn generation(self) -> u8 {
        // The shift leaves exactly the 8 generation bits.
        (self.packed() >> INDEX_BITS) as u8
    }
}

/// One timer (or one free cell) of the arena: 12 bytes of bookkeeping in
/// three `u32`s, so that with a 4-byte payload (the worker's connection
/// slot) an entry is 16 bytes (it was 24 with a `u64` stamp and an 8-byte
/// token: every connection has one armed with heartbeats on).
///
/// * `lo`: the deadline's low 32 bits.
/// * `next`: the next entry of the slot list, or of the free list (low 24
///   bits, [`LINK_NIL`] at the end), and the generation (high 8 bits, kept
///   while the entry is free).
/// * `prev`: the previous entry of the slot list, or `HEAD | slot` for the
///   first entry (bit 31 and the low 24 bits), and the deadline's high
///   7 bits (bits 24..31). Unused while free.
///
/// `size_of::<Entry<NonZeroU32>>() == 16`, `size_of::<Entry<u64>>() == 32`.
#[derive(Debug)]
struct Entry<T> {
    lo: u32,
    next: u32,
    prev: u32,
    /// The payload; `None` exactly when the entry is free.
    value: Option<T>,
}

impl<T> Entry<T> {
    fn deadline(&self) -> u64 {
        u64::from((self.prev & HIGH_MASK) >> INDEX_BITS) << 32 | u64::from(self.lo)
    }

    /// `deadline` is at most [`MAX_DEADLINE`].
    fn set_deadline(&mut self, deadline: u64) {
        self.lo = deadline as u32; // the low half; the high 7 bits below
        self.prev = (self.prev & !HIGH_MASK) | ((deadline >> 32) as u32) << INDEX_BITS;
    }

    fn generation(&self) -> u8 {
        // The shift leaves exactly the 8 generation bits.
        (self.next >> INDEX_BITS) as u8
    }

    fn set_generation(&mut self, g: u8) {
        self.next = (self.next & INDEX_MASK) | u32::from(g) << INDEX_BITS;
    }

    /// The next entry, or `NIL`.
    fn next(&self) -> u32 {
        unpack_link(self.next & INDEX_MASK)
    }

    fn set_next(&mut self, link: u32) {
        self.next = (self.next & !INDEX_MASK) | pack_link(link);
    }

    /// The previous entry, or `HEAD | slot`.
    fn prev(&self) -> u32 {
        self.prev & (HEAD | INDEX_MASK)
    }

    /// `link` is an entry's index or `HEAD | slot`.
    fn set_prev(&mut self, link: u32) {
        debug_assert!(link & HIGH_MASK == 0, "an index or HEAD | slot");
        self.prev = (self.prev & HIGH_MASK) | link;
    }
}

/// `NIL` (a `u32` link) as the 24 bits of `Entry::next`, and back: index
/// 2^24 - 1 is never used ([`MAX_ENTRIES`]), so it is the end of a list.
fn pack_link(link: u32) -> u32 {
    if link == NIL {
        LINK_NIL
    } else {
        link
    }
}

fn unpack_link(bits: u32) -> u32 {
    if bits == LINK_NIL {
        NIL
    } else {
        bits
    }
}

/// A hashed timing wheel holding values of type `T`; see the module docs.
pub struct TimerWheel<T> {
    /// Length of a tick, in ms (> 0).
    tick_ms: u64,
    /// `slots - 1`; `slots` is a power of two.
    mask: u64,
    /// First entry of each slot's list, or `NIL`.
    heads: Box<[u32]>,
    /// One bit per slot, set when the slot's list is non-empty.
    occupied: Box<[u64]>,
    /// The arena.
    entries: Vec<Entry<T>>,
    /// First free entry, or `NIL`.
    free: u32,
    /// Live timers.
    len: usize,
    /// Time of the last `advance` (or of `new`).
    now_ms: u64,
    /// `now_ms / tick_ms`.
    tick: u64,
    /// An entry already due at insertion was added since the last `advance`.
    due: bool,
    /// Entries examined by the last `advance`.
    scanned: usize,
}

impl<T> TimerWheel<T> {
    /// Bytes of one armed timer in the arena (for density accounting).
    pub const ENTRY_BYTES: usize = std::mem::size_of::<Entry<T>>();

    /// Creates an empty wheel.
    ///
    /// `tick_ms` is the granularity; `slots` is the number of slots, rounded
    /// up to a power of two (at least 1); `now_ms` is the current time.
    ///
    /// # Panics
    ///
    /// If `tick_ms` is 0 or `slots` exceeds 2^24.
    #[must_use]
    pub fn new(tick_ms: u64, slots: usize, now_ms: u64) -> Self {
        assert!(tick_ms > 0, "timer wheel tick must be at least 1 ms");
        assert!(slots <= MAX_SLOTS, "timer wheel has at most 2^24 slots");
        let slots = slots.max(1).next_power_of_two();
        TimerWheel {
            tick_ms,
            mask: slots as u64 - 1,
            heads: vec![NIL; slots].into_boxed_slice(),
            occupied: vec![0; slots.div_ceil(64)].into_boxed_slice(),
            entries: Vec::new(),
            free: NIL,
            len: 0,
            now_ms,
            tick: now_ms / tick_ms,
            due: false,
            scanned: 0,
        }
    }

    /// Schedules `value` to fire at `deadline_ms`. A deadline that is not
    /// after the time of the last `advance` fires at the next `advance`.
    ///
    /// # Panics
    ///
    /// If 2^24 - 1 timers are already live.
    pub fn insert(&mut self, deadline_ms: u64, value: T) -> TimerKey {
        let deadline = deadline_ms.min(MAX_DEADLINE);
        let tick = if deadline <= self.now_ms {
            self.due = true;
            self.tick
        } else {
            deadline / self.tick_ms
        };
        let slot = (tick & self.mask) as u32;

        let index = if self.free != NIL {
            let index = self.free;
            let entry = &mut self.entries[index as usize];
            self.free = entry.next();
            entry.set_deadline(deadline);
            entry.value = Some(value);
            index
        } else {
            assert!(
                self.entries.len() < MAX_ENTRIES,
                "timer wheel full (2^24 - 1 live timers)"
            );
            let index = self.entries.len() as u32;
            let mut entry = Entry {
                lo: 0,
                next: LINK_NIL,
                prev: 0,
                value: Some(value),
            };
            entry.set_deadline(deadline);
            self.entries.push(entry);
            index
        };
        self.link(index, slot);
        self.len += 1;
        TimerKey::new(index, self.entries[index as usize].generation())
    }

    /// Cancels the timer of `key` and returns its value, or returns `None` if
    /// it has already fired or been cancelled. O(1).
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        let entry = self.entries.get(key.index())?;
        if entry.value.is_none() || entry.generation() != key.generation() {
            return None;
        }
        let index = key.index() as u32;
        self.unlink(index);
        Some(self.release(index))
    }

    /// Is the timer of `key` still pending (neither fired nor cancelled)?
    #[must_use]
    pub fn is_pending(&self, key: TimerKey) -> bool {
        self.entries
            .get(key.index())
            .is_some_and(|e| e.value.is_some() && e.generation() == key.generation())
    }

    /// Advances to `now_ms` and pushes every value whose deadline is
    /// `<= now_ms` into `fired` (not necessarily in deadline order).
    ///
    /// Visits the slots of the ticks from the last `advance` to `now_ms`, at
    /// most `slots` of them however far time jumped.
    pub fn advance(&mut self, now_ms: u64, fired: &mut Vec<T>) {
        self.scanned = 0;
        let now = now_ms.max(self.now_ms);
        let new_tick = now / self.tick_ms;
        let slots = self.heads.len();
        // Ticks `self.tick ..= new_tick`, but no slot twice.
        let count = (new_tick - self.tick).saturating_add(1).min(slots as u64) as usize;
        let start = (self.tick & self.mask) as usize;
        let mut done = 0;
        while let Some(skip) = self.find_occupied((start + done) & (slots - 1), count - done) {
            self.expire_slot((start + done + skip) & (slots - 1), now, fired);
            done += skip + 1;
        }
        self.now_ms = now;
        self.tick = new_tick;
        self.due = false;
    }

    /// The earliest instant at which [`advance`](Self::advance) could fire
    /// something, for the poll timeout; `None` when the wheel is empty.
    ///
    /// Conservative: it is the start of the first tick whose slot is
    /// non-empty (or the end of the current tick, if that is the current
    /// tick's slot; or the time of the last `advance`, if an already-due
    /// timer was inserted since). It is never later than the earliest
    /// deadline rounded up to a tick, and, once `advance` has run, never
    /// earlier than the time of that `advance` plus 1 ms.
    #[must_use]
    pub fn next_expiry(&self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        if self.due {
            return Some(self.now_ms);
        }
        let slots = self.heads.len();
        // `len > 0` means some slot is non-empty, so this finds one.
        let skip = self
            .find_occupied((self.tick & self.mask) as usize, slots)
            .unwrap_or(0);
        // The current tick's slot may hold entries due later in this tick
        // (they are not due yet: `due` is false), so its answer is the end of
        // the tick; any other slot's entries are due no sooner than its tick.
        let tick = self.tick.saturating_add(skip.max(1) as u64);
        Some(tick.saturating_mul(self.tick_ms))
    }

    /// Number of live timers.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is live.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of entries the last [`advance`](Self::advance) examined (fired
    /// or skipped): its cost, for metrics and tests.
    #[must_use]
    pub fn scanned(&self) -> usize {
        self.scanned
    }

    /// Fires the due entries of `slot`, keeps the others.
    fn expire_slot(&mut self, slot: usize, now: u64, fired: &mut Vec<T>) {
        let mut cur = self.heads[slot];
        while cur != NIL {
            let entry = &self.entries[cur as usize];
            let next = entry.next();
            self.scanned += 1;
            if entry.deadline() <= now {
                self.unlink(cur);
                fired.push(self.release(cur));
            }
            cur = next;
        }
    }

    /// Distance from `start` (cyclically) to the first non-empty slot, if it
    /// is less than `limit`. Reads the bitmap a word at a time.
    fn find_occupied(&self, start: usize, limit: usize) -> Option<usize> {
        let slots = self.heads.len();
        let mut pos = start;
        let mut dist = 0;
        while dist < limit {
            // Bits past `slots` are never set, and a wrap back into the word
            // of `start` only finds bits below `start` (those above were
            // read, empty, at the beginning).
            let bits = self.occupied[pos / 64] >> (pos % 64);
            if bits != 0 {
                let found = dist + bits.trailing_zeros() as usize;
                return (found < limit).then_some(found);
            }
            let step = (64 - pos % 64).min(slots - pos);
            dist += step;
            pos = (pos + step) & (slots - 1);
        }
        None
    }

    /// Pushes entry `index` at the front of `slot`'s list.
    fn link(&mut self, index: u32, slot: u32) {
        let old_head = self.heads[slot as usize];
        if old_head == NIL {
            self.occupied[slot as usize / 64] |= 1 << (slot % 64);
        } else {
            self.entries[old_head as usize].set_prev(index);
        }
        let entry = &mut self.entries[index as usize];
        entry.set_prev(HEAD | slot);
        entry.set_next(old_head);
        self.heads[slot as usize] = index;
    }

    /// Removes live entry `index` from its slot's list.
    fn unlink(&mut self, index: u32) {
        let entry = &self.entries[index as usize];
        let (prev, next) = (entry.prev(), entry.next());
        if next != NIL {
            self.entries[next as usize].set_prev(prev);
        }
        if prev & HEAD != 0 {
            let slot = (prev & !HEAD) as usize;
            self.heads[slot] = next;
            if next == NIL {
                self.occupied[slot / 64] &= !(1 << (slot % 64));
            }
        } else {
            self.entries[prev as usize].set_next(next);
        }
    }

    /// Frees unlinked live entry `index`: takes its value, bumps its
    /// generation and pushes it on the free list.
    fn release(&mut self, index: u32) -> T {
        let entry = &mut self.entries[index as usize];
        let value = entry.value.take();
        let generation = entry.generation().wrapping_add(1);
        entry.set_generation(generation);
        entry.set_next(self.free);
        self.free = index;
        self.len -= 1;
        // Invariant: only live entries (value `Some`) are unlinked/released.
        value.expect("released a free timer entry")
    }
}

impl<T> fmt::Debug for TimerWheel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerWheel")
            .field("tick_ms", &self.tick_ms)
            .field("slots", &self.heads.len())
            .field("now_ms", &self.now_ms)
            .field("len", &self.len)
            .field("capacity", &self.entries.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn advance(wheel: &mut TimerWheel<u64>, now: u64) -> Vec<u64> {
        let mut fired = Vec::new();
        wheel.advance(now, &mut fired);
        fired.sort_unstable();
        fired
    }

    /// Tiny xorshift64* PRNG: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn entry_and_key_sizes() {
        assert_eq!(std::mem::size_of::<Entry<u64>>(), 32);
        assert_eq!(std::mem::size_of::<Entry<u32>>(), 20);
        // What a worker stores (a connection's slot, never zero): 16 B,
        // was 24 (a `u64` stamp and the 8-byte token).
        assert_eq!(std::mem::size_of::<Entry<NonZeroU32>>(), 16);
        assert_eq!(std::mem::size_of::<TimerKey>(), 4);
    }

    /// Deadlines use all 39 bits (the high 7 beside a link), neighbours'
    /// links survive a deadline's write, and a later deadline is clamped.
    #[test]
    fn deadlines_keep_their_high_bits_and_clamp() {
        let base = (1u64 << 38) + (1 << 33) + 5; // bits in both halves
        let mut wheel = TimerWheel::new(16, 64, base);
        let a = wheel.insert(base + 100, 1u64);
        assert!(wheel.is_pending(a));
        wheel.insert(base + 50, 2); // another slot
        wheel.insert(base + 100 + 16 * 64, 3); // in front of `a` in its slot: next rotation
        assert_eq!(wheel.entries[a.index()].deadline(), base + 100);
        assert_eq!(advance(&mut wheel, base + 99), [2]);
        assert_eq!(advance(&mut wheel, base + 100), [1]);
        assert!(!wheel.is_pending(a), "fired");
        assert_eq!(advance(&mut wheel, base + 100 + 16 * 64 - 1), [0u64; 0]);
        assert_eq!(advance(&mut wheel, base + 100 + 16 * 64), [3]);
        let far = wheel.insert(u64::MAX, 4);
        assert_eq!(wheel.entries[far.index()].deadline(), MAX_DEADLINE);
        assert_eq!(advance(&mut wheel, MAX_DEADLINE - 1), [0u64; 0]);
        assert_eq!(advance(&mut wheel, MAX_DEADLINE), [4]);
        // The generation and the free list survived all of it.
        assert_eq!(wheel.cancel(far), None);
        let again = wheel.insert(base, 5);
        assert_ne!(again, far, "a reused entry has a new generation");
    }

    #[test]
    fn slots_round_up_to_power_of_two() {
        let cases: &[(usize, usize)] = &[(0, 1), (1, 1), (3, 4), (64, 64), (65, 128), (1000, 1024)];
        for &(asked, got) in cases {
            let wheel = TimerWheel::<u64>::new(10, asked, 0);
            assert_eq!(wheel.heads.len(), got, "slots {asked}");
        }
    }

    #[test]
    fn fires_exactly_at_deadline_not_before() {
        // (tick_ms, slots, start, deadline)
        let cases: &[(u64, usize, u64, u64)] = &[
            (10, 8, 0, 10),     // tick-aligned
            (10, 8, 0, 15),     // mid-tick
            (10, 8, 0, 1),      // within the first tick
            (10, 8, 3, 7),      // later in the current tick
            (10, 8, 0, 79),     // last tick of the rotation
            (10, 8, 0, 80),     // exactly one rotation
            (1, 1, 0, 5),       // a single slot
            (7, 3, 1000, 1003), // odd sizes
            (10, 64, 12_345, 12_999),
            (1, 4096, u64::from(u32::MAX), u64::from(u32::MAX) + 4000),
        ];
        for &(tick, slots, start, deadline) in cases {
            let mut wheel = TimerWheel::new(tick, slots, start);
            wheel.insert(deadline, 7);
            // Step 1 ms at a time up to just before the deadline.
            for now in start..deadline {
                assert_eq!(
                    advance(&mut wheel, now),
                    [0u64; 0],
                    "{tick} {slots} {start} {deadline} at {now}"
                );
            }
            assert_eq!(
                advance(&mut wheel, deadline),
                [7],
                "{tick} {slots} {start} {deadline}"
            );
            assert!(wheel.is_empty());
            assert_eq!(wheel.next_expiry(), None);
        }
    }

    #[test]
    fn fires_at_deadline_when_jumping() {
        // Same, but the first advance lands just before the deadline.
        let cases: &[(u64, usize, u64)] = &[
            (10, 8, 10),
            (10, 8, 15),
            (10, 8, 75),
            (10, 8, 300),
            (3, 2, 100),
        ];
        for &(tick, slots, deadline) in cases {
            let mut wheel = TimerWheel::new(tick, slots, 0);
            wheel.insert(deadline, 1);
            assert_eq!(advance(&mut wheel, deadline - 1), [0u64; 0], "{deadline}");
            assert_eq!(advance(&mut wheel, deadline), [1], "{deadline}");
        }
    }

    #[test]
    fn cancel_returns_value_and_prevents_firing() {
        let mut wheel = TimerWheel::new(10, 8, 0);
        let a = wheel.insert(30, 1);
        let b = wheel.insert(30, 2);
        let c = wheel.insert(30, 3);
        // Cancel the middle, the head and the tail of the same slot list.
        for (key, value) in [(b, 2), (c, 3), (a, 1)] {
            assert_eq!(wheel.cancel(key), Some(value));
            assert_eq!(wheel.cancel(key), None, "double cancel");
        }
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_expiry(), None);
        assert_eq!(advance(&mut wheel, 1000), [0u64; 0]);

        let mut wheel = TimerWheel::new(10, 8, 0);
        let keys: Vec<_> = (0..5).map(|i| wheel.insert(20 + i, i)).collect();
        assert_eq!(wheel.cancel(keys[2]), Some(2));
        assert_eq!(wheel.len(), 4);
        assert_eq!(advance(&mut wheel, 100), [0, 1, 3, 4]);
        assert_eq!(wheel.cancel(keys[0]), None, "cancel after fire");
    }

    #[test]
    fn stale_key_does_not_cancel_reused_entry() {
        // After fire.
        let mut wheel = TimerWheel::new(10, 8, 0);
        let old = wheel.insert(10, 1);
        assert_eq!(advance(&mut wheel, 10), [1]);
        let new = wheel.insert(50, 2);
        assert_eq!(old.index(), new.index(), "entry is reused");
        assert_ne!(old, new);
        assert_eq!(wheel.cancel(old), None);
        assert_eq!(wheel.len(), 1);
        assert_eq!(advance(&mut wheel, 50), [2]);

        // After cancel, through many reuses (less than the generation period).
        let mut wheel = TimerWheel::new(10, 8, 0);
        let old = wheel.insert(10, 0);
        assert_eq!(wheel.cancel(old), Some(0));
        for i in 1..256 {
            let key = wheel.insert(10, i);
            assert_eq!(key.index(), old.index());
            assert_eq!(wheel.cancel(old), None, "reuse {i}");
            assert_eq!(wheel.cancel(key), Some(i));
        }
        // Out-of-range index.
        assert_eq!(wheel.cancel(TimerKey::new(12345, 0)), None);
        // A connection holds an `Option<TimerKey>`: 4 bytes, thanks to the
        // niche of the stored-plus-one key.
        assert_eq!(std::mem::size_of::<Option<TimerKey>>(), 4);
    }

    #[test]
    fn past_deadline_fires_on_next_advance() {
        // (start, deadline, next advance)
        let cases: &[(u64, u64, u64)] = &[
            (100, 0, 100),
            (100, 99, 100),
            (100, 100, 100),
            (105, 101, 105),
            (100, 50, 101),
        ];
        for &(start, deadline, next) in cases {
            let mut wheel = TimerWheel::new(10, 8, start);
            wheel.insert(deadline, 9);
            assert_eq!(wheel.next_expiry(), Some(start), "{start} {deadline}");
            assert_eq!(advance(&mut wheel, next), [9], "{start} {deadline}");
        }
        // Also after the wheel has moved on.
        let mut wheel = TimerWheel::new(10, 8, 0);
        assert_eq!(advance(&mut wheel, 1234), [0u64; 0]);
        wheel.insert(5, 1);
        wheel.insert(1234, 2);
        wheel.insert(1235, 3);
        assert_eq!(advance(&mut wheel, 1234), [1, 2]);
        assert_eq!(advance(&mut wheel, 1235), [3]);
    }

    #[test]
    fn deadlines_beyond_one_rotation() {
        // Rotation = 8 * 10 = 80 ms.
        let deadlines = [85, 160, 161, 250, 799, 800, 10_000];
        let mut wheel = TimerWheel::new(10, 8, 0);
        for &d in &deadlines {
            wheel.insert(d, d);
        }
        let mut fired = Vec::new();
        for now in 0..=10_000 {
            let got = advance(&mut wheel, now);
            for &d in &got {
                assert_eq!(d, now, "fired at {now}, deadline {d}");
            }
            fired.extend(got);
        }
        assert_eq!(fired, deadlines);
        assert!(wheel.is_empty());
    }

    #[test]
    fn big_jumps_fire_everything_due() {
        // (tick, slots, jump): jumps of 10 rotations and around the edge of
        // exactly one rotation.
        let cases: &[(u64, usize, u64)] = &[
            (10, 8, 800),
            (10, 8, 79),
            (10, 8, 80),
            (10, 8, 81),
            (10, 8, 89),
            (10, 8, 90),
            (1, 1, 10),
            (5, 64, 3200),
            (5, 64, 320),
            (5, 64, 321),
            (5, 200, 12_800),
        ];
        for &(tick, slots, jump) in cases {
            let rotation = tick * slots.next_power_of_two() as u64;
            let start = 3;
            let mut wheel = TimerWheel::new(tick, slots, start);
            // Deadlines spread over 12 rotations after start.
            let deadlines: Vec<u64> = (1..12 * rotation).step_by(3).map(|d| start + d).collect();
            for &d in &deadlines {
                wheel.insert(d, d);
            }
            let now = start + jump;
            let due: Vec<u64> = deadlines.iter().copied().filter(|&d| d <= now).collect();
            assert_eq!(advance(&mut wheel, now), due, "{tick} {slots} {jump}");
            assert_eq!(wheel.len(), deadlines.len() - due.len());
            // Afterwards, 1 ms steps fire each of the rest exactly on time.
            for step in 1..=2 * rotation {
                for d in advance(&mut wheel, now + step) {
                    assert_eq!(d, now + step, "{tick} {slots} {jump}");
                }
            }
        }
    }

    #[test]
    fn next_expiry_simple_cases() {
        // (start, deadlines, expected) with tick 10, 8 slots.
        let cases: &[(u64, &[u64], Option<u64>)] = &[
            (0, &[], None),
            (0, &[30], Some(30)),
            (0, &[35], Some(30)),
            (0, &[35, 12], Some(10)),
            (0, &[5], Some(10)), // current tick: end of the tick
            (3, &[7], Some(10)),
            (0, &[0], Some(0)), // already due
            (50, &[20, 90], Some(50)),
            (0, &[85], Some(10)), // next rotation shares slot 0: conservative
            (5, &[75], Some(70)),
            (100, &[135], Some(130)),
        ];
        for &(start, deadlines, expected) in cases {
            let mut wheel = TimerWheel::new(10, 8, start);
            for &d in deadlines {
                wheel.insert(d, d);
            }
            assert_eq!(wheel.next_expiry(), expected, "{start} {deadlines:?}");
            if let Some(at) = expected {
                let earliest = deadlines.iter().min().copied().unwrap_or(0);
                assert!(at <= earliest.div_ceil(10) * 10 || at == start);
            }
        }
        // Following next_expiry never busy-loops and reaches every deadline.
        let mut wheel = TimerWheel::new(10, 8, 0);
        wheel.insert(85, 85);
        wheel.insert(300, 300);
        let mut fired = Vec::new();
        let mut wakeups = 0;
        while let Some(at) = wheel.next_expiry() {
            wakeups += 1;
            assert!(wakeups < 100);
            fired.extend(advance(&mut wheel, at));
        }
        assert_eq!(fired, [85, 300]);
        // Cancelling the last timer empties it.
        let mut wheel = TimerWheel::new(10, 8, 0);
        let key = wheel.insert(40, 1);
        assert_eq!(wheel.next_expiry(), Some(40));
        wheel.cancel(key);
        assert_eq!(wheel.next_expiry(), None);
    }

    #[test]
    fn random_ops_match_btreemap_model() {
        let tick = 10;
        let slots = 64; // rotation 640 ms
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut now = 1_000_000;
        let mut wheel = TimerWheel::new(tick, slots, now);
        // (deadline, value) -> key; values are unique.
        let mut model: BTreeMap<(u64, u64), TimerKey> = BTreeMap::new();
        // Live timers for picking cancels: (key, deadline, value).
        let mut live: Vec<(TimerKey, u64, u64)> = Vec::new();
        let mut stale: Vec<TimerKey> = Vec::new();
        let mut next_value = 0;
        let mut fired = Vec::new();
        for op in 0..100_000 {
            match rng.below(100) {
                0..=49 => {
                    let deadline = match rng.below(10) {
                        0 => now.saturating_sub(rng.below(1000)), // past or now
                        1..=2 => now + rng.below(20 * tick * slots as u64), // far
                        _ => now + rng.below(tick * slots as u64), // within a rotation
                    };
                    let value = next_value;
                    next_value += 1;
                    let key = wheel.insert(deadline, value);
                    model.insert((deadline, value), key);
                    live.push((key, deadline, value));
                }
                50..=69 if !live.is_empty() => {
                    let (key, deadline, value) =
                        live.swap_remove(rng.below(live.len() as u64) as usize);
                    assert_eq!(wheel.cancel(key), Some(value), "op {op}");
                    assert_eq!(model.remove(&(deadline, value)), Some(key));
                    stale.push(key);
                }
                70..=74 if !stale.is_empty() => {
                    let key = stale[rng.below(stale.len() as u64) as usize];
                    assert_eq!(wheel.cancel(key), None, "op {op}: stale key");
                }
                _ => {
                    now += match rng.below(20) {
                        0 => rng.below(30 * tick * slots as u64), // long sleep
                        1 => 0,
                        _ => rng.below(3 * tick),
                    };
                    fired.clear();
                    wheel.advance(now, &mut fired);
                    fired.sort_unstable();
                    let rest = model.split_off(&(now + 1, 0));
                    let mut due: Vec<u64> = model.keys().map(|&(_, v)| v).collect();
                    due.sort_unstable();
                    stale.extend(model.values().copied());
                    model = rest;
                    assert_eq!(fired, due, "op {op} at {now}");
                    live.retain(|&(_, d, _)| d > now);
                    // Never a busy loop: after an advance the next expiry is later.
                    if let Some(at) = wheel.next_expiry() {
                        assert!(at > now, "op {op}");
                    }
                }
            }
            assert_eq!(wheel.len(), model.len(), "op {op}");
            // next_expiry is never later than the earliest deadline rounded up.
            match (wheel.next_expiry(), model.keys().next()) {
                (None, None) => {}
                (Some(at), Some(&(d, _))) => {
                    assert!(
                        at <= d.max(now).div_ceil(tick) * tick,
                        "op {op}: {at} vs {d}"
                    );
                }
                (got, want) => panic!("op {op}: next_expiry {got:?}, model {want:?}"),
            }
            if stale.len() > 1000 {
                stale.drain(..500);
            }
        }
        // Drain.
        let end = now + 100 * tick * slots as u64;
        let mut rest = advance(&mut wheel, end);
        let mut want: Vec<u64> = model.keys().map(|&(_, v)| v).collect();
        want.sort_unstable();
        rest.sort_unstable();
        assert_eq!(rest, want);
        assert!(wheel.is_empty());
    }

    #[test]
    fn million_timers_quiet_tick_costs_nothing() {
        let tick = 10;
        let slots = 4096; // rotation ~41 s
        let start = 5_000;
        let mut wheel = TimerWheel::new(tick, slots, start);
        let mut rng = Rng(42);
        let current = start / tick;
        for i in 0..1_000_000 {
            // Deadlines in ticks current+2 ..= current+slots-1: within one
            // rotation, none in the current tick nor the next one.
            let t = current + 2 + rng.below(slots as u64 - 2);
            wheel.insert(t * tick + rng.below(tick), i);
        }
        assert_eq!(wheel.len(), 1_000_000);
        let mut fired = Vec::new();
        wheel.advance(start + tick, &mut fired);
        assert_eq!(fired.len(), 0);
        assert_eq!(wheel.scanned(), 0);
        assert_eq!(wheel.len(), 1_000_000);
        // The next tick does have work, proportional to its slot only.
        wheel.advance(start + 2 * tick + tick - 1, &mut fired);
        assert!(!fired.is_empty());
        assert_eq!(wheel.scanned(), fired.len());
        assert!(fired.len() < 1_000, "{}", fired.len());
        assert_eq!(wheel.len(), 1_000_000 - fired.len());
    }
}
