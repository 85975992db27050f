//! The Fossil delta codec against Fossil itself, and the vectors the
//! JavaScript decoder is tested with.
//!
//! - `tests/data/fossil/*/delta` is what `fossil test-delta-create` wrote
//!   (scripts/fossil_vectors.py): our encoder must write the same bytes, and
//!   every one must apply.
//! - `tests/js/delta_vectors.json` holds deltas and publication frames made
//!   by our encoder and `DeltaChannels` (tests/js/delta.test.mjs feeds them
//!   to web/wsgate.js). This test regenerates them and fails when the file
//!   differs; `WSGATE_BLESS=1 cargo test --test delta_vectors` rewrites it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use wsgate::broker::encode_publication;
use wsgate::delta::dashboard::Dashboard;
use wsgate::delta::fossil::{apply, Encoder};
use wsgate::delta::{DeltaChannels, DeltaLimits, Pick};

struct Case {
    name: String,
    source: Vec<u8>,
    target: Vec<u8>,
    delta: Vec<u8>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn cases() -> Vec<Case> {
    let dir = root().join("tests/data/fossil");
    let mut out: Vec<Case> = std::fs::read_dir(&dir)
        .expect("tests/data/fossil")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| {
            let p = e.path();
            let read = |f: &str| std::fs::read(p.join(f)).expect("a vector file");
            Case {
                name: e.file_name().to_string_lossy().into_owned(),
                source: read("source"),
                target: read("target"),
                delta: read("delta"),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(out.len() >= 16, "vectors missing: {}", out.len());
    out
}

#[test]
fn the_encoder_writes_what_fossil_writes() {
    let mut enc = Encoder::new();
    for c in cases() {
        let mut d = Vec::new();
        enc.encode(&c.source, &c.target, &mut d).unwrap();
        assert!(
            d == c.delta,
            "{}: ours {:?}\nfossil's {:?}",
            c.name,
            String::from_utf8_lossy(&d),
            String::from_utf8_lossy(&c.delta)
        );
        assert_eq!(
            apply(&c.source, &c.delta, c.target.len()).unwrap(),
            c.target,
            "{}",
            c.name
        );
    }
}

#[test]
fn the_text_encoder_differs_only_inside_characters() {
    let mut enc = Encoder::new();
    let mut differ = Vec::new();
    for c in cases() {
        let mut d = Vec::new();
        enc.encode_text(&c.source, &c.target, &mut d).unwrap();
        assert_eq!(
            apply(&c.source, &d, c.target.len()).unwrap(),
            c.target,
            "{}",
            c.name
        );
        if c.target.is_ascii() {
            assert_eq!(d, c.delta, "{}: ASCII targets give Fossil's delta", c.name);
        }
        if std::str::from_utf8(&c.target).is_ok() {
            assert!(std::str::from_utf8(&d).is_ok(), "{}: not UTF-8", c.name);
        }
        if d != c.delta {
            differ.push(c.name);
        }
    }
    // The binary case has copies ending inside "characters" (bytes ≥ 0x80).
    assert!(differ.contains(&"binary".to_owned()), "{differ:?}");
}

/// A publication stream through `DeltaChannels`, one subscriber: the text
/// of each frame it is sent, and the data each carries.
fn stream(channel: &str, datas: &[String]) -> Value {
    let mut state = DeltaChannels::new(DeltaLimits::default());
    let name: Arc<str> = Arc::from(channel);
    let mut cursor = state.join(&name);
    let mut frames = Vec::new();
    let mut kinds = Vec::new();
    for (i, d) in datas.iter().enumerate() {
        let raw = serde_json::value::RawValue::from_string(d.clone()).unwrap();
        let (frame, hl) = encode_publication(channel, i as u64 + 1, &raw);
        let whole: Arc<[u8]> = Arc::from(frame);
        let mut p = state.publish(channel, &whole).unwrap();
        let sent = match p.pick(&mut cursor) {
            Pick::Whole => {
                kinds.push("whole");
                whole[hl as usize..].to_vec()
            }
            Pick::Delta(f) => {
                kinds.push("delta");
                let hl = if f[1] == 126 { 4 } else { 2 };
                f[hl..].to_vec()
            }
        };
        frames.push(String::from_utf8(sent).unwrap());
    }
    json!({ "channel": channel, "frames": frames, "data": datas, "kinds": kinds })
}

fn js_vectors() -> Value {
    // Codec cases: our text encoder on every vector with a UTF-8 target,
    // as the strings a client sees (the delta as it arrives in `data`).
    let mut enc = Encoder::new();
    let mut codec = Vec::new();
    for c in cases() {
        // The large case is in tests/data/fossil, which the node test reads too.
        if c.source.len() + c.target.len() > 40_000 {
            continue;
        }
        let (Ok(s), Ok(t)) = (
            std::str::from_utf8(&c.source),
            std::str::from_utf8(&c.target),
        ) else {
            continue;
        };
        let mut d = Vec::new();
        enc.encode_text(&c.source, &c.target, &mut d).unwrap();
        codec.push(json!({
            "name": c.name,
            "source": s,
            "delta": String::from_utf8(d).unwrap(),
            "target": t,
        }));
    }
    let mut dash = Dashboard::new(16);
    let ticks: Vec<String> = (0..30)
        .map(|_| {
            let j = dash.json();
            dash.tick();
            j
        })
        .collect();
    let texts: Vec<String> = [
        r#"{"user":"Дмитрий","mood":"😀","note":"naïve café","n":1}"#,
        r#"{"user":"Дмитрия","mood":"😀","note":"naïve café","n":2}"#,
        r#"{"user":"Дмитрия","mood":"😃","note":"naïve cafè","n":3}"#,
        r#"{"user":"東京都","mood":"😃","note":"naïve cafè","n":4}"#,
        r#"{"user":"京都","mood":"😃😃","note":"naïve cafè\u2028","n":5}"#,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let padding = "x".repeat(200);
    let escapes: Vec<String> = (0..5)
        .map(|i| {
            format!(
                r#"{{"q":"say \"hi\" {i}","path":"C:\\dir\\{i}","u":"\u00e9\ud83d\ude00","pad":"{padding}"}}"#
            )
        })
        .collect();
    let long = format!("[{}]", "1,".repeat(300) + "1");
    let longer = format!("[{}]", "1,".repeat(300) + "2");
    let fallback: Vec<String> = vec![long.clone(), longer, "[3]".into(), long.clone(), long];
    json!({
        "note": "generated by tests/delta_vectors.rs (WSGATE_BLESS=1 rewrites it): do not edit",
        "codec": codec,
        "streams": [
            stream("dash:eu", &ticks),
            stream("chat:ru", &texts),
            stream("esc", &escapes),
            stream("fallback", &fallback),
        ],
    })
}

#[test]
fn javascript_vectors_are_current() {
    let v = js_vectors();
    // Every stream starts whole and has deltas; the fallback one goes
    // whole where a delta would not be smaller, and then deltas again.
    for s in v["streams"].as_array().unwrap() {
        let kinds: Vec<&str> = s["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(kinds[0], "whole", "{}", s["channel"]);
        assert!(kinds[1..].contains(&"delta"), "{}: {kinds:?}", s["channel"]);
        if s["channel"] == "fallback" {
            assert_eq!(kinds, ["whole", "delta", "whole", "whole", "delta"]);
        }
    }
    let text = serde_json::to_string_pretty(&v).unwrap() + "\n";
    let path = root().join("tests/js/delta_vectors.json");
    if std::env::var_os("WSGATE_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "tests/js/delta_vectors.json is not what the encoder makes now: \
         WSGATE_BLESS=1 cargo test --test delta_vectors rewrites it"
    );
}
