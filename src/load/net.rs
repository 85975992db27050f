//! Where to connect and from where: `ws://` and `wss://` URLs, source-address lists, and
//! a non-blocking `connect` that can bind a source address first.
//!
//! One source address reaches one destination port only ~28,000 times (the
//! ephemeral port range). Binding each socket to the next of several
//! loopback addresses (127.0.0.2, 127.0.0.3, …) multiplies that; with
//! `IP_BIND_ADDRESS_NO_PORT` the kernel picks the port at `connect` time,
//! per destination, instead of at `bind` time for every destination at once.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;

use crate::server::sys;

/// A parsed `ws://host[:port][/path][?query]` URL, resolved once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The resolved address to connect to.
    pub addr: SocketAddr,
    /// The `Host` header: `host[:port]` as written in the URL.
    pub host: String,
    /// The request target: path and query (at least "/").
    pub path: String,
    /// `wss://`: TLS first (the name for SNI and the certificate check is
    /// `server_name`).
    pub tls: bool,
    /// The host as written, without port or brackets.
    pub server_name: String,
}

impl Target {
    /// Parse and resolve a `ws://` or `wss://` URL.
    pub fn parse(url: &str) -> Result<Target, String> {
        let (rest, tls) = if let Some(r) = url.strip_prefix("ws://") {
            (r, false)
        } else if let Some(r) = url.strip_prefix("wss://") {
            (r, true)
        } else {
            return Err(format!("{url:?}: only ws:// and wss:// URLs are supported"));
        };
        let default_port = if tls { 443 } else { 80 };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if authority.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        // "[::1]:80", "[::1]", "host:80", "host".
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: bad IPv6 address"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port"))?,
                None if after.is_empty() => default_port,
                None => return Err(format!("{url:?}: bad authority")),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| format!("{url:?}: bad port"))?),
                None => (authority, default_port),
            }
        };
        let addrs: Vec<SocketAddr> = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("{url:?}: cannot resolve {host:?}: {e}"))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| format!("{url:?}: {host:?} has no address"))?;
        Ok(Target {
            addr,
            host: authority.to_string(),
            path,
            tls,
            server_name: host.to_string(),
        })
    }

    /// The same server with another request target.
    pub fn with_path(&self, path: &str) -> Target {
        Target {
            path: path.to_string(),
            ..self.clone()
        }
    }
}

/// Parse source addresses: a range "127.0.0.2-127.0.0.9", a list
/// "127.0.0.2,127.0.0.5", a single address, or a mix ("a-b,c").
pub fn parse_src_ips(s: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a.trim().parse().map_err(|_| format!("bad address {a:?}"))?;
            let b: Ipv4Addr = b.trim().parse().map_err(|_| format!("bad address {b:?}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if a > b || b - a >= 1 << 16 {
                return Err(format!("bad address range {part:?}"));
            }
            out.extend((a..=b).map(|v| IpAddr::V4(Ipv4Addr::from(v))));
        } else {
            out.push(part.parse().map_err(|_| format!("bad address {part:?}"))?);
        }
    }
    if out.is_empty() {
        return Err("no source address given".to_string());
    }
    Ok(out)
}

/// The share of `total` that part `index` of `parts` takes (the first
/// `total % parts` parts take one more).
pub fn share(total: u64, index: usize, parts: usize) -> u64 {
    let parts = parts.max(1) as u64;
    let i = index as u64;
    total / parts + u64::from(i < total % parts)
}

/// The source addresses that part `index` of `parts` uses: a contiguous
/// slice when there are at least as many addresses as parts, else one
/// address picked round robin.
pub fn share_ips(ips: &[IpAddr], index: usize, parts: usize) -> Vec<IpAddr> {
    let parts = parts.max(1);
    if ips.is_empty() {
        return Vec::new();
    }
    if ips.len() >= parts {
        let lo = index * ips.len() / parts;
        let hi = (index + 1) * ips.len() / parts;
        ips[lo..hi].to_vec()
    } else {
        vec![ips[index % ips.len()]]
    }
}

/// Start a non-blocking connect to `dst`, bound first to `src` (port 0,
/// `IP_BIND_ADDRESS_NO_PORT`) when one is given. The connection completes
/// later: wait for the socket to become writable. With `stamp`, the kernel
/// stamps what arrives ([`recv_stamped`]).
pub fn connect(
    dst: SocketAddr,
    src: Option<IpAddr>,
    stamp: bool,
) -> io::Result<mio::net::TcpStream> {
    let owned = sys::tcp_socket(dst)?;
    if stamp {
        sys::set_int_opt(&owned, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
    }
    if let Some(src) = src {
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("source {src} and destination {dst} differ in family"),
            ));
        }
        if src.is_ipv4() {
            sys::set_int_opt(&owned, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
        }
        sys::bind(&owned, SocketAddr::new(src, 0))?;
    }
    let (sa, len) = sys::sockaddr(dst);
    // SAFETY: a valid sockaddr of `len` bytes, our socket.
    let r = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            &sa as *const libc::sockaddr_storage as *const libc::sockaddr,
            len,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    let std_stream = std::net::TcpStream::from(owned);
    std_stream.set_nodelay(true)?;
    Ok(mio::net::TcpStream::from_std(std_stream))
}

/// `recv` on a socket with `SO_TIMESTAMPNS` on: the bytes read, and when
/// the kernel received the last of them (ns since the Unix epoch,
/// CLOCK_REALTIME; `None` if it gave no stamp). On loopback the stamp is
/// taken as the sender's write is delivered to this socket, so it is the
/// arrival time whether or not this process was running then: a load
/// generator that falls behind (a shared core) still measures the
/// server, not its own backlog.
pub fn recv_stamped(sock: &impl AsRawFd, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    // A cmsghdr (16 bytes on 64-bit Linux) and a timespec (16), with room.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid value (null name, no iovecs).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `msg` points at one iovec over `buf` (live, `buf.len()`
    // writable bytes) and at `control` (live, its size in
    // `msg_controllen`); the kernel writes only within them.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let filled = msg.msg_controllen.min(std::mem::size_of_val(&control));
    let bytes: Vec<u8> = control.iter().flat_map(|w| w.to_ne_bytes()).collect();
    Ok((n as usize, timestamp_ns(&bytes[..filled])))
}

/// The `SCM_TIMESTAMPNS` in a control buffer (cmsghdr: `cmsg_len` as a
/// usize, level, type, then the data 8-aligned), read as bytes.
fn timestamp_ns(mut control: &[u8]) -> Option<u64> {
    const HDR: usize = 16;
    let word = |b: &[u8], at: usize| -> Option<u64> {
        Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
    };
    let int = |b: &[u8], at: usize| -> Option<i32> {
        Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    while control.len() >= HDR {
        let len = word(control, 0)? as usize;
        if len < HDR || len > control.len() {
            return None;
        }
        let (level, kind) = (int(control, 8)?, int(control, 12)?);
        if level == libc::SOL_SOCKET && kind == libc::SCM_TIMESTAMPNS {
            let (sec, nsec) = (word(control, HDR)?, word(control, HDR + 8)?);
            return sec.checked_mul(1_000_000_000)?.checked_add(nsec);
        }
        control = &control[(len + 7) & !7..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_are_stamped_by_the_kernel() {
        use std::io::Write;
        use std::time::{Duration, Instant};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = connect(l.local_addr().unwrap(), None, true).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 64];
        // The kernel turns stamping on in a deferred work item the first
        // time a socket asks: the first arrivals may come unstamped.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "no arrival was stamped");
            let before = crate::load::sub::now_ns();
            s.write_all(b"stamped").unwrap();
            // Not a synchronisation: the bytes are read late on purpose,
            // so a stamp taken at the read (not at the arrival) shows.
            std::thread::sleep(Duration::from_millis(300));
            let (n, t) = loop {
                match recv_stamped(&c, &mut buf) {
                    Ok(r) => break r,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        assert!(Instant::now() < deadline, "nothing arrived");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            let read_at = crate::load::sub::now_ns();
            assert_eq!(&buf[..n], b"stamped");
            let Some(t) = t else { continue };
            assert!(before <= t && t <= read_at, "{before} <= {t} <= {read_at}");
            assert!(
                t + 150_000_000 <= read_at,
                "stamped at the read, not at the arrival: {t} vs read at {read_at}"
            );
            return;
        }
    }

    #[test]
    fn urls() {
        let t = Target::parse("ws://127.0.0.1:9101/echo").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9101".parse().unwrap());
        assert_eq!(
            (t.host.as_str(), t.path.as_str()),
            ("127.0.0.1:9101", "/echo")
        );
        let t = Target::parse("ws://127.0.0.1:9001").unwrap();
        assert_eq!(t.path, "/");
        let t = Target::parse("ws://127.0.0.1?x=1").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (80, "/?x=1"));
        let t = Target::parse("ws://[::1]:8080/a?b").unwrap();
        assert_eq!(
            (t.addr, t.path.as_str()),
            ("[::1]:8080".parse().unwrap(), "/a?b")
        );
        let t = Target::parse("wss://localhost/ws").unwrap();
        assert!(t.tls);
        assert_eq!((t.addr.port(), t.server_name.as_str()), (443, "localhost"));
        let t = Target::parse("wss://[::1]:8443").unwrap();
        assert_eq!((t.addr.port(), t.server_name.as_str()), (8443, "::1"));
        assert!(!Target::parse("ws://127.0.0.1/").unwrap().tls);
        assert!(Target::parse("http://127.0.0.1/").is_err());
        assert!(Target::parse("ws://127.0.0.1:x/").is_err());
        assert!(Target::parse("ws:///echo").is_err());
    }

    #[test]
    fn source_lists_and_shares() {
        let ips = parse_src_ips("127.0.0.2-127.0.0.4,127.0.0.9").unwrap();
        let s: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
        assert_eq!(s, ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.9"]);
        assert!(parse_src_ips("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_src_ips("x").is_err());
        assert!(parse_src_ips("").is_err());
        assert_eq!(share_ips(&ips, 0, 2), ips[..2].to_vec());
        assert_eq!(share_ips(&ips, 1, 2), ips[2..].to_vec());
        assert_eq!(share_ips(&ips[..1], 1, 2), ips[..1].to_vec());
        assert_eq!(
            (0..3).map(|i| share(10, i, 3)).collect::<Vec<_>>(),
            [4, 3, 3]
        );
        assert_eq!((0..3).map(|i| share(2, i, 3)).sum::<u64>(), 2);
    }
}
