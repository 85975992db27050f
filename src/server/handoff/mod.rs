//! Live handoff to the next process (issue 17), on SIGUSR2 or
//! `wsgate --upgrade`.
//!
//! The protocol, over a `SOCK_SEQPACKET` pair ([`unix`]) in the format of
//! [`wire`]:
//!
//! ```text
//! old: spawn the new binary (same args, WSGATE_HANDOFF_FD=<its end>)
//! old → new  Hello                     (format version in every record)
//! new → old  Ready | Refuse(why)       (another version: Refuse, exit)
//! old → new  Listeners(roles) + fds    (SCM_RIGHTS, ≤ 200 per record)
//! old        seals its broker (publishes refused, error 10)
//! old → new  BrokerState(part)…, last  (the channels; one empty part when
//!                                       the broker keeps them elsewhere)
//! new        restores the channels, then starts its workers on the
//!            inherited listeners      (a state version it does not know:
//!                                       Refuse, exit)
//! new → old  Took(n)                   (old: drain and exit; step 2 moves
//!                                       connections instead)
//! ```
//!
//! Safety: the old process serves throughout; on any failure before
//! `Took` (the binary missing or failing, a timeout, a refusal, a record
//! it cannot read) it kills the child, unseals its broker, logs why and
//! goes on serving (nothing was published meanwhile: publishes were
//! refused, so nothing is lost).
//! One handoff at a time ([`Gate`]).
//!
//! What moves today: the listening sockets (their accept queues with
//! them: a connection waiting in a backlog is accepted by the new
//! process). Live connections are drained by the old process (close
//! 4000, spread over the drain window); docs/handoff-status.md says what
//! is left.

pub mod unix;
pub mod upgrade;
pub mod wire;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::broker::memory::snapshot;
use crate::broker::Broker;

pub use unix::Channel;
pub use wire::{ListenerRole, Msg, WireError};

/// The environment variable naming the inherited handoff socket.
pub const ENV_FD: &str = "WSGATE_HANDOFF_FD";

/// Why a handoff did not happen.
#[derive(Debug)]
pub enum HandoffError {
    /// The new binary could not be started.
    Spawn(io::Error),
    /// The socket failed, timed out, or the other process went away.
    Io(io::Error),
    /// A record that could not be read (another format version, say).
    Wire(WireError),
    /// The other process refused, and said why.
    Refused(String),
    /// A record out of turn.
    Protocol(String),
    /// One is already under way, or the server is draining.
    Busy(&'static str),
    /// The broker state could not be read (another state format version).
    State(snapshot::SnapshotError),
}

impl fmt::Display for HandoffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandoffError::Spawn(e) => write!(f, "cannot start the new binary: {e}"),
            HandoffError::Io(e) => write!(f, "handoff socket: {e}"),
            HandoffError::Wire(e) => write!(f, "{e}"),
            HandoffError::Refused(why) => write!(f, "the other process refused: {why}"),
            HandoffError::Protocol(what) => write!(f, "protocol: {what}"),
            HandoffError::Busy(what) => write!(f, "refused: {what}"),
            HandoffError::State(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for HandoffError {}

impl From<io::Error> for HandoffError {
    fn from(e: io::Error) -> Self {
        HandoffError::Io(e)
    }
}

impl From<WireError> for HandoffError {
    fn from(e: WireError) -> Self {
        HandoffError::Wire(e)
    }
}

/// One handoff at a time: a second SIGUSR2 while one runs is refused;
/// once one succeeded every later one is too (this process is leaving).
#[derive(Debug, Default)]
pub struct Gate {
    busy: AtomicBool,
}

impl Gate {
    /// Take the gate, or say why not.
    pub fn enter(&self) -> Result<(), HandoffError> {
        self.busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(|_| HandoffError::Busy("a handoff is already under way"))
    }

    /// The handoff failed: the next signal may try again.
    pub fn reopen(&self) {
        self.busy.store(false, Ordering::Release);
    }
}

/// The listening sockets to hand over, with their roles.
pub type Listeners<'a> = &'a [(ListenerRole, BorrowedFd<'a>)];

/// How long each answer of the new process may take (it starts, reads its
/// configuration, loads certificates).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The old side: start `binary` with `args`, hand it `listeners`, and
/// return its pid once it says it serves with them. On an error the child
/// is killed and reaped; this process goes on as before.
pub fn hand_over(
    binary: &Path,
    args: &[OsString],
    listeners: Listeners<'_>,
    broker: Option<&dyn Broker>,
    timeout: Duration,
) -> Result<u32, HandoffError> {
    let (chan, theirs) = Channel::pair()?;
    let mut child = Command::new(binary)
        .args(args)
        .env(ENV_FD, theirs.as_raw_fd().to_string())
        .spawn()
        .map_err(HandoffError::Spawn)?;
    // Its end is the child's now: with ours closed, the child's exit shows
    // here as EOF.
    drop(theirs);
    match converse(&chan, listeners, broker, timeout) {
        Ok(()) => Ok(child.id()),
        Err(e) => {
            end_child(&mut child);
            // The child is gone: nothing it may have accepted survives it,
            // and this broker accepted nothing since the seal.
            if let Some(b) = broker {
                b.unseal();
            }
            Err(e)
        }
    }
}

fn converse(
    chan: &Channel,
    listeners: Listeners<'_>,
    broker: Option<&dyn Broker>,
    timeout: Duration,
) -> Result<(), HandoffError> {
    chan.send(&Msg::Hello.encode(), &[])?;
    match recv(chan, timeout)?.0 {
        Msg::Ready => {}
        Msg::Refuse(why) => return Err(HandoffError::Refused(why)),
        m => return Err(HandoffError::Protocol(format!("expected Ready, got {m:?}"))),
    }
    // One record per batch of descriptors.
    for batch in listeners.chunks(unix::MAX_FDS) {
        let roles = batch.iter().map(|(r, _)| *r).collect();
        let fds: Vec<_> = batch.iter().map(|(_, f)| *f).collect();
        chan.send(&Msg::Listeners(roles).encode(), &fds)?;
    }
    // The new side reads until a record shorter than a full batch.
    if listeners.len().is_multiple_of(unix::MAX_FDS) {
        chan.send(&Msg::Listeners(Vec::new()).encode(), &[])?;
    }
    if let Err(e) = send_broker_state(chan, broker) {
        // The new process may have refused the listeners and gone: its
        // reason, if it is there to read, says more than a broken pipe.
        return match recv(chan, Duration::from_millis(100)) {
            Ok((Msg::Refuse(why), _)) => Err(HandoffError::Refused(why)),
            _ => Err(e),
        };
    }
    match recv(chan, timeout)?.0 {
        Msg::Took(n) if n as usize == listeners.len() => Ok(()),
        Msg::Took(n) => Err(HandoffError::Protocol(format!(
            "took {n} listeners of {}",
            listeners.len()
        ))),
        Msg::Refuse(why) => Err(HandoffError::Refused(why)),
        m => Err(HandoffError::Protocol(format!("expected Took, got {m:?}"))),
    }
}

/// The child did not take over: it must not serve. Kill it and reap it.
fn end_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn recv(chan: &Channel, timeout: Duration) -> Result<(Msg, Vec<OwnedFd>), HandoffError> {
    let (bytes, fds) = chan.recv(timeout)?;
    Ok((Msg::decode(&bytes)?, fds))
}

/// What the new process inherited: the handoff socket and the listeners,
/// by role, in the old process's worker order.
#[derive(Debug)]
pub struct Inherited {
    pub channel: Channel,
    pub main: Vec<std::net::TcpListener>,
    pub plain: Vec<std::net::TcpListener>,
    /// The old broker's channels (`None`: it keeps them elsewhere), to
    /// restore before the workers start.
    pub broker_state: Option<snapshot::State>,
}

/// Tell the old process this one serves with `n` listeners: it leaves.
pub fn confirm(channel: &Channel, n: u32) -> Result<(), HandoffError> {
    channel.send(&Msg::Took(n).encode(), &[])?;
    Ok(())
}

/// Starting failed after the listeners came: say so (the old process
/// goes on serving).
pub fn refuse(channel: &Channel, why: &str) {
    let _ = channel.send(&Msg::Refuse(why.into()).encode(), &[]);
}

/// The new side: `None` when this process was not started by a handoff
/// (no `WSGATE_HANDOFF_FD`); otherwise the greeting, then the listeners.
/// A record of another format version is answered with `Refuse` and is an
/// error (the caller exits; the old process keeps serving). A broker
/// state over `max_state` bytes is refused the same way.
pub fn take_over(timeout: Duration, max_state: usize) -> Option<Result<Inherited, HandoffError>> {
    let var = std::env::var_os(ENV_FD)?;
    // Not for our own children.
    std::env::remove_var(ENV_FD);
    Some(take_over_from(&var, timeout, max_state))
}

fn take_over_from(
    var: &std::ffi::OsStr,
    timeout: Duration,
    max_state: usize,
) -> Result<Inherited, HandoffError> {
    let fd: i32 = var
        .to_str()
        .and_then(|s| s.parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| HandoffError::Protocol(format!("{ENV_FD}={var:?} is not a descriptor")))?;
    // SAFETY: the parent put this descriptor in our table for us and named
    // it; nothing else in this process owns it. `from_inherited` checks
    // that it is the SEQPACKET socket it should be.
    let channel = Channel::from_inherited(unsafe { OwnedFd::from_raw_fd(fd) })?;
    let (bytes, _) = channel.recv(timeout)?;
    match Msg::decode(&bytes) {
        Ok(Msg::Hello) => {}
        Ok(m) => return Err(HandoffError::Protocol(format!("expected Hello, got {m:?}"))),
        Err(e) => {
            let _ = channel.send(&Msg::Refuse(e.to_string()).encode(), &[]);
            return Err(e.into());
        }
    }
    channel.send(&Msg::Ready.encode(), &[])?;
    let received = receive_listeners(&channel, timeout).and_then(|(main, plain)| {
        let broker_state = receive_broker_state(&channel, timeout, max_state)?;
        Ok((main, plain, broker_state))
    });
    match received {
        Ok((main, plain, broker_state)) => Ok(Inherited {
            channel,
            main,
            plain,
            broker_state,
        }),
        Err(e) => {
            let _ = channel.send(&Msg::Refuse(e.to_string()).encode(), &[]);
            Err(e)
        }
    }
}

/// The `Listeners` records, until one shorter than a full batch.
#[allow(clippy::type_complexity)]
fn receive_listeners(
    channel: &Channel,
    timeout: Duration,
) -> Result<(Vec<std::net::TcpListener>, Vec<std::net::TcpListener>), HandoffError> {
    let mut main = Vec::new();
    let mut plain = Vec::new();
    // Records until a batch of fewer than MAX_FDS (the last one).
    loop {
        let (msg, fds) = recv(channel, timeout)?;
        let Msg::Listeners(roles) = msg else {
            return Err(HandoffError::Protocol(format!(
                "expected Listeners, got {msg:?}"
            )));
        };
        if roles.len() != fds.len() {
            return Err(HandoffError::Protocol(format!(
                "{} roles for {} descriptors",
                roles.len(),
                fds.len()
            )));
        }
        let last = fds.len() < unix::MAX_FDS;
        for (role, fd) in roles.into_iter().zip(fds) {
            let l = std::net::TcpListener::from(fd);
            check_listening(&l)?;
            match role {
                ListenerRole::Main => main.push(l),
                ListenerRole::Plain => plain.push(l),
            }
        }
        if last {
            break;
        }
    }
    if main.is_empty() {
        return Err(HandoffError::Protocol("no listener handed over".into()));
    }
    Ok((main, plain))
}

// ---- The broker's channels (issue 17: recovery works after a handoff) ----
//
// After the listeners and before `Took`: the old process seals its broker
// and sends its state in parts; the new one reads them all, decodes them
// (a state version it does not know is refused here, before it serves)
// and restores them before its workers start.

/// Seal `broker` and send its state (one empty last part when there is
/// nothing to move). A failure here is the caller's to undo (unseal).
fn send_broker_state(chan: &Channel, broker: Option<&dyn Broker>) -> Result<(), HandoffError> {
    let t = Instant::now();
    let state = broker.and_then(|b| b.seal()).unwrap_or_default();
    let mut parts = state.chunks(wire::STATE_CHUNK).peekable();
    if parts.peek().is_none() {
        chan.send(
            &Msg::BrokerState {
                last: true,
                bytes: Vec::new(),
            }
            .encode(),
            &[],
        )?;
    }
    while let Some(part) = parts.next() {
        let msg = Msg::BrokerState {
            last: parts.peek().is_none(),
            bytes: part.to_vec(),
        };
        chan.send(&msg.encode(), &[])?;
    }
    if !state.is_empty() {
        log::info!(
            "handoff: broker sealed (publishes refused until the handoff ends); {} bytes of \
             channel state sent in {} ms",
            state.len(),
            t.elapsed().as_millis()
        );
    }
    Ok(())
}

/// The `BrokerState` parts, until the last; at most `max_state` bytes.
fn receive_broker_state(
    channel: &Channel,
    timeout: Duration,
    max_state: usize,
) -> Result<Option<snapshot::State>, HandoffError> {
    let mut state = Vec::new();
    loop {
        let (msg, _) = recv(channel, timeout)?;
        let Msg::BrokerState { last, bytes } = msg else {
            return Err(HandoffError::Protocol(format!(
                "expected BrokerState, got {msg:?}"
            )));
        };
        if state.len() + bytes.len() > max_state {
            return Err(HandoffError::Protocol(format!(
                "broker state over {max_state} bytes"
            )));
        }
        state.extend_from_slice(&bytes);
        if last {
            break;
        }
    }
    if state.is_empty() {
        return Ok(None);
    }
    snapshot::State::decode(&state)
        .map(Some)
        .map_err(HandoffError::State)
}

/// A handed descriptor must be a listening TCP socket (`SO_ACCEPTCONN`).
fn check_listening(l: &std::net::TcpListener) -> Result<(), HandoffError> {
    let mut on: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes a c_int into `on`; `len` says its size.
    let r = unsafe {
        libc::getsockopt(
            l.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            &mut on as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if r < 0 || on == 0 {
        return Err(HandoffError::Protocol(
            "a handed descriptor is not a listening socket".into(),
        ));
    }
    l.set_nonblocking(true)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_lets_one_handoff_through() {
        let g = Gate::default();
        g.enter().unwrap();
        assert!(matches!(g.enter(), Err(HandoffError::Busy(_))));
        g.reopen();
        g.enter().unwrap();
    }

    /// Both sides in one process, over a real pair: the listeners arrive,
    /// in batches, with their roles.
    #[test]
    fn listeners_cross_in_batches() {
        // One, a full batch (then an empty record ends the list), and more.
        for count in [1, unix::MAX_FDS, unix::MAX_FDS + 3] {
            let (old, theirs) = Channel::pair().unwrap();
            let fd = theirs.as_raw_fd().to_string();
            std::mem::forget(theirs); // owned by `take_over_from` now
            let ls: Vec<_> = (0..count)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
                .collect();
            let addrs: Vec<_> = ls.iter().map(|l| l.local_addr().unwrap()).collect();
            let new = std::thread::spawn(move || {
                let got =
                    take_over_from(std::ffi::OsStr::new(&fd), Duration::from_secs(10), 1 << 20)
                        .unwrap();
                confirm(&got.channel, (got.main.len() + got.plain.len()) as u32).unwrap();
                got
            });
            let pairs: Vec<_> = ls
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let role = if i % 2 == 0 {
                        ListenerRole::Main
                    } else {
                        ListenerRole::Plain
                    };
                    (role, l.as_fd())
                })
                .collect();
            converse(&old, &pairs, None, Duration::from_secs(10)).unwrap();
            let got = new.join().unwrap();
            let main: Vec<_> = got.main.iter().map(|l| l.local_addr().unwrap()).collect();
            let plain: Vec<_> = got.plain.iter().map(|l| l.local_addr().unwrap()).collect();
            assert_eq!(main, addrs.iter().copied().step_by(2).collect::<Vec<_>>());
            assert_eq!(
                plain,
                addrs.iter().copied().skip(1).step_by(2).collect::<Vec<_>>()
            );
        }
    }

    /// The in-memory broker's channels cross in several records (over
    /// 128 KiB of history); a state over the new side's limit is refused,
    /// and the old side hears why.
    #[test]
    fn a_broker_state_crosses_in_parts_and_one_over_the_limit_is_refused() {
        use crate::broker::memory::MemoryBroker;
        use crate::broker::{Inboxes, PublishOptions};
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).unwrap();
        let policy = crate::config::ChannelPolicy::new(&crate::config::Config::default());
        let broker = MemoryBroker::new(
            std::sync::Arc::new(Inboxes::new(vec![waker])),
            policy.into(),
        );
        let data = serde_json::value::RawValue::from_string(format!("\"{}\"", "x".repeat(10_000)))
            .unwrap();
        for _ in 0..30 {
            broker.publish(0, "big", &data, &PublishOptions::default(), None);
        }
        for (max, ok) in [(1 << 20, true), (100_000, false)] {
            let (old, theirs) = Channel::pair().unwrap();
            let fd = theirs.as_raw_fd().to_string();
            std::mem::forget(theirs); // owned by `take_over_from` now
            let new = std::thread::spawn(move || {
                let got = take_over_from(std::ffi::OsStr::new(&fd), Duration::from_secs(10), max);
                if let Ok(got) = &got {
                    confirm(&got.channel, 1).unwrap();
                }
                got
            });
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let r = converse(
                &old,
                &[(ListenerRole::Main, l.as_fd())],
                Some(&broker),
                Duration::from_secs(10),
            );
            let got = new.join().unwrap();
            if ok {
                r.unwrap();
                let state = got.unwrap().broker_state.expect("a state");
                assert_eq!(state.channels.len(), 1);
                let ch = &state.channels[0];
                assert_eq!(
                    (ch.name.as_str(), ch.top, ch.publications.len()),
                    ("big", 30, 30)
                );
            } else {
                assert!(
                    matches!(r, Err(HandoffError::Refused(ref why)) if why.contains("over 100000 bytes")),
                    "{r:?}"
                );
                assert!(got.is_err());
            }
            broker.unseal();
        }
    }

    #[test]
    fn a_greeting_of_another_version_is_refused() {
        let (old, theirs) = Channel::pair().unwrap();
        let fd = theirs.as_raw_fd().to_string();
        std::mem::forget(theirs);
        old.send(&wire::encode_as(&Msg::Hello, wire::VERSION + 1), &[])
            .unwrap();
        let r = take_over_from(std::ffi::OsStr::new(&fd), Duration::from_secs(5), 1 << 20);
        assert!(
            matches!(r, Err(HandoffError::Wire(WireError::Version(v))) if v == wire::VERSION + 1)
        );
        match recv(&old, Duration::from_secs(5)).unwrap().0 {
            Msg::Refuse(why) => assert!(why.contains("version"), "{why}"),
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn a_successor_that_is_not_a_listener_is_refused() {
        let (old, theirs) = Channel::pair().unwrap();
        let fd = theirs.as_raw_fd().to_string();
        std::mem::forget(theirs);
        let new = std::thread::spawn(move || {
            take_over_from(std::ffi::OsStr::new(&fd), Duration::from_secs(5), 1 << 20)
        });
        // A connected socket handed as a listener.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let r = converse(
            &old,
            &[(ListenerRole::Main, c.as_fd())],
            None,
            Duration::from_secs(5),
        );
        assert!(
            matches!(r, Err(HandoffError::Refused(ref why)) if why.contains("not a listening")),
            "{r:?}"
        );
        assert!(matches!(
            new.join().unwrap(),
            Err(HandoffError::Protocol(_))
        ));
    }
}
