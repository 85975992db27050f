//! `wsgate-load`: the load generator (the client role of `wsgate::proto`
//! over mio). Flags and output only; the work is in `wsgate::load`.
//!
//! ```text
//! wsgate-load echo  --url ws://127.0.0.1:8080/echo --conns 100 --size 20 --duration 10s
//! wsgate-load hold  --url … --conns 19000 --hold 30s --procs 2 --src-ips 127.0.0.2-127.0.0.9
//! wsgate-load hold  --url … --conns 1000 --deflate dedicated --hello-size 1024
//! wsgate-load churn --url … --conns 50 --duration 10s
//! wsgate-load autobahn --url ws://127.0.0.1:9001 --agent wsgate-load
//! wsgate-load sub   --url ws://127.0.0.1:8080/ws --conns 15000 --channels 1 --procs 3 \
//!                   --src-ips 127.0.0.2-127.0.0.7 --batch 64 --server-pid $(pidof wsgate)
//! wsgate-load echo  --url wss://localhost:8443/echo --ca test-ca.pem --conns 100
//! ```
//!
//! Every mode speaks `wss://` (TLS 1.3 or 1.2 over rustls, ALPN http/1.1):
//! `--ca FILE` trusts a test CA, `--insecure` any certificate, and by
//! default the system's roots; each handshake is full unless `--tls-resume`.
//!
//! Every mode takes `--json` (one JSON object on stdout, no progress bar).
//! The exit status is non-zero when nothing succeeded.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use wsgate::load::autobahn::{self, AutobahnConfig};
use wsgate::load::churn::{self, ChurnConfig};
use wsgate::load::client::{ClientConfig, Waves};
use wsgate::load::echo::{self, EchoConfig};
use wsgate::load::hold::{self, HoldConfig};
use wsgate::load::net::{parse_src_ips, share, share_ips, Target};
use wsgate::load::procs::{self, ChildObserver};
use wsgate::load::report::{ChurnStats, EchoStats, HoldStats, Merge, SubStats};
use wsgate::load::sub::{self, PublishConfig, SubConfig};
use wsgate::load::{parse_deflate_mode, parse_duration, Observer};
use wsgate::proto::deflate::{self, Mode as DeflateMode};
use wsgate::tls::client::{client_config, ClientSettings, Trust};

/// Load generator for wsgate: many WebSocket client connections on one mio
/// event loop per process.
#[derive(Parser, Debug)]
#[command(name = "wsgate-load", version, about)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// N connections, each with one message in flight: msgs/s and latency.
    Echo(EchoArgs),
    /// Open N connections and hold them, answering pings.
    Hold(HoldArgs),
    /// Connect, upgrade, close, as fast as allowed: upgrades/s.
    Churn(ChurnArgs),
    /// Be the client under test of an Autobahn fuzzingserver (kosoku).
    Autobahn(AutobahnArgs),
    /// Fan-out: N subscribers over C channels, publications through
    /// `POST /api/publish`; deliveries/s, publish-to-receive latency, gaps.
    Sub(SubArgs),
}

/// How `wss://` connects.
#[derive(Args, Debug, Clone)]
struct TlsArgs {
    /// wss://: trust the CA certificates of this PEM file (a test CA, or a
    /// self-signed server certificate) instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// wss://: accept any server certificate (its handshake signature is
    /// still checked). For throwaway test certificates only.
    #[arg(long, conflicts_with = "ca")]
    insecure: bool,
    /// wss://: keep session tickets and resume (default: every connection
    /// makes a full handshake, as many different browsers would).
    #[arg(long)]
    tls_resume: bool,
    /// wss://: offer TLS 1.2 only (default: 1.3, then 1.2).
    #[arg(long)]
    tls12: bool,
}

impl TlsArgs {
    /// The client configuration for a `wss://` target (none for `ws://`).
    fn config(&self, target: &Target) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
        if !target.tls {
            if self.ca.is_some() || self.insecure || self.tls_resume || self.tls12 {
                return Err("--ca, --insecure, --tls-resume and --tls12 need a wss:// URL".into());
            }
            return Ok(None);
        }
        let trust = match (&self.ca, self.insecure) {
            (Some(f), _) => Trust::CaFile(f.clone()),
            (None, true) => Trust::Insecure,
            (None, false) => Trust::System,
        };
        client_config(&ClientSettings {
            trust,
            resume: self.tls_resume,
            tls12_only: self.tls12,
        })
        .map(Some)
        .map_err(|e| e.to_string())
    }
}

/// Flags every load mode takes.
#[derive(Args, Debug, Clone)]
struct Common {
    /// The WebSocket URL: ws://, or wss:// (TLS).
    #[arg(long, default_value = "ws://127.0.0.1:8080/echo")]
    url: String,
    #[command(flatten)]
    tls: TlsArgs,
    /// Spread the connections over this many child processes (each process
    /// may open ~20,000 files here).
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Source addresses used round robin, e.g. "127.0.0.2-127.0.0.9" or
    /// "127.0.0.2,127.0.0.3" (each reaches one server port ~28,000 times).
    #[arg(long)]
    src_ips: Option<String>,
    /// Connections connecting or handshaking at once while opening.
    #[arg(long, default_value_t = 256)]
    inflight: usize,
    /// New connections per second while opening (default: only --inflight
    /// limits them).
    #[arg(long)]
    open_rate: Option<f64>,
    /// Time allowed from connect to a checked 101 ("10s", "500ms").
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// After a close frame, how long to wait for the rest of the close
    /// handshake and the server's FIN.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    close_linger: Duration,
    /// permessage-deflate (RFC 7692) to offer: "off"; "shared" (no
    /// context takeover either way: no zlib state per connection); or
    /// "dedicated" (context takeover: both ends keep ~300-430 KB of zlib
    /// state per connection that exchanges compressed messages). A server
    /// may decline; its answer is checked against the offer.
    #[arg(long, default_value = "off", value_parser = parse_deflate_mode)]
    deflate: DeflateMode,
    /// With --deflate: messages shorter than this are sent uncompressed
    /// (0: every message compressed).
    #[arg(long, default_value_t = deflate::Config::default().min_size)]
    deflate_min_size: usize,
    /// Print one JSON object on stdout instead of text (no progress bar).
    #[arg(long)]
    json: bool,
    /// Set by the parent of a `--procs` run: this child's index.
    #[arg(long, hide = true, requires = "child_of")]
    child_index: Option<usize>,
    /// Set by the parent of a `--procs` run: the number of children.
    #[arg(long, hide = true, requires = "child_index")]
    child_of: Option<usize>,
}

impl Common {
    /// The client's permessage-deflate settings.
    fn deflate_config(&self) -> deflate::Config {
        deflate::Config {
            mode: self.deflate,
            min_size: self.deflate_min_size,
            ..deflate::Config::default()
        }
    }
}

#[derive(Args, Debug)]
struct EchoArgs {
    #[command(flatten)]
    common: Common,
    /// Connections, each with one message in flight.
    #[arg(long, default_value_t = 100)]
    conns: u64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 20)]
    size: usize,
    /// The measured window, after the warm-up.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Time sending before measuring.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Send text messages (the default).
    #[arg(long, conflicts_with = "binary")]
    text: bool,
    /// Send binary messages.
    #[arg(long)]
    binary: bool,
}

#[derive(Args, Debug)]
struct HoldArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    conns: u64,
    /// How long to hold them once open.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    hold: Duration,
    /// Send one text message of this many bytes (JSON-like) on each
    /// connection once it opens, and count its echo (on /echo): the server
    /// then holds whatever a message costs it, e.g. its compression
    /// context in dedicated mode. 0: send nothing.
    #[arg(long, default_value_t = 0)]
    hello_size: usize,
}

#[derive(Args, Debug)]
struct ChurnArgs {
    #[command(flatten)]
    common: Common,
    /// Connections in progress at once.
    #[arg(long, default_value_t = 50)]
    conns: u64,
    /// How long to keep churning.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
}

#[derive(Args, Debug)]
struct SubArgs {
    #[command(flatten)]
    common: Common,
    /// Subscribers over all processes; subscriber i takes channel i % C.
    #[arg(long, default_value_t = 100)]
    conns: u64,
    /// Channels (C).
    #[arg(long, default_value_t = 1)]
    channels: u64,
    /// Channels are named PREFIX:0, PREFIX:1, …
    #[arg(long, default_value = "bench")]
    channel_prefix: String,
    /// Keep-alive HTTP connections publishing, each with one request in
    /// flight.
    #[arg(long, default_value_t = 2)]
    publishers: usize,
    /// Publications per second in all; 0: as fast as the gateway answers
    /// (one request in flight per publisher), within --max-lag.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Publications per API request (a JSON array).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Bytes of each publication's `data`: {"t":<ns>,"pad":"…"} (at least 34).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Publications carry the 200-metric dashboard of `delta::dashboard`
    /// ({"t":<ns>,"dash":{…}}, ~3.9 KB, 3 or 4 metrics changed per
    /// publication; --size is ignored). Each publisher thread has its own
    /// dashboard: use --publishers 1 for one series per channel.
    #[arg(long)]
    dashboard: bool,
    /// Subscribe with `"delta":"fossil"` (Fossil deltas where the namespace
    /// allows them; a delta publication counts as received, without latency).
    #[arg(long)]
    delta: bool,
    /// The measured window, after the warm-up.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Publishing before the window.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// After publishing ends, the longest wait for deliveries still owed.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain: Duration,
    /// Publishing waits while subscribers are more than this many
    /// publications behind on average (0: never).
    #[arg(long, default_value_t = 256)]
    max_lag: u64,
    /// Stop after this many publications (default: publish until the
    /// window ends).
    #[arg(long)]
    publications: Option<u64>,
    /// The backend API key (X-API-Key), if the gateway has one.
    #[arg(long, env = "WSGATE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The gateway's process id: its CPU time (/proc/PID/stat) and its
    /// delivery count (/api/stats) are sampled over the window.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Take a publication's receive time when this process reads it, not
    /// the kernel's arrival stamp (SO_TIMESTAMPNS; the default on ws://):
    /// then a load generator that falls behind measures its own backlog.
    #[arg(long)]
    read_time: bool,
}

#[derive(Args, Debug)]
struct AutobahnArgs {
    /// The fuzzing server.
    #[arg(long, default_value = "ws://127.0.0.1:9001")]
    url: String,
    /// The agent name the report is filed under.
    #[arg(long, default_value = "wsgate-load")]
    agent: String,
    /// The longest one case may take.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    case_timeout: Duration,
    /// permessage-deflate to offer (groups 12 and 13 need it): "shared"
    /// offers no context takeover either way and client_max_window_bits,
    /// which every case's answer fits; "dedicated" offers context
    /// takeover; "off" offers nothing. Every echo is compressed on a
    /// connection that agreed (kosoku 0.1.0 fails on an uncompressed one).
    #[arg(long, default_value = "shared", value_parser = parse_deflate_mode)]
    deflate: DeflateMode,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    tls: TlsArgs,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match Cli::parse().mode {
        Mode::Echo(a) => {
            let (size, text, duration, warmup) = (a.size, !a.binary, a.duration, a.warmup);
            let modes = Shown {
                progress: true,
                human: EchoStats::human,
                json: EchoStats::json,
                ok: EchoStats::succeeded,
            };
            drive(
                &a.common,
                a.conns,
                modes,
                move |client, conns, waves, obs| {
                    let cfg = EchoConfig {
                        client,
                        conns,
                        size,
                        text,
                        duration,
                        warmup,
                        waves,
                    };
                    echo::run(&cfg, obs)
                },
            )
        }
        Mode::Hold(a) => {
            let (hold, hello_size) = (a.hold, a.hello_size);
            let modes = Shown {
                progress: true,
                human: HoldStats::human,
                json: HoldStats::json,
                ok: HoldStats::succeeded,
            };
            drive(
                &a.common,
                a.conns,
                modes,
                move |client, conns, waves, obs| {
                    let cfg = HoldConfig {
                        client,
                        conns,
                        hold,
                        waves,
                        hello_size,
                    };
                    hold::run(&cfg, obs)
                },
            )
        }
        Mode::Churn(a) => {
            let duration = a.duration;
            let modes = Shown {
                progress: false,
                human: ChurnStats::human,
                json: ChurnStats::json,
                ok: ChurnStats::succeeded,
            };
            drive(&a.common, a.conns, modes, move |client, conns, _, obs| {
                let cfg = ChurnConfig {
                    client,
                    concurrency: conns,
                    duration,
                };
                churn::run(&cfg, obs)
            })
        }
        Mode::Autobahn(a) => run_autobahn(&a),
        Mode::Sub(a) => run_sub(&a),
    }
}

/// How a mode's results are shown and judged.
struct Shown<R> {
    /// Show a progress bar while connections open.
    progress: bool,
    human: fn(&R) -> String,
    json: fn(&R) -> Value,
    ok: fn(&R) -> bool,
}

/// Run a load mode in this process, as a child, or over child processes.
fn drive<R, F>(c: &Common, conns: u64, shown: Shown<R>, run: F) -> ExitCode
where
    R: Serialize + DeserializeOwned + Merge + Default + Send + 'static,
    F: FnOnce(ClientConfig, u64, Waves, &mut dyn Observer) -> std::io::Result<R>,
{
    let target = match Target::parse(&c.url) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let ips = match c.src_ips.as_deref().map(parse_src_ips).transpose() {
        Ok(ips) => ips.unwrap_or_default(),
        Err(e) => return fail(&format!("--src-ips: {e}")),
    };
    let waves = Waves {
        inflight: c.inflight,
        rate: c.open_rate,
    };
    let tls = match c.tls.config(&target) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let client = |ips: Vec<std::net::IpAddr>| {
        let mut cfg = ClientConfig::new(target.clone());
        cfg.src_ips = ips;
        cfg.handshake_timeout = c.handshake_timeout;
        cfg.close_linger = c.close_linger;
        cfg.deflate = c.deflate_config();
        cfg.tls = tls.clone();
        cfg
    };

    if let (Some(i), Some(n)) = (c.child_index, c.child_of) {
        let mine = share(conns, i, n);
        check_file_limit(mine);
        let rate = waves.rate.map(|r| r / n.max(1) as f64);
        let waves = Waves {
            inflight: (waves.inflight / n.max(1)).max(1),
            rate,
        };
        return match run(
            client(share_ips(&ips, i, n)),
            mine,
            waves,
            &mut ChildObserver::new(),
        ) {
            Ok(r) => {
                procs::emit_result(r);
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("child {i}: {e}")),
        };
    }

    let mut bar = Bar::new(shown.progress && !c.json);
    let result = if c.procs > 1 {
        let shares: Vec<u64> = (0..c.procs).map(|i| share(conns, i, c.procs)).collect();
        procs::run_children::<R>(c.procs, &shares, &mut bar)
    } else {
        check_file_limit(conns);
        run(client(ips), conns, waves, &mut bar).map_err(|e| e.to_string())
    };
    bar.ready();
    match result {
        Ok(r) => {
            if c.json {
                println!("{}", (shown.json)(&r));
            } else {
                print!("{}", (shown.human)(&r));
            }
            if (shown.ok)(&r) {
                ExitCode::SUCCESS
            } else {
                eprintln!("wsgate-load: nothing succeeded");
                ExitCode::FAILURE
            }
        }
        Err(e) => fail(&e),
    }
}

/// `sub`: in this process, as a child, or publishing for child processes.
fn run_sub(a: &SubArgs) -> ExitCode {
    let c = &a.common;
    let target = match Target::parse(&c.url) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    if !target.path.starts_with("/ws") {
        return fail("sub needs the gateway's route: --url ws://HOST:PORT/ws");
    }
    let ips = match c.src_ips.as_deref().map(parse_src_ips).transpose() {
        Ok(ips) => ips.unwrap_or_default(),
        Err(e) => return fail(&format!("--src-ips: {e}")),
    };
    if a.conns == 0 || a.channels == 0 {
        return fail("--conns and --channels must be at least 1");
    }
    if a.size < sub::DATA_OVERHEAD {
        log::warn!(
            "--size {} is below {}, the size of {{\"t\":…,\"pad\":\"\"}}: using that",
            a.size,
            sub::DATA_OVERHEAD
        );
    }
    let data = if a.dashboard {
        4200
    } else {
        a.size.max(sub::DATA_OVERHEAD)
    };
    let body = a.batch.max(1) * (data + a.channel_prefix.len() + 40);
    if body > 1 << 20 {
        log::warn!("requests of ~{body} bytes: over the gateway's default limits.max_body (1 MiB)");
    }
    let tls = match c.tls.config(&target) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let mut client = ClientConfig::new(target);
    client.src_ips = ips;
    client.handshake_timeout = c.handshake_timeout;
    client.close_linger = c.close_linger;
    client.deflate = c.deflate_config();
    client.tls = tls;
    client.rx_timestamps = !a.read_time;
    let cfg = SubConfig {
        client,
        total_conns: a.conns,
        first: 0,
        conns: a.conns,
        channels: a.channels,
        prefix: a.channel_prefix.clone(),
        delta: a.delta,
        waves: Waves {
            inflight: c.inflight,
            rate: c.open_rate,
        },
        warmup: a.warmup,
        duration: a.duration,
        drain: a.drain,
        publish: PublishConfig {
            publishers: a.publishers.max(1),
            rate: a.rate.max(0.0),
            batch: a.batch.max(1),
            size: a.size,
            dashboard: a.dashboard,
            max_lag: a.max_lag,
            limit: a.publications,
            api_key: a.api_key.clone(),
            server_pid: a.server_pid,
        },
    };

    if let (Some(i), Some(n)) = (c.child_index, c.child_of) {
        let mine = cfg.for_child(i, n);
        check_file_limit(mine.conns);
        return match sub::run_child(&mine, i, n, &mut ChildObserver::new()) {
            Ok(r) => {
                procs::emit_result(r);
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("child {i}: {e}")),
        };
    }

    let mut bar = Bar::new(!c.json);
    let result = if c.procs > 1 {
        sub::run_parent(&cfg, c.procs, &mut bar)
    } else {
        check_file_limit(a.conns);
        sub::run(&cfg, &mut bar).map_err(|e| e.to_string())
    };
    bar.ready();
    match result {
        Ok(r) => {
            if c.json {
                println!("{}", r.json());
            } else {
                print!("{}", r.human());
            }
            if SubStats::succeeded(&r) {
                ExitCode::SUCCESS
            } else {
                eprintln!("wsgate-load: nothing received");
                ExitCode::FAILURE
            }
        }
        Err(e) => fail(&e),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("wsgate-load: {msg}");
    ExitCode::FAILURE
}

/// Raise the open-file limit and warn if `conns` will not fit.
fn check_file_limit(conns: u64) {
    match wsgate::server::sys::raise_nofile_limit() {
        Ok(n) if conns + 64 > n => log::warn!(
            "{conns} connections in one process, open-file limit {n}: some will fail; use --procs"
        ),
        Ok(_) => {}
        Err(e) => log::warn!("could not raise the open-file limit: {e}"),
    }
}

/// The progress bar while connections open: stderr, only on a terminal.
struct Bar(Option<ProgressBar>);

impl Bar {
    fn new(enabled: bool) -> Bar {
        if !enabled || !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("opening [{bar:30}] {pos}/{len}, {msg} ({elapsed})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        Bar(Some(bar))
    }
}

impl Observer for Bar {
    fn opening(&mut self, opened: u64, failed: u64, total: u64) {
        if let Some(b) = &self.0 {
            b.set_length(total);
            b.set_position(opened + failed);
            b.set_message(format!("{failed} failed"));
        }
    }

    fn ready(&mut self) {
        if let Some(b) = self.0.take() {
            b.finish_and_clear();
        }
    }
}

fn run_autobahn(a: &AutobahnArgs) -> ExitCode {
    let target = match Target::parse(&a.url) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let tls = match a.tls.config(&target) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let cfg = AutobahnConfig {
        target,
        agent: a.agent.clone(),
        case_timeout: a.case_timeout,
        deflate: a.deflate,
        tls,
    };
    let bar = (!a.json && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("autobahn case {pos}/{len} [{bar:40}]") {
            b.set_style(style.progress_chars("=> "));
        }
        b
    });
    let mut progress = |n: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(n);
        }
    };
    let result = autobahn::run(&cfg, &mut progress);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let sum = match result {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    if a.json {
        println!("{}", serde_json::to_string(&sum).unwrap_or_default());
    } else {
        println!(
            "autobahn client ({}): {} cases, {} ran, {} failed to open, {} timed out, \
             {} with permessage-deflate, {} messages echoed, reports {}",
            a.agent,
            sum.cases,
            sum.ran,
            sum.failed_to_open,
            sum.timed_out,
            sum.deflate_negotiated,
            sum.messages_echoed,
            if sum.reports_updated {
                "updated"
            } else {
                "NOT updated"
            }
        );
    }
    let ok = sum.cases > 0 && sum.failed_to_open == 0 && sum.timed_out == 0 && sum.reports_updated;
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
