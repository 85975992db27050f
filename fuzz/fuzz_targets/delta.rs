//! The Fossil delta codec (`delta::fossil`) and the delta state
//! (`delta::DeltaChannels`).
//!
//! Input: a 2-byte big-endian split point `n`, then bytes: the first `n`
//! (at most what there is) are `a`, the rest `b`.
//!
//! Checked: `apply(encode(a, b), a) == b` in both encoder modes; the text
//! mode's delta of a UTF-8 `b` is UTF-8; `apply` on `b` as a delta of `a`
//! (garbage, mostly) never panics and never returns more than its limit;
//! a publication stream `a`, `b`, `a` through `DeltaChannels` decodes, on
//! the subscriber's side, to exactly the data published.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use wsgate::broker::encode_publication;
use wsgate::delta::fossil::{apply, Encoder};
use wsgate::delta::{wire, DeltaChannels, DeltaLimits, Pick};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = (usize::from(data[0]) << 8 | usize::from(data[1])).min(data.len() - 2);
    let (a, b) = data[2..].split_at(n);

    let mut enc = Encoder::new();
    for text in [false, true] {
        let mut d = Vec::new();
        if text {
            enc.encode_text(a, b, &mut d).unwrap();
            if std::str::from_utf8(b).is_ok() {
                assert!(std::str::from_utf8(&d).is_ok(), "text delta not UTF-8");
            }
        } else {
            enc.encode(a, b, &mut d).unwrap();
        }
        assert_eq!(apply(a, &d, b.len()).expect("our delta applies"), b);
    }

    const MAX: usize = 1 << 16;
    if let Ok(out) = apply(a, b, MAX) {
        assert!(out.len() <= MAX);
    }

    // The same bytes as publications, when they are JSON.
    let (Ok(ra), Ok(rb)) = (
        serde_json::from_slice::<&RawValue>(a),
        serde_json::from_slice::<&RawValue>(b),
    ) else {
        return;
    };
    let mut state = DeltaChannels::new(DeltaLimits::default());
    let name: Arc<str> = Arc::from("fz");
    let mut cursor = state.join(&name);
    let mut have: Vec<u8> = Vec::new();
    for (offset, raw) in [ra, rb, ra].into_iter().enumerate() {
        let (frame, hl) = encode_publication("fz", offset as u64 + 1, raw);
        let whole: Arc<[u8]> = Arc::from(frame);
        let payload = &whole[hl as usize..];
        let sent = wire::data_range(payload).expect("a publication frame");
        let published = &payload[sent];
        let mut p = state.publish("fz", &whole).expect("a delta subscriber");
        match p.pick(&mut cursor) {
            Pick::Whole => have = published.to_vec(),
            Pick::Delta(f) => {
                assert!(f.len() < whole.len(), "a delta frame no shorter than the whole");
                let hl = match f[1] {
                    126 => 4,
                    127 => 10,
                    _ => 2,
                };
                let v: serde_json::Value = serde_json::from_slice(&f[hl..]).expect("JSON");
                assert_eq!(v["delta"], true);
                let d = v["data"].as_str().expect("a string");
                have = apply(&have, d.as_bytes(), 1 << 24).expect("the delta applies");
            }
        }
        assert_eq!(have, published);
    }
});
