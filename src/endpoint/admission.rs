//! Admission control: who may connect, how fast, and who they really are.
//!
//! - Connections per client IP (a shared count; IPv4 addresses exactly,
//!   IPv6 by /64, since one host usually holds a whole /64).
//! - A handshake rate per worker (a token bucket), so a flood of new
//!   connections cannot starve established ones.
//! - Messages per second per connection (a token bucket in the session).
//! - The real client IP behind trusted proxies: `X-Forwarded-For` (the
//!   rightmost address that is not a trusted proxy) or the PROXY protocol
//!   header (v2, or v1's text line), honoured only from configured trusted
//!   proxies.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;

pub use crate::base::Bucket;
use crate::proto::handshake::Head;

/// An address range, `10.0.0.0/8` or `::1/128` (a bare address is /32 or
/// /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("not an address: {s:?}"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&b| b <= max)
                .ok_or(format!("bad prefix: {s:?}"))?,
            None => max,
        };
        Ok(Cidr { net, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = (bits / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || (a[full] ^ b[full]) >> (8 - rest) == 0
}

/// IPv4-mapped IPv6 addresses count as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

pub fn is_trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// The key a client IP is counted under (never 0): the IPv4 address, or a
/// hash of the IPv6 /64.
pub fn ip_key(ip: IpAddr) -> u32 {
    match canonical(ip) {
        IpAddr::V4(v4) => u32::from(v4).max(1),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let mut h: u32 = 0x811C_9DC5; // FNV-1a over the /64
            for b in &o[..8] {
                h = (h ^ *b as u32).wrapping_mul(0x0100_0193);
            }
            h | 1
        }
    }
}

/// Connections per client IP, shared by the workers.
#[derive(Debug, Default)]
pub struct PerIp {
    counts: Mutex<HashMap<u32, u32>>,
}

impl PerIp {
    /// Count one more connection for `key`, unless it has `limit` already.
    pub fn acquire(&self, key: u32, limit: u32) -> bool {
        let mut m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(key).or_insert(0);
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }

    pub fn release(&self, key: u32) {
        let mut m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&key);
            }
        }
    }

    pub fn get(&self, key: u32) -> u32 {
        let m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&key).copied().unwrap_or(0)
    }
}

/// The client's address behind trusted proxies: walk `X-Forwarded-For`
/// from the right, skipping trusted proxies; the first other address is the
/// client. Anything unparsable stops the walk at the last good address.
pub fn forwarded_for(head: &Head<'_>, trusted: &[Cidr], peer: IpAddr) -> IpAddr {
    let mut client = peer;
    let entries: Vec<&[u8]> = head.tokens("x-forwarded-for").collect();
    for e in entries.iter().rev() {
        if !is_trusted(trusted, client) {
            break;
        }
        match std::str::from_utf8(e)
            .ok()
            .and_then(|s| s.trim().parse::<IpAddr>().ok())
        {
            Some(ip) => client = ip,
            None => break,
        }
    }
    client
}

/// The PROXY protocol v2 signature.
const PROXY_V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Parse a PROXY protocol v2 header from the front of `buf`.
/// `Ok(None)`: incomplete. `Ok(Some((source, len)))`: `source` is the
/// client address (`None` for LOCAL commands, health checks of the proxy
/// itself). `Err(())`: not a valid v2 header.
#[allow(clippy::result_unit_err)]
pub fn parse_proxy_v2(buf: &[u8]) -> Result<Option<(Option<SocketAddr>, usize)>, ()> {
    let n = buf.len().min(12);
    if buf[..n] != PROXY_V2_SIG[..n] {
        return Err(());
    }
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(());
    }
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if len > 512 {
        return Err(()); // addresses and TLVs; nothing legitimate is this big
    }
    let total = 16 + len;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[16..total];
    let source = match (ver_cmd & 0x0F, buf[13] >> 4) {
        (0, _) => None, // LOCAL
        (1, 1) if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([body[8], body[9]]),
            ))
        }
        (1, 2) if body.len() >= 36 => {
            let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&body[..16]).expect("16 bytes"));
            Some(SocketAddr::new(
                IpAddr::V6(ip),
                u16::from_be_bytes([body[32], body[33]]),
            ))
        }
        (1, _) => None, // UNSPEC or UNIX: no IP to use
        _ => return Err(()),
    };
    Ok(Some((source, total)))
}

/// The PROXY protocol v1 prefix, and its longest line (CRLF included):
/// "a receiver may reject an incomplete line which does not contain the
/// CRLF sequence in the first 107 characters" (haproxy's
/// proxy-protocol.txt, 2.1).
const PROXY_V1_PREFIX: &[u8] = b"PROXY ";
const PROXY_V1_MAX: usize = 107;

/// Parse a PROXY protocol v1 line ("PROXY TCP4 203.0.113.5 10.0.0.1
/// 51000 443\r\n", or "PROXY UNKNOWN ...\r\n") from the front of `buf`;
/// the outcomes are those of [`parse_proxy_v2`].
#[allow(clippy::result_unit_err)]
pub fn parse_proxy_v1(buf: &[u8]) -> Result<Option<(Option<SocketAddr>, usize)>, ()> {
    let n = buf.len().min(PROXY_V1_PREFIX.len());
    if buf[..n] != PROXY_V1_PREFIX[..n] {
        return Err(());
    }
    let window = &buf[..buf.len().min(PROXY_V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= PROXY_V1_MAX {
            Err(())
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[PROXY_V1_PREFIX.len()..end]).map_err(|_| ())?;
    let mut words = line.split(' ');
    let source = match words.next() {
        // "the receiver must ignore anything presented before the CRLF"
        Some("UNKNOWN") => None,
        Some(family @ ("TCP4" | "TCP6")) => {
            let fields: Vec<&str> = words.collect();
            let [src, dst, sport, dport] = fields[..] else {
                return Err(());
            };
            let src: IpAddr = src.parse().map_err(|_| ())?;
            let dst: IpAddr = dst.parse().map_err(|_| ())?;
            if src.is_ipv4() != (family == "TCP4") || dst.is_ipv4() != src.is_ipv4() {
                return Err(());
            }
            let sport: u16 = sport.parse().map_err(|_| ())?;
            dport.parse::<u16>().map_err(|_| ())?;
            Some(SocketAddr::new(src, sport))
        }
        _ => return Err(()),
    };
    Ok(Some((source, end + 2)))
}

/// Parse a PROXY protocol header of either version from the front of
/// `buf` (the outcomes of [`parse_proxy_v2`]).
#[allow(clippy::result_unit_err)]
pub fn parse_proxy(buf: &[u8]) -> Result<Option<(Option<SocketAddr>, usize)>, ()> {
    if buf.first() == Some(&PROXY_V1_PREFIX[0]) {
        parse_proxy_v1(buf)
    } else {
        parse_proxy_v2(buf)
    }
}

/// Do the first bytes of a connection begin a PROXY header of either
/// version? `None`: too few bytes to tell.
pub fn starts_like_proxy(buf: &[u8]) -> Option<bool> {
    let like = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        (buf[..n] == sig[..n]).then_some(n == sig.len())
    };
    match (like(&PROXY_V2_SIG), like(PROXY_V1_PREFIX)) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (None, None) => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_table() {
        let c = |s: &str| Cidr::parse(s).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(c("10.0.0.0/8").contains(ip("10.200.3.4")));
        assert!(!c("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(c("192.168.1.0/25").contains(ip("192.168.1.127")));
        assert!(!c("192.168.1.0/25").contains(ip("192.168.1.128")));
        assert!(c("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(
            c("127.0.0.1").contains(ip("::ffff:127.0.0.1")),
            "v4-mapped counts as v4"
        );
        assert!(c("2001:db8::/32").contains(ip("2001:db8:1::5")));
        assert!(!c("2001:db8::/32").contains(ip("10.0.0.1")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn per_ip_counts_and_keys() {
        let p = PerIp::default();
        let k = ip_key("10.0.0.7".parse().unwrap());
        assert!(p.acquire(k, 2) && p.acquire(k, 2));
        assert!(!p.acquire(k, 2));
        p.release(k);
        assert!(p.acquire(k, 2));
        let a = ip_key("2001:db8::1".parse().unwrap());
        let b = ip_key("2001:db8::ffff".parse().unwrap());
        assert_eq!(a, b, "one /64, one key");
        assert_ne!(ip_key("0.0.0.0".parse().unwrap()), 0);
    }

    #[test]
    fn forwarded_for_trusts_only_proxies() {
        let trusted = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        let head_with =
            |xff: &str| format!("GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {xff}\r\n\r\n");
        let check = |xff: &str, peer: &str| {
            let req = head_with(xff);
            let h = Head::parse(req.as_bytes(), 8192).unwrap().unwrap();
            forwarded_for(&h, &trusted, peer.parse().unwrap()).to_string()
        };
        assert_eq!(check("203.0.113.5", "10.0.0.1"), "203.0.113.5");
        assert_eq!(
            check("1.2.3.4, 203.0.113.5, 10.0.0.2", "10.0.0.1"),
            "203.0.113.5",
            "spoofed left part ignored"
        );
        assert_eq!(
            check("203.0.113.5", "198.51.100.1"),
            "198.51.100.1",
            "untrusted peer: header ignored"
        );
        assert_eq!(check("garbage", "10.0.0.1"), "10.0.0.1");
    }

    #[test]
    fn proxy_v2() {
        let mut h = PROXY_V2_SIG.to_vec();
        h.extend_from_slice(&[
            0x21, 0x11, 0, 12, 203, 0, 113, 5, 10, 0, 0, 1, 0x1F, 0x90, 0, 80,
        ]);
        h.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (src, len) = parse_proxy_v2(&h).unwrap().unwrap();
        assert_eq!(src.unwrap().to_string(), "203.0.113.5:8080");
        assert_eq!(len, 28);
        assert_eq!(parse_proxy_v2(&h[..20]), Ok(None));
        assert_eq!(parse_proxy_v2(b"GET / HTTP/1.1\r\n"), Err(()));
        let mut local = PROXY_V2_SIG.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse_proxy_v2(&local), Ok(Some((None, 16))));
        let mut bad = PROXY_V2_SIG.to_vec();
        bad.extend_from_slice(&[0x11, 0x11, 0, 0]);
        assert_eq!(parse_proxy_v2(&bad), Err(()));
    }

    #[test]
    fn proxy_v1() {
        let h = b"PROXY TCP4 203.0.113.5 10.0.0.1 51000 443\r\n\x16\x03\x01";
        let (src, len) = parse_proxy(h).unwrap().unwrap();
        assert_eq!(src.unwrap().to_string(), "203.0.113.5:51000");
        assert_eq!(&h[len..], b"\x16\x03\x01");
        let v6 = b"PROXY TCP6 2001:db8::5 2001:db8::1 4000 443\r\n";
        let (src, len) = parse_proxy(v6).unwrap().unwrap();
        assert_eq!(src.unwrap().to_string(), "[2001:db8::5]:4000");
        assert_eq!(len, v6.len());
        assert_eq!(
            parse_proxy(b"PROXY UNKNOWN whatever\r\n"),
            Ok(Some((None, 24)))
        );
        assert_eq!(parse_proxy(b"PROXY TCP4 203.0.113.5"), Ok(None));
        assert_eq!(parse_proxy(b"PRO"), Ok(None));
        for bad in [
            &b"PROXY TCP4 2001:db8::5 10.0.0.1 1 2\r\n"[..],
            b"PROXY TCP4 203.0.113.5 10.0.0.1 1\r\n",
            b"PROXY TCP4 203.0.113.5 10.0.0.1 70000 2\r\n",
            b"PROXY TCP4  203.0.113.5 10.0.0.1 1 2\r\n",
            b"PROXY UDP4 203.0.113.5 10.0.0.1 1 2\r\n",
            b"POST / HTTP/1.1\r\n",
        ] {
            assert_eq!(
                parse_proxy(bad),
                Err(()),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // No CRLF within 107 bytes: refused, not waited for.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(200, b'x');
        assert_eq!(parse_proxy(&long), Err(()));
        assert_eq!(parse_proxy(&long[..100]), Ok(None));
    }

    #[test]
    fn proxy_signatures_are_told_apart_from_tls() {
        assert_eq!(starts_like_proxy(b"\x16\x03\x01\x02\x00"), Some(false));
        assert_eq!(starts_like_proxy(b"POST / HTTP/1.1"), Some(false));
        assert_eq!(starts_like_proxy(b"PROX"), None);
        assert_eq!(starts_like_proxy(b"PROXY TCP4"), Some(true));
        assert_eq!(starts_like_proxy(&PROXY_V2_SIG[..5]), None);
        assert_eq!(starts_like_proxy(&PROXY_V2_SIG), Some(true));
        assert_eq!(starts_like_proxy(b""), None);
    }
}
