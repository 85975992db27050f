//! Unmasking (RFC 6455 §5.3), in place, eight bytes at a time.
//!
//! "The masking does not affect the length of the 'Payload data'. To convert
//! masked data into unmasked data, or vice versa, the following algorithm is
//! applied ... j = i MOD 4; transformed-octet-i = original-octet-i XOR
//! masking-key-octet-j".
//!
//! The word loop uses `chunks_exact_mut` with unaligned native-endian loads,
//! which the compiler turns into SIMD on x86-64: no `unsafe` is needed (the
//! benchmark in `benches/proto.rs` measures it).

/// XOR `buf` with `key`, where `buf[0]` is payload byte number `offset`
/// (so a payload processed in pieces stays in phase with the key).
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    // Rotate the key so that key[0] applies to buf[0].
    let k = rotate(key, offset);
    let word = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);
    let wide = (word as u128) | ((word as u128) << 64);
    let mut chunks = buf.chunks_exact_mut(16);
    for c in &mut chunks {
        let v = u128::from_ne_bytes((&*c).try_into().expect("16-byte chunk")) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    // 16 is a multiple of 4: the tail starts in phase with `k`.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= k[i & 3];
    }
}

/// The key as seen from payload byte `offset`.
#[inline]
fn rotate(key: [u8; 4], offset: usize) -> [u8; 4] {
    let s = offset & 3;
    [key[s], key[(s + 1) & 3], key[(s + 2) & 3], key[(s + 3) & 3]]
}

/// The byte-at-a-time definition from the RFC, kept as the reference for
/// tests and benchmarks.
pub fn apply_mask_bytewise(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(offset + i) & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_at_every_alignment_offset_and_length() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let src: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for align in 0..=15 {
            for phase in 0..4 {
                for len in [0, 1, 3, 4, 7, 8, 15, 16, 17, 31, 33, 64, 100, 257] {
                    let mut backing = src.clone();
                    let mut expect = src.clone();
                    apply_mask(&mut backing[align..align + len], key, phase);
                    apply_mask_bytewise(&mut expect[align..align + len], key, phase);
                    assert_eq!(backing, expect, "align {align} phase {phase} len {len}");
                }
            }
        }
    }

    #[test]
    fn split_processing_stays_in_phase() {
        let key = [1, 2, 3, 4];
        let data: Vec<u8> = (0..100u8).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        for cut in 0..100 {
            let mut parts = data.clone();
            let (a, b) = parts.split_at_mut(cut);
            apply_mask(a, key, 0);
            apply_mask(b, key, cut);
            assert_eq!(parts, whole, "cut {cut}");
        }
    }

    #[test]
    fn rfc_example_hello() {
        // RFC 6455 §5.7: a masked "Hello".
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&payload, b"Hello");
    }
}
