//! Live handoff (issue 17), step 1: on SIGUSR2 (or `wsgate --upgrade`) the
//! running process starts the new binary and hands it its listening
//! sockets over a Unix socket; the new one serves, the old one drains and
//! exits. Every failure leaves the old process serving: a missing binary,
//! one that exits, one that never answers (a second SIGUSR2 meanwhile is
//! refused), one that speaks another format version; and a new binary
//! greeted in a version it does not know refuses and never serves.

#[path = "support/handoff.rs"]
mod handoff_util;
#[path = "support/process.rs"]
mod process;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use handoff_util::{start, temp, wait_for, Successor, DEADLINE};
use process::Wsgate;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;
use wsgate::server::handoff::{upgrade, wire, Channel, Msg, ENV_FD};

type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

fn echo_client(addr: SocketAddr) -> Ws {
    let (ws, _) = tungstenite::connect(format!("ws://{addr}/echo")).unwrap();
    ws.get_ref_timeout();
    ws
}

trait Timeout {
    fn get_ref_timeout(&self);
}

impl Timeout for Ws {
    fn get_ref_timeout(&self) {
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = self.get_ref() {
            s.set_read_timeout(Some(DEADLINE)).unwrap();
        }
    }
}

/// Send `text` and read its echo.
fn echoes(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).unwrap();
    match ws.read().unwrap() {
        Message::Text(t) => assert_eq!(t.as_str(), text),
        m => panic!("expected the echo of {text}, got {m:?}"),
    }
}

fn healthz(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    r
}

/// New clients, one after another, each connecting and getting its echo
/// (or, if the old process accepted it just before the handoff, told to
/// reconnect with 4000) until `stop`. Returns (served, told to reconnect,
/// failures: refused, reset, or no answer).
fn probe(addr: SocketAddr, stop: Arc<AtomicBool>) -> (u32, u32, Vec<String>) {
    let (mut ok, mut moved, mut failed) = (0, 0, Vec::new());
    let until = Instant::now() + DEADLINE * 2;
    let mut i = 0;
    while !stop.load(Ordering::Acquire) && Instant::now() < until && i < 5000 {
        i += 1;
        let r = (|| -> Result<bool, String> {
            let (mut ws, _) =
                tungstenite::connect(format!("ws://{addr}/echo")).map_err(|e| e.to_string())?;
            ws.get_ref_timeout();
            let text = format!("probe {i}");
            ws.send(Message::text(text.clone()))
                .map_err(|e| e.to_string())?;
            match ws.read().map_err(|e| e.to_string())? {
                Message::Text(t) if t.as_str() == text => {
                    let _ = ws.close(None);
                    Ok(true)
                }
                Message::Close(Some(f)) if f.code == CloseCode::from(4000) => Ok(false),
                m => Err(format!("{m:?}")),
            }
        })();
        match r {
            Ok(true) => ok += 1,
            Ok(false) => moved += 1,
            Err(e) => failed.push(e),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (ok, moved, failed)
}

/// Listeners move, new connections are served throughout, the old
/// process's connection moves too (tests/handoff_conns.rs has the rest),
/// the old process exits, the pid file names the new process.
#[test]
fn sigusr2_hands_the_listeners_over_and_the_old_process_drains_out() {
    let (mut gw, pid_file) = start("move", &[]);
    let addr = gw.addr;
    let old = gw.pid();
    let mut bystander = echo_client(addr);
    echoes(&mut bystander, "before");

    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        std::thread::spawn(move || probe(addr, stop))
    };
    // Some probes before the signal.
    std::thread::sleep(Duration::from_millis(200));
    gw.signal(libc::SIGUSR2);
    wait_for("the new process's pid", || {
        upgrade::read_pid_file(&pid_file).is_ok_and(|p| p != old)
    });
    let new = upgrade::read_pid_file(&pid_file).unwrap();
    let _guard = Successor(new);

    wait_for("the old process to exit", || gw.exited().is_some());
    assert!(gw.exited().unwrap().success(), "{}", gw.log_text());
    // The old process's own connection moved with it (step 2): no close
    // frame, served by the new process.
    echoes(&mut bystander, "moved");

    // The new process serves on the same address.
    let mut after = echo_client(addr);
    echoes(&mut after, "after");
    let h = healthz(addr);
    assert!(h.starts_with("HTTP/1.1 200 "), "{h}");
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Release);
    let (ok, moved, failed) = prober.join().unwrap();
    assert!(
        failed.is_empty(),
        "probes failed across the handoff: {failed:?}"
    );
    assert!(ok > 0, "no probe was served ({moved} told to reconnect)");
    // The old process says so once the new one took the connections; the
    // new one may have written the pid file a moment before.
    let said = format!("handoff: pid {new} serves now");
    wait_for("the old process's word", || gw.log_text().contains(&said));
    let log = gw.log_text();
    assert!(log.contains("handoff: took 2 listeners"), "{log}");
    let _ = std::fs::remove_file(&pid_file);
}

/// `wsgate --upgrade --pid-file F` signals the running process and returns
/// once the new one serves.
#[test]
fn upgrade_command_returns_once_the_new_process_serves() {
    let (mut gw, pid_file) = start("cmd", &[]);
    let old = gw.pid();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["--upgrade", "--pid-file", pid_file.to_str().unwrap()])
        .output()
        .unwrap();
    let new = upgrade::read_pid_file(&pid_file).unwrap();
    let _guard = Successor(new);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log_text()
    );
    assert_ne!(new, old);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("pid {new} serves now")));
    let mut ws = echo_client(gw.addr);
    echoes(&mut ws, "served by the new process");
    wait_for("the old process to exit", || gw.exited().is_some());
    let _ = std::fs::remove_file(&pid_file);
}

/// A failed handoff: the old process logs why and goes on serving, its
/// client and new ones alike; the pid file still names it; a later
/// handoff may be tried.
fn assert_still_serving(gw: &mut Wsgate, pid_file: &Path, bystander: &mut Ws, why: &str) {
    // The handoff thread's line ("handoff failed: …; still serving"; the
    // workers' "handoff failed: N connections resume here" can come first).
    wait_for("the failure in the log", || {
        gw.log_text().contains("still serving")
    });
    let log = gw.log_text();
    assert!(log.contains(why), "expected {why:?} in:\n{log}");
    assert!(log.contains("still serving"), "{log}");
    assert!(gw.exited().is_none(), "{log}");
    echoes(bystander, "still here");
    let mut ws = echo_client(gw.addr);
    echoes(&mut ws, "a new client");
    let h = healthz(gw.addr);
    assert!(h.starts_with("HTTP/1.1 200 "), "{h}");
    assert_eq!(upgrade::read_pid_file(pid_file).unwrap(), gw.pid());
}

/// SIGUSR2 with `binary` as the new binary, which fails with `why`.
fn failed_handoff(name: &str, binary: &str, why: &str) {
    let (mut gw, pid_file) = start(name, &["--upgrade-binary", binary]);
    let mut bystander = echo_client(gw.addr);
    echoes(&mut bystander, "before");
    gw.signal(libc::SIGUSR2);
    assert_still_serving(&mut gw, &pid_file, &mut bystander, why);
}

#[test]
fn a_missing_binary_leaves_the_old_process_serving() {
    failed_handoff(
        "missing",
        "/nonexistent/wsgate",
        "cannot start the new binary",
    );
}

#[test]
fn a_binary_that_exits_at_once_leaves_the_old_process_serving() {
    failed_handoff("false", "/bin/false", "closed the handoff socket");
}

fn script(name: &str, text: &str) -> PathBuf {
    let p = temp(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A successor that never answers and leaves after 3 s: meanwhile a
/// second SIGUSR2 is refused; then the first fails and the old process
/// serves on, and a third SIGUSR2 is taken again (and fails the same way).
#[test]
fn a_second_sigusr2_during_a_handoff_is_refused() {
    let slow = script("slow.sh", "#!/bin/sh\nexec sleep 3\n");
    let (mut gw, pid_file) = start("twice", &["--upgrade-binary", slow.to_str().unwrap()]);
    let mut bystander = echo_client(gw.addr);
    gw.signal(libc::SIGUSR2);
    wait_for("the handoff to start", || {
        gw.log_text().contains("SIGUSR2: handing over")
    });
    gw.signal(libc::SIGUSR2);
    wait_for("the refusal", || {
        gw.log_text().contains("a handoff is already under way")
    });
    // Served while the handoff waits.
    echoes(&mut bystander, "during");
    assert_still_serving(
        &mut gw,
        &pid_file,
        &mut bystander,
        "closed the handoff socket",
    );
    gw.signal(libc::SIGUSR2);
    wait_for("a second attempt", || {
        gw.log_text().matches("SIGUSR2: handing over").count() == 2
    });
    let _ = std::fs::remove_file(slow);
}

/// A successor that answers in a format version this binary does not
/// know: refused, killed, and the old process serves on.
#[test]
fn a_successor_of_another_format_version_is_refused() {
    let fake = script(
        "v99.py",
        "#!/usr/bin/env python3\n\
         import os, socket, struct, time\n\
         s = socket.socket(fileno=int(os.environ['WSGATE_HANDOFF_FD']))\n\
         s.recv(1024)\n\
         s.send(b'WSGATEHO' + struct.pack('<H', 99) + bytes([2]))\n\
         time.sleep(30)\n",
    );
    let (mut gw, pid_file) = start("v99", &["--upgrade-binary", fake.to_str().unwrap()]);
    let mut bystander = echo_client(gw.addr);
    gw.signal(libc::SIGUSR2);
    assert_still_serving(
        &mut gw,
        &pid_file,
        &mut bystander,
        "state format version 99 unknown",
    );
    let _ = std::fs::remove_file(fake);
}

/// The new binary, greeted by an old one of another format version:
/// answers Refuse (naming the version), exits with failure, and never
/// listens.
#[test]
fn the_new_binary_refuses_a_greeting_of_another_version() {
    let (old, theirs) = Channel::pair().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["--listen", &listen, "--workers", "1"])
        .env(ENV_FD, std::os::fd::AsRawFd::as_raw_fd(&theirs).to_string())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(theirs);
    old.send(&wire::encode_as(&Msg::Hello, 99), &[]).unwrap();
    let (bytes, fds) = old.recv(DEADLINE).unwrap();
    assert!(fds.is_empty());
    match Msg::decode(&bytes).unwrap() {
        Msg::Refuse(why) => assert!(why.contains("version 99"), "{why}"),
        m => panic!("expected Refuse, got {m:?}"),
    }
    let out = child.wait_with_output_timeout();
    assert!(!out.0.success(), "{}", out.1);
    assert!(out.1.contains("cannot take over"), "{}", out.1);
    assert!(
        TcpStream::connect(&listen).is_err(),
        "the refused binary listens"
    );
    // `child` was waited for above.
    let _ = &mut child;
}

trait WaitTimeout {
    fn wait_with_output_timeout(&mut self) -> (std::process::ExitStatus, String);
}

impl WaitTimeout for std::process::Child {
    fn wait_with_output_timeout(&mut self) -> (std::process::ExitStatus, String) {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(st) = self.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = self.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return (st, err);
            }
            if Instant::now() > until {
                let _ = self.kill();
                panic!("the new binary did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
