//! permessage-deflate (RFC 7692), sans-IO: negotiation in both roles, the
//! per-worker codec [`Engine`], the per-connection agreement [`Agreed`] and
//! context [`Context`], and [`SharedFrame`], which compresses a publication
//! once per worker for every subscriber.
//!
//! # Library
//!
//! [`flate2`] with its `zlib-rs` backend (the `zlib-rs` crate, a Rust port
//! of zlib-ng maintained by the Trifecta Tech Foundation). Why: flate2 is
//! the well-kept deflate crate of the ecosystem; of its backends, zlib-rs
//! is among the fastest (zlib-ng's SIMD code paths) and needs no C
//! toolchain; and with it flate2 exposes raw deflate with explicit window
//! bits (`Compress::new_with_window_bits` / `Decompress::new_with_window_bits`,
//! behind flate2's `any_zlib` feature, which `zlib-rs` enables), which RFC
//! 7692 needs. miniz_oxide (flate2's default backend) has no window-bits
//! API. Measured here against C zlib (flate2's `zlib` feature) on a 1 KB
//! JSON message: about the same speed at level 1 with context; C zlib's
//! reset is cheaper (3 µs against 8 µs) and its streams smaller (a
//! compressor of 139 KB at 9 bits, 268 KB at 15; a decompressor of 7 KB
//! plus its window), about half of zlib-rs' at 9 bits. Neither makes
//! per-connection state affordable at density, which is what `shared`
//! mode is for; a C backend would be a one-line feature switch.
//!
//! Memory of one zlib-rs stream, measured with a counting allocator: a
//! compressor holds 251 KB at 9 window bits, 265 KB at 12, 380 KB at 15 (its
//! hash table is 128 KB whatever the window); a decompressor holds 48 KB
//! whatever the window (zlib-rs always allocates a 32 KB window). A
//! `dedicated` connection with both contexts thus holds 299 KB (9 bits),
//! 313 KB (12) or 428 KB (15): `tests/deflate_memory.rs`, run with
//! `cargo test --release --test deflate_memory -- --nocapture`. All far above
//! the ~128 B an idle connection may cost, so:
//!
//! # Modes ([`Mode`])
//!
//! - `off`: never negotiated.
//! - `shared` (the default): no context takeover in either direction
//!   (`server_no_context_takeover; client_no_context_takeover` in every
//!   response). Every message is compressed and decompressed on its own, so
//!   one compressor per window size and one decompressor serve every
//!   connection of a worker ([`Engine`]); a connection holds 1 byte of
//!   agreement and no zlib state at all. A compressed message is inflated
//!   once it is complete (its compressed bytes are bounded by
//!   [`max_compressed`] of the message limit), so messages of different
//!   connections never interleave in the shared decompressor.
//! - `dedicated`: context takeover where the peer allows it, with our
//!   window bounded by `window_bits`. The connection's [`Context`] (a
//!   compressor and/or a decompressor) is allocated on the first compressed
//!   message in that direction and kept: 48 KB + 251..380 KB per busy
//!   connection. Better ratios for streams of similar small messages, at a
//!   price the density target cannot pay for every connection.
//!
//! Messages below `min_size` bytes are sent uncompressed (RSV1 clear), and so
//! is a message that deflate does not shrink (RSV1 is per message). With
//! `min_size` 0 every message goes compressed, even those: kosoku 0.1.0, the
//! conformance suite, errors on an uncompressed message on a deflate
//! connection, so `scripts/autobahn.sh` runs the server with
//! `WSGATE_COMPRESSION_MIN_SIZE=0`.
//!
//! # Receiving (RFC 7692 §6.2, §7.2.2)
//!
//! RSV1 on the first frame of a data message means compressed; it is
//! refused (1002) on control frames, on continuation frames, and on a
//! connection that did not negotiate the extension (`HeaderRules`). The
//! payload with `00 00 ff ff` appended is inflated in steps into a buffer
//! whose growth stops at the message limit: a decompression bomb ends with
//! 1009 after at most `max_message` bytes of output, and inflated text is
//! validated as UTF-8 step by step (1007). Corrupt deflate data is 1007.
//! The limit is on the message: its compressed frames may together take up
//! to [`max_compressed`]`(max_message)` bytes (checked from each header),
//! since deflate makes incompressible data a little larger.
//!
//! # Cost (`cargo bench --bench deflate`, a 986-byte JSON publication)
//!
//! One run on the 2-core VM: `shared` compresses in 12 µs at level 1
//! (ratio 2.9) and 32 µs at level 6 (3.5); about 8 µs of it is zlib-rs
//! clearing its 128 KB hash table, which no context takeover needs before
//! every message. That is paid once per worker and publication by the
//! compress-once path, but per message for echoes and replies. `dedicated`
//! compresses the same stream in 3.5 µs at level 1 (ratio 5.1, the context
//! helps). Inflating costs 1.9 µs (`shared`) to 2.9 µs (`dedicated`),
//! against 0.3 µs to decode the message uncompressed. Level 1 is the
//! default.

use std::sync::Arc;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::conn::Role;
use super::error::Error;
use super::frame::{Header, HeaderRules, OpCode};
use super::utf8::Utf8State;

/// The extension's token.
pub const TOKEN: &str = "permessage-deflate";
/// Appended to a message before inflating it, stripped after deflating one
/// (RFC 7692 §7.2.1: an empty stored block from a sync flush).
const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];
/// The smallest window zlib can compress with (it refuses 8 for raw
/// deflate), hence the smallest `server_max_window_bits` we accept.
pub const MIN_WINDOW_BITS: u8 = 9;
pub const MAX_WINDOW_BITS: u8 = 15;
/// Scratch buffers above this size are released after use.
const SCRATCH_KEEP: usize = 256 * 1024;

/// Which compression the gateway negotiates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Never negotiate permessage-deflate.
    Off,
    /// No context takeover either way: per-worker codecs, no per-connection
    /// zlib state.
    #[default]
    Shared,
    /// Context takeover where the peer allows it: per-connection codecs
    /// with bounded window bits, allocated on first use.
    Dedicated,
}

/// Compression settings, for either role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub mode: Mode,
    /// Messages shorter than this are sent uncompressed, and so are those
    /// that deflate does not shrink; 0: every message is sent compressed.
    pub min_size: usize,
    /// Our compressor's window (9..=15); in `dedicated` mode also what we
    /// ask of the peer when it lets us choose.
    pub window_bits: u8,
    /// zlib level 0..=9.
    pub level: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Shared,
            min_size: 256,
            window_bits: MAX_WINDOW_BITS,
            level: 1,
        }
    }
}

impl Config {
    pub fn off() -> Config {
        Config {
            mode: Mode::Off,
            ..Config::default()
        }
    }

    fn bits(&self) -> u8 {
        self.window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS)
    }
}

// --- negotiation (RFC 7692 §5, §7.1) ---

/// The parameters of one `permessage-deflate` element, as offered or
/// answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Params {
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    pub server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value (allowed in an offer only).
    pub client_max_window_bits: Option<Option<u8>>,
}

impl Params {
    /// The element as it goes into `Sec-WebSocket-Extensions`.
    pub fn to_header(&self) -> String {
        let mut s = String::from(TOKEN);
        if self.server_no_context_takeover {
            s.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if let Some(b) = self.server_max_window_bits {
            s.push_str(&format!("; server_max_window_bits={b}"));
        }
        match self.client_max_window_bits {
            Some(Some(b)) => s.push_str(&format!("; client_max_window_bits={b}")),
            Some(None) => s.push_str("; client_max_window_bits"),
            None => {}
        }
        s
    }
}

/// Split on `sep` outside quoted strings, trimming each piece.
fn split_quoted(s: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, &c) in s.iter().enumerate() {
            if quoted {
                if escaped {
                    escaped = false;
                } else if c == b'\\' {
                    escaped = true;
                } else if c == b'"' {
                    quoted = false;
                }
            } else if c == b'"' {
                quoted = true;
            } else if c == sep {
                rest = Some(&s[i + 1..]);
                return Some(s[..i].trim_ascii());
            }
        }
        rest = None;
        Some(s.trim_ascii())
    })
}

/// The extension elements of every `Sec-WebSocket-Extensions` value, as
/// (name, parameters) pairs; empty elements are skipped.
fn elements<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> impl Iterator<Item = (&'a [u8], impl Iterator<Item = &'a [u8]>)> {
    values
        .into_iter()
        .flat_map(|v| split_quoted(v, b','))
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut parts = split_quoted(e, b';');
            let name = parts.next().unwrap_or_default();
            (name, parts)
        })
}

/// A window-bits value: 1*DIGIT in 8..=15 without leading zeros, possibly
/// as a quoted string (RFC 7692 §7.1.2.1, §7.1.2.2).
fn window_bits_value(v: &[u8]) -> Option<u8> {
    let v = match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    };
    // A quoted-string may escape any character; digits need none, but
    // "\1\0" is still "10".
    let mut digits = [0u8; 2];
    let mut n = 0;
    let mut escaped = false;
    for &c in v {
        if c == b'\\' && !escaped {
            escaped = true;
            continue;
        }
        escaped = false;
        if n == 2 || !c.is_ascii_digit() {
            return None;
        }
        digits[n] = c;
        n += 1;
    }
    let bits = match &digits[..n] {
        [d] => d - b'0',
        [b'1', d] => 10 + d - b'0',
        _ => return None,
    };
    (8..=15).contains(&bits).then_some(bits)
}

/// Parse one element's parameters. `Err` for an unknown parameter, a
/// duplicate, or an invalid value (§7.1: such an offer is declined, such a
/// response fails the connection). In a response `client_max_window_bits`
/// needs a value.
fn parse_params<'a>(params: impl Iterator<Item = &'a [u8]>, response: bool) -> Result<Params, ()> {
    let mut p = Params::default();
    let mut seen = 0u8;
    for param in params {
        let (name, value) = match param.iter().position(|&c| c == b'=') {
            Some(i) => (param[..i].trim_ascii(), Some(param[i + 1..].trim_ascii())),
            None => (param, None),
        };
        let bit = match name.to_ascii_lowercase().as_slice() {
            b"server_no_context_takeover" if value.is_none() => {
                p.server_no_context_takeover = true;
                1
            }
            b"client_no_context_takeover" if value.is_none() => {
                p.client_no_context_takeover = true;
                2
            }
            b"server_max_window_bits" => {
                p.server_max_window_bits = Some(value.and_then(window_bits_value).ok_or(())?);
                4
            }
            b"client_max_window_bits" => {
                p.client_max_window_bits = Some(match value {
                    Some(v) => Some(window_bits_value(v).ok_or(())?),
                    None if response => return Err(()),
                    None => None,
                });
                8
            }
            _ => return Err(()),
        };
        // §7.1: "multiple extension parameters with the same name".
        if seen & bit != 0 {
            return Err(());
        }
        seen |= bit;
    }
    Ok(p)
}

/// Every `permessage-deflate` offer among the values of
/// `Sec-WebSocket-Extensions`, in the client's order of preference; `Err`
/// for an offer that must be declined as malformed.
pub fn parse_offers<'a, I: IntoIterator<Item = &'a [u8]>>(
    values: I,
) -> impl Iterator<Item = Result<Params, ()>> + use<'a, I> {
    elements(values)
        .filter(|(name, _)| name.eq_ignore_ascii_case(TOKEN.as_bytes()))
        .map(|(_, params)| parse_params(params, false))
}

/// The server's choice: the first acceptable offer, answered for the
/// configured mode. `None`: the extension is not used (mode `off`, no
/// offer, or none acceptable); the handshake goes on without it.
///
/// An offer is declined (§7.1) when it is malformed or asks for
/// `server_max_window_bits=8`, which zlib cannot produce.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a [u8]>, cfg: &Config) -> Option<Params> {
    if cfg.mode == Mode::Off {
        return None;
    }
    parse_offers(values)
        .filter_map(Result::ok)
        .find_map(|offer| answer(&offer, cfg))
}

fn answer(offer: &Params, cfg: &Config) -> Option<Params> {
    let ours = cfg.bits();
    if offer
        .server_max_window_bits
        .is_some_and(|b| b < MIN_WINDOW_BITS)
    {
        return None;
    }
    // §7.1.2.1: answer `server_max_window_bits` only when offered, with
    // the same or a smaller value. Without it we may still compress with a
    // smaller window than the peer's 15: it decodes anything up to 15.
    let server_max_window_bits = offer.server_max_window_bits.map(|b| b.min(ours));
    Some(match cfg.mode {
        Mode::Off => return None,
        // §7.1.1.1/§7.1.1.2: a server MAY include either
        // `no_context_takeover` parameter even when not offered.
        Mode::Shared => Params {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits,
            client_max_window_bits: None,
        },
        Mode::Dedicated => Params {
            // §7.1.1.1: accepting an offer with it MUST include it.
            server_no_context_takeover: offer.server_no_context_takeover,
            client_no_context_takeover: offer.client_no_context_takeover,
            server_max_window_bits,
            // §7.1.2.2: only when offered; then ≤ the offered value. It
            // bounds the client's memory (ours is a fixed 48 KB).
            client_max_window_bits: offer
                .client_max_window_bits
                .map(|v| Some(v.unwrap_or(MAX_WINDOW_BITS).min(ours))),
        },
    })
}

/// The client's offer for `Sec-WebSocket-Extensions` (`None` when off).
///
/// `shared`: `permessage-deflate; server_no_context_takeover;
/// client_no_context_takeover; client_max_window_bits` — no zlib state per
/// connection on our side either. `dedicated`: `permessage-deflate;
/// client_max_window_bits` (what browsers send), plus
/// `server_max_window_bits=N` when `window_bits` is below 15.
pub fn client_offer(cfg: &Config) -> Option<String> {
    let p = match cfg.mode {
        Mode::Off => return None,
        Mode::Shared => Params {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: None,
            client_max_window_bits: Some(None),
        },
        Mode::Dedicated => Params {
            server_max_window_bits: (cfg.bits() < MAX_WINDOW_BITS).then_some(cfg.bits()),
            client_max_window_bits: Some(None),
            ..Params::default()
        },
    };
    Some(p.to_header())
}

/// Check the server's `Sec-WebSocket-Extensions` against our offer
/// ([`client_offer`] for `cfg`): `Ok(None)` when it declined, `Ok(params)`
/// when it accepted, `Err(BadResponse)` when the client must fail the
/// connection (§7.1: an extension we did not offer, several elements, an
/// unknown or repeated parameter, an invalid value, a window larger than we
/// asked for, `client_max_window_bits=8` that zlib cannot produce, or a
/// missing `server_no_context_takeover` that we asked for).
pub fn accept_response<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
    cfg: &Config,
) -> Result<Option<Params>, Error> {
    let mut agreed = None;
    for (name, params) in elements(values) {
        if cfg.mode == Mode::Off || !name.eq_ignore_ascii_case(TOKEN.as_bytes()) || agreed.is_some()
        {
            return Err(Error::BadResponse);
        }
        let p = parse_params(params, true).map_err(|_| Error::BadResponse)?;
        let asked_server =
            (cfg.mode == Mode::Dedicated && cfg.bits() < MAX_WINDOW_BITS).then_some(cfg.bits());
        if let (Some(got), Some(asked)) = (p.server_max_window_bits, asked_server) {
            if got > asked {
                return Err(Error::BadResponse);
            }
        }
        if p.client_max_window_bits == Some(Some(8)) {
            return Err(Error::BadResponse);
        }
        if cfg.mode == Mode::Shared && !p.server_no_context_takeover {
            return Err(Error::BadResponse);
        }
        agreed = Some(p);
    }
    Ok(agreed)
}

// --- the agreement, resolved for one end ---

const BITS_MASK: u8 = 0b0000_0111; // window bits − 8 (1..=7); 0: off
const TX_CONTEXT: u8 = 0b0000_1000; // our compressor keeps its window across messages
const RX_CONTEXT: u8 = 0b0001_0000; // the peer's does: keep a decompressor per connection

/// What one end of a connection does with the agreed parameters: one byte
/// in [`super::Conn`] (it fits the struct's padding), zero when the
/// extension is off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Agreed(u8);

impl Agreed {
    fn pack(tx_bits: u8, flags: u8) -> Agreed {
        debug_assert!((MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(&tx_bits));
        Agreed((tx_bits - 8) | flags)
    }

    /// Resolve `params` (the server's answer) for `role` under `cfg`.
    pub fn new(role: Role, params: &Params, cfg: &Config) -> Agreed {
        let (tx_limit, tx_nct, rx_nct) = match role {
            Role::Server => (
                params.server_max_window_bits,
                params.server_no_context_takeover,
                params.client_no_context_takeover,
            ),
            Role::Client => (
                params.client_max_window_bits.flatten(),
                params.client_no_context_takeover,
                params.server_no_context_takeover,
            ),
        };
        let mut flags = 0;
        // In shared mode we never take over our own context, whatever the
        // peer allows (the client's offer said client_no_context_takeover).
        if !tx_nct && cfg.mode == Mode::Dedicated {
            flags |= TX_CONTEXT;
        }
        if !rx_nct {
            flags |= RX_CONTEXT;
        }
        let bits = tx_limit
            .unwrap_or(MAX_WINDOW_BITS)
            .min(cfg.bits())
            .max(MIN_WINDOW_BITS);
        Agreed::pack(bits, flags)
    }

    /// Was permessage-deflate negotiated?
    pub fn is_on(self) -> bool {
        self.0 & BITS_MASK != 0
    }

    /// Our compressor's window bits (0 when off).
    pub fn tx_bits(self) -> u8 {
        match self.0 & BITS_MASK {
            0 => 0,
            b => b + 8,
        }
    }

    /// Do we compress with context takeover (a per-connection compressor)?
    pub fn tx_context(self) -> bool {
        self.0 & TX_CONTEXT != 0
    }

    /// Does the peer compress with context takeover (a per-connection
    /// decompressor)?
    pub fn rx_context(self) -> bool {
        self.0 & RX_CONTEXT != 0
    }

    /// The agreement as its byte (a frozen connection's, issue 17).
    pub fn to_bits(self) -> u8 {
        self.0
    }

    /// An agreement from [`Agreed::to_bits`]; None for a byte no agreement
    /// has.
    pub fn from_bits(b: u8) -> Option<Agreed> {
        (b & !(BITS_MASK | TX_CONTEXT | RX_CONTEXT) == 0 && (b & BITS_MASK != 0 || b == 0))
            .then_some(Agreed(b))
    }

    /// Does this connection need a [`Context`] at all?
    pub fn needs_context(self) -> bool {
        self.0 & (TX_CONTEXT | RX_CONTEXT) != 0
    }
}

/// A connection's own zlib state under context takeover, boxed in
/// [`super::Conn`] and allocated on first use.
#[derive(Default)]
pub struct Context {
    tx: Option<Compress>,
    rx: Option<Decompress>,
    /// The peer's decompressor saw a message our compressor did not (sent
    /// uncompressed, or as a shared frame): start the next one afresh.
    tx_stale: bool,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("tx", &self.tx.is_some())
            .field("rx", &self.rx.is_some())
            .field("tx_stale", &self.tx_stale)
            .finish()
    }
}

impl Context {
    /// Our next message must not refer to earlier ones.
    pub(crate) fn mark_stale(&mut self) {
        self.tx_stale = true;
    }
}

// --- the per-worker engine ---

/// A worker's (or a client fleet's) compression state: the compressors
/// and the decompressor shared by every connection without context
/// takeover, and scratch buffers. One per thread; never shared.
pub struct Engine {
    cfg: Config,
    /// Indexed by window bits − 9; created on first use.
    compressors: [Option<Box<Compress>>; 7],
    inflater: Option<Box<Decompress>>,
    /// Compressed output (header room first), reused.
    zbuf: Vec<u8>,
    /// Inflated messages, reused.
    msg: Vec<u8>,
    pub stats: EngineStats,
}

/// Counters of one [`Engine`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Messages sent compressed, and their bytes before and after.
    pub compressed: u64,
    pub raw_bytes: u64,
    pub deflated_bytes: u64,
    /// Messages received compressed, their inflated bytes, and their
    /// compressed bytes as received.
    pub inflated: u64,
    pub inflated_bytes: u64,
    pub inflated_from_bytes: u64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("cfg", &self.cfg)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new(Config::default())
    }
}

impl Engine {
    /// No allocation until the first compressed message.
    pub fn new(cfg: Config) -> Engine {
        Engine {
            cfg,
            compressors: Default::default(),
            inflater: None,
            zbuf: Vec::new(),
            msg: Vec::new(),
            stats: EngineStats::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn level(&self) -> Compression {
        Compression::new(self.cfg.level.min(9))
    }

    /// Compress `payload` as one message for a connection, into the scratch
    /// buffer after `room` bytes left for a frame header. Returns false when
    /// the message goes uncompressed (below `min_size`, or deflate would not
    /// shrink it and `min_size` is not 0); the caller then sends it as is.
    fn deflate_message(
        &mut self,
        agreed: Agreed,
        ctx: Option<&mut Context>,
        payload: &[u8],
        room: usize,
    ) -> bool {
        // A message sent uncompressed never reaches the peer's
        // decompressor, so it leaves both windows as they were.
        if !agreed.is_on() || payload.len() < self.cfg.min_size {
            return false;
        }
        let level = self.level();
        let bits = agreed.tx_bits();
        let mut zbuf = std::mem::take(&mut self.zbuf);
        zbuf.clear();
        zbuf.resize(room, 0);
        // With `min_size` 0 every message goes compressed, even one that
        // deflate makes larger (for kosoku, see the module doc).
        let keep_larger = self.cfg.min_size == 0;
        let expanded = |z: &Vec<u8>| !keep_larger && z.len() - room >= payload.len();
        let ok = match ctx.filter(|_| agreed.tx_context()) {
            Some(c) => {
                let stale = std::mem::take(&mut c.tx_stale);
                let z = match &mut c.tx {
                    Some(z) => {
                        if stale {
                            z.reset();
                        }
                        z
                    }
                    None => {
                        c.tx.insert(Compress::new_with_window_bits(level, false, bits))
                    }
                };
                let ok = deflate_into(z, payload, &mut zbuf) && !expanded(&zbuf);
                if !ok {
                    // The message goes uncompressed (deflate made it larger,
                    // or the stream broke): our window took in a message
                    // that the peer's decompressor will not see.
                    z.reset();
                }
                ok
            }
            None => {
                let z = self.shared_compressor(bits);
                let ok = deflate_into(z, payload, &mut zbuf) && !expanded(&zbuf);
                z.reset();
                ok
            }
        };
        if ok {
            self.stats.compressed += 1;
            self.stats.raw_bytes += payload.len() as u64;
            self.stats.deflated_bytes += (zbuf.len() - room) as u64;
        }
        self.zbuf = zbuf;
        ok
    }

    fn shared_compressor(&mut self, bits: u8) -> &mut Compress {
        let level = self.level();
        self.compressors[(bits - MIN_WINDOW_BITS) as usize]
            .get_or_insert_with(|| Box::new(Compress::new_with_window_bits(level, false, bits)))
    }

    /// Compress a pre-encoded unmasked data frame (header and payload, RSV
    /// clear, FIN set) into a frame with RSV1 set, for peers whose
    /// decompressor has at least `window_bits` bits and that do not need our
    /// context. `None` when the frame should go as it is (not a whole data
    /// message, below `min_size`, or incompressible). This is the
    /// compress-once primitive: call it once per worker and publication,
    /// then share the result (see [`SharedFrame`]).
    pub fn compress_frame(&mut self, frame: &[u8], window_bits: u8) -> Option<Vec<u8>> {
        let rules = HeaderRules {
            expect_masked: false,
            allowed_rsv: 0,
            max_payload: u64::MAX >> 1,
        };
        let h = Header::parse(frame, &rules).ok()??;
        let payload = frame.get(h.header_len..)?;
        if !h.fin
            || !matches!(h.opcode, OpCode::Text | OpCode::Binary)
            || payload.len() as u64 != h.payload_len
        {
            return None;
        }
        let bits = window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
        let agreed = Agreed::pack(bits, 0);
        use super::frame::{encode_header, MAX_HEADER};
        if !self.deflate_message(agreed, None, payload, MAX_HEADER) {
            return None;
        }
        let z = &self.zbuf;
        let mut head = [0u8; MAX_HEADER];
        let n = encode_header(
            &mut head,
            true,
            0b100,
            h.opcode,
            None,
            (z.len() - MAX_HEADER) as u64,
        );
        let mut out = Vec::with_capacity(n + z.len() - MAX_HEADER);
        out.extend_from_slice(&head[..n]);
        out.extend_from_slice(&z[MAX_HEADER..]);
        Some(out)
    }

    /// Inflate one whole compressed message (RFC 7692 §7.2.2) into a
    /// buffer of the engine, which is returned (give it back with
    /// [`Engine::recycle`]). Stops with `MessageTooBig` as soon as the
    /// output exceeds `max`, with `InvalidUtf8` as soon as `text` output
    /// cannot be UTF-8, with `BadDeflate` on corrupt data.
    pub(crate) fn inflate_message(
        &mut self,
        agreed: Agreed,
        ctx: Option<&mut Context>,
        input: &[u8],
        max: usize,
        text: bool,
    ) -> Result<Vec<u8>, (Error, Vec<u8>)> {
        let mut out = std::mem::take(&mut self.msg);
        out.clear();
        let result = match ctx.filter(|_| agreed.rx_context()) {
            Some(c) => {
                let d = c.rx.get_or_insert_with(|| {
                    Decompress::new_with_window_bits(false, MAX_WINDOW_BITS)
                });
                let r = inflate_into(d, input, &mut out, max, text);
                if r.is_err() {
                    // The connection is failing; leave a clean state anyway.
                    d.reset(false);
                }
                r
            }
            None => {
                let d = self.inflater.get_or_insert_with(|| {
                    Box::new(Decompress::new_with_window_bits(false, MAX_WINDOW_BITS))
                });
                let r = inflate_into(d, input, &mut out, max, text);
                d.reset(false);
                r
            }
        };
        match result {
            Ok(()) => {
                self.stats.inflated += 1;
                self.stats.inflated_bytes += out.len() as u64;
                self.stats.inflated_from_bytes += input.len() as u64;
                Ok(out)
            }
            Err(e) => Err((e, out)),
        }
    }

    /// Hand back a buffer from [`Engine::inflate_message`].
    pub(crate) fn recycle(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() <= SCRATCH_KEEP {
            buf.clear();
            self.msg = buf;
        }
        if self.zbuf.capacity() > SCRATCH_KEEP {
            self.zbuf = Vec::new();
        }
    }

    /// The compressed payload left by `deflate_message` (after `room`).
    fn zbuf_mut(&mut self) -> &mut Vec<u8> {
        &mut self.zbuf
    }
}

/// Deflate `data` as one message with a sync flush, appending to `out`,
/// and strip the trailing `00 00 ff ff` (§7.2.1). False on a zlib error.
fn deflate_into(z: &mut Compress, data: &[u8], out: &mut Vec<u8>) -> bool {
    let start = out.len();
    out.reserve(data.len() + data.len() / 64 + 64);
    let mut input = data;
    loop {
        let before = z.total_in();
        if z.compress_vec(input, out, FlushCompress::Sync).is_err() {
            return false;
        }
        input = &input[(z.total_in() - before) as usize..];
        // A sync flush is complete when it returns with output space left.
        if input.is_empty() && out.len() < out.capacity() {
            break;
        }
        out.reserve(4096.max(out.len() - start));
    }
    if out.len() < start + 4 || out[out.len() - 4..] != TAIL {
        return false;
    }
    out.truncate(out.len() - 4);
    true
}

/// The largest compressed payload accepted for a message of at most `max`
/// bytes (RFC 7692 §7.2.1 framing: the payload is the deflate data without
/// the flush's `00 00 ff ff`). The message limit applies to the inflated
/// message; its compressed form of incompressible data is a little larger
/// (stored blocks: 5 bytes per 64 KiB block), so the compressed frame is
/// bounded at zlib's `deflateBound` for any settings (`n + (n+7)/8 +
/// (n+63)/64 + 5`: stored blocks, or fixed-Huffman codes of up to 9 bits
/// per byte, whatever an encoder picks), with room for flush markers.
/// A bomb is still stopped at `max` once inflated (`inflate_into`).
pub fn max_compressed(max: usize) -> usize {
    max.saturating_add((max >> 3) + (max >> 6) + 64)
}

/// Inflate `input` followed by the tail into `out`, never growing `out` past
/// `max + 1` bytes.
fn inflate_into(
    d: &mut Decompress,
    input: &[u8],
    out: &mut Vec<u8>,
    max: usize,
    text: bool,
) -> Result<(), Error> {
    let mut utf8 = Utf8State::default();
    let mut data = input;
    let mut tail: &[u8] = &TAIL;
    loop {
        if out.len() == out.capacity() {
            if out.len() > max {
                return Err(Error::MessageTooBig);
            }
            // Grow geometrically, never past max + 1 (one byte over the
            // limit proves the message too big).
            let grow = out.len().max(4096).min(max + 1 - out.len());
            out.reserve_exact(grow);
        }
        let (src, flush) = if !data.is_empty() {
            (data, FlushDecompress::None)
        } else {
            (tail, FlushDecompress::Sync)
        };
        let (in0, out0) = (d.total_in(), out.len());
        let status = d
            .decompress_vec(src, out, flush)
            .map_err(|_| Error::BadDeflate)?;
        let used = (d.total_in() - in0) as usize;
        if !data.is_empty() {
            data = &data[used..];
        } else {
            tail = &tail[used..];
        }
        if out.len() > max {
            return Err(Error::MessageTooBig);
        }
        if text {
            utf8.feed(&out[out0..]).map_err(|_| Error::InvalidUtf8)?;
        }
        let spare = out.len() < out.capacity();
        match status {
            // A final block (BFINAL): whatever follows is ignored.
            Status::StreamEnd => break,
            _ if data.is_empty() && tail.is_empty() && spare => break,
            // Input left but no progress with room to write: truncated or
            // corrupt data.
            _ if used == 0 && out.len() == out0 && spare => return Err(Error::BadDeflate),
            _ => {}
        }
    }
    if text {
        utf8.finish().map_err(|_| Error::InvalidUtf8)?;
    }
    Ok(())
}

// --- sending ---

/// Frame and queue a compressed message (RSV1 set) from the engine's
/// scratch buffer, whose first `room` bytes are free for the header.
pub(crate) fn put_compressed<O: super::Output + ?Sized>(
    engine: &mut Engine,
    room: usize,
    op: OpCode,
    mask: Option<[u8; 4]>,
    out: &mut O,
) {
    use super::frame::encode_header;
    let z = engine.zbuf_mut();
    let len = z.len() - room;
    let mut head = [0u8; super::frame::MAX_HEADER];
    let n = encode_header(&mut head, true, 0b100, op, mask, len as u64);
    debug_assert!(n <= room);
    if let Some(key) = mask {
        super::mask::apply_mask(&mut z[room..], key, 0);
    }
    z[room - n..room].copy_from_slice(&head[..n]);
    out.put(&z[room - n..]);
}

/// Compress `payload` for a connection. True: the compressed payload is in
/// the engine, ready for [`put_compressed`].
pub(crate) fn compress_for(
    engine: &mut Engine,
    agreed: Agreed,
    ctx: Option<&mut Context>,
    payload: &[u8],
    room: usize,
) -> bool {
    engine.deflate_message(agreed, ctx, payload, room)
}

/// A publication frame on its way to the subscribers of one worker, with
/// its compressed form made on demand, once per window size, for the
/// subscribers that negotiated permessage-deflate: compress once, write
/// many.
#[derive(Debug)]
pub struct SharedFrame {
    plain: Arc<[u8]>,
    /// Per window bits − 9: not tried yet, or the result (`None`: send plain).
    compressed: [Option<Option<Arc<[u8]>>>; 7],
}

impl SharedFrame {
    pub fn new(plain: &Arc<[u8]>) -> SharedFrame {
        SharedFrame {
            plain: plain.clone(),
            compressed: Default::default(),
        }
    }

    /// The frame to queue for `conn`: compressed when it negotiated
    /// permessage-deflate and the payload is worth it, else the plain one.
    /// A connection with its own compressor (context takeover) has it
    /// restarted for its next message, since its peer saw this one.
    pub fn for_conn(&mut self, conn: &mut super::Conn, engine: &mut Engine) -> Arc<[u8]> {
        let (agreed, ctx) = conn.deflate_parts();
        if !agreed.is_on() {
            return self.plain.clone();
        }
        let bits = agreed.tx_bits();
        let plain = &self.plain;
        let slot = &mut self.compressed[(bits - MIN_WINDOW_BITS) as usize];
        match slot.get_or_insert_with(|| engine.compress_frame(plain, bits).map(Arc::from)) {
            Some(z) => {
                // The peer's decompressor takes in a message that our
                // compressor for this connection did not see.
                if let Some(c) = ctx {
                    c.mark_stale();
                }
                z.clone()
            }
            None => plain.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(s: &str) -> Option<String> {
        negotiate([s.as_bytes()], &Config::default()).map(|p| p.to_header())
    }

    fn dedicated(bits: u8) -> Config {
        Config {
            mode: Mode::Dedicated,
            window_bits: bits,
            ..Config::default()
        }
    }

    #[test]
    fn offers_table_shared() {
        let both = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        let cases: &[(&str, Option<String>)] = &[
            ("", None),
            ("x-webkit-deflate-frame", None),
            ("permessage-deflate", Some(both.into())),
            ("PerMessage-Deflate", Some(both.into())),
            ("permessage-deflate; client_max_window_bits", Some(both.into())),
            (
                "permessage-deflate; client_max_window_bits=10",
                Some(both.into()),
            ),
            (
                "permessage-deflate; server_no_context_takeover",
                Some(both.into()),
            ),
            (
                "permessage-deflate; client_no_context_takeover",
                Some(both.into()),
            ),
            (
                "permessage-deflate; server_max_window_bits=10",
                Some(format!("{both}; server_max_window_bits=10")),
            ),
            (
                "permessage-deflate; server_max_window_bits=\"12\"",
                Some(format!("{both}; server_max_window_bits=12")),
            ),
            // Declined: zlib cannot compress with a 256-byte window.
            ("permessage-deflate; server_max_window_bits=8", None),
            // Declined: malformed offers.
            ("permessage-deflate; server_max_window_bits", None),
            ("permessage-deflate; server_max_window_bits=16", None),
            ("permessage-deflate; server_max_window_bits=7", None),
            ("permessage-deflate; server_max_window_bits=010", None),
            ("permessage-deflate; server_max_window_bits=1x", None),
            ("permessage-deflate; client_max_window_bits=16", None),
            ("permessage-deflate; client_max_window_bits=", None),
            ("permessage-deflate; server_no_context_takeover=1", None),
            ("permessage-deflate; client_no_context_takeover=\"x\"", None),
            ("permessage-deflate; unknown_param", None),
            (
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                None,
            ),
            (
                "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
                None,
            ),
            // Several offers: the first acceptable one wins.
            (
                "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=11",
                Some(format!("{both}; server_max_window_bits=11")),
            ),
            (
                "permessage-deflate; bogus, permessage-deflate",
                Some(both.into()),
            ),
            (
                "x-foo; a=\"1,2\", permessage-deflate; server_max_window_bits=9",
                Some(format!("{both}; server_max_window_bits=9")),
            ),
        ];
        for (header, want) in cases {
            assert_eq!(offer(header), *want, "{header:?}");
        }
    }

    #[test]
    fn offers_across_header_lines() {
        let got = negotiate(
            [
                &b"permessage-deflate; server_max_window_bits=8"[..],
                &b"permessage-deflate; client_max_window_bits"[..],
            ],
            &dedicated(12),
        );
        assert_eq!(
            got.map(|p| p.to_header()).as_deref(),
            Some("permessage-deflate; client_max_window_bits=12")
        );
        assert_eq!(
            negotiate([&b"permessage-deflate"[..]], &Config::off()),
            None
        );
    }

    #[test]
    fn offers_table_dedicated() {
        let cases: &[(&str, u8, Option<&str>)] = &[
            ("permessage-deflate", 15, Some("permessage-deflate")),
            (
                "permessage-deflate; client_max_window_bits",
                15,
                Some("permessage-deflate; client_max_window_bits=15"),
            ),
            (
                "permessage-deflate; client_max_window_bits",
                10,
                Some("permessage-deflate; client_max_window_bits=10"),
            ),
            (
                "permessage-deflate; client_max_window_bits=9",
                12,
                Some("permessage-deflate; client_max_window_bits=9"),
            ),
            (
                "permessage-deflate; server_max_window_bits=14",
                12,
                Some("permessage-deflate; server_max_window_bits=12"),
            ),
            (
                "permessage-deflate; server_max_window_bits=10",
                12,
                Some("permessage-deflate; server_max_window_bits=10"),
            ),
            (
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                15,
                Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            ),
        ];
        for (header, bits, want) in cases {
            let got = negotiate([header.as_bytes()], &dedicated(*bits)).map(|p| p.to_header());
            assert_eq!(got.as_deref(), *want, "{header:?} at {bits} bits");
        }
    }

    #[test]
    fn agreement_per_role() {
        let cfg = dedicated(12);
        let p = negotiate([&b"permessage-deflate; client_max_window_bits"[..]], &cfg).unwrap();
        let s = Agreed::new(Role::Server, &p, &cfg);
        assert!(s.is_on() && s.tx_context() && s.rx_context());
        assert_eq!(s.tx_bits(), 12);
        let c = Agreed::new(Role::Client, &p, &cfg);
        assert_eq!(c.tx_bits(), 12);
        let shared = Config::default();
        let p = negotiate([&b"permessage-deflate"[..]], &shared).unwrap();
        let s = Agreed::new(Role::Server, &p, &shared);
        assert!(s.is_on() && !s.needs_context());
        assert_eq!(s.tx_bits(), 15);
        assert!(!Agreed::default().is_on());
    }

    #[test]
    fn client_offers_and_responses() {
        let shared = Config::default();
        assert_eq!(
            client_offer(&shared).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits")
        );
        assert_eq!(
            client_offer(&dedicated(15)).as_deref(),
            Some("permessage-deflate; client_max_window_bits")
        );
        assert_eq!(
            client_offer(&dedicated(10)).as_deref(),
            Some("permessage-deflate; server_max_window_bits=10; client_max_window_bits")
        );
        assert_eq!(client_offer(&Config::off()), None);

        type Want = Result<Option<(bool, bool, Option<u8>, Option<u8>)>, Error>;
        let bad: Want = Err(Error::BadResponse);
        let cases: &[(&str, &Config, Want)] = &[
            ("", &shared, Ok(None)),
            (
                "permessage-deflate; server_no_context_takeover",
                &shared,
                Ok(Some((true, false, None, None))),
            ),
            (
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=9",
                &shared,
                Ok(Some((true, false, None, Some(9)))),
            ),
            // We asked for server_no_context_takeover: it must be granted.
            ("permessage-deflate", &shared, bad),
            (
                "permessage-deflate",
                &dedicated(15),
                Ok(Some((false, false, None, None))),
            ),
            (
                "permessage-deflate; server_max_window_bits=10",
                &dedicated(10),
                Ok(Some((false, false, Some(10), None))),
            ),
            (
                "permessage-deflate; server_max_window_bits=11",
                &dedicated(10),
                bad,
            ),
            (
                "permessage-deflate; client_max_window_bits",
                &dedicated(15),
                bad,
            ),
            (
                "permessage-deflate; client_max_window_bits=8",
                &dedicated(15),
                bad,
            ),
            ("permessage-deflate; foo", &dedicated(15), bad),
            (
                "permessage-deflate, permessage-deflate",
                &dedicated(15),
                bad,
            ),
            ("x-webkit-deflate-frame", &dedicated(15), bad),
            ("permessage-deflate", &Config::off(), bad),
        ];
        for (header, cfg, want) in cases {
            let values: Vec<&[u8]> = if header.is_empty() {
                vec![]
            } else {
                vec![header.as_bytes()]
            };
            let got = accept_response(values, cfg).map(|o| {
                o.map(|p| {
                    (
                        p.server_no_context_takeover,
                        p.client_no_context_takeover,
                        p.server_max_window_bits,
                        p.client_max_window_bits.flatten(),
                    )
                })
            });
            assert_eq!(got, *want, "{header:?}");
        }
    }

    #[test]
    fn window_bits_values() {
        for (v, want) in [
            ("8", Some(8)),
            ("9", Some(9)),
            ("15", Some(15)),
            ("\"10\"", Some(10)),
            ("\"\\1\\0\"", Some(10)),
            ("16", None),
            ("0", None),
            ("09", None),
            ("", None),
            ("1 0", None),
            ("100", None),
        ] {
            assert_eq!(window_bits_value(v.as_bytes()), want, "{v:?}");
        }
    }

    #[test]
    fn compress_frame_roundtrip() {
        let payload =
            br#"{"channel":"prices","offset":1,"data":{"sym":"BTC","bid":1,"ask":2}}"#.repeat(10);
        let (plain, _) = crate::proto::frame::text_frame(&payload);
        let mut e = Engine::default();
        let z = e.compress_frame(&plain, 15).expect("compressible");
        assert_eq!(z[0], 0xC1, "FIN + RSV1 + text");
        assert!(z.len() < plain.len() / 4, "{} vs {}", z.len(), plain.len());
        let rules = HeaderRules {
            expect_masked: false,
            allowed_rsv: 0b100,
            max_payload: 1 << 20,
        };
        let h = Header::parse(&z, &rules).unwrap().unwrap();
        let a = Agreed::pack(15, 0);
        let out = e
            .inflate_message(a, None, &z[h.header_len..], 1 << 20, true)
            .unwrap();
        assert_eq!(out, payload);
        // Small frames stay plain.
        let (small, _) = crate::proto::frame::text_frame(b"{}");
        assert_eq!(e.compress_frame(&small, 15), None);
    }

    #[test]
    fn incompressible_messages_go_plain_unless_min_size_is_0() {
        let mut x = 0x9E37_79B9u32;
        let noise: Vec<u8> = (0..2000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let (plain, _) = crate::proto::frame::text_frame(&noise);
        assert_eq!(Engine::default().compress_frame(&plain, 15), None);
        let mut all = Engine::new(Config {
            min_size: 0,
            ..Config::default()
        });
        let z = all.compress_frame(&plain, 15).expect("compressed anyway");
        assert!(z.len() > plain.len(), "{} vs {}", z.len(), plain.len());
        // Under context takeover the compressor starts afresh after a
        // message it did not send compressed.
        let a = Agreed::pack(15, TX_CONTEXT);
        let mut ctx = Context::default();
        let mut e = Engine::default();
        assert!(!e.deflate_message(a, Some(&mut ctx), &noise, 14));
        let text = br#"{"a":"hello hello hello hello hello hello hello hello"}"#.repeat(8);
        assert!(e.deflate_message(a, Some(&mut ctx), &text, 14));
        let first = e.zbuf.len();
        assert!(e.deflate_message(a, Some(&mut ctx), &text, 14));
        assert!(
            e.zbuf.len() < first,
            "the context is kept between sent messages"
        );
    }

    #[test]
    fn bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 8 << 20];
        let mut z = Compress::new_with_window_bits(Compression::best(), false, 15);
        let mut packed = Vec::new();
        assert!(deflate_into(&mut z, &zeros, &mut packed));
        assert!(packed.len() < 16 << 10, "{}", packed.len());
        let mut e = Engine::default();
        let a = Agreed::pack(15, 0);
        let (err, buf) = e
            .inflate_message(a, None, &packed, 1 << 20, false)
            .unwrap_err();
        assert_eq!(err, Error::MessageTooBig);
        assert!(buf.capacity() <= (1 << 20) + 1, "{}", buf.capacity());
        // The engine is usable afterwards.
        e.recycle(buf);
        let mut small = Vec::new();
        let mut z = Compress::new_with_window_bits(Compression::fast(), false, 15);
        assert!(deflate_into(&mut z, b"hello hello hello", &mut small));
        let out = e.inflate_message(a, None, &small, 1 << 20, true).unwrap();
        assert_eq!(out, b"hello hello hello");
    }

    #[test]
    fn corrupt_data_and_invalid_text() {
        let mut e = Engine::default();
        let a = Agreed::pack(15, 0);
        // BTYPE 11 (reserved) is invalid deflate.
        let err = e
            .inflate_message(a, None, &[0xFF, 0xFF], 1 << 20, false)
            .unwrap_err();
        assert_eq!(err.0, Error::BadDeflate);
        let mut z = Compress::new_with_window_bits(Compression::fast(), false, 15);
        let mut packed = Vec::new();
        assert!(deflate_into(&mut z, b"ok \xFF\xFE not text", &mut packed));
        let err = e
            .inflate_message(a, None, &packed, 1 << 20, true)
            .unwrap_err();
        assert_eq!(err.0, Error::InvalidUtf8);
        // Ends inside a code point.
        let mut z = Compress::new_with_window_bits(Compression::fast(), false, 15);
        let mut packed = Vec::new();
        assert!(deflate_into(
            &mut z,
            "caf\u{e9}".as_bytes()[..4].as_ref(),
            &mut packed
        ));
        let err = e
            .inflate_message(a, None, &packed, 1 << 20, true)
            .unwrap_err();
        assert_eq!(err.0, Error::InvalidUtf8);
    }

    #[test]
    fn empty_message_is_one_zero_byte() {
        // RFC 7692 §7.2.3.6.
        let mut z = Compress::new_with_window_bits(Compression::default(), false, 15);
        let mut out = Vec::new();
        assert!(deflate_into(&mut z, b"", &mut out));
        assert_eq!(out, [0x00]);
        let mut e = Engine::default();
        let a = Agreed::pack(15, 0);
        assert_eq!(e.inflate_message(a, None, &out, 10, true).unwrap(), b"");
    }

    #[test]
    fn rfc_7692_examples() {
        // §7.2.3.1: "Hello" compressed, one message.
        let mut e = Engine::default();
        let a = Agreed::pack(15, 0);
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(
            e.inflate_message(a, None, &hello, 100, true).unwrap(),
            b"Hello"
        );
        // §7.2.3.2: with context takeover, the second "Hello" refers back.
        let a = Agreed::pack(15, RX_CONTEXT);
        let mut ctx = Context::default();
        let first = e
            .inflate_message(a, Some(&mut ctx), &hello, 100, true)
            .unwrap();
        e.recycle(first);
        let second = [0xf2, 0x00, 0x11, 0x00, 0x00];
        assert_eq!(
            e.inflate_message(a, Some(&mut ctx), &second, 100, true)
                .unwrap(),
            b"Hello"
        );
        // §7.2.3.3: a stored (uncompressed) block.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(
            e.inflate_message(a, None, &stored, 100, true).unwrap(),
            b"Hello"
        );
        // §7.2.3.4: a final block (BFINAL) is accepted too.
        let fin = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        assert_eq!(
            e.inflate_message(a, None, &fin, 100, true).unwrap(),
            b"Hello"
        );
    }
}
