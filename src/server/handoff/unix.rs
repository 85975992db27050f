//! A `SOCK_SEQPACKET` Unix socket pair between the old and the new process,
//! and records sent over it with descriptors attached (`SCM_RIGHTS`).
//!
//! SEQPACKET rather than a stream: a record arrives whole or not at all,
//! and the descriptors sent with it arrive with it, never split across
//! reads. `std`'s ancillary-data API is unstable; this is libc's
//! `sendmsg`/`recvmsg`, the only `unsafe` of the handoff.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Descriptors per record. The kernel takes at most 253 (SCM_MAX_FD).
pub const MAX_FDS: usize = 200;
/// Largest record received (bytes). Listener records are tens of bytes;
/// connection state comes in records of at most this.
pub const MAX_RECORD: usize = 128 * 1024;

/// One end of the handoff socket.
#[derive(Debug)]
pub struct Channel(OwnedFd);

impl Channel {
    /// A connected pair: this process's end (close-on-exec) and the end
    /// for the child, inheritable (close-on-exec cleared).
    pub fn pair() -> io::Result<(Channel, OwnedFd)> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: socketpair writes two descriptors into `fds`, which has
        // room for two.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are fresh and owned by nobody else.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on our own descriptor.
        if unsafe { libc::fcntl(theirs.as_raw_fd(), libc::F_SETFD, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((Channel(ours), theirs))
    }

    /// The end a parent handed down (by number, in `WSGATE_HANDOFF_FD`).
    /// It is made close-on-exec, so that it goes no further.
    pub fn from_inherited(fd: OwnedFd) -> io::Result<Channel> {
        // SAFETY: fcntl on a descriptor we own.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut ty: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes a c_int into `ty`, `len` says its size.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                &mut ty as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if ty != libc::SOCK_SEQPACKET {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the handoff descriptor is not a SEQPACKET socket",
            ));
        }
        Ok(Channel(fd))
    }

    /// Send one record with `fds` (at most [`MAX_FDS`]) attached. The
    /// descriptors stay open here: the receiver gets duplicates.
    pub fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if fds.len() > MAX_FDS || bytes.len() > MAX_RECORD || bytes.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "record too large or empty",
            ));
        }
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let payload = std::mem::size_of_val(raw.as_slice()) as u32;
        // SAFETY: CMSG_SPACE only computes a size.
        let space = if raw.is_empty() {
            0
        } else {
            (unsafe { libc::CMSG_SPACE(payload) }) as usize
        };
        // u64 words: the control buffer must be aligned for cmsghdr.
        let mut control = vec![0u64; space.div_ceil(8)];
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        // SAFETY: msghdr is plain data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !raw.is_empty() {
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = space as _;
            // SAFETY: the control buffer has CMSG_SPACE(payload) bytes,
            // so the first header and its data fit; we write exactly the
            // descriptors' bytes into CMSG_DATA.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
                std::ptr::copy_nonoverlapping(
                    raw.as_ptr() as *const u8,
                    libc::CMSG_DATA(cmsg),
                    payload as usize,
                );
            }
        }
        loop {
            // SAFETY: `msg` points at `iov` and `control`, alive here.
            let n = unsafe { libc::sendmsg(self.0.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                // The peer is gone (a binary that exited at once): the
                // same outcome as reading its EOF, said the same way.
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => return Err(gone()),
                _ => return Err(e),
            }
        }
    }

    /// Receive one record and the descriptors that came with it (owned,
    /// close-on-exec), waiting at most `timeout`. The peer gone is
    /// `UnexpectedEof`; a record or descriptor list cut by the kernel is an
    /// error (any descriptors received are closed).
    pub fn recv(&self, timeout: Duration) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
        self.wait_readable(timeout)?;
        let mut buf = vec![0u8; MAX_RECORD];
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) };
        let mut control = vec![0u64; (space as usize).div_ceil(8)];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        let n = loop {
            // SAFETY: `msg` points at `buf`, `iov` and `control`, alive here.
            let n = unsafe { libc::recvmsg(self.0.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                // The peer closed with our record unread.
                io::ErrorKind::ConnectionReset => return Err(gone()),
                _ => return Err(e),
            }
        };
        let mut fds = Vec::new();
        // SAFETY: the kernel filled `control` and set msg_controllen; the
        // CMSG_* walk stays within it, and each SCM_RIGHTS payload is an
        // array of descriptors now ours.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg);
                    let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                    for i in 0..len / std::mem::size_of::<RawFd>() {
                        let fd = std::ptr::read_unaligned((data as *const RawFd).add(i));
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            // `fds` drops: whatever arrived is closed.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "handoff record or its descriptors truncated",
            ));
        }
        if n == 0 {
            return Err(gone());
        }
        buf.truncate(n);
        Ok((buf, fds))
    }

    fn wait_readable(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut p = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: poll on one live pollfd.
            let r = unsafe { libc::poll(&mut p, 1, ms) };
            if r > 0 {
                // Readable, or hung up (recvmsg then reads 0: EOF).
                return Ok(());
            }
            if r == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {timeout:?}"),
                ));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// The other process closed its end (exited, say).
fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the other process closed the handoff socket",
    )
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_record_and_its_descriptors_arrive_together() {
        let (a, b) = Channel::pair().unwrap();
        let b = Channel::from_inherited(b).unwrap();
        let l1 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        a.send(b"one", &[l1.as_fd(), l2.as_fd()]).unwrap();
        a.send(b"two", &[]).unwrap();
        let (bytes, fds) = b.recv(Duration::from_secs(5)).unwrap();
        assert_eq!(bytes, b"one");
        assert_eq!(fds.len(), 2);
        // The received descriptors are the same sockets.
        let got = std::net::TcpListener::from(fds.into_iter().nth(1).unwrap());
        assert_eq!(got.local_addr().unwrap(), l2.local_addr().unwrap());
        let (bytes, fds) = b.recv(Duration::from_secs(5)).unwrap();
        assert_eq!((bytes.as_slice(), fds.len()), (&b"two"[..], 0));
    }

    #[test]
    fn many_descriptors_in_one_record() {
        let (a, b) = Channel::pair().unwrap();
        let b = Channel::from_inherited(b).unwrap();
        let ls: Vec<_> = (0..MAX_FDS)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let fds: Vec<_> = ls.iter().map(|l| l.as_fd()).collect();
        a.send(b"x", &fds).unwrap();
        let (_, got) = b.recv(Duration::from_secs(5)).unwrap();
        assert_eq!(got.len(), MAX_FDS);
        assert!(a.send(b"x", &[fds[0]; MAX_FDS + 1]).is_err());
    }

    #[test]
    fn a_silent_peer_times_out_and_a_gone_peer_is_eof() {
        let (a, b) = Channel::pair().unwrap();
        let e = a.recv(Duration::from_millis(50)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(b);
        let e = a.recv(Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        // Gone with our record unread (the kernel says ECONNRESET).
        let (a, b) = Channel::pair().unwrap();
        a.send(b"hello", &[]).unwrap();
        drop(b);
        let e = a.recv(Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        // Sending to a gone peer says the same (not EPIPE).
        let e = a.send(b"again", &[]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }

    #[test]
    fn a_stream_socket_is_not_taken_for_the_handoff_socket() {
        let (s, _t) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(Channel::from_inherited(OwnedFd::from(s)).is_err());
    }
}
