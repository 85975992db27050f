//! The client role's permessage-deflate against kosoku's fuzzingserver
//! (Autobahn groups 12 and 13), with a small blocking client built on
//! `wsgate::proto` alone: the offer from `deflate::client_offer`, the check
//! of the answer by `deflate::accept_response`, `Conn::set_deflate`, then
//! every message echoed through the callback's `Sender` (compressed).
//!
//! It takes a few minutes, so it is ignored by default:
//!
//! ```text
//! cargo test --release --test deflate_autobahn_client -- --ignored --nocapture
//! ```
//!
//! (`wsgate-load autobahn` is the client CI runs against the fuzzingserver;
//! this test checks the protocol core it builds on.) Needs the venv's
//! `kosoku` (`scripts/venv.sh`, or `$KOSOKU`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wsgate::proto::deflate::{self, Config, Engine, Mode};
use wsgate::proto::handshake;
use wsgate::proto::{Conn, Event, Limits, State};

fn kosoku() -> PathBuf {
    std::env::var_os("KOSOKU")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/kosoku"))
}

/// Run one connection to `path` to its end; the text messages received
/// when not echoing (the case count).
fn run(addr: &str, path: &str, cfg: &Config, echo: bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut sock = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("connect {addr}: {e}"),
        }
    };
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    sock.set_nodelay(true).unwrap();
    let offer = deflate::client_offer(cfg);
    let mut req = Vec::new();
    let key =
        handshake::write_client_request(&mut req, addr, path, &[9; 16], None, offer.as_deref());
    sock.write_all(&req).unwrap();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let resp = loop {
        let n = sock.read(&mut chunk).unwrap();
        assert!(n > 0, "{path}: closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(r) = handshake::parse_response(&buf, &key).unwrap() {
            break r;
        }
    };
    let mut conn = Conn::client(0, 0x5EED);
    let answer = resp.extensions.iter().map(|s| s.as_bytes());
    if let Some(p) = deflate::accept_response(answer, cfg).expect("a valid answer") {
        conn.set_deflate(&p, cfg);
    }
    let mut engine = Engine::new(*cfg);
    let limits = Limits {
        max_message: 64 << 20,
    };
    let mut pending = buf[resp.len..].to_vec();
    let mut texts = Vec::new();
    loop {
        let mut out = Vec::new();
        let used = conn.decode_with(
            &mut pending,
            0,
            &limits,
            &mut engine,
            &mut out,
            &mut |e, tx| {
                if let Event::Message { text, data } = e {
                    if echo {
                        tx.send(text, data);
                    } else {
                        texts.push(String::from_utf8_lossy(data).into_owned());
                    }
                }
            },
        );
        match used {
            Ok(n) => {
                pending.drain(..n);
            }
            Err(e) => {
                conn.fail(&mut out, 0, e);
                pending.clear();
            }
        }
        if !out.is_empty() && sock.write_all(&out).is_err() {
            break;
        }
        let n = match sock.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if conn.state() == State::Closed {
            continue; // discard until the server's FIN
        }
        pending.extend_from_slice(&chunk[..n]);
    }
    texts
}

#[test]
#[ignore = "takes minutes; run with --ignored (needs the venv's kosoku)"]
fn client_role_passes_groups_12_and_13() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let report = Path::new(env!("CARGO_TARGET_TMPDIR")).join("autobahn-client-deflate");
    let _ = std::fs::remove_dir_all(&report);
    let mut server = Command::new(kosoku())
        .args(["-m", "fuzzingserver", "-i", "12.*", "-i", "13.*", "-o"])
        .arg(&report)
        .arg(&addr)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kosoku (scripts/venv.sh installs it)");
    // `shared`: the offer carries client_no_context_takeover and
    // client_max_window_bits, which every 13.x answer needs.
    let cfg = Config {
        mode: Mode::Shared,
        min_size: 0,
        ..Config::default()
    };
    let count: u32 = run(&addr, "/getCaseCount", &cfg, false)[0]
        .trim()
        .parse()
        .unwrap();
    assert_eq!(count, 216);
    for case in 1..=count {
        run(
            &addr,
            &format!("/runCase?case={case}&agent=wsgate-proto"),
            &cfg,
            true,
        );
    }
    run(&addr, "/updateReports?agent=wsgate-proto", &cfg, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    let out = server.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("index.json")).expect("index.json"))
            .unwrap();
    let cases = index["wsgate-proto"].as_object().expect("our agent");
    let ok =
        |v: &serde_json::Value| matches!(v.as_str(), Some("OK" | "NON-STRICT" | "INFORMATIONAL"));
    let failed: Vec<&String> = cases
        .iter()
        .filter(|(_, c)| !ok(&c["behavior"]) || !ok(&c["behaviorClose"]))
        .map(|(id, _)| id)
        .collect();
    eprintln!(
        "{} passed, {} failed",
        cases.len() - failed.len(),
        failed.len()
    );
    assert_eq!(cases.len(), 216);
    assert!(failed.is_empty(), "failed: {failed:?}");
}
