//! `hold`: open N connections, keep them open for T seconds answering the
//! server's pings, then close them. Counts what a capacity test needs: how
//! many opened, failed, were still open at the end, pings answered, and
//! close frames the server sent of its own accord.
//!
//! With a hello size, each connection sends one JSON-like text message as
//! soon as it opens and counts its echo (the gateway's `/echo`), so that
//! the server holds what one message costs it: with permessage-deflate in
//! `dedicated` mode, its per-connection compression context. That is what
//! measuring memory per idle connection per compression mode needs. The
//! client pays too: in `dedicated` mode each of its connections keeps a
//! decompressor (~48 KB) for the compressed echo, plus a compressor
//! (~250-380 KB) when the hello goes compressed (at least
//! `--deflate-min-size`), so spread big runs over `--procs`.

use std::io;
use std::time::{Duration, Instant};

use super::client::{ClientConfig, Ctx, End, Fleet, Handler, Waves};
use super::report::HoldStats;
use super::Observer;

/// What `hold` does.
#[derive(Debug, Clone)]
pub struct HoldConfig {
    pub client: ClientConfig,
    pub conns: u64,
    /// How long to hold the connections once they are open.
    pub hold: Duration,
    pub waves: Waves,
    /// Bytes of the text message each connection sends once open (see
    /// [`hello`]); 0: none.
    pub hello_size: usize,
}

#[derive(Default)]
struct Hold {
    pings: u64,
    closes: u64,
    hello: Vec<u8>,
    hellos_sent: u64,
    hellos_echoed: u64,
}

impl Handler<()> for Hold {
    fn on_open(&mut self, ctx: &mut Ctx<'_, ()>, _handshake: Duration) {
        if !self.hello.is_empty() && ctx.send(true, &self.hello) {
            self.hellos_sent += 1;
        }
    }

    fn on_message(&mut self, _ctx: &mut Ctx<'_, ()>, text: bool, data: &[u8]) {
        if text && !self.hello.is_empty() && data == self.hello {
            self.hellos_echoed += 1;
        }
    }

    fn on_ping(&mut self, _ctx: &mut Ctx<'_, ()>, _data: &[u8]) {
        // The protocol core has queued the pong already.
        self.pings += 1;
    }

    fn on_end(&mut self, _id: usize, _user: (), end: &End) {
        if let End::Closed { by_peer: true, .. } = end {
            self.closes += 1;
        }
    }
}

/// A JSON-like text of exactly `size` bytes, shaped like a chat message
/// (short keys, then English words), so that it compresses about as real
/// messages do (about 4:1 with deflate on its own).
pub fn hello(size: usize) -> Vec<u8> {
    const HEAD: &[u8] = br#"{"op":"hello","data":{"user":"load-client","text":""#;
    const TAIL: &[u8] = br#""}}"#;
    const WORDS: &[&str] = &[
        "the",
        "gateway",
        "holds",
        "a",
        "million",
        "mostly",
        "idle",
        "sockets",
        "and",
        "fans",
        "every",
        "publication",
        "out",
        "to",
        "subscribers",
        "of",
        "its",
        "channel",
        "while",
        "clients",
        "reconnect",
        "with",
        "their",
        "last",
        "offset",
        "recovering",
        "what",
        "they",
        "missed",
        "presence",
        "history",
        "deflate",
        "window",
        "bits",
        "context",
    ];
    let mut text = Vec::with_capacity(size);
    let mut i = 0usize;
    while text.len() < size {
        // A stride coprime to the word count: the order varies.
        text.extend_from_slice(WORDS[(i * 7 + i / WORDS.len()) % WORDS.len()].as_bytes());
        text.push(b' ');
        i += 1;
    }
    if size < HEAD.len() + TAIL.len() {
        text.truncate(size);
        return text;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(HEAD);
    out.extend_from_slice(&text[..size - HEAD.len() - TAIL.len()]);
    out.extend_from_slice(TAIL);
    out
}

/// Run `hold`; bounded by the open phase, the hold and the close linger.
pub fn run(cfg: &HoldConfig, obs: &mut dyn Observer) -> io::Result<HoldStats> {
    let mut fleet: Fleet<()> = Fleet::new(cfg.client.clone())?;
    let mut h = Hold {
        hello: hello(cfg.hello_size),
        ..Hold::default()
    };
    fleet.open_many(cfg.conns, cfg.waves, &mut h, obs, || ())?;
    obs.ready();

    let start = Instant::now();
    let end = start + cfg.hold;
    while Instant::now() < end {
        fleet.poll(&mut h, end.saturating_duration_since(Instant::now()))?;
    }
    let hold_secs = start.elapsed().as_secs_f64();
    let still_open = fleet.open_count() as u64;
    let closes = h.closes;
    fleet.close_all(1000, &mut h);
    fleet.drain(&mut h, Instant::now() + cfg.client.close_linger)?;

    Ok(HoldStats {
        open: fleet.stats().clone(),
        hold_secs,
        still_open,
        pings_answered: h.pings,
        // Server-initiated closes during the hold (not those after it).
        closes_received: closes,
        hello_size: cfg.hello_size,
        hellos_sent: h.hellos_sent,
        hellos_echoed: h.hellos_echoed,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn hello_is_json_of_the_size_asked() {
        for size in [0, 10, 60, 1024, 4000] {
            let h = super::hello(size);
            assert_eq!(h.len(), size);
            if size >= 60 {
                let v: serde_json::Value = serde_json::from_slice(&h).expect("valid JSON");
                assert_eq!(v["op"], "hello");
            }
        }
    }
}
