//! `autobahn`: the client under test for an Autobahn|Testsuite
//! `fuzzingserver` (kosoku's, here), which checks the client role.
//!
//! The protocol of the fuzzing server: `GET /getCaseCount` sends one text
//! message with the number of cases; then, for each case N,
//! `/runCase?case=N&agent=A` sends frames and expects every message echoed
//! (text as text, binary as binary) until it closes; finally
//! `/updateReports?agent=A` makes it write its report. One connection at a
//! time, each bounded by a per-case timeout.
//!
//! permessage-deflate (groups 12 and 13) is offered in `shared` mode by
//! default: `server_no_context_takeover; client_no_context_takeover;
//! client_max_window_bits`, an offer every 13.x answer fits (13.x vary the
//! server's window bits and context takeover; with
//! `client_no_context_takeover` offered we compress each message afresh,
//! which is what any answer allows). The echo of every message is
//! compressed (`min_size` 0): kosoku 0.1.0 fails a deflate connection that
//! receives an uncompressed message. Cases without deflate decline the
//! offer and run as before.

use std::io;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::client::{ClientConfig, Ctx, End, Fleet, Handler};
use super::net::Target;
use crate::proto::deflate::{self, Mode};
use crate::proto::Limits;

/// What `autobahn` does.
#[derive(Debug, Clone)]
pub struct AutobahnConfig {
    /// The fuzzing server (its path is ignored).
    pub target: Target,
    /// The agent name the report is filed under.
    pub agent: String,
    /// The longest one case may take.
    pub case_timeout: Duration,
    /// permessage-deflate to offer (`Shared` passes groups 12 and 13).
    pub deflate: Mode,
    /// The TLS client configuration, for a `wss://` fuzzing server.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// What happened, as far as the client can tell (the verdicts are in the
/// server's report).
#[derive(Debug, Clone, Default, Serialize)]
pub struct AutobahnSummary {
    pub cases: u64,
    /// Cases whose connection opened.
    pub ran: u64,
    /// Cases whose connection failed to open (connect or handshake).
    pub failed_to_open: u64,
    /// Cases cut off by the per-case timeout.
    pub timed_out: u64,
    /// Cases whose connection agreed on permessage-deflate.
    pub deflate_negotiated: u64,
    pub messages_echoed: u64,
    /// The `/updateReports` request was answered.
    pub reports_updated: bool,
}

#[derive(Default)]
struct Agent {
    /// Echo messages back (a case), or read the case count.
    echo: bool,
    count: Option<u64>,
    echoed: u64,
    end: Option<End>,
}

impl Handler<()> for Agent {
    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, text: bool, data: &[u8]) {
        if self.echo {
            ctx.send(text, data);
            self.echoed += 1;
        } else if self.count.is_none() {
            self.count = std::str::from_utf8(data)
                .ok()
                .and_then(|s| s.trim().parse().ok());
        }
    }

    fn on_end(&mut self, _id: usize, _user: (), end: &End) {
        self.end = Some(end.clone());
    }
}

/// Percent-encode a query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Open one connection to `path` and run it until it ends or `timeout`
/// passes. Returns how it ended (`None`: timed out), and whether it agreed
/// on permessage-deflate.
fn run_one(
    cfg: &ClientConfig,
    path: &str,
    agent: &mut Agent,
    timeout: Duration,
) -> io::Result<(Option<End>, bool)> {
    let mut cc = cfg.clone();
    cc.target = cfg.target.with_path(path);
    let mut fleet: Fleet<()> = Fleet::new(cc)?;
    agent.end = None;
    fleet.connect((), agent);
    let deadline = Instant::now() + timeout;
    while !fleet.is_empty() && Instant::now() < deadline {
        fleet.poll(agent, deadline.saturating_duration_since(Instant::now()))?;
    }
    let deflate = fleet.stats().deflate_negotiated > 0;
    if !fleet.is_empty() {
        fleet.abort_all(agent);
        return Ok((None, deflate));
    }
    Ok((agent.end.take(), deflate))
}

/// Run every case the server offers, then ask it to write its report.
/// `progress` hears (case, total) before each case.
pub fn run(
    cfg: &AutobahnConfig,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<AutobahnSummary, String> {
    let mut client = ClientConfig::new(cfg.target.clone());
    client.tls = cfg.tls.clone();
    // Autobahn's largest messages are 16 MiB (9.x): leave room.
    client.limits = Limits {
        max_message: 64 << 20,
    };
    client.deflate = deflate::Config {
        mode: cfg.deflate,
        min_size: 0,
        ..deflate::Config::default()
    };
    let agent_q = encode(&cfg.agent);
    let io = |e: io::Error| format!("autobahn: {e}");

    let mut a = Agent::default();
    let (end, _) = run_one(&client, "/getCaseCount", &mut a, cfg.case_timeout).map_err(io)?;
    let cases = a.count.ok_or_else(|| {
        format!(
            "autobahn: no case count from {} (connection ended: {end:?})",
            cfg.target.host
        )
    })?;

    let mut sum = AutobahnSummary {
        cases,
        ..Default::default()
    };
    for n in 1..=cases {
        progress(n, cases);
        let mut a = Agent {
            echo: true,
            ..Default::default()
        };
        let path = format!("/runCase?case={n}&agent={agent_q}");
        let (end, deflate) = run_one(&client, &path, &mut a, cfg.case_timeout).map_err(io)?;
        sum.deflate_negotiated += u64::from(deflate);
        match end {
            Some(End::Failed(why)) => {
                log::warn!("case {n}: {why}");
                sum.failed_to_open += 1;
            }
            Some(_) => sum.ran += 1,
            None => {
                log::warn!("case {n}: timed out after {:?}", cfg.case_timeout);
                sum.ran += 1;
                sum.timed_out += 1;
            }
        }
        sum.messages_echoed += a.echoed;
    }

    let mut a = Agent::default();
    let path = format!("/updateReports?agent={agent_q}");
    let (end, _) = run_one(&client, &path, &mut a, cfg.case_timeout).map_err(io)?;
    sum.reports_updated = matches!(end, Some(End::Closed { .. }) | Some(End::Lost(_)));
    Ok(sum)
}

#[cfg(test)]
mod tests {
    #[test]
    fn agent_names_are_percent_encoded() {
        assert_eq!(super::encode("wsgate-load"), "wsgate-load");
        assert_eq!(super::encode("a b&c"), "a%20b%26c");
    }
}
