//! What a gateway session and each of its subscriptions cost on the heap,
//! measured with a counting allocator on the real parts: `Session` (boxed,
//! as the endpoint holds it), the worker's `Topics`, and the memory
//! broker's channel records and presence, with the default configuration
//! (presence on). Run with `--nocapture` to see the figures:
//!
//! ```text
//! cargo test --release --test session_memory -- --nocapture
//! ```
//!
//! The allocator counts requested bytes (malloc adds its own 8-byte header
//! and 16-byte rounding per block; the RSS figures of docs/density.md
//! include that). Channels are created before the measurement, so the
//! figures are what one more session, or one more subscription, adds.
//!
//! One test function only: the allocator counts every thread.

use std::sync::Arc;

use wsgate::base::client_id::ClientPrefix;
use wsgate::base::counters::Counters;
use wsgate::base::ConnKey;
use wsgate::broker::memory::MemoryBroker;
use wsgate::broker::{Inboxes, Tags, WorkerMsg};
use wsgate::config::{ChannelPolicy, Config};
use wsgate::delta::DeltaChannels;
use wsgate::gateway::session::{Ctx, Session, Sub};
use wsgate::gateway::sink::Discard;
use wsgate::gateway::GatewayConfig;
use wsgate::pubsub::topics::Topics;

mod alloc_util;
use alloc_util::{live, live_chunks};

#[global_allocator]
static A: alloc_util::Counting = alloc_util::Counting;

/// One worker's parts and a memory broker, as a worker holds them.
struct World {
    parts: Parts,
    /// Boxed as the endpoint holds them: the box is part of the figure.
    #[allow(clippy::vec_box)]
    sessions: Vec<Box<Session>>,
}

/// What a session's calls borrow ([`Ctx`]) and where the broker answers.
struct Parts {
    _poll: mio::Poll,
    inboxes: Arc<Inboxes>,
    broker: MemoryBroker,
    topics: Topics,
    cfg: GatewayConfig,
    counts: Counters,
    tags: Tags,
    deltas: DeltaChannels,
    msgs: Vec<WorkerMsg>,
}

impl Parts {
    /// `call` on session `s` of connection `conn`, then the broker's
    /// answers taken as the worker would.
    fn exchange(
        &mut self,
        s: &mut Session,
        conn: ConnKey,
        call: impl FnOnce(&mut Session, &mut Ctx<'_>),
    ) {
        let mut ctx = Ctx {
            worker: 0,
            conn,
            broker: &self.broker,
            topics: &mut self.topics,
            cfg: &self.cfg,
            counts: &mut self.counts,
            tags: &mut self.tags,
            deltas: &mut self.deltas,
        };
        call(s, &mut ctx);
        self.inboxes.drain(0, &mut self.msgs);
        for m in self.msgs.drain(..) {
            match m {
                WorkerMsg::Reply { to, body } => {
                    assert_eq!(to.conn, conn);
                    s.on_reply(&mut ctx, to.tag, to.id.as_deref(), body, &mut Discard)
                        .expect("the session's own answer");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

impl World {
    fn new() -> World {
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).unwrap();
        let inboxes = Arc::new(Inboxes::new(vec![waker]));
        let policy = Arc::new(ChannelPolicy::new(&Config::default()));
        let broker = MemoryBroker::new(inboxes.clone(), policy);
        let cfg = GatewayConfig::default();
        let deltas = DeltaChannels::new(cfg.delta_limits);
        World {
            parts: Parts {
                _poll: poll,
                inboxes,
                broker,
                topics: Topics::default(),
                cfg,
                counts: Counters::default(),
                tags: Tags::default(),
                deltas,
                msgs: Vec::with_capacity(1 << 16),
            },
            sessions: Vec::new(),
        }
    }

    /// Open a session subscribed to `channels` (as `/ws?channel=…`), with
    /// a client id as the worker makes them (`PREFIX` is registered) and
    /// a user when `user` (as `?user=` or a token names one).
    fn open(&mut self, client: usize, channels: &[String], user: bool) {
        let conn = ConnKey::new(client as u32, 1);
        let user = user.then(|| format!("user{client}"));
        let mut s = Box::new(Session::new(format!("{PREFIX}{client}"), user));
        self.parts.exchange(&mut s, conn, |s, ctx| {
            s.start(ctx, channels.iter().cloned(), false, &mut Discard)
        });
        assert!(!s.has_pending(), "every subscribe answered");
        self.sessions.push(s);
    }

    /// Session `i` sends `op` (one that the broker answers) and has its
    /// answer.
    fn op(&mut self, i: usize, op: &str) {
        let conn = ConnKey::new(i as u32, 1);
        self.parts.exchange(&mut self.sessions[i], conn, |s, ctx| {
            s.on_message(ctx, true, op.as_bytes(), &mut Discard);
            assert!(s.has_pending(), "the op waits for the broker");
        });
        assert!(!self.sessions[i].has_pending(), "the op answered");
    }
}

/// The client id prefix of the sessions here, registered as a worker's.
const PREFIX: &str = "abcdef0-";

/// Heap bytes per session subscribed to `k` channels, over `n` sessions
/// (with users or anonymous): requested, and as malloc's chunks.
fn per_session(n: usize, k: usize, user: bool) -> (f64, f64, f64) {
    let channels: Vec<String> = (0..k).map(|i| format!("density{i}")).collect();
    let mut w = World::new();
    // The channels exist (and the tables have room for a first few):
    // what follows is what one more session adds.
    for c in 0..16 {
        w.open(1_000_000 + c, &channels, user);
    }
    w.sessions.reserve(n);
    let (before, chunks_before) = (live(), live_chunks());
    for c in 0..n {
        w.open(c, &channels, user);
    }
    let (after, chunks_after) = (live(), live_chunks());
    // A session with a user is also in its user's channel.
    assert_eq!(
        w.parts.topics.subscriptions(),
        (n + 16) * (k + user as usize)
    );
    // Every session sends an op and has its answer: what held the op in
    // flight (the pipeline, in the session's rarely used part) is freed
    // again, so an idle session costs what it did before.
    for c in 0..n {
        w.op(
            c,
            r#"{"id":1,"op":"history","channel":"density0","limit":1}"#,
        );
    }
    let after_ops = live();
    (
        (after - before) as f64 / n as f64,
        (chunks_after - chunks_before) as f64 / n as f64,
        (after_ops as f64 - after as f64) / n as f64,
    )
}

#[test]
fn heap_per_session_and_per_subscription() {
    ClientPrefix::register(PREFIX).expect("a fresh process has room");
    let n = 20_000;
    let (one, one_chunks, one_after_op) = per_session(n, 1, false);
    let (ten, ten_chunks, ten_after_op) = per_session(n, 10, false);
    let (named, named_chunks, _) = per_session(n, 1, true);
    let extra = (ten - one) / 9.0;
    eprintln!(
        "size_of: Session {} B, Sub {} B",
        std::mem::size_of::<Session>(),
        std::mem::size_of::<Sub>()
    );
    eprintln!(
        "heap per session ({n} sessions, presence on): one channel {one:.0} B, \
         ten channels {ten:.0} B, per further subscription {extra:.0} B, \
         one channel with a user {named:.0} B; as malloc chunks: one channel \
         {one_chunks:.0} B, ten channels {ten_chunks:.0} B, with a user \
         {named_chunks:.0} B; kept after an op answered: {one_after_op:.1} B, \
         {ten_after_op:.1} B"
    );
    // Measured, anonymous (the worker's client id held as a number, no
    // identity block, 4-byte subscriber keys): 79 B requested, 87 B of
    // chunks, 50 B per further subscription (issue 13 part 6;
    // part 5, the identity in a block: 133 B and 157 B; part 4: 150 B and
    // 174 B, the first subscription inline; part 3: 165 B and 189 B; part
    // 2: 221 B and 53 B; main before it: 586 B and 218 B). With a user
    // (each its own): 899 B of chunks, the identity block and above all
    // the user's personal channel, which each session joins (its channel
    // record, index entry and presence). The bounds leave a
    // little room for hash tables at another point of their growth; an
    // anonymous identity in a block of its own (48 B of chunks), a
    // session box past 56 B (part 4's 72 B: an 80-byte chunk), a first
    // subscription in a block of its own (part 3's `Box<[Sub]>`, a
    // 32-byte chunk), an identity in more than one block (an
    // `Arc<Member>` of two `String`s was 112 B of chunks), a
    // per-subscription name, a presence entry of copied strings or a
    // doubling `subs` vector fails them.
    assert!(one <= 100.0, "heap per session on one channel: {one:.0} B");
    assert!(
        one_chunks <= 124.0,
        "malloc chunks per session on one channel: {one_chunks:.0} B"
    );
    assert!(
        named_chunks <= 960.0,
        "malloc chunks per session with a user on one channel: {named_chunks:.0} B"
    );
    // An answered op leaves nothing behind (a `Rare` kept after its
    // pipeline ended would be 336 B of chunks each).
    for kept in [one_after_op, ten_after_op] {
        assert!(
            kept.abs() < 8.0,
            "heap kept per session after an op: {kept:.1} B"
        );
    }
    assert!(extra <= 64.0, "heap per further subscription: {extra:.0} B");
}
