//! The NATS broker: several gateway nodes share channels through NATS,
//! with JetStream for history, offsets and presence.
//!
//! It keeps the Redis broker's promises with the same node-side machinery:
//! the [`Hub`] (shared with the Redis broker: which workers want which
//! channel, the last offset delivered per channel, the ordering, gap and
//! epoch rules) and the same [`Cmd`]s. What differs is where they run:
//!
//! | concern | Redis broker | NATS broker |
//! |---|---|---|
//! | offsets and history | meta hash + stream per channel, one Lua script per publish | a JetStream stream per channel: its sequence is the offset ([`store`]) |
//! | epoch | a random value in the meta hash | a random value in the stream's name (`PREFIX_EPOCH`): every sequence comes with its stream's name |
//! | fan-out between nodes | `PUBLISH` inside the script | the stream **republishes** each stored message to the channel's live subject, with `Nats-Sequence` |
//! | a node's interest | `SUBSCRIBE` while it has local subscribers | a core subscription while it has local subscribers |
//! | presence | a hash per channel, fields with expiries | a key-value bucket with `max_age` = `presence_ttl` ([`presence`]) |
//! | `/api/disconnect` | `PUBLISH PREFIX:control` | core publish on `PREFIX.control` |
//! | threads | a command thread and a pub/sub thread (blocking client) | one thread running a current-thread tokio runtime ([`engine`]), plus two that forward the hub's queues into it |
//!
//! **Why async-nats.** It is the NATS project's own client, maintained with
//! the server: cluster discovery and failover, reconnection, TLS, every
//! authentication scheme, JetStream publishing with acknowledgements, so
//! none of that is written here (stream management, reads and the presence
//! bucket use the JetStream API's JSON directly, see [`store`], which every
//! server since 2.9 answers alike). It is async (tokio) only; the deprecated blocking `nats`
//! crate wraps an older async core. The runtime lives on the broker's own
//! thread, beside the worker loops as the Redis threads are: workers only
//! push onto a queue and never touch it, and no async runtime enters the
//! engine.
//!
//! **Outages.** The client reconnects by itself (to any server of the
//! cluster it knows), with exponential backoff and full jitter
//! (`reconnect_min` .. `reconnect_max`), pings every half
//! `command_timeout` to find a dead connection. While it is down, or while
//! JetStream does not answer (a cluster electing a stream leader, a server
//! without JetStream), the node says so (`/healthz` 503, broker healthy 0),
//! publishes, history and presence fail at once or after `command_timeout`
//! with error 10 `unavailable` (HTTP 503), and subscribes are answered
//! without recovery; a publish is never queued while the connection is
//! down. Once it is back, every channel is read from its stream after the
//! last offset delivered (the hub's catch-up), so what was published
//! meanwhile arrives in order, or a `resync` says what was lost.

mod engine;
mod live;
mod names;
mod presence;
mod store;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::redis::hub::Hub;
use super::redis::{node_id, Backoff, Cmd, HubBroker};
use super::Inboxes;
use crate::base::OpError;
use crate::config::{BrokerConfig, ChannelPolicy, NatsStorage, OutageSubscribe};
use names::Names;

/// What a request gets while NATS cannot be reached (or does not answer).
const UNREACHABLE: OpError = OpError::Unavailable("nats unreachable");
/// What it gets when NATS answered with an error.
const JS_ERROR: OpError = OpError::Unavailable("nats error");

/// Settings the NATS thread needs.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub names: Names,
    pub node_id: String,
    /// This broker instance (node id + a random part), to tell its own
    /// control messages from other nodes'.
    pub instance: String,
    pub presence_ttl: Duration,
    pub presence_refresh: Duration,
    /// A channel whose stream had no publication for this long is deleted.
    pub meta_ttl: Duration,
    /// How often the idle streams are looked for.
    pub sweep_every: Duration,
    pub command_timeout: Duration,
    /// Failed catch-up reads are tried again after `retry_min`, doubled
    /// while they fail, up to `retry_max` (the reconnection backoff's).
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub storage: NatsStorage,
    pub replicas: usize,
}

impl HubBroker {
    /// The broker of a node in a cluster sharing channels through NATS:
    /// start the NATS thread and wait (up to about a second) for its first
    /// connection, so that a node whose NATS is up starts healthy. A node
    /// whose NATS is down starts all the same (degraded) and connects when
    /// it can.
    pub fn nats(
        cfg: &BrokerConfig,
        inboxes: Arc<Inboxes>,
        policy: Arc<ChannelPolicy>,
        events: crate::hooks::events::Events,
    ) -> io::Result<HubBroker> {
        let node_id = node_id(cfg);
        let command_timeout = Duration::from_millis(cfg.command_timeout.0);
        let meta_ttl = Duration::from_millis(cfg.meta_ttl.0);
        let settings = Settings {
            names: Names::new(&cfg.prefix),
            instance: format!("{node_id}/{}", crate::broker::new_epoch()),
            node_id,
            presence_ttl: Duration::from_millis(cfg.presence_ttl.0),
            presence_refresh: Duration::from_millis(cfg.presence_refresh.0),
            meta_ttl,
            sweep_every: (meta_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(600)),
            command_timeout,
            retry_min: Duration::from_millis(cfg.reconnect_min.0),
            retry_max: Duration::from_millis(cfg.reconnect_max.0),
            storage: cfg.nats_storage,
            replicas: cfg.nats_replicas,
        };
        let urls: Vec<async_nats::ServerAddr> = cfg
            .nats_urls
            .iter()
            .map(|u| {
                u.parse().map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("broker.nats_urls {u:?}: {e}"),
                    )
                })
            })
            .collect::<io::Result<_>>()?;
        // `nats://user:password@host` or `nats://token@host`: the client
        // does not read them from the URL, so they are passed as options.
        let auth = urls.iter().find_map(|u| {
            let user = u.username()?.to_owned();
            Some(match u.password() {
                Some(p) => Auth::UserPassword(user, p.to_owned()),
                None => Auth::Token(user),
            })
        });

        // The hub speaks to its command side through std channels; two small
        // threads forward them into the runtime's queues.
        let (hub_cmd_tx, hub_cmd_rx) = mpsc::channel::<Cmd>();
        let (hub_sub_tx, hub_sub_rx) = mpsc::channel::<Arc<str>>();
        let hub = Arc::new(Hub::new(
            inboxes.clone(),
            policy.clone(),
            hub_cmd_tx,
            hub_sub_tx,
            cfg.outage_subscribe == OutageSubscribe::Refuse,
            events,
            false,
        ));
        let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel::<Cmd>();
        let (sub_tx, sub_rx) = tokio::sync::mpsc::unbounded_channel();
        forward("wsgate-nats-cmdq", hub_cmd_rx, cmd_tx.clone())?;
        forward("wsgate-nats-subq", hub_sub_rx, sub_tx)?;

        let publications = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let (hub, settings, policy, publications) = (
                hub.clone(),
                settings.clone(),
                policy.clone(),
                publications.clone(),
            );
            let backoff = Mutex::new(Backoff::new(
                Duration::from_millis(cfg.reconnect_min.0),
                Duration::from_millis(cfg.reconnect_max.0),
            ));
            std::thread::Builder::new()
                .name("wsgate-nats".into())
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => return log::error!("nats broker runtime: {e}"),
                    };
                    rt.block_on(async move {
                        let (ev_tx, ev_rx) = tokio::sync::mpsc::unbounded_channel();
                        let opts = match auth {
                            Some(Auth::UserPassword(u, p)) => {
                                async_nats::ConnectOptions::with_user_and_password(u, p)
                            }
                            Some(Auth::Token(t)) => async_nats::ConnectOptions::with_token(t),
                            None => async_nats::ConnectOptions::new(),
                        };
                        let opts = opts
                            .name(format!("wsgate:{}", settings.node_id))
                            .retry_on_initial_connect()
                            .connection_timeout(settings.command_timeout)
                            .request_timeout(Some(settings.command_timeout))
                            .ping_interval(
                                (settings.command_timeout / 2).max(Duration::from_millis(100)),
                            )
                            .reconnect_delay_callback(move |attempts| {
                                // The first attempt after a loss is at once
                                // (another server of the cluster may be up);
                                // then exponential, fully jittered.
                                let mut b = backoff.lock().unwrap_or_else(|e| e.into_inner());
                                if attempts <= 1 {
                                    b.reset();
                                    Duration::ZERO
                                } else {
                                    b.next_delay()
                                }
                            })
                            .event_callback(move |ev| {
                                let tx = ev_tx.clone();
                                async move {
                                    let _ = tx.send(ev);
                                }
                            });
                        let client = match opts.connect(urls).await {
                            Ok(c) => c,
                            Err(e) => return log::error!("nats broker: {e}"),
                        };
                        let js_ok = Arc::new(AtomicBool::new(true));
                        let engine = engine::Engine::new(
                            hub,
                            settings,
                            policy,
                            publications,
                            client,
                            js_ok,
                            ready_tx,
                        );
                        engine
                            .run(engine::Inputs {
                                cmds: cmd_rx,
                                reconcile: sub_rx,
                                events: ev_rx,
                            })
                            .await;
                    });
                })?
        };
        let wait =
            settings.command_timeout.max(Duration::from_secs(1)) + Duration::from_millis(200);
        let _ = ready_rx.recv_timeout(wait);
        log::info!(
            "nats broker {} at {} ({})",
            settings.node_id,
            cfg.nats_urls
                .iter()
                .map(|u| super::without_credentials(u))
                .collect::<Vec<_>>()
                .join(","),
            if hub.cmd_up.load(Ordering::Acquire) && hub.ps_up.load(Ordering::Acquire) {
                "connected"
            } else {
                "not reachable yet: degraded"
            }
        );
        let send = move |cmd| {
            let sent = cmd_tx.send(cmd);
            sent.err().map(|tokio::sync::mpsc::error::SendError(c)| c)
        };
        Ok(HubBroker {
            kind: "nats",
            hub,
            send: Box::new(send),
            inboxes,
            publications,
            threads: vec![thread],
        })
    }
}

/// Credentials found in a server URL.
enum Auth {
    UserPassword(String, String),
    Token(String),
}

/// A thread that moves everything from a std channel into a tokio one,
/// until either side is gone.
fn forward<T: Send + 'static>(
    name: &str,
    rx: mpsc::Receiver<T>,
    tx: tokio::sync::mpsc::UnboundedSender<T>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(64 * 1024)
        .spawn(move || {
            while let Ok(v) = rx.recv() {
                if tx.send(v).is_err() {
                    break;
                }
            }
        })
        .map(|_| ())
}
