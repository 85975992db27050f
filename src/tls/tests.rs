//! The TLS session against a rustls client, in memory: every byte that
//! would cross a socket is handed over by these tests, cut as they choose.

use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use rustls::{AlertDescription, ClientConfig, ProtocolVersion};

use super::client::{client_config, connect, ClientSettings, Trust};
use super::error::PLAIN_HTTP_RESPONSE;
use super::session::{Unbuffered, MAX_PLAINTEXT, MAX_RECORD};
use super::*;
use crate::config::{SniCertificate, TlsConfig};

#[path = "../../tests/support/certs.rs"]
mod certs;
use certs::{write_atomically, TestCa};

/// One end as the shell would drive it: a spill for an incomplete record,
/// an out queue, and what was decrypted.
struct Peer<C: Unbuffered> {
    s: Session<C>,
    spill: Vec<u8>,
    out: Vec<u8>,
    got: Vec<u8>,
    peer_closed: bool,
    error: Option<TlsError>,
    max_spill: usize,
}

impl<C: Unbuffered> Peer<C> {
    fn new(s: Session<C>, out: Vec<u8>) -> Self {
        Peer {
            s,
            spill: Vec::new(),
            out,
            got: Vec::new(),
            peer_closed: false,
            error: None,
            max_spill: 0,
        }
    }

    /// One read of `bytes`.
    fn recv(&mut self, bytes: &[u8]) -> Fed {
        let mut buf = std::mem::take(&mut self.spill);
        buf.extend_from_slice(bytes);
        let fed = self.s.feed(&mut buf, &mut self.out);
        assert!(
            fed.plaintext <= fed.consumed,
            "plaintext lies over used records"
        );
        self.got.extend_from_slice(&buf[..fed.plaintext]);
        if fed.error.is_none() {
            self.spill = buf[fed.consumed..].to_vec();
        }
        self.max_spill = self.max_spill.max(self.spill.len());
        self.peer_closed |= fed.peer_closed;
        if let Some(e) = &fed.error {
            self.error = Some(e.clone());
        }
        fed
    }

    fn send(&mut self, data: &[u8]) {
        self.s
            .encrypt(&mut self.spill, &[data], &mut self.out)
            .expect("encrypt");
    }

    fn close_notify(&mut self) {
        self.s.close_notify(&mut self.spill, &mut self.out);
    }
}

type Client = Peer<UnbufferedClientConnection>;
type Server = Peer<UnbufferedServerConnection>;

/// Hand each side's out queue to the other, `chunk` bytes per read,
/// until both are empty (bounded).
fn pump(c: &mut Client, s: &mut Server, chunk: usize) {
    for _ in 0..10_000 {
        if c.out.is_empty() && s.out.is_empty() {
            return;
        }
        let bytes = std::mem::take(&mut c.out);
        for piece in bytes.chunks(chunk) {
            s.recv(piece);
        }
        let bytes = std::mem::take(&mut s.out);
        for piece in bytes.chunks(chunk) {
            c.recv(piece);
        }
        if c.error.is_some() || s.error.is_some() {
            // Deliver the alert, once.
            let bytes = std::mem::take(&mut s.out);
            c.recv(&bytes);
            let bytes = std::mem::take(&mut c.out);
            s.recv(&bytes);
            return;
        }
    }
    panic!("the handshake does not settle");
}

struct Fixture {
    ca: TestCa,
    default: certs::Leaf,
    server: TlsServer,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let ca = TestCa::new(tag);
        let default = ca.leaf("default", &["localhost", "default.test"]);
        let cfg = TlsConfig {
            cert: default.cert.clone(),
            key: default.key.clone(),
            certificates: Vec::new(),
        };
        let server = TlsServer::new(&cfg).expect("server config");
        Fixture {
            ca,
            default,
            server,
        }
    }

    fn client_config(&self, resume: bool, tls12_only: bool) -> Arc<ClientConfig> {
        client_config(&ClientSettings {
            trust: Trust::CaFile(self.ca.ca_pem.clone()),
            resume,
            tls12_only,
        })
        .expect("client config")
    }

    fn pair(&self, cfg: &Arc<ClientConfig>, host: &str) -> (Client, Server) {
        let mut out = Vec::new();
        let c = connect(cfg, host, &mut out).expect("client session");
        (
            Peer::new(c, out),
            Peer::new(self.server.session().expect("server session"), Vec::new()),
        )
    }

    fn open(&self, cfg: &Arc<ClientConfig>, host: &str, chunk: usize) -> (Client, Server) {
        let (mut c, mut s) = self.pair(cfg, host);
        pump(&mut c, &mut s, chunk);
        assert!(
            c.error.is_none() && s.error.is_none(),
            "{:?} {:?}",
            c.error,
            s.error
        );
        assert!(s.s.is_open() && c.s.is_open());
        (c, s)
    }
}

/// The leaf certificate the client was served.
fn served(c: &Client) -> Vec<u8> {
    c.s.peer_leaf().expect("a server certificate")
}

fn leaf_der(path: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path)
        .expect("a PEM file")
        .next()
        .expect("a certificate")
        .expect("a valid certificate")
        .to_vec()
}

/// A TLS 1.2 or 1.3 AES-256-GCM record written with a client's extracted
/// keys: what rustls would never send, for the tests that need it.
struct Sealer {
    key: ring::aead::LessSafeKey,
    iv: [u8; 12],
    tls13: bool,
}

impl Sealer {
    fn from_client(c: Client) -> (Sealer, u64) {
        let tls13 = c.s.protocol_version() == Some(ProtocolVersion::TLSv1_3);
        let (seq, keys) = c.s.into_secrets().expect("secrets").tx;
        let rustls::ConnectionTrafficSecrets::Aes256Gcm { key, iv } = &keys else {
            panic!("AES-256-GCM expected first with ring");
        };
        let key = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key.as_ref()).unwrap(),
        );
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(iv.as_ref());
        (
            Sealer {
                key,
                iv: nonce,
                tls13,
            },
            seq,
        )
    }

    /// RFC 8446 §5.2-5.3: inner plaintext = content || type, nonce = IV
    /// XOR the sequence number, the header is the additional data. RFC
    /// 5288 §3 (TLS 1.2): nonce = salt || explicit (rustls: the IV's last
    /// 8 bytes XOR the sequence number, sent in front of the ciphertext),
    /// additional data = seq || type || version || length.
    fn seal(&self, seq: u64, typ: u8, content: &[u8]) -> Vec<u8> {
        let mut nonce = self.iv;
        for (n, b) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= b;
        }
        let mut body = content.to_vec();
        if self.tls13 {
            body.push(typ);
            let len = (body.len() + 16) as u16;
            let header = [23, 3, 3, (len >> 8) as u8, len as u8];
            self.key
                .seal_in_place_append_tag(
                    ring::aead::Nonce::assume_unique_for_key(nonce),
                    ring::aead::Aad::from(header),
                    &mut body,
                )
                .unwrap();
            [&header[..], &body].concat()
        } else {
            let mut aad = [0u8; 13];
            aad[..8].copy_from_slice(&seq.to_be_bytes());
            aad[8..11].copy_from_slice(&[typ, 3, 3]);
            aad[11..].copy_from_slice(&(content.len() as u16).to_be_bytes());
            self.key
                .seal_in_place_append_tag(
                    ring::aead::Nonce::assume_unique_for_key(nonce),
                    ring::aead::Aad::from(aad),
                    &mut body,
                )
                .unwrap();
            let len = (8 + body.len()) as u16;
            [
                &[typ, 3, 3, (len >> 8) as u8, len as u8][..],
                &nonce[4..],
                &body,
            ]
            .concat()
        }
    }
}

fn extractable(cfg: Arc<ClientConfig>) -> Arc<ClientConfig> {
    let mut cfg = (*cfg).clone();
    cfg.enable_secret_extraction = true;
    Arc::new(cfg)
}

#[test]
fn full_handshake_then_data_both_ways() {
    let f = Fixture::new("full");
    for (tls12, version) in [
        (false, ProtocolVersion::TLSv1_3),
        (true, ProtocolVersion::TLSv1_2),
    ] {
        let cfg = f.client_config(false, tls12);
        let (mut c, mut s) = f.pair(&cfg, "localhost");
        assert!(s.s.is_handshaking());
        pump(&mut c, &mut s, usize::MAX);
        assert!(!s.s.is_handshaking(), "{version:?}");
        assert_eq!(s.s.protocol_version(), Some(version));
        assert_eq!(s.s.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert!(!s.s.resumed());
        assert_eq!(served(&c), leaf_der(&f.default.cert));
        c.send(b"GET /ws HTTP/1.1\r\n\r\n");
        pump(&mut c, &mut s, usize::MAX);
        assert_eq!(s.got, b"GET /ws HTTP/1.1\r\n\r\n");
        s.send(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        pump(&mut c, &mut s, usize::MAX);
        assert_eq!(c.got, b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        assert!(s.spill.is_empty() && c.spill.is_empty());
        // close_notify both ways (RFC 8446 §6.1).
        c.close_notify();
        pump(&mut c, &mut s, usize::MAX);
        assert!(
            s.peer_closed,
            "{version:?}: the server saw the close_notify"
        );
        s.close_notify();
        pump(&mut c, &mut s, usize::MAX);
        assert!(c.peer_closed);
        assert!(s.error.is_none() && c.error.is_none());
    }
}

#[test]
fn the_handshake_and_records_split_at_every_byte() {
    let f = Fixture::new("split");
    let cfg = f.client_config(false, false);
    // The whole handshake one byte per read.
    let (mut c, mut s) = f.open(&cfg, "localhost", 1);
    // Then one record per split point: record k arrives in two reads cut
    // at byte k, and the plaintext comes out whole and in order.
    let msg: Vec<u8> = (0..100u8).collect();
    c.send(&msg);
    let record_len = c.out.len();
    assert_eq!(
        record_len,
        100 + 22,
        "one TLS 1.3 record: header 5, type 1, tag 16"
    );
    let bytes = std::mem::take(&mut c.out);
    s.recv(&bytes);
    let mut expect = msg.clone();
    for k in 0..=record_len {
        c.send(&msg);
        let bytes = std::mem::take(&mut c.out);
        let fed = s.recv(&bytes[..k]);
        assert_eq!(fed.plaintext, if k == record_len { 100 } else { 0 });
        assert_eq!(s.spill.len(), if k == record_len { 0 } else { k });
        s.recv(&bytes[k..]);
        expect.extend_from_slice(&msg);
    }
    assert_eq!(s.got, expect);
    assert!(s.spill.is_empty());
    // Several records in one read come out in one piece, in order.
    for i in 0..5u8 {
        c.send(&[i; 10]);
    }
    let bytes = std::mem::take(&mut c.out);
    let before = s.got.len();
    let fed = s.recv(&bytes);
    assert_eq!((fed.plaintext, fed.consumed), (50, bytes.len()));
    let want: Vec<u8> = (0..5u8).flat_map(|i| [i; 10]).collect();
    assert_eq!(&s.got[before..], &want[..]);
}

#[test]
fn a_record_larger_than_the_read_buffer_is_kept_until_whole() {
    let f = Fixture::new("large");
    let cfg = f.client_config(false, false);
    let (mut c, mut s) = f.open(&cfg, "localhost", usize::MAX);
    // 100 KB: seven records of up to 16 KiB, read 1000 bytes at a time
    // (a read buffer smaller than a record).
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    c.send(&big);
    let bytes = std::mem::take(&mut c.out);
    assert_eq!(bytes.len(), big.len() + 7 * 22);
    for piece in bytes.chunks(1000) {
        s.recv(piece);
    }
    assert_eq!(s.got, big);
    assert!(
        s.max_spill < MAX_RECORD,
        "at most one record kept: {}",
        s.max_spill
    );
    assert!(
        s.max_spill > MAX_PLAINTEXT - 1000,
        "a whole record was waited for: {}",
        s.max_spill
    );
    // The other way too, from two slices.
    s.s.encrypt(&mut [], &[&big[..50_000], &big[50_000..]], &mut s.out)
        .unwrap();
    let bytes = std::mem::take(&mut s.out);
    for piece in bytes.chunks(777) {
        c.recv(piece);
    }
    assert_eq!(c.got, big);
}

#[test]
fn small_chunks_share_a_record() {
    let f = Fixture::new("cork");
    let cfg = f.client_config(false, false);
    let (mut c, mut s) = f.open(&cfg, "localhost", usize::MAX);
    // 100 frames of 7 bytes (a corked flush): one record, not 100.
    let frames: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 7]).collect();
    let slices: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
    s.s.encrypt(&mut [], &slices, &mut s.out).unwrap();
    assert_eq!(s.out.len(), 700 + 22);
    pump(&mut c, &mut s, usize::MAX);
    assert_eq!(c.got, frames.concat());
    // Nothing to encrypt: nothing written.
    s.s.encrypt(&mut [], &[], &mut s.out).unwrap();
    s.s.encrypt(&mut [], &[&[]], &mut s.out).unwrap();
    assert!(s.out.is_empty());
    // Before the handshake there is nothing to encrypt with.
    let (_c, mut s) = f.pair(&cfg, "localhost");
    assert_eq!(
        s.s.encrypt(&mut [], &[b"early"], &mut s.out),
        Err(TlsError::NotReady)
    );
}

#[test]
fn resumption_with_tickets_tls13_and_tls12() {
    let f = Fixture::new("resume");
    for tls12 in [false, true] {
        let cfg = f.client_config(true, tls12);
        let (mut c, mut s) = f.open(&cfg, "localhost", usize::MAX);
        assert!(!s.s.resumed());
        // TLS 1.3 tickets come after the handshake: let the client read them.
        c.send(b"x");
        s.send(b"y");
        pump(&mut c, &mut s, usize::MAX);
        let (mut c2, mut s2) = f.open(&cfg, "localhost", usize::MAX);
        assert!(
            s2.s.resumed(),
            "tls12={tls12}: the second handshake resumes"
        );
        c2.send(b"after resumption");
        pump(&mut c2, &mut s2, usize::MAX);
        assert_eq!(s2.got, b"after resumption");
    }
}

#[test]
fn plaintext_http_gets_a_plaintext_400() {
    let f = Fixture::new("plain");
    let mut s = Peer::new(f.server.session().unwrap(), Vec::new());
    let fed = s.recv(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(fed.error, Some(TlsError::PlainHttp));
    assert_eq!(s.out, PLAIN_HTTP_RESPONSE);
    let text = String::from_utf8_lossy(PLAIN_HTTP_RESPONSE);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(&format!("Content-Length: {}", body.len())));
    // Every later call says the same, and nothing more is sent.
    s.out.clear();
    assert_eq!(s.recv(b"more").error, Some(TlsError::PlainHttp));
    assert!(s.out.is_empty());
    // A bystander on the same configuration is served.
    let cfg = f.client_config(false, false);
    let (mut c, mut s) = f.open(&cfg, "localhost", usize::MAX);
    c.send(b"ok");
    pump(&mut c, &mut s, usize::MAX);
    assert_eq!(s.got, b"ok");
}

/// A fatal alert record as it is sent before encryption starts.
fn is_plain_alert(out: &[u8], desc: AlertDescription) -> bool {
    out.len() == 7 && out[0] == 21 && out[5] == 2 && out[6] == u8::from(desc)
}

#[test]
fn garbage_and_malformed_hellos_get_a_fatal_alert() {
    let f = Fixture::new("garbage");
    let cases: Vec<(&str, Vec<u8>, AlertDescription)> = vec![
        // A handshake record whose body is not a handshake message.
        (
            "garbage body",
            [&[22, 3, 1, 0, 8][..], &[0xff; 8]].concat(),
            AlertDescription::DecodeError,
        ),
        // A content type that does not exist.
        (
            "bad content type",
            vec![0x99, 3, 3, 0, 1, 0],
            AlertDescription::DecodeError,
        ),
        // A record longer than TLS allows (RFC 8446 §5.2). rustls answers
        // decode_error where the RFC asks for record_overflow; the
        // connection ends either way.
        (
            "oversized record",
            vec![22, 3, 3, 0xff, 0xff],
            AlertDescription::DecodeError,
        ),
        // Application data before any handshake.
        (
            "data first",
            vec![23, 3, 3, 0, 1, 0],
            AlertDescription::UnexpectedMessage,
        ),
    ];
    for (what, bytes, alert) in cases {
        let mut s = Peer::new(f.server.session().unwrap(), Vec::new());
        let fed = s.recv(&bytes);
        match &fed.error {
            Some(TlsError::Protocol {
                alert_sent: true, ..
            }) => {}
            other => panic!("{what}: {other:?}"),
        }
        assert!(is_plain_alert(&s.out, alert), "{what}: {:?}", s.out);
        assert_eq!(fed.plaintext, 0);
    }
    // A bystander is served.
    let cfg = f.client_config(false, false);
    let (mut c, mut s) = f.open(&cfg, "localhost", usize::MAX);
    c.send(b"ok");
    pump(&mut c, &mut s, usize::MAX);
    assert_eq!(s.got, b"ok");
}

#[test]
fn a_truncated_client_hello_waits_then_a_broken_one_fails() {
    let f = Fixture::new("trunc");
    let cfg = f.client_config(false, false);
    let (c, mut s) = f.pair(&cfg, "localhost");
    let hello = c.out.clone();
    // Half a ClientHello: nothing sent, nothing decided; the caller keeps
    // the bytes and its handshake deadline runs.
    let fed = s.recv(&hello[..hello.len() / 2]);
    assert_eq!(fed.error, None);
    assert_eq!(fed.consumed, 0);
    assert!(s.out.is_empty() && s.s.is_handshaking());
    assert_eq!(s.spill.len(), hello.len() / 2);
    // A ClientHello whose record was cut short (its length field says
    // so): the handshake message inside is incomplete, and the next
    // record is not its continuation. rustls queues no alert for this;
    // the session writes unexpected_message in plaintext.
    let mut cut = hello[..hello.len() - 20].to_vec();
    let len = (cut.len() - 5) as u16;
    cut[3..5].copy_from_slice(&len.to_be_bytes());
    cut.extend_from_slice(&[21, 3, 3, 0, 2, 1, 0]);
    let mut s = Peer::new(f.server.session().unwrap(), Vec::new());
    let fed = s.recv(&cut);
    assert!(
        matches!(
            fed.error,
            Some(TlsError::Protocol {
                alert_sent: true,
                ..
            })
        ),
        "{:?}",
        fed.error
    );
    assert!(
        is_plain_alert(&s.out, AlertDescription::UnexpectedMessage),
        "{:?}",
        s.out
    );
}

#[test]
fn alpn_without_http11_is_refused() {
    let f = Fixture::new("alpn");
    let mut cfg = (*f.client_config(false, false)).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let cfg = Arc::new(cfg);
    let (mut c, mut s) = f.pair(&cfg, "localhost");
    pump(&mut c, &mut s, usize::MAX);
    // RFC 7301 §3.2: "the server MUST respond with a fatal
    // no_application_protocol alert".
    assert!(matches!(
        s.error,
        Some(TlsError::Protocol {
            error: rustls::Error::NoApplicationProtocol,
            alert_sent: true
        })
    ));
    assert_eq!(
        c.error,
        Some(TlsError::PeerAlert(AlertDescription::NoApplicationProtocol))
    );
    // No ALPN at all is fine (older clients).
    let mut cfg = (*f.client_config(false, false)).clone();
    cfg.alpn_protocols.clear();
    let (_c, s) = f.open(&Arc::new(cfg), "localhost", usize::MAX);
    assert_eq!(s.s.alpn_protocol(), None);
}

#[test]
fn an_alert_in_the_middle_of_a_message_ends_after_the_data_before_it() {
    let f = Fixture::new("alert");
    let cfg = f.client_config(false, false);
    let (mut c, mut s) = f.open(&cfg, "localhost", usize::MAX);
    // Half a WebSocket frame in one record, then a fatal alert, in one
    // read: the plaintext before the alert is handed over, then the
    // connection ends, and nothing is sent back (RFC 8446 §6.2).
    c.send(&[0x81, 0x85, 1, 2, 3]);
    let mut bytes = std::mem::take(&mut c.out);
    // An encrypted alert: a rustls client sends one when it fails; make it
    // fail with a record that does not decrypt.
    c.recv(&[
        23, 3, 3, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    assert!(c.error.is_some());
    bytes.extend_from_slice(&c.out);
    let fed = s.recv(&bytes);
    assert_eq!(&s.got[..], &[0x81, 0x85, 1, 2, 3]);
    assert_eq!(fed.plaintext, 5);
    assert_eq!(
        fed.error,
        Some(TlsError::PeerAlert(AlertDescription::BadRecordMac))
    );
    assert!(s.out.is_empty(), "no answer to a fatal alert");
    // A record that fails to decrypt (a flipped bit) gets bad_record_mac.
    let (mut c, mut s) = f.open(&cfg, "localhost", usize::MAX);
    c.send(b"hello");
    let mut bytes = std::mem::take(&mut c.out);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let fed = s.recv(&bytes);
    assert!(matches!(
        fed.error,
        Some(TlsError::Protocol {
            error: rustls::Error::DecryptError,
            alert_sent: true
        })
    ));
    c.recv(&std::mem::take(&mut s.out));
    assert_eq!(
        c.error,
        Some(TlsError::PeerAlert(AlertDescription::BadRecordMac))
    );
}

#[test]
fn an_oversized_record_after_the_handshake_is_refused() {
    let f = Fixture::new("oversize");
    let cfg = f.client_config(false, false);
    let (mut c, mut s) = f.open(&cfg, "localhost", usize::MAX);
    // RFC 8446 §5.2: "An endpoint that receives a record that exceeds
    // this length MUST terminate the connection with a "record_overflow"
    // alert." rustls refuses a header announcing 2^14 + 2048 bytes or
    // more at once, and a TLS 1.3 record over 2^14 + 256 once decrypted.
    let fed = s.recv(&[23, 3, 3, 0x48, 0x00]);
    assert!(
        matches!(
            fed.error,
            Some(TlsError::Protocol {
                alert_sent: true,
                ..
            })
        ),
        "{fed:?}"
    );
    c.recv(&std::mem::take(&mut s.out));
    // decode_error from rustls (see garbage_and_malformed_hellos_...).
    assert_eq!(
        c.error,
        Some(TlsError::PeerAlert(AlertDescription::DecodeError))
    );
    // A record just under that bound is waited for, not refused.
    let (_c, mut s) = f.open(&cfg, "localhost", usize::MAX);
    let fed = s.recv(&[23, 3, 3, 0x47, 0xff]);
    assert_eq!((fed.error, fed.consumed), (None, 0));
    assert_eq!(MAX_RECORD, 5 + 0x47ff);
}

#[test]
fn renegotiation_is_refused_in_tls12_and_the_session_goes_on() {
    let f = Fixture::new("reneg");
    let cfg = extractable(f.client_config(false, true));
    let (c, mut s) = f.open(&cfg, "localhost", usize::MAX);
    assert_eq!(s.s.protocol_version(), Some(ProtocolVersion::TLSv1_2));
    // The client's keys, to write a record rustls would never send: a new
    // ClientHello inside the encrypted session.
    let (sealer, seq) = Sealer::from_client(c);
    let hello = {
        let mut out = Vec::new();
        connect(&cfg, "localhost", &mut out).unwrap();
        out[5..].to_vec() // the handshake message, without its record header
    };
    // RFC 5746 §4.4 and RFC 5246 §7.2.2: a server that does not
    // renegotiate answers a ClientHello with a no_renegotiation warning
    // alert and goes on (rustls does, as nginx does with OpenSSL).
    let fed = s.recv(&sealer.seal(seq, 22, &hello));
    assert_eq!(fed.error, None);
    assert_eq!(fed.plaintext, 0);
    assert_eq!(s.out[0], 21, "an alert record");
    assert_eq!(s.out.len(), 5 + 8 + 2 + 16, "one encrypted two-byte alert");
    // The session goes on: the next record of the client is read.
    s.recv(&sealer.seal(seq + 1, 23, b"after the refusal"));
    assert_eq!(s.got, b"after the refusal");
    assert!(s.error.is_none());
    // A bystander is served.
    let (mut c, mut s) = f.open(&cfg, "localhost", usize::MAX);
    c.send(b"still here");
    pump(&mut c, &mut s, usize::MAX);
    assert_eq!(s.got, b"still here");
}

#[test]
fn a_key_update_split_across_records_is_kept_by_the_caller() {
    let f = Fixture::new("keyupdate");
    let cfg = extractable(f.client_config(false, false));
    let (c, mut s) = f.open(&cfg, "localhost", usize::MAX);
    assert_eq!(s.s.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    let (sealer, seq) = Sealer::from_client(c);
    // KeyUpdate (type 24, length 1, update_not_requested), its first three
    // bytes in one record: rustls keeps its place in the caller's buffer.
    let fed = s.recv(&sealer.seal(seq, 22, &[24, 0, 0]));
    assert_eq!((fed.error, fed.plaintext, fed.consumed), (None, 0, 0));
    assert!(!s.spill.is_empty(), "the caller keeps the fragment");
    // Sending now must hand those bytes to rustls (with an empty buffer
    // rustls indexes past its end and panics).
    s.send(b"a broadcast while the fragment waits");
    assert!(!s.out.is_empty());
    // The rest of the KeyUpdate: the session reads on, with the new key.
    let fed = s.recv(&sealer.seal(seq + 1, 22, &[1, 0]));
    assert_eq!(fed.error, None);
    assert!(s.spill.is_empty());
    // A record under the old key now fails to decrypt: the update took.
    let fed = s.recv(&sealer.seal(seq + 2, 23, b"old key"));
    assert!(matches!(
        fed.error,
        Some(TlsError::Protocol {
            error: rustls::Error::DecryptError,
            ..
        })
    ));
}

fn sni_config(f: &Fixture, entries: Vec<SniCertificate>) -> TlsConfig {
    TlsConfig {
        cert: f.default.cert.clone(),
        key: f.default.key.clone(),
        certificates: entries,
    }
}

#[test]
fn sni_chooses_by_name_with_a_default() {
    let f = Fixture::new("sni");
    let a = f.ca.leaf("a", &["a.test"]);
    let w = f.ca.leaf("w", &["*.wild.test"]);
    let cfg = sni_config(
        &f,
        vec![
            SniCertificate {
                server_names: vec!["a.test".into()],
                cert: a.cert.clone(),
                key: a.key.clone(),
            },
            SniCertificate {
                server_names: vec!["*.wild.test".into()],
                cert: w.cert.clone(),
                key: w.key.clone(),
            },
        ],
    );
    let server = TlsServer::new(&cfg).unwrap();
    let f = Fixture { server, ..f };
    let client = f.client_config(false, false);
    for (host, want) in [
        ("a.test", &a.cert),
        ("x.wild.test", &w.cert),
        ("default.test", &f.default.cert),
        ("localhost", &f.default.cert),
    ] {
        let (c, _s) = f.open(&client, host, usize::MAX);
        assert_eq!(served(&c), leaf_der(want), "{host}");
    }
    // An IP address sends no SNI: the default, which does not name
    // 127.0.0.1, so the client refuses it.
    let (mut c, mut s) = f.pair(&client, "127.0.0.1");
    pump(&mut c, &mut s, usize::MAX);
    assert!(
        matches!(c.error, Some(TlsError::Protocol { .. })),
        "{:?}",
        c.error
    );
    // A name the certificate does not cover is refused at load.
    let bad = sni_config(
        &f,
        vec![SniCertificate {
            server_names: vec!["b.test".into()],
            cert: a.cert.clone(),
            key: a.key.clone(),
        }],
    );
    let e = TlsServer::new(&bad).unwrap_err();
    assert!(e.0.contains("b.test"), "{e}");
    // So is a key that is not the certificate's.
    let mismatched = TlsConfig {
        cert: a.cert.clone(),
        key: w.key.clone(),
        certificates: Vec::new(),
    };
    let e = TlsServer::new(&mismatched).unwrap_err();
    assert!(e.0.contains("a.pem"), "{e}");
}

#[test]
fn reload_swaps_certificates_for_new_handshakes_only() {
    let f = Fixture::new("reload");
    let a = f.ca.leaf("a", &["a.test"]);
    let cfg = sni_config(
        &f,
        vec![SniCertificate {
            server_names: vec!["a.test".into()],
            cert: a.cert.clone(),
            key: a.key.clone(),
        }],
    );
    let server = TlsServer::new(&cfg).unwrap();
    let f = Fixture { server, ..f };
    let resuming = f.client_config(true, false);
    let full = f.client_config(false, false);
    let old = leaf_der(&a.cert);
    let default_der = leaf_der(&f.default.cert);
    let (mut live_c, mut live_s) = f.open(&resuming, "a.test", usize::MAX);
    assert_eq!(served(&live_c), old);
    live_c.send(b"x");
    live_s.send(b"y");
    pump(&mut live_c, &mut live_s, usize::MAX);
    // Renew a.test's certificate in place, then reload.
    f.ca.leaf("a", &["a.test"]);
    let new = leaf_der(&a.cert);
    assert_ne!(old, new);
    let r = f.server.reload().unwrap();
    assert_eq!(r.generation, 2);
    let (c, _s) = f.open(&full, "a.test", usize::MAX);
    assert_eq!(served(&c), new, "a new handshake gets the new certificate");
    // A session of before the reload still resumes (tickets are not tied
    // to the certificate files).
    let (_c, s) = f.open(&resuming, "a.test", usize::MAX);
    assert!(s.s.resumed());
    // The live connection is untouched.
    live_c.send(b"still");
    live_s.send(b"here");
    pump(&mut live_c, &mut live_s, usize::MAX);
    assert_eq!(
        (&live_s.got[..], &live_c.got[..]),
        (&b"xstill"[..], &b"yhere"[..])
    );
    // A broken file: the reload fails, the last good set stays.
    write_atomically(
        &a.key,
        b"-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    );
    assert!(f.server.reload().is_err());
    std::fs::remove_file(&f.default.cert).unwrap();
    let e = f.server.reload().unwrap_err();
    assert!(e.0.contains("default.pem"), "{e}");
    let (c, _s) = f.open(&full, "a.test", usize::MAX);
    assert_eq!(served(&c), new);
    let (c, _s) = f.open(&full, "default.test", usize::MAX);
    assert_eq!(
        served(&c),
        default_der,
        "the default stays after a failed reload"
    );
}

#[test]
fn sighup_runs_the_reload() {
    use std::os::unix::thread::JoinHandleExt;
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = sighup::spawn_on_sighup(move || {
        let _ = tx.send(());
    })
    .unwrap();
    // Aimed at that thread alone (it has SIGHUP blocked and waits for it),
    // so no other thread of the test process can take it.
    let thread = handle.as_pthread_t();
    for _ in 0..2 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            // SAFETY: the thread is alive (it loops forever, and `handle`
            // is kept), so its pthread_t is valid.
            let r = unsafe { libc::pthread_kill(thread, libc::SIGHUP) };
            assert_eq!(r, 0);
            // The signal stays pending until the thread waits for it;
            // resend only if nothing came for a while.
            if rx
                .recv_timeout(std::time::Duration::from_millis(500))
                .is_ok()
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no reload after SIGHUP"
            );
        }
    }
    std::mem::forget(handle);
}
