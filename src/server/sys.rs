//! The few system calls mio does not wrap: SO_REUSEPORT listeners and the
//! open-file limit.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A non-blocking listener with SO_REUSEPORT, so that every worker can bind
/// the same address and the kernel spreads connections over them.
pub fn reuseport_listener(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let fd = tcp_socket(addr)?;
    for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
        set_int_opt(&fd, libc::SOL_SOCKET, opt, 1)?;
    }
    bind(&fd, addr)?;
    // SAFETY: listen(2) on our bound socket.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::net::TcpListener::from(fd))
}

/// A non-blocking, close-on-exec TCP socket of `addr`'s family.
pub fn tcp_socket(addr: SocketAddr) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket(2) with constant arguments; no memory is shared.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket that nothing else owns; the OwnedFd
    // closes it on every error path of the callers.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// setsockopt(2) with an int value.
pub fn set_int_opt(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt on our socket with a pointer to a live c_int and
    // its exact size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// bind(2) to `addr`.
pub fn bind(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let (sa, len) = sockaddr(addr);
    // SAFETY: `sa` holds a valid sockaddr of `len` bytes for our socket.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A `SocketAddr` as the C sockaddr for bind(2) and connect(2).
pub fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Raise the soft open-file limit to the hard limit; returns the new limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    // SAFETY: all-zero rlimit is valid; getrlimit fills it.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: valid pointer to an rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur as u64)
}

/// A spare descriptor, closed to make room when accept(2) hits EMFILE so
/// that the pending connection can be accepted and refused instead of
/// leaving the listener readable forever (the loop would spin).
pub struct ReserveFd(Option<std::fs::File>);

impl ReserveFd {
    pub fn new() -> ReserveFd {
        ReserveFd(std::fs::File::open("/dev/null").ok())
    }

    /// Free the spare descriptor.
    pub fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    /// Take a spare descriptor again (may fail while the table is full).
    pub fn restore(&mut self) {
        if self.0.is_none() {
            self.0 = std::fs::File::open("/dev/null").ok();
        }
    }
}

impl Default for ReserveFd {
    fn default() -> Self {
        Self::new()
    }
}

/// Block SIGTERM, SIGINT and SIGUSR2 (the handoff) in this thread and in
/// every thread it starts afterwards, so that [`wait_for_signal`] receives
/// them instead.
pub fn block_shutdown_signals() -> io::Result<()> {
    // SAFETY: sigset operations on a local, zero-initialised set, then
    // pthread_sigmask with valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
    }
    Ok(())
}

/// Wait for SIGTERM, SIGINT or SIGUSR2 (blocked beforehand with
/// [`block_shutdown_signals`]); returns the signal number.
pub fn wait_for_signal() -> io::Result<i32> {
    // SAFETY: as above; sigwait writes the received signal into `sig`.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        let mut sig: libc::c_int = 0;
        let r = libc::sigwait(&set, &mut sig);
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(sig)
    }
}

/// This process's resident memory (from /proc/self/statm).
pub fn resident_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * usize::try_from(page).ok()?)
}

/// CPU time this process has used (user and system, every thread).
pub fn cpu_time() -> std::time::Duration {
    // SAFETY: getrusage writes the usage of this process into `u`.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| {
        std::time::Duration::from_secs(t.tv_sec.max(0) as u64)
            + std::time::Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Give the allocator's free pages back to the kernel (glibc keeps freed
/// memory of its per-thread arenas, so a burst's peak would stay resident).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's free lists under its
    // locks and madvises whole free pages; it frees nothing in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}
