//! The pub/sub thread: one SUBSCRIBE connection per node.
//!
//! It is subscribed to a channel's Redis pub/sub exactly while this node
//! has a local subscriber for it: the hub sends the name of a channel whose
//! local interest appeared or vanished, and the thread reconciles
//! (SUBSCRIBE or UNSUBSCRIBE, then tells the hub). Reads use a short
//! timeout so that such requests wait at most [`POLL`]; a PING every
//! [`PING_EVERY`] finds a connection that died silently.
//!
//! When the connection drops, the hub is told (subscribers stop receiving
//! other nodes' publications); the thread reconnects with backoff and full
//! jitter, subscribes every channel still wanted, and the hub reads each
//! stream for what was published meanwhile.

use std::collections::HashSet;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::{Connection, PubSub, RedisResult, Value};

use super::hub::Hub;
use super::{Backoff, Settings};

/// Longest wait for a SUBSCRIBE request while no message arrives.
const POLL: Duration = Duration::from_millis(5);
const PING_EVERY: Duration = Duration::from_secs(1);
/// Channels per SUBSCRIBE when resubscribing.
const CHUNK: usize = 256;

pub(super) fn run(hub: Arc<Hub>, rx: Receiver<Arc<str>>, s: Settings, ready: Sender<()>) {
    let mut backoff = Backoff::new(s.reconnect_min, s.reconnect_max);
    let mut ready = Some(ready);
    let mut down_since: Option<Instant> = None;
    while !hub.stopping() {
        let r = s
            .client
            .get_connection_with_timeout(s.command_timeout)
            .and_then(|mut con| {
                backoff.reset();
                if let Some(t) = down_since.take() {
                    log::info!(
                        "redis pub/sub connection up (after {:.1} s)",
                        t.elapsed().as_secs_f64()
                    );
                }
                session(&hub, &mut con, &rx, &s, &mut ready)
            });
        hub.pubsub_down();
        if down_since.is_none() {
            down_since = Some(Instant::now());
        }
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        if hub.stopping() {
            break;
        }
        let delay = backoff.next_delay();
        if let Err(e) = r {
            log::warn!(
                "redis pub/sub connection: {e}; next attempt in {} ms",
                delay.as_millis()
            );
        }
        let end = Instant::now() + delay;
        while !hub.stopping() && Instant::now() < end {
            std::thread::sleep(
                end.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(50)),
            );
        }
    }
}

/// One connection's life: subscribe what is wanted, then deliver messages
/// and apply requests until the connection fails or the broker stops.
fn session(
    hub: &Hub,
    con: &mut Connection,
    rx: &Receiver<Arc<str>>,
    s: &Settings,
    ready: &mut Option<Sender<()>>,
) -> RedisResult<()> {
    ::redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(format!("wsgate:{}:sub", s.node_id))
        .exec(con)?;
    let mut ps = con.as_pubsub();
    ps.set_read_timeout(Some(s.command_timeout))?;
    // Whatever was requested is covered by the full list below.
    while rx.try_recv().is_ok() {}
    hub.pubsub_up();
    let control = s.keys.control();
    ps.subscribe(&control)?;
    let mut subscribed: HashSet<Arc<str>> = HashSet::new();
    let wanted = hub.wanted_all();
    for chunk in wanted.chunks(CHUNK) {
        let names: Vec<String> = chunk.iter().map(|c| s.keys.channel(c)).collect();
        ps.subscribe(&names)?;
        for c in chunk {
            subscribed.insert(c.clone());
            hub.confirmed(c);
        }
    }
    if let Some(r) = ready.take() {
        let _ = r.send(());
    }
    ps.set_read_timeout(Some(POLL))?;
    let mut last_ping = Instant::now();
    loop {
        if hub.stopping() {
            return Ok(());
        }
        let mut slow = false;
        while let Ok(ch) = rx.try_recv() {
            if !slow {
                ps.set_read_timeout(Some(s.command_timeout))?;
                slow = true;
            }
            reconcile(hub, &mut ps, &mut subscribed, s, ch)?;
        }
        if last_ping.elapsed() >= PING_EVERY {
            if !slow {
                ps.set_read_timeout(Some(s.command_timeout))?;
                slow = true;
            }
            ps.ping::<Value>()?;
            last_ping = Instant::now();
        }
        if slow {
            ps.set_read_timeout(Some(POLL))?;
        }
        match ps.get_message() {
            Ok(msg) => {
                let name = msg.get_channel_name();
                if let Some(ch) = s.keys.channel_of(name) {
                    hub.on_message(ch, msg.get_payload_bytes());
                } else if name == control {
                    on_control(hub, s, msg.get_payload_bytes());
                }
            }
            Err(e) if e.is_timeout() => {}
            Err(e) => return Err(e),
        }
    }
}

/// Make the Redis subscription of `ch` match the node's interest.
fn reconcile(
    hub: &Hub,
    ps: &mut PubSub<'_>,
    subscribed: &mut HashSet<Arc<str>>,
    s: &Settings,
    ch: Arc<str>,
) -> RedisResult<()> {
    let want = hub.wanted(&ch);
    let have = subscribed.contains(&ch);
    if want && !have {
        ps.subscribe(s.keys.channel(&ch))?;
        subscribed.insert(ch.clone());
    } else if !want && have {
        ps.unsubscribe(s.keys.channel(&ch))?;
        subscribed.remove(&ch);
    }
    if want {
        hub.confirmed(&ch);
    }
    Ok(())
}

/// A message on the control channel: `d<INSTANCE>\n<USER>` from another
/// node disconnects USER here too.
fn on_control(hub: &Hub, s: &Settings, payload: &[u8]) {
    let text = String::from_utf8_lossy(payload);
    match text.strip_prefix('d').and_then(|r| r.split_once('\n')) {
        Some((node, _)) if node == s.instance => {}
        Some((node, user)) if crate::pubsub::valid_user(user, usize::MAX).is_err() => {
            log::warn!("node {node} asked to disconnect an invalid user id {user:?}: ignored")
        }
        Some((node, user)) => {
            log::info!("node {node} disconnects user {user:?}: closing its connections here");
            hub.disconnect_user(user);
        }
        None => log::warn!("unknown control message ignored: {text:?}"),
    }
}
