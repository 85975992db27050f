//! What an idle TLS connection costs in memory: N server sessions after a
//! full TLS 1.3 handshake (ECDSA P-256, X25519) and one message each way,
//! held as the shell holds them (boxed), with the heap counted by a
//! counting allocator. Prints the bytes per session, `size_of` of the
//! session, and the live allocations by size (where the bytes go); then
//! the same for the state a kernel-TLS (or hand-rolled record layer)
//! design would keep: rustls's `KernelConnection` and two ring AEAD keys.
//!
//! `cargo test --test tls_memory -- --nocapture` (N = 2,000);
//! `WSGATE_TLS_SESSIONS=10000` for the figure in docs/tls.md.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use wsgate::config::TlsConfig;
use wsgate::tls::client::{client_config, connect, ClientSettings, Trust};
use wsgate::tls::{Session, TlsServer};

#[path = "support/certs.rs"]
mod certs;

/// Sizes counted one by one up to this; larger ones share the last slot.
const SIZES: usize = 20_000;

struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE_BY_SIZE: [AtomicI64; SIZES + 1] = [const { AtomicI64::new(0) }; SIZES + 1];

fn slot(size: usize) -> &'static AtomicI64 {
    &LIVE_BY_SIZE[size.min(SIZES)]
}

// SAFETY: every call is passed to the system allocator unchanged; the
// counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        slot(layout.size()).fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's layout, as GlobalAlloc requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        slot(layout.size()).fetch_sub(1, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        slot(layout.size()).fetch_sub(1, Ordering::Relaxed);
        slot(new_size).fetch_add(1, Ordering::Relaxed);
        // SAFETY: as in `dealloc`, and the new size is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn snapshot() -> (i64, Vec<i64>) {
    (
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_BY_SIZE
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect(),
    )
}

/// Live allocations added between two snapshots, per session: (size,
/// allocations per session), largest share of bytes first.
fn breakdown(before: &[i64], after: &[i64], n: usize) -> Vec<(usize, f64)> {
    let mut v: Vec<(usize, f64)> = before
        .iter()
        .zip(after)
        .enumerate()
        .map(|(size, (b, a))| (size, (a - b) as f64 / n as f64))
        .filter(|&(_, per)| per >= 0.05)
        .collect();
    v.sort_by(|x, y| (y.0 as f64 * y.1).total_cmp(&(x.0 as f64 * x.1)));
    v
}

fn sessions() -> usize {
    std::env::var("WSGATE_TLS_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// One handshake and one message each way, the client dropped after.
fn open_idle(
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<rustls::ClientConfig>,
) -> Session<UnbufferedServerConnection> {
    let mut c_out = Vec::new();
    let mut c = connect(client, "localhost", &mut c_out).expect("client session");
    let mut s = Session::server(server.clone()).expect("server session");
    let mut s_out = Vec::new();
    let mut got = Vec::new();
    let mut step =
        |c: &mut Session<_>, s: &mut Session<_>, c_out: &mut Vec<u8>, s_out: &mut Vec<u8>| {
            let mut buf = std::mem::take(c_out);
            let fed = s.feed(&mut buf, s_out);
            assert_eq!(fed.error, None);
            assert_eq!(fed.consumed, buf.len());
            got.extend_from_slice(&buf[..fed.plaintext]);
            let mut buf = std::mem::take(s_out);
            let fed = c.feed(&mut buf, c_out);
            assert_eq!(fed.error, None);
            assert_eq!(fed.consumed, buf.len());
        };
    for _ in 0..4 {
        step(&mut c, &mut s, &mut c_out, &mut s_out);
    }
    assert!(s.is_open() && c.is_open());
    c.encrypt(&mut [], &[b"\x81\x85abcdhello"], &mut c_out)
        .unwrap();
    step(&mut c, &mut s, &mut c_out, &mut s_out);
    s.encrypt(&mut [], &[b"\x81\x05hello"], &mut s_out).unwrap();
    step(&mut c, &mut s, &mut c_out, &mut s_out);
    assert_eq!(got, b"\x81\x85abcdhello");
    s
}

#[test]
fn idle_tls_sessions_hold_no_buffers() {
    let n = sessions();
    let ca = certs::TestCa::new("memory");
    let leaf = ca.leaf("server", &["localhost"]);
    let tls = TlsServer::new(&TlsConfig {
        cert: leaf.cert.clone(),
        key: leaf.key.clone(),
        certificates: Vec::new(),
    })
    .unwrap();
    let client = client_config(&ClientSettings {
        trust: Trust::CaFile(ca.ca_pem.clone()),
        resume: false,
        tls12_only: false,
    })
    .unwrap();
    let mut extractable = (**tls.config()).clone();
    extractable.enable_secret_extraction = true;
    let extractable = Arc::new(extractable);
    // Warm up (lazily built tables, the ticketer's first key).
    for _ in 0..20 {
        drop(open_idle(tls.config(), &client));
    }
    let mut held: Vec<Box<Session<UnbufferedServerConnection>>> = Vec::with_capacity(n);
    let (b0, sizes0) = snapshot();
    for _ in 0..n {
        held.push(Box::new(open_idle(tls.config(), &client)));
    }
    let (b1, sizes1) = snapshot();
    let per = (b1 - b0) as f64 / n as f64;
    let struct_size = std::mem::size_of::<Session<UnbufferedServerConnection>>();
    println!(
        "{n} idle TLS 1.3 server sessions ({:?}): {per:.0} B of heap each, \
         of which the boxed Session struct is {struct_size} B \
         (UnbufferedServerConnection {} B)",
        held[0].cipher_suite().map(|s| s.suite()),
        std::mem::size_of::<UnbufferedServerConnection>(),
    );
    println!("live allocations per session (size B x count):");
    for (size, count) in breakdown(&sizes0, &sizes1, n).iter().take(16) {
        println!("  {size:>6} B x {count:.2} = {:.0} B", *size as f64 * count);
    }
    // The goal of issue 14: <= 4 KB of gateway RSS per idle wss://
    // connection, all included; the TLS state must leave room for the
    // rest (socket entry, timer, session).
    assert!(per < 3_500.0, "{per:.0} B per idle TLS session");
    // No buffer survives: nothing of 1 KiB or more per session beyond the
    // session itself (records are up to 16 KiB).
    let big: f64 = breakdown(&sizes0, &sizes1, n)
        .iter()
        .filter(|(size, _)| *size >= 1024 && *size != struct_size)
        .map(|(size, count)| *size as f64 * count)
        .sum();
    assert!(
        big < 100.0,
        "{big:.0} B per session in allocations of 1 KiB or more"
    );
    drop(held);

    // What a design that keeps only the record keys would hold: rustls's
    // KernelConnection (it handles KeyUpdate and tickets after the
    // handshake) and a ring AEAD key per direction.
    let mut kept = Vec::with_capacity(n);
    let (k0, ksizes0) = snapshot();
    for _ in 0..n {
        let s = open_idle(&extractable, &client);
        let (secrets, kernel) = s
            .into_connection()
            .dangerous_into_kernel_connection()
            .expect("secrets");
        let key = |s: rustls::ConnectionTrafficSecrets| match s {
            rustls::ConnectionTrafficSecrets::Aes256Gcm { key, .. } => {
                ring::aead::LessSafeKey::new(
                    ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key.as_ref()).unwrap(),
                )
            }
            _ => panic!("AES-256-GCM expected first with ring"),
        };
        kept.push(Box::new((
            kernel,
            key(secrets.tx.1),
            key(secrets.rx.1),
            secrets.tx.0,
            secrets.rx.0,
        )));
    }
    let (k1, ksizes1) = snapshot();
    let kper = (k1 - k0) as f64 / n as f64;
    println!(
        "the same after dangerous_into_kernel_connection: {kper:.0} B each \
         (KernelConnection {} B, ring LessSafeKey {} B, boxed together)",
        std::mem::size_of::<rustls::kernel::KernelConnection<rustls::server::ServerConnectionData>>(
        ),
        std::mem::size_of::<ring::aead::LessSafeKey>(),
    );
    for (size, count) in breakdown(&ksizes0, &ksizes1, n).iter().take(8) {
        println!("  {size:>6} B x {count:.2} = {:.0} B", *size as f64 * count);
    }
    drop(kept);
}
