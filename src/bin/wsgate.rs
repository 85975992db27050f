//! The `wsgate` binary: configuration (a TOML file, then flags), logging,
//! the open-file limit, then the workers. `wsgate --help` lists every flag;
//! `wsgate --print-config` shows the effective configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use log::{error, info, warn};
use wsgate::config::{
    parse_duration_ms, BrokerKind, CompressionMode, Config, Millis, SlowConsumer,
};
use wsgate::hooks::config::EventKind;
use wsgate::server::handoff::{self, upgrade, Inherited};
use wsgate::server::{sys, Server, ServerConfig};
use wsgate::tls;

/// A high-density WebSocket gateway. Flags override the config file.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (see README; every key has a default).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Event-loop threads [default: one per core].
    #[arg(long)]
    workers: Option<usize>,
    /// Most connections held at once; beyond it new ones get HTTP 503.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Largest request head in bytes (HTTP 431 beyond) [default: 8192].
    #[arg(long)]
    max_head: Option<usize>,
    /// Largest message in bytes, all fragments together (close 1009 beyond).
    #[arg(long)]
    max_message: Option<usize>,
    /// Bytes a connection's out queue may hold before the slow-consumer policy.
    #[arg(long)]
    max_queued_bytes: Option<usize>,
    /// What to do with a slow consumer: close (4001) or drop.
    #[arg(long, value_parser = parse_policy)]
    slow_consumer: Option<SlowConsumer>,
    /// Channels the node holds (and idle positions it keeps) [default: 1000000].
    #[arg(long)]
    max_channels: Option<usize>,
    /// Subscribes per second per connection, bursts of max channels per
    /// connection (0: no limit) [default: 20].
    #[arg(long)]
    channel_rate: Option<u32>,
    /// Bytes of history the node keeps over all channels [default: 268435456].
    #[arg(long)]
    history_memory: Option<usize>,
    /// Time allowed from accept to a complete request head ("10s", "500ms").
    #[arg(long, value_parser = parse_millis)]
    handshake_timeout: Option<Millis>,
    /// Ping a connection when nothing was heard from it for this long (0: off).
    #[arg(long, value_parser = parse_millis)]
    ping_interval: Option<Millis>,
    /// Drop a connection whose ping is not answered within this time.
    #[arg(long, value_parser = parse_millis)]
    pong_timeout: Option<Millis>,
    /// Close (1001) a connection that sent nothing for this long (0: off).
    #[arg(long, value_parser = parse_millis)]
    idle_timeout: Option<Millis>,
    /// How long to wait for the peer's close frame and FIN after ours.
    #[arg(long, value_parser = parse_millis)]
    close_linger: Option<Millis>,
    /// Hand memory freed after a burst back to the kernel this often (0: never).
    #[arg(long, value_parser = parse_millis)]
    trim_memory: Option<Millis>,
    /// Disable the built-in /echo route.
    #[arg(long)]
    no_echo: bool,
    /// A subprotocol the server speaks (repeat for several, in preference order).
    #[arg(long = "protocol")]
    protocols: Vec<String>,
    /// Allowed browser Origin (repeat for several); when set, other origins get 403.
    #[arg(long = "allow-origin")]
    allow_origins: Vec<String>,
    /// permessage-deflate: off, shared (no per-connection zlib state) or
    /// dedicated (context takeover) [default: shared].
    #[arg(long, env = "WSGATE_COMPRESSION", value_parser = parse_compression)]
    compression: Option<CompressionMode>,
    /// Messages shorter than this are sent uncompressed, as are those that
    /// deflate does not shrink; 0: compress every message [default: 256].
    #[arg(long, env = "WSGATE_COMPRESSION_MIN_SIZE")]
    compression_min_size: Option<usize>,
    /// Key required by /api/* (Authorization: Bearer KEY, or X-API-Key).
    #[arg(long, env = "WSGATE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Share channels with other nodes through Redis at this URL
    /// (redis://host:port/db); sets broker.kind = "redis".
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Share channels with other nodes through NATS with JetStream
    /// (nats://host:4222); repeat, or separate with commas, for several
    /// servers of a cluster. Sets broker.kind = "nats".
    #[arg(long = "nats", value_name = "URL", value_delimiter = ',')]
    nats: Vec<String>,
    /// Serve TLS on --listen with this certificate chain (PEM, leaf
    /// first); needs --tls-key. SIGHUP re-reads the files.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// With TLS: also listen here in plain HTTP/WebSocket (for a health
    /// checker on the host).
    #[arg(long, value_name = "ADDR")]
    listen_plain: Option<SocketAddr>,
    /// Ask this URL when a client connects without a token (proxy.connect).
    #[arg(long, value_name = "URL")]
    connect_proxy: Option<String>,
    /// Ask this URL when a connection's expire_at comes (proxy.refresh).
    #[arg(long, value_name = "URL")]
    refresh_proxy: Option<String>,
    /// Ask this URL before subscribes in namespaces with subscribe_proxy
    /// (proxy.subscribe).
    #[arg(long, value_name = "URL")]
    subscribe_proxy: Option<String>,
    /// Ask this URL before client publishes in namespaces with
    /// publish_proxy (proxy.publish).
    #[arg(long, value_name = "URL")]
    publish_proxy: Option<String>,
    /// Answer the rpc op at this URL (proxy.rpc).
    #[arg(long, value_name = "URL")]
    rpc_proxy: Option<String>,
    /// POST webhook batches to this URL (webhooks.url).
    #[arg(long, value_name = "URL")]
    webhook_url: Option<String>,
    /// Events to send (webhooks.events), comma-separated: channel_occupied,
    /// channel_vacated, member_added, member_removed, client_disconnected,
    /// client_event, user_online, user_offline.
    #[arg(long, value_name = "EVENT", value_delimiter = ',', value_parser = parse_event)]
    webhook_events: Vec<EventKind>,
    /// The webhooks' HMAC-SHA256 key (webhooks.secret).
    #[arg(long, env = "WSGATE_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Write the pid of the serving process here (after a handoff, the
    /// new process's).
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Ask the instance named by --pid-file to hand over to a new process
    /// (SIGUSR2), wait until the new one serves, and exit.
    #[arg(long, requires = "pid_file")]
    upgrade: bool,
    /// The binary a handoff starts [default: this executable].
    #[arg(long, value_name = "PATH")]
    upgrade_binary: Option<PathBuf>,
}

fn parse_millis(s: &str) -> Result<Millis, String> {
    parse_duration_ms(s).map(Millis)
}

fn parse_compression(s: &str) -> Result<CompressionMode, String> {
    match s {
        "off" => Ok(CompressionMode::Off),
        "shared" => Ok(CompressionMode::Shared),
        "dedicated" => Ok(CompressionMode::Dedicated),
        _ => Err("expected off, shared or dedicated".into()),
    }
}

fn parse_event(s: &str) -> Result<EventKind, String> {
    EventKind::ALL
        .into_iter()
        .find(|k| k.name() == s)
        .ok_or_else(|| format!("not an event: {s}"))
}

fn parse_policy(s: &str) -> Result<SlowConsumer, String> {
    match s {
        "close" => Ok(SlowConsumer::Close),
        "drop" => Ok(SlowConsumer::Drop),
        _ => Err("expected close or drop".into()),
    }
}

/// The file (or the defaults), then every flag given.
fn effective_config(args: Args) -> Result<Config, String> {
    let mut cfg = match &args.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    macro_rules! set {
        ($flag:expr => $field:expr) => {
            if let Some(v) = $flag {
                $field = v;
            }
        };
    }
    set!(args.listen => cfg.listen);
    if args.listen_plain.is_some() {
        cfg.listen_plain = args.listen_plain;
    }
    set!(args.tls_cert => cfg.tls.cert);
    set!(args.tls_key => cfg.tls.key);
    set!(args.workers => cfg.workers);
    set!(args.max_connections => cfg.max_connections);
    set!(args.max_head => cfg.limits.max_head);
    set!(args.max_message => cfg.limits.max_message);
    set!(args.max_queued_bytes => cfg.limits.max_queued_bytes);
    set!(args.slow_consumer => cfg.limits.slow_consumer);
    set!(args.max_channels => cfg.limits.max_channels);
    set!(args.channel_rate => cfg.limits.channel_rate);
    set!(args.history_memory => cfg.limits.history_memory);
    set!(args.handshake_timeout => cfg.timeouts.handshake);
    set!(args.ping_interval => cfg.timeouts.ping_interval);
    set!(args.pong_timeout => cfg.timeouts.pong_timeout);
    set!(args.idle_timeout => cfg.timeouts.idle);
    set!(args.close_linger => cfg.timeouts.close_linger);
    set!(args.trim_memory => cfg.timeouts.trim_memory);
    set!(args.api_key => cfg.api_key);
    set!(args.compression => cfg.compression.mode);
    set!(args.compression_min_size => cfg.compression.min_size);
    set!(args.connect_proxy => cfg.proxy.connect);
    set!(args.refresh_proxy => cfg.proxy.refresh);
    set!(args.subscribe_proxy => cfg.proxy.subscribe);
    set!(args.publish_proxy => cfg.proxy.publish);
    set!(args.rpc_proxy => cfg.proxy.rpc);
    set!(args.webhook_url => cfg.webhooks.url);
    if !args.webhook_events.is_empty() {
        cfg.webhooks.events = args.webhook_events;
    }
    if let Some(secret) = args.webhook_secret {
        cfg.webhooks.secret = secret;
        cfg.webhooks.secret_file.clear();
    }
    if args.redis.is_some() && !args.nats.is_empty() {
        return Err("--redis and --nats: choose one broker".into());
    }
    if let Some(url) = args.redis {
        cfg.broker.kind = BrokerKind::Redis;
        cfg.broker.redis_url = url;
    }
    if !args.nats.is_empty() {
        cfg.broker.kind = BrokerKind::Nats;
        cfg.broker.nats_urls = args.nats;
    }
    if args.no_echo {
        cfg.echo = false;
    }
    if !args.protocols.is_empty() {
        cfg.protocols = args.protocols;
    }
    if !args.allow_origins.is_empty() {
        cfg.allowed_origins = args.allow_origins;
    }
    cfg.validate()?;
    Ok(cfg)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    if args.upgrade {
        return match args.pid_file.as_deref().map(upgrade::request) {
            Some(Ok(pid)) => {
                info!("upgrade: pid {pid} serves now");
                ExitCode::SUCCESS
            }
            Some(Err(e)) => {
                error!("upgrade: {e}");
                ExitCode::FAILURE
            }
            None => ExitCode::from(2),
        };
    }
    let print = args.print_config;
    let pid_file = args.pid_file.clone();
    let upgrade_binary = args.upgrade_binary.clone();
    let cfg = match effective_config(args) {
        Ok(c) => c,
        Err(e) => {
            error!("configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if print {
        print!("{}", cfg.to_toml());
        return ExitCode::SUCCESS;
    }
    match sys::raise_nofile_limit() {
        Ok(n) => info!(
            "open-file limit {n}: room for about {} connections",
            n.saturating_sub(64)
        ),
        Err(e) => warn!("could not raise the open-file limit: {e}"),
    }
    if cfg.api_key.is_empty() {
        warn!("no api_key configured: the backend API (/api/*) is open to anyone who can reach it");
    }
    // SIGTERM and SIGINT go to one thread (sigwait), blocked everywhere else.
    if let Err(e) = sys::block_shutdown_signals() {
        warn!("cannot block SIGTERM/SIGINT: {e}");
    }
    if cfg.tls.enabled() {
        // Before any thread starts, so that SIGHUP reaches only its own.
        if let Err(e) = tls::sighup::block_sighup() {
            warn!("cannot block SIGHUP: {e}");
        }
    }
    let server_cfg = match ServerConfig::try_from_config(&cfg) {
        Ok(s) => s,
        Err(e) => {
            error!("configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(tls) = server_cfg.tls.clone() {
        let names = tls.certs().current().names();
        info!(
            "tls: certificate {} loaded ({names} more by server name); SIGHUP reloads; {} speaks TLS{}",
            cfg.tls.cert.display(),
            server_cfg.listen,
            server_cfg
                .listen_plain
                .map_or(String::new(), |p| format!(", {p} plaintext"))
        );
        if let Err(e) = tls::sighup::spawn_on_sighup(move || {
            let _ = tls.reload();
        }) {
            warn!("cannot start the SIGHUP thread ({e}): certificates will not reload");
        }
    }
    let (level, notice) = server_cfg.gateway.auth.startup_notice();
    log::log!(level, "{notice}");
    info!(
        "wsgate {} on {} with {} workers (gateway at /ws, echo {})",
        env!("CARGO_PKG_VERSION"),
        server_cfg.listen,
        server_cfg.workers,
        if server_cfg.echo { "at /echo" } else { "off" }
    );
    // Started by a handoff: the listeners come from the old process.
    // What an old process with this configuration can send: its history
    // budget (payloads, and 20 bytes a publication: at most as much
    // again), a name and a position per channel, an idle position per
    // channel, and the idempotency keys (64 Ki of at most ~450 bytes).
    // A state beyond is refused (the old process serves on).
    let l = &cfg.limits;
    let max_state = l
        .history_memory
        .saturating_mul(2)
        .saturating_add(
            l.max_channels
                .saturating_mul(l.max_channel_length.saturating_add(64)),
        )
        .saturating_add(64 << 20);
    let inherited = match handoff::take_over(handoff::ANSWER_TIMEOUT, max_state) {
        None => None,
        Some(Ok(i)) => Some(i),
        Some(Err(e)) => {
            error!("handoff: cannot take over ({e}); the old process keeps serving");
            return ExitCode::FAILURE;
        }
    };
    let started = match inherited {
        None => Server::start(server_cfg),
        Some(i) => {
            let Inherited {
                channel,
                main,
                plain,
                broker_state,
            } = i;
            let n = (main.len() + plain.len()) as u32;
            let channels = broker_state.as_ref().map_or(0, |s| s.channels.len());
            match Server::start_inherited(server_cfg, main, plain, broker_state) {
                Ok(s) => match handoff::confirm(&channel, n) {
                    Ok(()) => {
                        info!("handoff: took {n} listeners and {channels} channels; serving");
                        match s.handle().take_connections(&channel) {
                            Ok(c) => {
                                info!("handoff: took {c} connections");
                                Ok(s)
                            }
                            Err(e) => {
                                // Refused: the old process resumes them
                                // and serves on; this one must not.
                                error!("handoff: cannot take the connections ({e}); leaving them to the old process");
                                let _ = s.stop();
                                return ExitCode::FAILURE;
                            }
                        }
                    }
                    Err(e) => {
                        // The old process did not hear it and goes on.
                        error!("handoff: cannot confirm ({e}); leaving it to the old process");
                        let _ = s.stop();
                        return ExitCode::FAILURE;
                    }
                },
                Err(e) => {
                    handoff::refuse(&channel, &format!("cannot start: {e}"));
                    Err(e)
                }
            }
        }
    };
    let server = match started {
        Ok(s) => s,
        Err(e) => {
            error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    info!("listening on {}", server.local_addr());
    if let Some(p) = &pid_file {
        if let Err(e) = upgrade::write_pid_file(p) {
            warn!("cannot write the pid file {}: {e}", p.display());
        }
    }
    let handle = server.handle();
    let after = server.handle();
    let window = cfg.timeouts.drain_window.0;
    let binary = match upgrade_binary {
        Some(b) => Ok(b),
        None => std::env::current_exe(),
    };
    let gate = std::sync::Arc::new(handoff::Gate::default());
    let _ = std::thread::Builder::new()
        .name("wsgate-signals".into())
        .spawn(move || {
            let mut stopping = false;
            while let Ok(sig) = sys::wait_for_signal() {
                if sig == libc::SIGUSR2 {
                    upgrade::on_sigusr2(&handle, &gate, &binary);
                } else if !stopping {
                    stopping = true;
                    info!("signal {sig}: draining (connections leave over {window} ms; a second signal stops at once)");
                    handle.drain();
                } else {
                    warn!("signal {sig} again: stopping now");
                    handle.stop();
                    return;
                }
            }
        });
    if cfg.timeouts.trim_memory.0 > 0 {
        let every = std::time::Duration::from_millis(cfg.timeouts.trim_memory.0);
        let _ = std::thread::Builder::new()
            .name("wsgate-trim".into())
            .spawn(move || trim_memory(every));
    }
    let result = server.join();
    if let Some(p) = &pid_file {
        // After a handoff the file is the new process's, even if it has
        // not written it yet: reading "still ours" and then removing it
        // raced the new process's write (the file vanished when the old
        // process left within milliseconds, its connections moved).
        // Otherwise only if it still names this process.
        if !after.handed_over() {
            upgrade::remove_pid_file(p);
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("worker failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Every `every`, hand the allocator's free pages back to the kernel, so
/// that the peak of a burst (a flood, a mass reconnect) does not stay
/// resident. A trim with nothing to give back costs well under 1 ms; one
/// that gives back hundreds of MiB takes tens of ms, on this thread.
///
/// Only once the burst is over: a trim walks every free chunk of every
/// arena under that arena's lock, so workers that allocate meanwhile wait,
/// and under heavy allocation churn (a client creating and leaving
/// channels as fast as it can) that was seconds (echo round trips of 1.5 s
/// instead of 80 ms). While the process is busy (over a tenth of a core in
/// the last interval) the allocator reuses what was freed anyway; the trim
/// waits for a quiet interval.
fn trim_memory(every: std::time::Duration) {
    let mut cpu = sys::cpu_time();
    loop {
        std::thread::sleep(every);
        let now = sys::cpu_time();
        let busy = now.saturating_sub(cpu) > every / 10;
        cpu = now;
        if busy {
            continue;
        }
        let before = sys::resident_bytes();
        let t0 = std::time::Instant::now();
        sys::release_free_memory();
        let took = t0.elapsed();
        cpu = sys::cpu_time();
        if took > std::time::Duration::from_millis(50) {
            warn!("returning freed memory to the kernel took {took:?}");
        }
        let after = sys::resident_bytes();
        if let (Some(b), Some(a)) = (before, after) {
            let freed = b.saturating_sub(a);
            if freed >= 16 << 20 {
                info!(
                    "returned {} MiB of freed memory to the kernel (resident {} MiB)",
                    freed >> 20,
                    a >> 20
                );
            }
        }
    }
}
