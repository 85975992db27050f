//! The `wsgate` binary: flags, logging, the open-file limit, then the
//! workers. `wsgate --help` lists every flag.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use log::{error, info, warn};
use wsgate::proto::{Limits, Timeouts};
use wsgate::server::{sys, Server, ServerConfig};

/// A high-density WebSocket gateway.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Event-loop threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Most connections held at once; beyond it new ones get HTTP 503.
    #[arg(long, default_value_t = 1_000_000)]
    max_connections: usize,
    /// Largest request head in bytes (HTTP 431 beyond).
    #[arg(long, default_value_t = 8192)]
    max_head: usize,
    /// Largest message in bytes, all fragments together (close 1009 beyond).
    #[arg(long, default_value_t = 16 << 20)]
    max_message: usize,
    /// Time allowed from accept to a complete upgrade request ("10s", "500ms").
    #[arg(long, default_value = "10s", value_parser = parse_ms)]
    handshake_timeout: u32,
    /// Ping a connection when nothing was heard from it for this long (0: off).
    #[arg(long, default_value = "30s", value_parser = parse_ms)]
    ping_interval: u32,
    /// Drop a connection whose ping is not answered within this time.
    #[arg(long, default_value = "10s", value_parser = parse_ms)]
    pong_timeout: u32,
    /// Close (1001) a connection that sent nothing for this long (0: off).
    #[arg(long, default_value = "0", value_parser = parse_ms)]
    idle_timeout: u32,
    /// How long to wait for the peer's close frame and FIN after ours.
    #[arg(long, default_value = "2s", value_parser = parse_ms)]
    close_linger: u32,
    /// Disable the built-in /echo route.
    #[arg(long)]
    no_echo: bool,
    /// A subprotocol the server speaks (repeat for several, in preference order).
    #[arg(long = "protocol")]
    protocols: Vec<String>,
    /// Allowed browser Origin (repeat for several); when set, other origins get 403.
    #[arg(long = "allow-origin")]
    allow_origins: Vec<String>,
}

/// "250ms", "10s", "2m", or a plain number of seconds.
fn parse_ms(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (s, 1000.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?}"))?;
    let ms = v * mult;
    if !(0.0..=u32::MAX as f64 / 2.0).contains(&ms) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(ms as u32)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();

    match sys::raise_nofile_limit() {
        Ok(n) => info!(
            "open-file limit {n}: room for about {} connections",
            n.saturating_sub(64)
        ),
        Err(e) => warn!("could not raise the open-file limit: {e}"),
    }

    let mut cfg = ServerConfig {
        listen: args.listen,
        max_connections: args.max_connections,
        max_head: args.max_head,
        limits: Limits {
            max_message: args.max_message,
        },
        timeouts: Timeouts {
            handshake_ms: args.handshake_timeout,
            ping_interval_ms: args.ping_interval,
            pong_timeout_ms: args.pong_timeout,
            idle_timeout_ms: args.idle_timeout,
            close_linger_ms: args.close_linger,
        },
        echo: !args.no_echo,
        protocols: args.protocols,
        ..ServerConfig::default()
    };
    if let Some(w) = args.workers {
        cfg.workers = w.max(1);
    }
    if !args.allow_origins.is_empty() {
        let allowed: Vec<Vec<u8>> = args
            .allow_origins
            .into_iter()
            .map(String::into_bytes)
            .collect();
        cfg.origin_check = Some(Arc::new(move |origin: Option<&[u8]>| match origin {
            Some(o) => allowed.iter().any(|a| a.eq_ignore_ascii_case(o)),
            None => true, // non-browser clients send no Origin
        }));
    }
    info!(
        "wsgate {} on {} with {} workers (echo route {})",
        env!("CARGO_PKG_VERSION"),
        cfg.listen,
        cfg.workers,
        if cfg.echo { "on at /echo" } else { "off" }
    );
    let server = match Server::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    info!("listening on {}", server.local_addr());
    match server.join() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("worker failed: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_ms;

    #[test]
    fn durations() {
        assert_eq!(parse_ms("250ms"), Ok(250));
        assert_eq!(parse_ms("10s"), Ok(10_000));
        assert_eq!(parse_ms("1.5s"), Ok(1_500));
        assert_eq!(parse_ms("2m"), Ok(120_000));
        assert_eq!(parse_ms("3"), Ok(3_000));
        assert!(parse_ms("soon").is_err());
        assert!(parse_ms("-1s").is_err());
    }
}
