//! TCP connections from a chosen loopback source address (127.0.0.x), for
//! tests of per-IP admission and trusted proxies.
//!
//! Declare with `#[path = "support/connect_from.rs"] mod connect_from;`.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::FromRawFd;

/// A TCP connection from source address `src` (127.0.0.x).
pub fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let src: std::net::Ipv4Addr = src.parse().unwrap();
    let SocketAddr::V4(to) = to else {
        panic!("v4 only")
    };
    // SAFETY: a fresh socket, bound and connected with valid sockaddr_in
    // values; ownership passes to the TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let sa = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip.octets()),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let local = sa(src, 0);
        assert_eq!(
            libc::bind(fd, &local as *const _ as *const libc::sockaddr, len),
            0
        );
        let remote = sa(*to.ip(), to.port());
        assert_eq!(
            libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len),
            0
        );
        TcpStream::from_raw_fd(fd)
    }
}
