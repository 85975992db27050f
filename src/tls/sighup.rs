//! SIGHUP re-reads the certificates: one thread waits for the signal
//! (`sigwait`), every other thread has it blocked, so it never interrupts
//! a worker and never kills the process (its default action).

use std::io;
use std::thread::JoinHandle;

fn sighup_set() -> libc::sigset_t {
    // SAFETY: sigemptyset and sigaddset initialise and fill a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Block SIGHUP in this thread and every thread it starts afterwards: call
/// it first in `main`, before any thread starts.
pub fn block_sighup() -> io::Result<()> {
    let set = sighup_set();
    // SAFETY: pthread_sigmask with a valid set and no old-set pointer.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Start the thread that calls `on_signal` for every SIGHUP (signals that
/// arrive while it runs are merged into one more call, as the kernel
/// merges pending signals). SIGHUP is blocked in the calling thread first,
/// so the new thread starts with it blocked (sigwait needs that, and a
/// SIGHUP aimed at it before it waits stays pending instead of killing
/// the process).
pub fn spawn_on_sighup(mut on_signal: impl FnMut() + Send + 'static) -> io::Result<JoinHandle<()>> {
    block_sighup()?;
    std::thread::Builder::new()
        .name("wsgate-sighup".into())
        .spawn(move || {
            let set = sighup_set();
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: sigwait reads a valid set and writes the signal
                // number into a local.
                let r = unsafe { libc::sigwait(&set, &mut sig) };
                if r != 0 {
                    log::warn!(
                        "sigwait(SIGHUP): {}; certificate reload is off",
                        io::Error::from_raw_os_error(r)
                    );
                    return;
                }
                log::info!("SIGHUP: reloading the TLS certificates");
                on_signal();
            }
        })
}
