//! The Fossil delta format: encode (a port of Fossil's `delta_create`) and a
//! bounded, strict apply.
//!
//! Fossil's `src/delta.c` (D. Richard Hipp, Simplified BSD License) is the
//! reference; its format (`www/delta_format.wiki`):
//!
//! ```text
//! delta   = size "\n" *command checksum ";"
//! command = count "@" offset ","      copy count bytes of the source from offset
//!         / count ":" <count bytes>   insert the bytes that follow
//! ```
//!
//! Numbers are unsigned, in base 64 with the digits
//! `0-9 A-Z _ a-z ~`, most significant first. `size` is the target's
//! length; `checksum` is the sum, modulo 2³², of the target read as
//! big-endian 32-bit words (the last one padded with zeros).
//!
//! [`Encoder::encode`] is `delta_create` byte for byte (checked against the
//! `fossil test-delta-create` outputs in `tests/data/fossil/`). It hashes
//! bytes as C's `char` on x86, that is signed: bytes ≥ 0x80 weigh
//! `byte − 256`. Implementations that hash them unsigned (Fossil on ARM,
//! the Go and JavaScript ports) find the same copies in ASCII text and may
//! pick other, equally valid, ones elsewhere; every correct apply accepts
//! every correct delta.
//!
//! [`Encoder::encode_text`] is the same search with one constraint: a copy
//! never starts or ends inside a UTF-8 character of the target. Every
//! inserted run is then whole characters, so the delta of a valid UTF-8
//! target is valid UTF-8 (its commands are ASCII) and can travel as a JSON
//! string ([`super::wire`]). On ASCII targets the two are identical.

use std::fmt;

/// The width of the hash window, in bytes (`NHASH`).
const NHASH: usize = 16;

/// Candidate source blocks examined per target position (`limit` in
/// `delta_create`).
const MAX_CANDIDATES: usize = 250;

/// Base-64 digits, in value order.
const DIGITS: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";

/// Why a delta did not apply. Every malformed or foreign delta ends in one
/// of these: [`apply`] never panics and never allocates more than its
/// `max_output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyError {
    /// The size line is missing or not ended by `\n`.
    BadHeader,
    /// The declared size is over the caller's limit.
    TooLarge { size: u64, max: usize },
    /// A number has more digits than a 32-bit value.
    NumberOverflow,
    /// A character that is no command (`@`, `:`, `;`) where one is due.
    UnknownCommand(u8),
    /// A copy not followed by `,`.
    UnterminatedCopy,
    /// A copy reaching past the end of the source.
    CopyOutOfSource,
    /// An insert longer than the rest of the delta.
    InsertPastEnd,
    /// The commands produce more bytes than the size line says.
    OutputOverflow,
    /// The commands produce fewer bytes than the size line says.
    SizeMismatch,
    /// The output's checksum is not the one the delta carries: the delta
    /// was made against another source.
    BadChecksum,
    /// The delta ends before its checksum.
    Unterminated,
    /// Bytes after the checksum.
    TrailingBytes,
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::BadHeader => f.write_str("size not terminated by a newline"),
            ApplyError::TooLarge { size, max } => {
                write!(f, "declared size {size} over the limit {max}")
            }
            ApplyError::NumberOverflow => f.write_str("number over 32 bits"),
            ApplyError::UnknownCommand(c) => write!(f, "unknown delta command {c:#04x}"),
            ApplyError::UnterminatedCopy => f.write_str("copy command not terminated by ','"),
            ApplyError::CopyOutOfSource => f.write_str("copy extends past the end of the source"),
            ApplyError::InsertPastEnd => f.write_str("insert count exceeds the delta"),
            ApplyError::OutputOverflow => f.write_str("output larger than declared"),
            ApplyError::SizeMismatch => f.write_str("output smaller than declared"),
            ApplyError::BadChecksum => f.write_str("bad checksum"),
            ApplyError::Unterminated => f.write_str("unterminated delta"),
            ApplyError::TrailingBytes => f.write_str("bytes after the checksum"),
        }
    }
}

impl std::error::Error for ApplyError {}

/// An input the format cannot describe: its sizes are 32-bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLong;

impl fmt::Display for TooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("input over 2 GiB: the delta format cannot describe it")
    }
}

impl std::error::Error for TooLong {}

/// The longest source or target [`Encoder`] takes. Fossil's encoder keeps
/// offsets in C `int`s; the format itself allows 32 bits.
pub const MAX_INPUT: usize = i32::MAX as usize;

/// A byte as Fossil's hash sees it: C `char`, signed on x86.
#[inline]
fn hv(b: u8) -> u16 {
    b as i8 as i16 as u16
}

/// The rolling hash over a 16-byte window (`struct hash`): `a` is the sum
/// of the window, `b` the sum weighted 16, 15, …, 1, both modulo 2¹⁶.
struct RollingHash {
    a: u16,
    b: u16,
    i: usize,
    z: [u8; NHASH],
}

impl RollingHash {
    fn new(window: &[u8]) -> RollingHash {
        let mut z = [0u8; NHASH];
        z.copy_from_slice(&window[..NHASH]);
        let (a, b) = sums(&z);
        RollingHash { a, b, i: 0, z }
    }

    /// Slide the window one byte: `c` enters, the oldest byte leaves.
    #[inline]
    fn next(&mut self, c: u8) {
        let old = hv(self.z[self.i]);
        self.z[self.i] = c;
        self.i = (self.i + 1) & (NHASH - 1);
        self.a = self.a.wrapping_sub(old).wrapping_add(hv(c));
        self.b = self
            .b
            .wrapping_sub((NHASH as u16).wrapping_mul(old))
            .wrapping_add(self.a);
    }

    #[inline]
    fn value(&self) -> u32 {
        u32::from(self.a) | (u32::from(self.b) << 16)
    }
}

/// `hash_init`'s sums over one window.
#[inline]
fn sums(w: &[u8; NHASH]) -> (u16, u16) {
    let mut a = hv(w[0]);
    let mut b = a;
    for &c in &w[1..] {
        a = a.wrapping_add(hv(c));
        b = b.wrapping_add(a);
    }
    (a, b)
}

/// `hash_once`: the hash of the 16 bytes at the start of `z`.
#[inline]
fn hash_once(z: &[u8]) -> u32 {
    let mut w = [0u8; NHASH];
    w.copy_from_slice(&z[..NHASH]);
    let (a, b) = sums(&w);
    u32::from(a) | (u32::from(b) << 16)
}

/// Append `v` in base 64 (`putInt`).
fn put_int(out: &mut Vec<u8>, mut v: u32) {
    if v == 0 {
        out.push(b'0');
        return;
    }
    let mut buf = [0u8; 6];
    let mut n = 0;
    while v > 0 {
        buf[n] = DIGITS[(v & 0x3f) as usize];
        n += 1;
        v >>= 6;
    }
    out.extend(buf[..n].iter().rev());
}

/// Append an insert command: `lit` as it is.
fn put_insert(out: &mut Vec<u8>, lit: &[u8]) {
    // Lengths fit 31 bits (inputs are at most MAX_INPUT).
    put_int(out, lit.len() as u32);
    out.push(b':');
    out.extend_from_slice(lit);
}

/// Digits of `v` in base 64 (`digit_count`).
#[inline]
fn digit_count(v: usize) -> usize {
    let mut i = 1;
    let mut x = 64usize;
    while v >= x {
        i += 1;
        x <<= 6;
    }
    i
}

/// The delta checksum of `z`: the sum of its big-endian 32-bit words, the
/// last one padded with zeros, modulo 2³².
pub fn checksum(z: &[u8]) -> u32 {
    let mut chunks = z.chunks_exact(4);
    let mut sum = 0u32;
    for w in &mut chunks {
        sum = sum.wrapping_add(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let mut tail = [0u8; 4];
    let rest = chunks.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    sum.wrapping_add(u32::from_be_bytes(tail))
}

/// The size a delta declares (`delta_output_size`), if its first line is
/// one.
pub fn output_size(delta: &[u8]) -> Option<u32> {
    let mut r = Reader { d: delta, pos: 0 };
    let size = r.int().ok()?;
    (r.byte() == Some(b'\n')).then_some(size)
}

/// A chosen copy: `cnt` bytes of the source from `ofst`, after `litsz`
/// literal bytes.
#[derive(Clone, Copy)]
struct Best {
    cnt: usize,
    ofst: usize,
    litsz: usize,
}

/// Encodes deltas, keeping its hash table between calls (one per worker:
/// no allocation per publication once it has seen the largest source).
#[derive(Debug, Default)]
pub struct Encoder {
    /// `collide` then `landmark`, as in `delta_create`.
    table: Vec<u32>,
}

/// No entry in the hash table.
const NONE: u32 = u32::MAX;

/// Is `b` a UTF-8 continuation byte (`10xxxxxx`)?
#[inline]
fn is_continuation(b: u8) -> bool {
    b & 0xc0 == 0x80
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// Append the delta that turns `source` into `target` to `out`, byte
    /// for byte what Fossil's `delta_create` writes.
    pub fn encode(
        &mut self,
        source: &[u8],
        target: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TooLong> {
        self.run(source, target, out, false)
    }

    /// Like [`Encoder::encode`], but no copy starts or ends inside a UTF-8
    /// character of `target`: the delta of a valid UTF-8 target is valid
    /// UTF-8.
    pub fn encode_text(
        &mut self,
        source: &[u8],
        target: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TooLong> {
        self.run(source, target, out, true)
    }

    fn run(
        &mut self,
        src: &[u8],
        tgt: &[u8],
        out: &mut Vec<u8>,
        text: bool,
    ) -> Result<(), TooLong> {
        if src.len() > MAX_INPUT || tgt.len() > MAX_INPUT {
            return Err(TooLong);
        }
        let len_out = tgt.len();
        // Both lengths fit 31 bits (checked above).
        put_int(out, len_out as u32);
        out.push(b'\n');

        // A source this small can never be copied from: one literal.
        if src.len() <= NHASH {
            put_insert(out, tgt);
            put_int(out, checksum(tgt));
            out.push(b';');
            return Ok(());
        }

        // Index the source: one landmark per 16-byte block (the last
        // partial one, and a last whole one ending exactly at the end, are
        // not indexed, as in delta_create).
        let n_hash = src.len() / NHASH;
        self.table.clear();
        self.table.resize(2 * n_hash, NONE);
        let (collide, landmark) = self.table.split_at_mut(n_hash);
        let mut i = 0;
        while i < src.len() - NHASH {
            let h = (hash_once(&src[i..]) % n_hash as u32) as usize;
            collide[i / NHASH] = landmark[h];
            landmark[h] = (i / NHASH) as u32;
            i += NHASH;
        }

        // Scan the target: everything before tgt[base] is written.
        let mut base = 0usize;
        while base + NHASH < len_out {
            let mut h = RollingHash::new(&tgt[base..]);
            let mut i = 0usize; // matching a landmark against tgt[base + i]
            loop {
                let mut best: Option<Best> = None;
                let mut block = landmark[(h.value() % n_hash as u32) as usize];
                let mut limit = MAX_CANDIDATES;
                while block != NONE && limit > 0 {
                    limit -= 1;
                    let i_src = block as usize * NHASH;
                    let y = base + i;
                    // Forward from src[i_src] / tgt[y]: fwd bytes match.
                    let limit_x = if src.len() - i_src <= len_out - y {
                        src.len()
                    } else {
                        i_src + len_out - y
                    };
                    let fwd = src[i_src..limit_x]
                        .iter()
                        .zip(&tgt[y..])
                        .take_while(|(a, b)| a == b)
                        .count();
                    // Backward from src[i_src - 1] / tgt[y - 1], never
                    // before tgt[base] nor to src[0].
                    let mut k = 1;
                    while k < i_src && k <= i && src[i_src - k] == tgt[y - k] {
                        k += 1;
                    }
                    k -= 1;
                    // The match is src[ofst..] = tgt[start..end]
                    // (delta_create's cnt = j + k + 1 with j = fwd - 1).
                    let mut ofst = i_src - k;
                    let mut start = y - k;
                    let mut end = y + fwd;
                    if text {
                        while start < end && is_continuation(tgt[start]) {
                            start += 1;
                            ofst += 1;
                        }
                        while end > start && end < len_out && is_continuation(tgt[end]) {
                            end -= 1;
                        }
                    }
                    let cnt = end - start;
                    let litsz = start - base;
                    // The copy command (and the insert before it) must not
                    // cost more than the bytes it copies.
                    let sz = digit_count(litsz) + digit_count(cnt) + digit_count(ofst) + 3;
                    if cnt >= sz && cnt > best.map_or(0, |b| b.cnt) {
                        best = Some(Best { cnt, ofst, litsz });
                    }
                    block = collide[block as usize];
                }

                if let Some(b) = best {
                    if b.litsz > 0 {
                        put_insert(out, &tgt[base..base + b.litsz]);
                        base += b.litsz;
                    }
                    base += b.cnt;
                    put_int(out, b.cnt as u32);
                    out.push(b'@');
                    put_int(out, b.ofst as u32);
                    out.push(b',');
                    break;
                }

                if base + i + NHASH >= len_out {
                    // No match up to the end: the rest is literal.
                    put_insert(out, &tgt[base..]);
                    base = len_out;
                    break;
                }
                h.next(tgt[base + i + NHASH]);
                i += 1;
            }
        }
        if base < len_out {
            put_insert(out, &tgt[base..]);
        }
        put_int(out, checksum(tgt));
        out.push(b';');
        Ok(())
    }
}

/// The delta that turns `source` into `target` (Fossil's `delta_create`).
pub fn encode(source: &[u8], target: &[u8]) -> Result<Vec<u8>, TooLong> {
    let mut out = Vec::with_capacity(target.len() / 4 + 32);
    Encoder::new().encode(source, target, &mut out)?;
    Ok(out)
}

/// Reads a delta, never past its end.
struct Reader<'a> {
    d: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.d.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    /// A base-64 number (no digit at all reads as 0, as in `getInt`).
    fn int(&mut self) -> Result<u32, ApplyError> {
        let mut v: u32 = 0;
        while let Some(&c) = self.d.get(self.pos) {
            let Some(digit) = digit_value(c) else { break };
            v = v
                .checked_mul(64)
                .and_then(|v| v.checked_add(digit))
                .ok_or(ApplyError::NumberOverflow)?;
            self.pos += 1;
        }
        Ok(v)
    }
}

fn digit_value(c: u8) -> Option<u32> {
    Some(match c {
        b'0'..=b'9' => c - b'0',
        b'A'..=b'Z' => c - b'A' + 10,
        b'_' => 36,
        b'a'..=b'z' => c - b'a' + 37,
        b'~' => 63,
        _ => return None,
    } as u32)
}

/// Apply `delta` to `source`. A delta that declares more than `max_output`
/// bytes is refused before anything is allocated; one that is malformed,
/// made against another source, or followed by anything is refused.
pub fn apply(source: &[u8], delta: &[u8], max_output: usize) -> Result<Vec<u8>, ApplyError> {
    let mut r = Reader { d: delta, pos: 0 };
    let size = r.int()?;
    if r.byte() != Some(b'\n') {
        return Err(ApplyError::BadHeader);
    }
    let limit = size as usize;
    if limit > max_output {
        return Err(ApplyError::TooLarge {
            size: u64::from(size),
            max: max_output,
        });
    }
    let mut out = Vec::with_capacity(limit);
    loop {
        let cnt = r.int()? as usize;
        match r.byte().ok_or(ApplyError::Unterminated)? {
            b'@' => {
                let ofst = r.int()? as usize;
                if r.byte() != Some(b',') {
                    return Err(ApplyError::UnterminatedCopy);
                }
                if cnt > limit - out.len() {
                    return Err(ApplyError::OutputOverflow);
                }
                let copy = source
                    .get(ofst..)
                    .and_then(|s| s.get(..cnt))
                    .ok_or(ApplyError::CopyOutOfSource)?;
                out.extend_from_slice(copy);
            }
            b':' => {
                if cnt > limit - out.len() {
                    return Err(ApplyError::OutputOverflow);
                }
                let lit = delta
                    .get(r.pos..)
                    .and_then(|s| s.get(..cnt))
                    .ok_or(ApplyError::InsertPastEnd)?;
                out.extend_from_slice(lit);
                r.pos += cnt;
            }
            b';' => {
                if out.len() != limit {
                    return Err(ApplyError::SizeMismatch);
                }
                if cnt as u32 != checksum(&out) {
                    return Err(ApplyError::BadChecksum);
                }
                if r.pos != delta.len() {
                    return Err(ApplyError::TrailingBytes);
                }
                return Ok(out);
            }
            c => return Err(ApplyError::UnknownCommand(c)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: &mut u64) -> u64 {
        // xorshift64*: deterministic test data.
        *seed ^= *seed >> 12;
        *seed ^= *seed << 25;
        *seed ^= *seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn base64_numbers() {
        let mut out = Vec::new();
        for v in [0u32, 1, 63, 64, 4095, 4096, u32::MAX] {
            out.clear();
            put_int(&mut out, v);
            assert_eq!(out.len(), digit_count(v as usize), "{v}");
            let mut r = Reader { d: &out, pos: 0 };
            assert_eq!(r.int(), Ok(v));
        }
        let mut r = Reader {
            d: b"4~~~~~~",
            pos: 0,
        };
        assert_eq!(r.int(), Err(ApplyError::NumberOverflow));
    }

    #[test]
    fn checksum_pads_the_last_word() {
        assert_eq!(checksum(b""), 0);
        assert_eq!(checksum(b"\x01"), 0x0100_0000);
        assert_eq!(checksum(b"\x01\x02\x03\x04\x05"), 0x0102_0304 + 0x0500_0000);
        assert_eq!(checksum(&[0xff; 8]), 0xffff_fffe);
    }

    #[test]
    fn rolling_hash_slides_like_a_fresh_one() {
        let data: Vec<u8> = (0..64u32).map(|i| (i * 37 + 200) as u8).collect();
        let mut h = RollingHash::new(&data);
        for i in 1..=data.len() - NHASH {
            h.next(data[i + NHASH - 1]);
            assert_eq!(h.value(), hash_once(&data[i..]), "at {i}");
        }
    }

    #[test]
    fn small_and_empty_inputs() {
        assert_eq!(encode(b"", b"").unwrap(), b"0\n0:0;");
        assert_eq!(encode(b"abc", b"abcdef").unwrap(), b"6\n6:abcdef36n6D_;");
        let long = b"0123456789abcdefghijklmnopqrstuvwxyz";
        assert_eq!(encode(long, b"").unwrap(), b"0\n0;");
        for (s, t) in [(&b""[..], &b""[..]), (b"abc", b"abcdef"), (long, b"")] {
            assert_eq!(apply(s, &encode(s, t).unwrap(), 1 << 20).unwrap(), t);
        }
    }

    #[test]
    fn identical_inputs_are_one_copy() {
        let text = br#"{"metrics":{"a":1,"b":2,"c":3},"name":"identical inputs"}"#;
        let d = encode(text, text).unwrap();
        assert!(d.len() < 20, "{:?}", String::from_utf8_lossy(&d));
        assert_eq!(apply(text, &d, text.len()).unwrap(), text);
    }

    #[test]
    fn round_trips_on_random_edits() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut enc = Encoder::new();
        for round in 0..300 {
            let n = (rng(&mut seed) % 3000) as usize;
            let alphabet = if round % 3 == 0 { 256 } else { 16 };
            let src: Vec<u8> = (0..n).map(|_| (rng(&mut seed) % alphabet) as u8).collect();
            let mut tgt = src.clone();
            for _ in 0..rng(&mut seed) % 8 {
                let at = (rng(&mut seed) as usize) % (tgt.len() + 1);
                match rng(&mut seed) % 3 {
                    0 => tgt.insert(at, rng(&mut seed) as u8),
                    1 if at < tgt.len() => {
                        tgt.remove(at);
                    }
                    _ if at < tgt.len() => tgt[at] ^= 0x55,
                    _ => {}
                }
            }
            for text in [false, true] {
                let mut d = Vec::new();
                if text {
                    enc.encode_text(&src, &tgt, &mut d).unwrap();
                } else {
                    enc.encode(&src, &tgt, &mut d).unwrap();
                }
                assert_eq!(apply(&src, &d, tgt.len()).unwrap(), tgt, "round {round}");
            }
        }
    }

    #[test]
    fn large_inputs_round_trip() {
        // 1 MiB of JSON-like text; a few edits, a block moved, a tail added.
        let mut seed = 99u64;
        let src: Vec<u8> = (0..1 << 20)
            .map(|i| {
                if i % 64 == 63 {
                    b','
                } else {
                    b"0123456789\"abcdef:{}"[(rng(&mut seed) % 20) as usize]
                }
            })
            .collect();
        let mut tgt = src.clone();
        for k in 0..50 {
            tgt[k * 20_011] = b'X';
        }
        let moved: Vec<u8> = tgt.drain(300_000..310_000).collect();
        tgt.splice(700_000..700_000, moved);
        tgt.extend_from_slice(b"and a tail");
        let d = encode(&src, &tgt).unwrap();
        assert!(d.len() < 4096, "{}", d.len());
        assert_eq!(apply(&src, &d, tgt.len()).unwrap(), tgt);
        // Unrelated inputs of that size: one literal, no worse than the target.
        let other: Vec<u8> = (0..1 << 20).map(|_| rng(&mut seed) as u8).collect();
        let d = encode(&src, &other).unwrap();
        assert!(d.len() <= other.len() + 32);
        assert_eq!(apply(&src, &d, other.len()).unwrap(), other);
    }

    #[test]
    fn text_deltas_of_utf8_are_utf8() {
        let words = ["é", "日本", "😀", "ж", "abc", "ü", "\u{2028}", "x"];
        let mut seed = 7u64;
        let mut enc = Encoder::new();
        for _ in 0..300 {
            let n = 20 + rng(&mut seed) % 400;
            let src: String = (0..n)
                .map(|_| words[(rng(&mut seed) % words.len() as u64) as usize])
                .collect();
            let mut tgt: Vec<&str> = src
                .char_indices()
                .map(|(i, c)| &src[i..i + c.len_utf8()])
                .collect();
            for _ in 0..1 + rng(&mut seed) % 6 {
                let at = (rng(&mut seed) as usize) % tgt.len();
                tgt[at] = words[(rng(&mut seed) % words.len() as u64) as usize];
            }
            let tgt: String = tgt.concat();
            let mut d = Vec::new();
            enc.encode_text(src.as_bytes(), tgt.as_bytes(), &mut d)
                .unwrap();
            assert!(std::str::from_utf8(&d).is_ok(), "{d:?}");
            assert_eq!(
                apply(src.as_bytes(), &d, tgt.len()).unwrap(),
                tgt.as_bytes()
            );
        }
        // Without the constraint a copy may end inside a character: "é"
        // (c3 a9) and "ê" (c3 aa) share their first byte.
        let src = format!("{}é{}", "a".repeat(40), "z".repeat(40));
        let tgt = format!("{}ê{}", "a".repeat(40), "z".repeat(40));
        let exact = encode(src.as_bytes(), tgt.as_bytes()).unwrap();
        assert!(std::str::from_utf8(&exact).is_err());
        let mut d = Vec::new();
        enc.encode_text(src.as_bytes(), tgt.as_bytes(), &mut d)
            .unwrap();
        let d = String::from_utf8(d).unwrap();
        assert!(d.contains(":ê"), "{d:?}");
    }

    #[test]
    fn apply_refuses_what_is_not_a_delta_for_this_source() {
        let src = b"the quick brown fox jumps over the lazy dog, twice over";
        let tgt = b"the quick brown fox jumps over the lazy cat, twice over";
        let d = encode(src, tgt).unwrap();
        let other = b"THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG, TWICE OVER";
        assert_eq!(apply(other, &d, 1000), Err(ApplyError::BadChecksum));
        assert_eq!(
            apply(&src[..20], &d, 1000),
            Err(ApplyError::CopyOutOfSource)
        );
        assert_eq!(
            apply(src, &d, 10),
            Err(ApplyError::TooLarge {
                size: tgt.len() as u64,
                max: 10
            })
        );
        let cases: &[(&[u8], ApplyError)] = &[
            (b"", ApplyError::BadHeader),
            (b"5", ApplyError::BadHeader),
            (b"5\n", ApplyError::Unterminated),
            (b"5\n5", ApplyError::Unterminated),
            (b"5\n5:abc", ApplyError::InsertPastEnd),
            (b"5\n6:abcdef0;", ApplyError::OutputOverflow),
            (b"5\n3:abc0;", ApplyError::SizeMismatch),
            (b"5\n5@0;", ApplyError::UnterminatedCopy),
            (b"5\n5!", ApplyError::UnknownCommand(b'!')),
            (b"5\n5\0", ApplyError::UnknownCommand(0)),
            (b"~~~~~~~\n", ApplyError::NumberOverflow),
            (b"5\n5@~~~~~~,0;", ApplyError::NumberOverflow),
            (b"5\n5@~~~~~,0;", ApplyError::CopyOutOfSource),
            (b"3\n3:abc0;", ApplyError::BadChecksum),
        ];
        for (d, want) in cases {
            assert_eq!(
                apply(src, d, 1000),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(d)
            );
        }
        let mut trailing = d.clone();
        trailing.push(b'x');
        assert_eq!(apply(src, &trailing, 1000), Err(ApplyError::TrailingBytes));
        assert_eq!(output_size(&d), Some(tgt.len() as u32));
        assert_eq!(output_size(b"12"), None);
    }
}
