//! What an SSE or long-poll request asks for, read from its head: its
//! channels' count, where to resume (the `Last-Event-ID` header,
//! `?last_event_id=` or `?cursor=`) and, for a poll, how long to hold it
//! (`?wait=`). A bad value is refused with a message naming it (400, error
//! code 3), never taken for an absent one. An empty value is the same as
//! none (a client with no position yet sends `cursor=`).

use super::resume::ResumeToken;
use super::stream::Kind;
use super::Query;
use crate::gateway::error::OpError;
use crate::gateway::GatewayConfig;
use crate::proto::handshake::Head;

/// The stream's starting position and its timer interval (SSE: the
/// keepalive; poll: how long it is held, 0 for a short poll).
pub fn read(
    head: &Head<'_>,
    query: Query<'_>,
    kind: Kind,
    channels: usize,
    cfg: &GatewayConfig,
) -> Result<(ResumeToken, u64), OpError> {
    let max_channels = cfg.max_channels;
    let bad =
        |what: &str, why: &dyn std::fmt::Display| OpError::BadRequest(format!("{what}: {why}"));
    let given = match kind {
        // The header first: EventSource sends it on every reconnect, with
        // a newer token than the `?last_event_id=` of its first request.
        Kind::Sse => match head.header("last-event-id") {
            Some(v) => Some((
                "Last-Event-ID",
                std::str::from_utf8(v)
                    .map_err(|_| bad("Last-Event-ID", &"not UTF-8"))?
                    .to_string(),
            )),
            None => query.value("last_event_id").map(|t| ("last_event_id", t)),
        },
        Kind::Poll => query.value("cursor").map(|t| ("cursor", t)),
    };
    let resume = match given.filter(|(_, t)| !t.is_empty()) {
        None => ResumeToken::default(),
        Some((what, t)) => ResumeToken::decode(&t, max_channels).map_err(|e| bad(what, &e))?,
    };
    match channels {
        0 => return Err(OpError::BadRequest("give at least one channel".into())),
        n if n > max_channels => return Err(OpError::TooManyChannels(max_channels)),
        _ => {}
    }
    let interval = match kind {
        Kind::Sse => cfg.sse_keepalive_ms,
        Kind::Poll => match query.value("wait").filter(|w| !w.is_empty()) {
            None => cfg.poll_wait_ms,
            Some(w) => match w.parse::<f64>() {
                Ok(s) if s.is_finite() && s >= 0.0 => (s * 1000.0) as u64,
                _ => return Err(bad("wait", &"not a number of seconds (0 or more)")),
            },
        }
        .min(cfg.poll_max_wait_ms),
    };
    Ok((resume, interval))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::Position;

    fn run(req: &str, kind: Kind) -> Result<(ResumeToken, u64), String> {
        let head = Head::parse(req.as_bytes(), 8192).unwrap().unwrap();
        let query = Query::parse(head.query()).unwrap();
        let cfg = GatewayConfig::default();
        let n = query.values("channel").count();
        read(&head, query, kind, n, &cfg).map_err(|e| match e {
            OpError::BadRequest(m) => m,
            other => format!("{other:?}"),
        })
    }

    /// What a poll or stream request makes of its parameters: the offset
    /// resumed in channel `a` and the interval, or the refusal's message.
    #[test]
    fn parameters_table() {
        let mut t = ResumeToken::default();
        t.set(
            "a",
            Position {
                epoch: "e".into(),
                offset: 4,
            },
        );
        let tok = t.encode();
        let d = GatewayConfig::default();
        let (wait, max, keepalive) = (d.poll_wait_ms, d.poll_max_wait_ms, d.sse_keepalive_ms);
        let poll = |q: &str| format!("GET /poll?channel=a{q} HTTP/1.1\r\nHost: x\r\n\r\n");
        let sse =
            |q: &str, h: &str| format!("GET /sse?channel=a{q} HTTP/1.1\r\nHost: x\r\n{h}\r\n");
        let ok = |offset: Option<u64>, ms: u64| Ok::<_, String>((offset, ms));
        let err = |m: &str| -> Outcome { Err(m.to_string()) };
        /// The offset resumed in `a` and the interval, or the refusal.
        type Outcome = Result<(Option<u64>, u64), String>;
        let cases: Vec<(String, Kind, Outcome)> = vec![
            (poll(""), Kind::Poll, ok(None, wait)),
            (
                poll(&format!("&cursor={tok}")),
                Kind::Poll,
                ok(Some(4), wait),
            ),
            (poll("&cursor="), Kind::Poll, ok(None, wait)),
            (poll("&wait=0"), Kind::Poll, ok(None, 0)),
            (poll("&wait=2.5"), Kind::Poll, ok(None, 2500)),
            (poll("&wait="), Kind::Poll, ok(None, wait)),
            (poll("&wait=99999"), Kind::Poll, ok(None, max)),
            (
                poll("&wait=abc"),
                Kind::Poll,
                err("wait: not a number of seconds (0 or more)"),
            ),
            (
                poll("&wait=-1"),
                Kind::Poll,
                err("wait: not a number of seconds (0 or more)"),
            ),
            (
                poll("&wait=NaN"),
                Kind::Poll,
                err("wait: not a number of seconds (0 or more)"),
            ),
            (
                poll("&wait=inf"),
                Kind::Poll,
                err("wait: not a number of seconds (0 or more)"),
            ),
            (
                poll("&cursor=!!"),
                Kind::Poll,
                err("cursor: resume token is not base64url"),
            ),
            // A stream's `last_event_id` is not a poll's cursor.
            (
                poll(&format!("&last_event_id={tok}")),
                Kind::Poll,
                ok(None, wait),
            ),
            (
                sse(&format!("&last_event_id={tok}"), ""),
                Kind::Sse,
                ok(Some(4), keepalive),
            ),
            (
                sse("&last_event_id=!!", ""),
                Kind::Sse,
                err("last_event_id: resume token is not base64url"),
            ),
            // The header wins over the query.
            (
                sse("&last_event_id=!!", &format!("Last-Event-ID: {tok}\r\n")),
                Kind::Sse,
                ok(Some(4), keepalive),
            ),
            (
                sse("", "Last-Event-ID: !!\r\n"),
                Kind::Sse,
                err("Last-Event-ID: resume token is not base64url"),
            ),
            (
                "GET /poll HTTP/1.1\r\nHost: x\r\n\r\n".into(),
                Kind::Poll,
                err("give at least one channel"),
            ),
        ];
        for (req, kind, want) in cases {
            let got = run(&req, kind).map(|(r, ms)| (r.get("a").map(|p| p.offset), ms));
            assert_eq!(got, want, "{req:?}");
        }
    }

    /// `Last-Event-ID` bytes that are not UTF-8 (obs-text, which httparse
    /// lets through) are refused, naming the header.
    #[test]
    fn last_event_id_must_be_utf8() {
        let req = b"GET /sse?channel=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: \xff\xfe\r\n\r\n";
        let head = Head::parse(req, 8192).unwrap().unwrap();
        let query = Query::parse(head.query()).unwrap();
        let e = read(&head, query, Kind::Sse, 1, &GatewayConfig::default()).unwrap_err();
        assert_eq!(e, OpError::BadRequest("Last-Event-ID: not UTF-8".into()));
    }
}
