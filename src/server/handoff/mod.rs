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
//! new → old  Took(n)
//! old        each worker, at a turn of its loop, freezes the connections
//!            that can move and waits (serving nothing) for the verdict
//! old → new  Conns(state version, records) + fds   (batches)
//! old → new  ConnsEnd(n)
//! new        checks every record (another state version: Refuse)
//! new → old  TookConns(n)              (old: forget them, drain the rest
//!                                       with 4000, exit)
//! new        spreads them over its workers, which go on with them
//! ```
//!
//! The broker is sealed before the connections freeze, so every frozen
//! subscription's position is at most the top of the history that moved:
//! the new process resumes it by replay, nothing lost, nothing doubled.
//!
//! Safety: the old process serves throughout; on any failure before
//! `TookConns` (the binary missing or failing, a timeout, a refusal, a
//! record it cannot read, the new process dying mid-transfer) it kills
//! the child, unseals its broker, resumes its frozen connections
//! untouched, logs why and goes on serving with its own listeners.
//! Nothing was published meanwhile (publishes were refused), no
//! connection's state leaves the old process before `TookConns`, and the
//! new process touches none before it sent it. One handoff at a time
//! ([`Gate`]).
//!
//! What moves: the listening sockets (their accept queues with them), and
//! the connections whose endpoint can move (`endpoint::freeze`); the rest
//! stays in the old process, which drains it (close 4000, spread over the
//! drain window). docs/handoff-status.md says what is left.

pub mod unix;
pub mod upgrade;
pub mod wire;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
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

/// How long the old process waits for `TookConns` once the records are
/// sent: its workers serve nothing meanwhile, and the new process only
/// checks the records (no start-up work), so this is shorter than
/// [`ANSWER_TIMEOUT`].
pub const CONNS_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest frozen state of one connection: it must fit a record
/// (with its header). A connection with more (a megabyte of unwritten
/// output, a large message in progress) stays and is drained.
pub const MAX_STATE: usize = unix::MAX_RECORD - 64;

/// The old process's connections, as the handoff sees them.
pub trait Connections {
    /// Freeze every connection that can move: its state, and its
    /// descriptor, which stays open and untouched until [`commit`] or
    /// [`resume`] (so that it may be borrowed meanwhile).
    ///
    /// [`commit`]: Connections::commit
    /// [`resume`]: Connections::resume
    fn freeze(&mut self) -> Result<Vec<(Vec<u8>, RawFd)>, HandoffError>;
    /// The new process took them: forget them.
    fn commit(&mut self);
    /// The handoff failed: serve them on.
    fn resume(&mut self);
}

/// The old side: start `binary` with `args`, hand it `listeners`, and
/// return its pid once it says it serves with them. On an error the child
/// is killed and reaped; this process goes on as before.
pub fn hand_over(
    binary: &Path,
    args: &[OsString],
    listeners: Listeners<'_>,
    broker: Option<&dyn Broker>,
    conns: &mut dyn Connections,
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
    let result = converse(&chan, listeners, broker, timeout).and_then(|()| {
        let r = conns
            .freeze()
            .and_then(|frozen| send_conns(&chan, &frozen, timeout));
        match r {
            Ok(()) => conns.commit(),
            Err(_) => conns.resume(),
        }
        r
    });
    match result {
        Ok(()) => Ok(child.id()),
        Err(e) => {
            end_child(&mut child);
            // The child is gone, and what it accepted since `Took` with it
            // (its new clients reconnect here); this broker accepted
            // nothing since the seal.
            if let Some(b) = broker {
                b.unseal();
            }
            Err(e)
        }
    }
}

/// The frozen connections, in records of at most `MAX_FDS` descriptors
/// and `MAX_RECORD` bytes, then `ConnsEnd`; the answer must be
/// `TookConns` of all of them.
fn send_conns(
    chan: &Channel,
    frozen: &[(Vec<u8>, RawFd)],
    timeout: Duration,
) -> Result<(), HandoffError> {
    let mut i = 0;
    while i < frozen.len() {
        let mut size = 64;
        let mut end = i;
        while end < frozen.len()
            && end - i < unix::MAX_FDS
            && size + 4 + frozen[end].0.len() <= unix::MAX_RECORD
        {
            size += 4 + frozen[end].0.len();
            end += 1;
        }
        // One at least (each fits: MAX_STATE).
        let end = end.max(i + 1);
        let batch = &frozen[i..end];
        let msg = Msg::Conns {
            state: wire::STATE_VERSION,
            conns: batch.iter().map(|(s, _)| s.clone()).collect(),
        };
        // SAFETY: `Connections::freeze` keeps these descriptors open and
        // untouched until `commit` or `resume`, both called after this
        // function returns.
        let fds: Vec<_> = batch
            .iter()
            .map(|(_, fd)| unsafe { BorrowedFd::borrow_raw(*fd) })
            .collect();
        chan.send(&msg.encode(), &fds)?;
        i = end;
    }
    chan.send(&Msg::ConnsEnd(frozen.len() as u32).encode(), &[])?;
    match recv(chan, timeout.min(CONNS_ANSWER_TIMEOUT))?.0 {
        Msg::TookConns(n) if n as usize == frozen.len() => Ok(()),
        Msg::TookConns(n) => Err(HandoffError::Protocol(format!(
            "took {n} connections of {}",
            frozen.len()
        ))),
        Msg::Refuse(why) => Err(HandoffError::Refused(why)),
        m => Err(HandoffError::Protocol(format!(
            "expected TookConns, got {m:?}"
        ))),
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

/// The new side, once it serves with the listeners: the old process's
/// connections, each one's record with its descriptor, until `ConnsEnd`.
/// Each record is checked with `check` before anything is answered;
/// records of another state version, a wrong count or a record `check`
/// refuses are answered with `Refuse` (the old process resumes them) and
/// are an error. Nothing is confirmed here: the caller answers
/// [`confirm_conns`] before it touches a connection.
pub fn receive_conns(
    channel: &Channel,
    timeout: Duration,
    check: &dyn Fn(&[u8]) -> Result<(), String>,
) -> Result<Vec<(Vec<u8>, OwnedFd)>, HandoffError> {
    let r = receive_conns_unchecked(channel, timeout, check);
    if let Err(e) = &r {
        let _ = channel.send(&Msg::Refuse(e.to_string()).encode(), &[]);
    }
    r
}

fn receive_conns_unchecked(
    channel: &Channel,
    timeout: Duration,
    check: &dyn Fn(&[u8]) -> Result<(), String>,
) -> Result<Vec<(Vec<u8>, OwnedFd)>, HandoffError> {
    let mut got = Vec::new();
    // The first thing wrong; the records are read on to `ConnsEnd` even
    // then (their descriptors closed), so that the old process reads the
    // refusal: closing with its records unread would reach it as a reset
    // that hides the refusal.
    let mut wrong: Option<HandoffError> = None;
    loop {
        let (msg, fds) = recv(channel, timeout)?;
        match msg {
            Msg::Conns { .. } if wrong.is_some() => {}
            Msg::Conns { state, conns } => {
                if state != wire::STATE_VERSION {
                    wrong = Some(WireError::StateVersion(state).into());
                    continue;
                }
                if conns.len() != fds.len() {
                    wrong = Some(HandoffError::Protocol(format!(
                        "{} connection records for {} descriptors",
                        conns.len(),
                        fds.len()
                    )));
                    continue;
                }
                for (rec, fd) in conns.into_iter().zip(fds) {
                    if let Err(e) = check(&rec) {
                        wrong = Some(HandoffError::Protocol(format!(
                            "connection {}: {e}",
                            got.len()
                        )));
                        break;
                    }
                    got.push((rec, fd));
                }
            }
            Msg::ConnsEnd(n) => {
                return match wrong {
                    Some(e) => Err(e),
                    None if n as usize == got.len() => Ok(got),
                    None => Err(HandoffError::Protocol(format!(
                        "{n} connections announced, {} came",
                        got.len()
                    ))),
                }
            }
            m => return Err(HandoffError::Protocol(format!("expected Conns, got {m:?}"))),
        }
    }
}

/// Tell the old process this one took its `n` connections: it forgets
/// them and goes.
pub fn confirm_conns(channel: &Channel, n: u32) -> Result<(), HandoffError> {
    channel.send(&Msg::TookConns(n).encode(), &[])?;
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

    /// Connections cross in batches (by descriptor count and by bytes),
    /// each record with its socket; the count is confirmed.
    #[test]
    fn connections_cross_in_batches_with_their_sockets() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // 203 connections; records of 1 KiB (a byte-limited batch of ~127).
        let pairs: Vec<_> = (0..203)
            .map(|_| {
                let c = std::net::TcpStream::connect(addr).unwrap();
                let (s, _) = l.accept().unwrap();
                (c, s)
            })
            .collect();
        let frozen: Vec<_> = pairs
            .iter()
            .enumerate()
            .map(|(i, (_, s))| (vec![i as u8; 1024], s.as_raw_fd()))
            .collect();
        let (old, new) = Channel::pair().unwrap();
        let new = Channel::from_inherited(new).unwrap();
        let taker = std::thread::spawn(move || {
            let got = receive_conns(&new, Duration::from_secs(10), &|r| {
                (r.len() == 1024).then_some(()).ok_or("size".into())
            })
            .unwrap();
            confirm_conns(&new, got.len() as u32).unwrap();
            got
        });
        send_conns(&old, &frozen, Duration::from_secs(10)).unwrap();
        let got = taker.join().unwrap();
        assert_eq!(got.len(), 203);
        for (i, ((rec, fd), (client, _))) in got.into_iter().zip(&pairs).enumerate() {
            assert_eq!(rec, vec![i as u8; 1024]);
            // The received descriptor is the same connection.
            let mut s = std::net::TcpStream::from(fd);
            std::io::Write::write_all(&mut s, &[i as u8]).unwrap();
            let mut b = [0u8; 1];
            std::io::Read::read_exact(&mut &*client, &mut b).unwrap();
            assert_eq!(b[0], i as u8);
        }
    }

    /// A record of a connection state version this binary does not read,
    /// or one its check refuses, is answered with Refuse: the old side
    /// sees why (and resumes its connections).
    #[test]
    fn an_unknown_state_version_or_a_bad_record_is_refused() {
        for (state, rec, want) in [
            (
                wire::STATE_VERSION + 1,
                b"ok".to_vec(),
                "connection state version",
            ),
            (wire::STATE_VERSION, b"bad".to_vec(), "connection 0: bad"),
        ] {
            let (old, new) = Channel::pair().unwrap();
            let new = Channel::from_inherited(new).unwrap();
            let taker = std::thread::spawn(move || {
                receive_conns(&new, Duration::from_secs(10), &|r| {
                    (r == b"ok").then_some(()).ok_or("bad".into())
                })
            });
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let msg = Msg::Conns {
                state,
                conns: vec![rec],
            };
            old.send(&msg.encode(), &[l.as_fd()]).unwrap();
            old.send(&Msg::ConnsEnd(1).encode(), &[]).unwrap();
            assert!(taker.join().unwrap().is_err());
            match recv(&old, Duration::from_secs(10)).unwrap().0 {
                Msg::Refuse(why) => assert!(why.contains(want), "{why}"),
                m => panic!("{m:?}"),
            }
        }
    }
}
