//! The connection state machine, sans-IO: bytes and `now` go in, events and
//! bytes come out. The same machine serves the server role (the gateway) and
//! the client role (the load generator, tests).
//!
//! Inputs: [`Conn::decode`] (bytes read from the peer), [`Conn::handle_timeout`]
//! (time passing). Outputs: events passed to a callback, frames written to an
//! [`Output`], and [`Conn::next_timeout`] (when to call `handle_timeout`).
//!
//! The decoder never owns the read buffer. It unmasks and validates frames in
//! place in the caller's buffer and reports how many bytes it consumed; an
//! incomplete frame stays unconsumed and the caller presents it again, with
//! more bytes behind it (the server spills it into a pooled buffer). Payload
//! bytes of that incomplete frame are unmasked and UTF-8-checked as they
//! arrive, so an invalid text frame fails before its end, and nothing is done
//! twice: `frame_done` remembers how far the work went.
//!
//! With permessage-deflate ([`super::deflate`]) a compressed message is
//! inflated once it is complete, by the connection's own decompressor under
//! context takeover, else by the [`Engine`] of the thread; replies sent
//! through a [`Sender`] are compressed the same way.

use super::close;
use super::deflate::{self, Agreed, Context, Engine, Params};
use super::error::{code, Error};
use super::frame::{encode_header, Header, HeaderRules, OpCode, MAX_HEADER};
use super::mask::apply_mask;
use super::utf8::Utf8State;
use crate::base::state::{StateError, StateReader, StateWriter};

/// Which end of the connection this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Receives masked frames, sends unmasked ones.
    Server,
    /// Sends masked frames, receives unmasked ones.
    Client,
}

/// Where the connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The opening handshake is not done (server: request not yet answered).
    Handshake,
    /// Messages flow both ways.
    Open,
    /// We sent a close frame and wait for the peer's.
    CloseSent,
    /// The close handshake is over, or the connection failed: flush what is
    /// queued, then close TCP. Input is discarded.
    Closed,
}

/// Limits applied to every received frame and message.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest message (all fragments together) accepted.
    pub max_message: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 16 << 20,
        }
    }
}

/// Timer settings in milliseconds; 0 disables a timer.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// From accept to a complete upgrade request (slowloris defence).
    pub handshake_ms: u32,
    /// Send a ping when nothing was heard from the peer for this long.
    pub ping_interval_ms: u32,
    /// Drop the connection when a ping gets no answer for this long.
    pub pong_timeout_ms: u32,
    /// Close (1001) when nothing at all was heard for this long.
    pub idle_timeout_ms: u32,
    /// After our close frame, how long to wait for the peer's close and for
    /// its TCP FIN before dropping the connection.
    pub close_linger_ms: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake_ms: 10_000,
            ping_interval_ms: 30_000,
            pong_timeout_ms: 10_000,
            idle_timeout_ms: 0,
            close_linger_ms: 2_000,
        }
    }
}

/// What the caller must do after [`Conn::handle_timeout`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerAction {
    /// Nothing; re-arm at [`Conn::next_timeout`].
    Continue,
    /// Close the TCP connection now. The reason is for the log.
    Drop(&'static str),
}

/// Something the peer sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole message; `text` messages are valid UTF-8.
    Message { text: bool, data: &'a [u8] },
    /// A ping; the pong is already queued.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// The peer's close frame; our reply (if one is due) is already queued.
    Close { code: Option<u16>, reason: &'a str },
}

/// Where frames go. The server's out queue implements it; tests use `Vec<u8>`.
pub trait Output {
    /// Append bytes to the outgoing stream.
    fn put(&mut self, bytes: &[u8]);
    /// Bytes queued and not yet sent, if the sink knows.
    fn queued(&self) -> usize {
        0
    }
    /// About `additional` bytes follow in pieces (a frame header, then its
    /// payload): a sink may make room for them at once.
    fn reserve(&mut self, _additional: usize) {}
    /// Queue a whole data message. The default writes one unmasked,
    /// uncompressed frame (the server role); a connection's [`Sender`]
    /// compresses it when permessage-deflate was negotiated and masks it in
    /// the client role.
    fn put_message(&mut self, text: bool, payload: &[u8]) {
        let op = if text { OpCode::Text } else { OpCode::Binary };
        super::frame::put_frame(self, op, payload);
    }
    /// Queue a whole unmasked data frame encoded beforehand (a publication
    /// from history). The default copies it as it is; a [`Sender`]
    /// compresses it for a deflate connection.
    fn put_encoded(&mut self, frame: &[u8]) {
        self.put(frame);
    }
}

impl Output for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    fn reserve(&mut self, additional: usize) {
        Vec::reserve(self, additional);
    }
}

const FLAG_AWAITING_PONG: u8 = 1;
const FLAG_TEXT: u8 = 2; // the fragmented message in progress is text
const FLAG_FRAGMENTED: u8 = 4; // a fragmented message is in progress
const FLAG_COMPRESSED: u8 = 8; // the message in progress is compressed (RSV1)

/// One connection's protocol state. Small: an idle connection holds no heap.
#[derive(Debug)]
pub struct Conn {
    role: Role,
    state: State,
    flags: u8,
    utf8: Utf8State,
    /// Payload bytes of the incomplete frame at the front of the input that
    /// are already unmasked and validated.
    frame_done: u32,
    /// Last time anything was heard (ms, truncated), or the state's start.
    t_rx: u32,
    /// When the last ping or our close was sent (ms, truncated).
    t_mark: u32,
    /// Client role: xorshift state for mask keys.
    mask_seed: u32,
    /// What only some connections need, some of the time: the fragments
    /// of a message in progress, the connection's own zlib state. `None`
    /// (no heap) otherwise. One box for both: an idle connection pays 8
    /// bytes for them (the whole `Conn` is 32).
    extra: Option<Box<Extra>>,
    /// permessage-deflate as agreed for this end (1 byte, in what was
    /// padding; off by default).
    dfl: Agreed,
}

/// The heap part of a [`Conn`], when it has one.
#[derive(Debug, Default)]
struct Extra {
    /// Fragments of the message in progress (compressed messages are kept
    /// compressed until complete); empty, without heap, otherwise.
    message: Vec<u8>,
    /// Own zlib state under context takeover (`dedicated` mode), allocated
    /// on first use.
    dfl_ctx: Option<Box<Context>>,
}

/// A connection's own zlib state (in its `extra`), created on first use.
fn dfl_ctx(extra: &mut Option<Box<Extra>>) -> &mut Context {
    extra
        .get_or_insert_with(Box::default)
        .dfl_ctx
        .get_or_insert_with(Box::default)
}

impl Conn {
    /// Free the extra part when it holds nothing (an idle connection
    /// holds no heap).
    fn tidy(&mut self) {
        if self
            .extra
            .as_ref()
            .is_some_and(|e| e.message.capacity() == 0 && e.dfl_ctx.is_none())
        {
            self.extra = None;
        }
    }
}

impl Conn {
    /// A server connection in the handshake phase, accepted at `now`.
    pub fn server(now: u64) -> Conn {
        Conn::new(Role::Server, State::Handshake, now, 0)
    }

    /// A client connection whose handshake is done; `seed` feeds mask keys
    /// (RFC 6455 §5.3 wants them unpredictable: seed from the OS).
    pub fn client(now: u64, seed: u32) -> Conn {
        Conn::new(Role::Client, State::Open, now, seed | 1)
    }

    fn new(role: Role, state: State, now: u64, mask_seed: u32) -> Conn {
        Conn {
            role,
            state,
            flags: 0,
            utf8: Utf8State::default(),
            frame_done: 0,
            t_rx: now as u32,
            t_mark: now as u32,
            mask_seed,
            extra: None,
            dfl: Agreed::default(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Server role: the upgrade was answered with 101; frames may flow.
    pub fn accept(&mut self, now: u64) {
        debug_assert_eq!(self.state, State::Handshake);
        self.state = State::Open;
        self.t_rx = now as u32;
    }

    /// Can messages still be sent?
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Use permessage-deflate with the parameters of the server's answer
    /// (server role: what [`deflate::negotiate`] returned and was written in
    /// the 101; client role: what [`deflate::accept_response`] returned).
    /// Call once, right after the handshake.
    pub fn set_deflate(&mut self, params: &Params, cfg: &deflate::Config) {
        self.dfl = Agreed::new(self.role, params, cfg);
        if let Some(e) = self.extra.as_mut() {
            e.dfl_ctx = None;
        }
        self.tidy();
    }

    /// permessage-deflate as agreed for this end (`is_on()` false when off).
    pub fn deflate(&self) -> Agreed {
        self.dfl
    }

    /// The agreement and the connection's own zlib state, created when the
    /// agreement needs one (it allocates nothing by itself).
    pub(crate) fn deflate_parts(&mut self) -> (Agreed, Option<&mut Context>) {
        let ctx = if self.dfl.needs_context() {
            Some(dfl_ctx(&mut self.extra))
        } else {
            None
        };
        (self.dfl, ctx)
    }

    /// A sender for messages outside [`Conn::decode_with`]'s callback (which
    /// gets one): it compresses them when permessage-deflate is on.
    pub fn sender<'a, O: Output + ?Sized>(
        &'a mut self,
        out: &'a mut O,
        engine: &'a mut Engine,
    ) -> Sender<'a, O> {
        let ctx = if self.dfl.needs_context() {
            Some(dfl_ctx(&mut self.extra))
        } else {
            None
        };
        Sender {
            out,
            role: self.role,
            open: self.state == State::Open,
            agreed: self.dfl,
            ctx,
            mask_seed: &mut self.mask_seed,
            engine,
        }
    }

    /// Is an incomplete message or frame being held?
    pub fn is_mid_message(&self) -> bool {
        self.flags & FLAG_FRAGMENTED != 0 || self.frame_done != 0
    }

    /// Send a whole message (text must be valid UTF-8: the caller's duty).
    pub fn send_message<O: Output>(&mut self, out: &mut O, text: bool, data: &[u8]) {
        let op = if text { OpCode::Text } else { OpCode::Binary };
        self.send_frame(out, true, op, data);
    }

    /// Send one frame. Data frames are dropped unless the connection is open:
    /// §5.5.1 "after sending a Close frame, the endpoint MUST NOT send any
    /// more data frames".
    pub fn send_frame<O: Output>(&mut self, out: &mut O, fin: bool, op: OpCode, data: &[u8]) {
        if self.state != State::Open && op != OpCode::Close {
            return;
        }
        write_frame(out, self.role, &mut self.mask_seed, fin, op, data);
    }

    /// Send a ping (control frames are sent even mid-message).
    pub fn send_ping<O: Output>(&mut self, out: &mut O, data: &[u8]) {
        self.send_frame(out, true, OpCode::Ping, &data[..data.len().min(125)]);
    }

    /// Start the close handshake with `code` (going away, policy, ...).
    pub fn close<O: Output>(&mut self, out: &mut O, now: u64, code: u16, reason: &str) {
        if matches!(self.state, State::Open | State::Handshake) {
            let (p, n) = close::build_payload(code, reason);
            self.send_frame(out, true, OpCode::Close, &p[..n]);
            self.state = State::CloseSent;
            self.t_mark = now as u32;
        }
    }

    /// _Fail the WebSocket Connection_ (§7.1.7): send a close frame with the
    /// error's code if we still may, then stop reading frames.
    pub fn fail<O: Output>(&mut self, out: &mut O, now: u64, err: Error) {
        if let Some(c) = err.close_code() {
            if self.state == State::Open {
                let (p, n) = close::build_payload(c, err.reason());
                self.send_frame(out, true, OpCode::Close, &p[..n]);
            }
        }
        self.enter_closed(now);
    }

    /// End the connection without a close frame (after an HTTP response, or
    /// when refusing it): close TCP once queued bytes are written.
    pub fn shutdown(&mut self, now: u64) {
        self.enter_closed(now);
    }

    fn enter_closed(&mut self, now: u64) {
        self.state = State::Closed;
        self.t_mark = now as u32;
        self.extra = None;
        self.frame_done = 0;
    }

    /// Decode frames from `buf`, unmasking in place. Returns how many bytes
    /// were consumed; the rest is an incomplete frame to present again with
    /// more bytes behind it. On `Err`, call [`Conn::fail`].
    ///
    /// Compressed messages are inflated with a temporary [`Engine`]: a
    /// connection that negotiated permessage-deflate should use
    /// [`Conn::decode_with`] and the thread's engine.
    pub fn decode<O: Output>(
        &mut self,
        buf: &mut [u8],
        now: u64,
        limits: &Limits,
        out: &mut O,
        on_event: &mut dyn FnMut(Event<'_>, &mut O),
    ) -> Result<usize, Error> {
        let mut engine = Engine::default();
        self.decode_with(buf, now, limits, &mut engine, out, &mut |ev, tx| {
            on_event(ev, tx.out())
        })
    }

    /// [`Conn::decode`] with the thread's deflate [`Engine`], and a
    /// [`Sender`] for the callback: messages sent through it (or through
    /// [`Output::put_message`] on it) are compressed when permessage-deflate
    /// is on.
    pub fn decode_with<O: Output>(
        &mut self,
        buf: &mut [u8],
        now: u64,
        limits: &Limits,
        engine: &mut Engine,
        out: &mut O,
        on_event: &mut dyn FnMut(Event<'_>, &mut Sender<'_, O>),
    ) -> Result<usize, Error> {
        if !buf.is_empty() {
            self.t_rx = now as u32;
        }
        // The limit is on the message: a compressed one may take a little
        // more on the wire than it holds (incompressible data), and is
        // bounded after inflating too.
        let max_compressed = if self.dfl.is_on() {
            deflate::max_compressed(limits.max_message)
        } else {
            limits.max_message
        };
        let rules = HeaderRules {
            expect_masked: self.role == Role::Server,
            // RFC 7692 §6: RSV1 is the "Per-Message Compressed" bit.
            allowed_rsv: if self.dfl.is_on() { 0b100 } else { 0 },
            max_payload: max_compressed as u64,
        };
        let mut pos = 0;
        while pos < buf.len() {
            if matches!(self.state, State::Closed | State::Handshake) {
                // After the close handshake (or a failure) input is ignored.
                return Ok(buf.len());
            }
            let Some(h) = Header::parse(&buf[pos..], &rules)? else {
                break;
            };
            let fragmented = self.flags & FLAG_FRAGMENTED != 0;
            match h.opcode {
                // §5.4: a continuation frame only continues a message.
                OpCode::Continuation if !fragmented => return Err(Error::UnexpectedContinuation),
                // §5.4: "fragments of one message MUST NOT be interleaved
                // between fragments of another message".
                OpCode::Text | OpCode::Binary if fragmented => {
                    return Err(Error::ExpectedContinuation)
                }
                _ => {}
            }
            // RFC 7692 §6.1: the Per-Message Compressed bit is set on "the
            // first frame of the message"; an endpoint "MUST NOT set" it on
            // control frames or non-first fragments.
            let rsv1 = h.rsv & 0b100 != 0;
            if rsv1 && (h.opcode == OpCode::Continuation || h.opcode.is_control()) {
                return Err(Error::MisplacedRsv1);
            }
            let compressed = match h.opcode {
                OpCode::Text | OpCode::Binary => rsv1,
                OpCode::Continuation => self.flags & FLAG_COMPRESSED != 0,
                _ => false,
            };
            let len = h.payload_len as usize;
            let so_far = self.extra.as_ref().map_or(0, |e| e.message.len());
            let max = if compressed {
                max_compressed
            } else {
                limits.max_message
            };
            if !h.opcode.is_control() && so_far + len > max {
                return Err(Error::MessageTooBig);
            }
            let start = pos + h.header_len;
            let avail = (buf.len() - start).min(len);
            let done = self.frame_done as usize;
            let is_text = h.opcode == OpCode::Text
                || (h.opcode == OpCode::Continuation && self.flags & FLAG_TEXT != 0);
            if avail > done {
                let fresh = &mut buf[start + done..start + avail];
                if let Some(key) = h.mask {
                    apply_mask(fresh, key, done);
                }
                // Compressed text is checked once inflated.
                if is_text && !compressed {
                    self.utf8.feed(fresh).map_err(|_| Error::InvalidUtf8)?;
                }
                self.frame_done = avail as u32;
            }
            if avail < len {
                break; // incomplete frame: left for the next call
            }
            self.frame_done = 0;
            pos = start + len;
            let payload = &buf[start..pos];
            match h.opcode {
                OpCode::Ping => {
                    // §5.5.2: "Upon receipt of a Ping frame, an endpoint MUST
                    // send a Pong frame in response ... unless it already
                    // received a Close frame."
                    self.send_frame(out, true, OpCode::Pong, payload);
                    on_event(Event::Ping(payload), &mut self.sender(out, engine));
                }
                OpCode::Pong => {
                    self.flags &= !FLAG_AWAITING_PONG;
                    on_event(Event::Pong(payload), &mut self.sender(out, engine));
                }
                OpCode::Close => {
                    let (code, reason) = close::parse_payload(payload)?;
                    // §5.5.1: "If an endpoint receives a Close frame and did
                    // not previously send a Close frame, the endpoint MUST send
                    // a Close frame in response ... typically echoing the status
                    // code it received."
                    if self.state == State::Open {
                        let reply = code.map(|c| c.to_be_bytes());
                        let reply: &[u8] = reply.as_ref().map_or(&[], |r| &r[..]);
                        self.send_frame(out, true, OpCode::Close, reply);
                    }
                    self.enter_closed(now);
                    on_event(Event::Close { code, reason }, &mut self.sender(out, engine));
                    return Ok(buf.len());
                }
                OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                    if h.opcode != OpCode::Continuation {
                        self.flags |= FLAG_FRAGMENTED;
                        if is_text {
                            self.flags |= FLAG_TEXT;
                        }
                        if compressed {
                            self.flags |= FLAG_COMPRESSED;
                        }
                    }
                    if !h.fin {
                        self.extra
                            .get_or_insert_with(Box::default)
                            .message
                            .extend_from_slice(payload);
                        continue;
                    }
                    if is_text && !compressed {
                        // §8.1: a message that ends inside a code point is invalid.
                        self.utf8.finish().map_err(|_| Error::InvalidUtf8)?;
                    }
                    self.flags &= !(FLAG_FRAGMENTED | FLAG_TEXT | FLAG_COMPRESSED);
                    let deliver = self.state == State::Open;
                    // Release the buffer: an idle connection holds no heap.
                    let whole = self
                        .extra
                        .as_mut()
                        .filter(|e| e.message.capacity() != 0)
                        .map(|e| {
                            let mut m = std::mem::take(&mut e.message);
                            m.extend_from_slice(payload);
                            m
                        });
                    self.tidy();
                    let data = whole.as_deref().unwrap_or(payload);
                    if compressed {
                        // RFC 7692 §7.2.2: inflate the whole message.
                        let (agreed, ctx) = self.deflate_parts();
                        let inflated = engine
                            .inflate_message(agreed, ctx, data, limits.max_message, is_text)
                            .map_err(|(e, buf)| {
                                engine.recycle(buf);
                                e
                            })?;
                        if deliver {
                            on_event(
                                Event::Message {
                                    text: is_text,
                                    data: &inflated,
                                },
                                &mut self.sender(out, engine),
                            );
                        }
                        engine.recycle(inflated);
                    } else if deliver {
                        on_event(
                            Event::Message {
                                text: is_text,
                                data,
                            },
                            &mut self.sender(out, engine),
                        );
                    }
                }
            }
        }
        Ok(pos)
    }

    /// When [`Conn::handle_timeout`] should next be called (ms), if ever.
    pub fn next_timeout(&self, now: u64, t: &Timeouts) -> Option<u64> {
        // Stored times are 32-bit (wrapping); a deadline is `now` plus what
        // is left of its interval, exact while intervals stay under 24 days.
        let at = |base: u32, after: u32| {
            let left = after.saturating_sub((now as u32).wrapping_sub(base));
            (after != 0).then_some(now + left as u64)
        };
        match self.state {
            State::Handshake => at(self.t_rx, t.handshake_ms),
            State::Open => {
                let ping = if self.flags & FLAG_AWAITING_PONG != 0 {
                    at(self.t_mark, t.pong_timeout_ms)
                } else {
                    at(self.t_rx, t.ping_interval_ms)
                };
                let idle = at(self.t_rx, t.idle_timeout_ms);
                match (ping, idle) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            State::CloseSent | State::Closed => at(self.t_mark, t.close_linger_ms.max(1)),
        }
    }

    /// Time passed: send a ping, or say the connection must be dropped.
    pub fn handle_timeout<O: Output>(
        &mut self,
        now: u64,
        t: &Timeouts,
        out: &mut O,
    ) -> TimerAction {
        let elapsed = |since: u32| (now as u32).wrapping_sub(since);
        let expired = |since: u32, after: u32| after != 0 && elapsed(since) >= after;
        match self.state {
            State::Handshake if expired(self.t_rx, t.handshake_ms) => {
                TimerAction::Drop("handshake timeout")
            }
            State::Open => {
                if self.flags & FLAG_AWAITING_PONG != 0 && expired(self.t_mark, t.pong_timeout_ms) {
                    return TimerAction::Drop("pong timeout");
                }
                if expired(self.t_rx, t.idle_timeout_ms) {
                    self.close(out, now, code::GOING_AWAY, "idle timeout");
                    return TimerAction::Continue;
                }
                if self.flags & FLAG_AWAITING_PONG == 0 && expired(self.t_rx, t.ping_interval_ms) {
                    self.send_ping(out, b"");
                    self.flags |= FLAG_AWAITING_PONG;
                    self.t_mark = now as u32;
                }
                TimerAction::Continue
            }
            State::CloseSent | State::Closed if expired(self.t_mark, t.close_linger_ms.max(1)) => {
                TimerAction::Drop("close linger expired")
            }
            _ => TimerAction::Continue,
        }
    }
}

/// xorshift32: cheap and, seeded from the OS, unpredictable enough for a
/// load generator; a client facing real proxies should reseed often.
fn next_mask(seed: &mut u32) -> [u8; 4] {
    let mut x = *seed;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *seed = x;
    x.to_ne_bytes()
}

/// Write one uncompressed frame for `role`.
fn write_frame<O: Output + ?Sized>(
    out: &mut O,
    role: Role,
    mask_seed: &mut u32,
    fin: bool,
    op: OpCode,
    data: &[u8],
) {
    let mut h = [0u8; MAX_HEADER];
    match role {
        Role::Server => {
            let n = encode_header(&mut h, fin, 0, op, None, data.len() as u64);
            out.reserve(n + data.len());
            out.put(&h[..n]);
            out.put(data);
        }
        Role::Client => {
            // §5.3: "The masking key is a 32-bit value chosen at random
            // by the client ... for each frame".
            let key = next_mask(mask_seed);
            let n = encode_header(&mut h, fin, 0, op, Some(key), data.len() as u64);
            out.reserve(n + data.len());
            out.put(&h[..n]);
            let mut chunk = [0u8; 4096];
            for (i, piece) in data.chunks(chunk.len()).enumerate() {
                let c = &mut chunk[..piece.len()];
                c.copy_from_slice(piece);
                apply_mask(c, key, i * 4096);
                out.put(c);
            }
        }
    }
}

/// A connection's output while it is borrowed: whole messages sent through
/// it are compressed when permessage-deflate is on and the message is at
/// least `min_size` bytes (RSV1 set), and masked in the client role. Raw
/// bytes ([`Output::put`]) pass through untouched.
pub struct Sender<'a, O: ?Sized> {
    out: &'a mut O,
    role: Role,
    open: bool,
    agreed: Agreed,
    ctx: Option<&'a mut Context>,
    mask_seed: &'a mut u32,
    engine: &'a mut Engine,
}

impl<O: Output + ?Sized> Sender<'_, O> {
    /// The underlying output.
    pub fn out(&mut self) -> &mut O {
        self.out
    }

    /// Is permessage-deflate on for this connection?
    pub fn compressing(&self) -> bool {
        self.agreed.is_on()
    }

    /// Send a whole message as one frame, compressed when worth it. Nothing
    /// is sent unless the connection is open.
    pub fn send(&mut self, text: bool, data: &[u8]) {
        if !self.open {
            return;
        }
        let op = if text { OpCode::Text } else { OpCode::Binary };
        let room = MAX_HEADER;
        if deflate::compress_for(
            self.engine,
            self.agreed,
            self.ctx.as_deref_mut(),
            data,
            room,
        ) {
            let mask = (self.role == Role::Client).then(|| next_mask(self.mask_seed));
            deflate::put_compressed(self.engine, room, op, mask, self.out);
        } else {
            write_frame(self.out, self.role, self.mask_seed, true, op, data);
        }
    }
}

impl<O: Output + ?Sized> Sender<'_, O> {
    /// Queue a text frame encoded beforehand (a publication or an event):
    /// as it is, or, for a deflate connection, its payload compressed. The
    /// frame knows its header length: nothing is parsed.
    pub fn put_frame(&mut self, frame: &crate::base::Frame) {
        if self.agreed.is_on() && self.role == Role::Server {
            return self.send(true, frame.payload());
        }
        self.out.put(frame);
    }
}

impl<O: Output + ?Sized> Output for Sender<'_, O> {
    fn put(&mut self, bytes: &[u8]) {
        self.out.put(bytes);
    }

    fn reserve(&mut self, additional: usize) {
        self.out.reserve(additional);
    }

    fn queued(&self) -> usize {
        self.out.queued()
    }

    fn put_message(&mut self, text: bool, payload: &[u8]) {
        self.send(text, payload);
    }

    fn put_encoded(&mut self, frame: &[u8]) {
        if self.agreed.is_on() && self.role == Role::Server {
            let rules = HeaderRules {
                expect_masked: false,
                allowed_rsv: 0,
                max_payload: u64::MAX >> 1,
            };
            if let Ok(Some(h)) = Header::parse(frame, &rules) {
                let payload = &frame[h.header_len.min(frame.len())..];
                if h.fin
                    && matches!(h.opcode, OpCode::Text | OpCode::Binary)
                    && payload.len() as u64 == h.payload_len
                {
                    return self.send(h.opcode == OpCode::Text, payload);
                }
            }
        }
        self.out.put(frame);
    }
}

// --- the live handoff (issue 17) ---

/// Why a connection's protocol state cannot move to the next process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmovable {
    /// Closing (a close frame sent, or closed).
    NotOpen,
    /// Its own zlib stream is in use (`dedicated` deflate, or a peer
    /// compressing with context takeover): the deflate crate (flate2 on
    /// zlib-rs) cannot export a stream's window and state, so the next
    /// process could not inflate or compress the next message.
    DeflateContext,
}

impl Conn {
    /// Payload bytes of the incomplete frame at the front of the input
    /// already unmasked and checked (the spill must hold at least these).
    pub fn frame_done(&self) -> u32 {
        self.frame_done
    }

    /// Can this state move to the next process? Open connections, and
    /// server connections whose request is being read (or, kept alive,
    /// waiting for the next).
    pub fn movable(&self) -> Result<(), Unmovable> {
        if !matches!(self.state, State::Open | State::Handshake) {
            return Err(Unmovable::NotOpen);
        }
        // A context not yet created holds nothing: a fresh one in the
        // next process is the same.
        if self.extra.as_ref().is_some_and(|e| e.dfl_ctx.is_some()) {
            return Err(Unmovable::DeflateContext);
        }
        Ok(())
    }

    /// Write the state for the next process (check [`Conn::movable`]
    /// first): times as ages at `now`; the fragments of a message in
    /// progress as bytes. The incomplete frame itself is the caller's
    /// (its spill), `frame_done` says how much of it is unmasked.
    pub fn freeze(&self, now: u64, w: &mut StateWriter<'_>) {
        let age = |t: u32| (now as u32).wrapping_sub(t);
        w.u8(match self.role {
            Role::Server => 0,
            Role::Client => 1,
        });
        w.u8(match self.state {
            State::Handshake => 0,
            _ => 1,
        });
        w.u8(self.flags);
        for b in self.utf8.to_bytes() {
            w.u8(b);
        }
        w.u32(self.frame_done);
        w.u32(age(self.t_rx));
        w.u32(age(self.t_mark));
        w.u32(self.mask_seed);
        w.u8(self.dfl.to_bits());
        w.bytes(self.extra.as_ref().map_or(&[][..], |e| &e.message[..]));
    }

    /// The state [`Conn::freeze`] wrote, rebased to this process's `now`.
    /// `limits` bounds the fragments it may hold, as if they had arrived.
    pub fn thaw(r: &mut StateReader<'_>, now: u64, limits: &Limits) -> Result<Conn, StateError> {
        let at = |age: u32| (now as u32).wrapping_sub(age);
        let role = match r.u8()? {
            0 => Role::Server,
            1 => Role::Client,
            _ => return Err(StateError::Invalid("role")),
        };
        let state = match r.u8()? {
            0 => State::Handshake,
            1 => State::Open,
            _ => return Err(StateError::Invalid("protocol state")),
        };
        let flags = r.u8()?;
        if flags & !(FLAG_AWAITING_PONG | FLAG_TEXT | FLAG_FRAGMENTED | FLAG_COMPRESSED) != 0 {
            return Err(StateError::Invalid("protocol flags"));
        }
        let u = [r.u8()?, r.u8()?, r.u8()?, r.u8()?];
        let utf8 = Utf8State::from_bytes(u).ok_or(StateError::Invalid("utf-8 state"))?;
        let frame_done = r.u32()?;
        let t_rx = at(r.u32()?);
        let t_mark = at(r.u32()?);
        let mask_seed = r.u32()?;
        let dfl = Agreed::from_bits(r.u8()?).ok_or(StateError::Invalid("deflate agreement"))?;
        let message = r.bytes()?;
        let max = if dfl.is_on() {
            deflate::max_compressed(limits.max_message)
        } else {
            limits.max_message
        };
        if message.len() > max {
            return Err(StateError::Invalid("message in progress over the limit"));
        }
        if !message.is_empty() && flags & FLAG_FRAGMENTED == 0 {
            return Err(StateError::Invalid(
                "fragments without a message in progress",
            ));
        }
        let extra = (!message.is_empty()).then(|| {
            Box::new(Extra {
                message: message.to_vec(),
                dfl_ctx: None,
            })
        });
        if state == State::Handshake && (flags != 0 || frame_done != 0 || extra.is_some()) {
            return Err(StateError::Invalid("frame state before the handshake"));
        }
        Ok(Conn {
            role,
            state,
            flags,
            utf8,
            frame_done,
            t_rx,
            t_mark,
            mask_seed,
            extra,
            dfl,
        })
    }
}
