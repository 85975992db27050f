//! A publication's `data` as a publisher may send it (any JSON text, any
//! whitespace between its tokens), through `broker::encode_publication`,
//! whose payload every transport, the history and Redis carry.
//!
//! Input: a JSON text (anything else is skipped, as the API refuses it).
//!
//! Checked: no panic; the payload holds no raw CR or LF (it must fit one SSE
//! `data:` line); it is JSON whose `data` is the same value as the input
//! (when serde_json's `Value` can hold it);
//! `broker::compact::compact` of the compact form borrows it (compacting is
//! idempotent) and agrees with the payload.

#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use serde_json::Value;
use wsgate::broker::{compact::compact, encode_publication};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = serde_json::from_slice::<&RawValue>(data) else {
        return;
    };
    let (frame, header_len) = encode_publication("ch", 1, raw);
    let payload = &frame[header_len as usize..];
    assert!(
        !payload.iter().any(|&b| b == b'\n' || b == b'\r'),
        "a line break in {:?}",
        String::from_utf8_lossy(payload)
    );
    // Valid JSON that serde_json's Value cannot hold (a number past f64's
    // range, such as 5e531) is compared as text only.
    if let Ok(original) = serde_json::from_str::<Value>(raw.get()) {
        let v: Value = serde_json::from_slice(payload).expect("the payload is JSON");
        assert_eq!(v["data"], original);
    }
    let c = compact(raw);
    assert!(payload.ends_with(format!(",\"data\":{c}}}").as_bytes()));
    let again = RawValue::from_string(c.into_owned()).expect("the compact form is JSON");
    assert!(matches!(compact(&again), Cow::Borrowed(_)));
});
