//! The module layers (src/lib.rs, "Layers"): an import only ever points
//! down. Every `crate::<module>` path in a module's files (imports, paths
//! in code, doc links) is an arrow from that module to the other; an arrow
//! to a module of the same layer or a higher one fails this test, naming
//! the file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Bottom to top. A module may use the modules of the layers below it.
const LAYERS: &[&[&str]] = &[
    // Leaf types: no `crate::` import at all.
    &["base"],
    // The protocol, testable in memory; the pub/sub data structures.
    &["proto", "pubsub"],
    // The Fossil delta codec.
    &["delta"],
    &["config"],
    &["tls", "auth"],
    // The backend client (proxies) and the webhook sender: the brokers
    // emit channel and presence events through it.
    &["hooks"],
    &["broker"],
    // Sessions: typed replies and events, no transport.
    &["gateway"],
    // HTTP: codec, router, API, SSE / long-poll encoders, metrics.
    &["http"],
    // Per-connection endpoints.
    &["endpoint"],
    // The I/O shell.
    &["server"],
    // The load generator (a client of the server's sys helpers).
    &["load"],
];

/// Arrows that point up and are known, each with its reason. Nothing else
/// may.
const KNOWN: &[(&str, &str, &str)] = &[(
    "config",
    "hooks",
    "issue 15 part 1: the `[proxy]` / `[webhooks]` sections' types live in \
     src/hooks/config.rs, which reads config's own types (a cycle to undo \
     by moving those types into config)",
)];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules `text` names through `crate::`: `crate::a::…`,
/// and each item of `crate::{a::…, b}`.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in text.match_indices("crate::") {
        // Not `foo_crate::` or `$crate::`.
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if item_start && depth == 1 && !c.is_whitespace() => {
                        item_start = false;
                        let name = ident(&group[j..]);
                        if !name.is_empty() && name != "self" {
                            refs.insert(name);
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                refs.insert(name);
            }
        }
    }
    refs
}

#[test]
fn crate_refs_reads_paths_and_groups() {
    let got = crate_refs(
        "use crate::base::Frame;\nuse crate::{gateway::x, http::{a, b}, self};\n\
         /// [`crate::endpoint::Endpoint`]\nlet a = $crate::no; my_crate::no;",
    );
    let want: BTreeSet<String> = ["base", "gateway", "http", "endpoint"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
}

#[test]
fn imports_only_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut modules = BTreeSet::new();
    let mut wrong = Vec::new();
    let mut known_seen = BTreeSet::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a path");
        let first = first.as_os_str().to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "bin" {
            continue; // the crate root and the binaries sit on top
        }
        let Some(from) = layer_of(&module) else {
            wrong.push(format!("{}: module {module:?} has no layer", rel.display()));
            continue;
        };
        modules.insert(module.clone());
        let text = std::fs::read_to_string(file).expect("readable source");
        for to in crate_refs(&text) {
            if to == module {
                continue;
            }
            let Some(layer) = layer_of(&to) else {
                wrong.push(format!("{}: crate::{to} has no layer", rel.display()));
                continue;
            };
            if layer < from {
                continue;
            }
            if KNOWN.iter().any(|(a, b, _)| *a == module && *b == to) {
                known_seen.insert((module.clone(), to));
                continue;
            }
            wrong.push(format!(
                "{}: {module} (layer {from}) uses crate::{to} (layer {layer})",
                rel.display()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "arrows that do not point down:\n{}",
        wrong.join("\n")
    );
    // Every layer names modules that exist, and a known exception that
    // was removed is removed from the list too.
    for m in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(modules.contains(*m), "layer module {m:?} not found in src/");
    }
    for (a, b, why) in KNOWN {
        assert!(
            known_seen.contains(&(a.to_string(), b.to_string())),
            "the known arrow {a} -> {b} is gone: remove it from KNOWN ({why})"
        );
    }
}
