//! `GET /sse` and `GET /poll`: a listening session (channels subscribed
//! from the URL, resumed from the client's token or cursor) whose answers
//! and publications the stream writes its own way (`http::stream`): SSE
//! events as they come, or one long-poll answer.

use super::{http, Delivery, Effects, Endpoint, Env, Link};
use crate::base::query::Query;
use crate::base::state::{StateError, StateReader, StateWriter};
use crate::base::Frame;
use crate::broker::{ReplayChunk, ReplyBody, Tag};
use crate::gateway::error::error_json;
use crate::gateway::replay::{Begin, Step};
use crate::gateway::session::{FrozenSession, Joined, Session};
use crate::gateway::sink::Sink;
use crate::http::resume::ResumeToken;
use crate::http::stream::{Kind, StreamState};
use crate::proto::handshake::Head;
use crate::proto::{Output, State};
use crate::pubsub::Position;

/// An SSE stream or a held long-poll.
#[derive(Debug)]
pub struct Stream {
    pub(super) session: Session,
    st: StreamState,
    /// A poll's connection stays open for a next request after the answer.
    pub(super) keep: bool,
}

/// A stream's state and its output as a session's [`Sink`]: SSE events in
/// the out queue, or a long-poll's answer being gathered.
struct StreamSink<'a, O: Output + ?Sized> {
    st: &'a mut StreamState,
    out: &'a mut O,
}

impl<O: Output + ?Sized> Sink for StreamSink<'_, O> {
    fn queued(&self) -> usize {
        match self.st.kind {
            Kind::Sse => self.out.queued(),
            Kind::Poll => self.st.body_len(),
        }
    }

    fn frame(&mut self, channel: &str, frame: &Frame) {
        self.st.on_frame(channel, frame, self.out);
    }
}

/// What a stream needs to start once its session is known (at once, or
/// when the connect proxy accepted: `super::connect`).
#[derive(Debug)]
pub(super) struct StreamStart {
    pub kind: Kind,
    /// The connection stays open for a next request (long-poll).
    pub keep: bool,
    /// The URL's channels (and, after the connect proxy, its answer's).
    pub channels: Vec<String>,
    resume: ResumeToken,
    interval: u64,
    /// `{"connected":…}` when the connect proxy admitted it.
    pub connected: Option<Vec<u8>>,
}

/// Open a stream: its session subscribes to the named channels, resuming
/// from the client's token or cursor. A refused request is answered
/// (401, or 400 naming the bad parameter) and the connection goes on.
/// Without a token, a connect proxy decides first.
pub(super) fn open(
    ep: &mut Endpoint,
    env: &mut Env,
    link: &mut Link<'_>,
    head: &Head<'_>,
    query: Query<'_>,
    kind: Kind,
    keep: bool,
) -> Effects {
    let access = match env.authenticate(head) {
        Ok(a) => a,
        Err(e) => {
            return super::handshake::refuse_auth(env, link, e);
        }
    };
    let channels: Vec<String> = query.values("channel").collect();
    let read =
        crate::http::stream_request::read(head, query, kind, channels.len(), &env.cfg.gateway)
            .and_then(|(r, interval)| Ok((r, interval, env.user_of(query, &access)?)));
    let (resume, interval, user) = match read {
        Ok(r) => r,
        Err(e) => {
            let v = serde_json::json!({ "error": error_json(&e) });
            crate::http::respond_json(link.out, e.http_status(), &v, keep);
            return http::finish(ep, env, link, keep);
        }
    };
    let begin = StreamStart {
        kind,
        keep,
        channels,
        resume,
        interval,
        connected: None,
    };
    let headers = env.hook_headers(head);
    if super::connect::asks(env, &access) {
        // `?user=` is never honoured: the user comes from the backend.
        let after = super::connect::After::Stream(begin);
        *ep = super::connect::ask(env, link, access, after, headers, query);
        return Effects::REARM | Effects::DIRTY;
    }
    let mut s = env.new_session(user, access);
    let transport = match kind {
        Kind::Sse => crate::hooks::proxy::Transport::Sse,
        Kind::Poll => crate::hooks::proxy::Transport::Poll,
    };
    s.set_hook_client(transport, headers);
    start(ep, env, link, s, begin)
}

/// Start a stream with its session: the head (SSE), the personal channel
/// and the channels, resumed where the client was.
pub(super) fn start(
    ep: &mut Endpoint,
    env: &mut Env,
    link: &mut Link<'_>,
    mut s: Session,
    begin: StreamStart,
) -> Effects {
    let StreamStart {
        kind,
        keep,
        channels,
        resume,
        interval,
        connected,
    } = begin;
    let mut st = StreamState::new(kind, resume.clone(), channels.len(), env.now, interval);
    st.cap = env.cfg.gateway.max_queued_bytes;
    if kind == Kind::Sse {
        StreamState::sse_start(link.out);
    }
    if let Some(m) = connected {
        st.on_connected(&m, link.out);
    }
    let mut ctx = env.ctx(link.key);
    // The user's personal channel is part of the stream too.
    let personal = s.user().map(crate::pubsub::user_channel);
    let since = personal.as_deref().and_then(|p| resume.get(p).cloned());
    // An SSE stream counts in user presence (a long-poll does not).
    if kind == Kind::Sse {
        s.announce(&ctx);
    }
    if s.join_personal(&mut ctx, since) {
        st.waiting += 1;
    }
    for ch in &channels {
        if let Err(e) = s.subscribe(&mut ctx, ch, resume.get(ch).cloned()) {
            st.on_error(ch, &e, link.out);
        }
    }
    if kind == Kind::Poll && st.waiting == 0 {
        st.ready = true; // every channel was refused: answer now
    }
    let due = kind == Kind::Poll && st.ready;
    *ep = Endpoint::Stream(Box::new(Stream {
        session: s,
        st,
        keep,
    }));
    if due {
        Effects::REARM | Effects::DUE | Effects::DIRTY
    } else {
        Effects::REARM | Effects::DIRTY
    }
}

/// An SSE stream read back from its frozen state (issue 17).
#[derive(Debug)]
pub struct FrozenStream {
    session: FrozenSession,
    token: Vec<(String, Position)>,
    interval_ms: u64,
    keepalive_in: u64,
}

impl Stream {
    /// Nothing awaited: every subscribe answered, no replay being read
    /// (a long-poll is never at rest: a handoff answers it first).
    pub(super) fn at_rest(&self) -> bool {
        !self.is_poll() && self.st.waiting == 0 && !self.session.replaying()
    }

    /// Write an SSE stream at rest for the next process: its session (each
    /// subscription's position is the stream's own, which its events' ids
    /// carry), its token, its keepalive.
    pub(super) fn freeze(&self, env: &Env, w: &mut StateWriter<'_>) -> Result<(), &'static str> {
        if !self.at_rest() {
            return Err("a long-poll, or a stream awaiting answers");
        }
        let token = &self.st.token.positions;
        let position = |ch: &str| -> Option<Position> {
            token
                .iter()
                .find(|(c, _)| c == ch)
                .map(|(_, p)| p.clone())
                .or_else(|| {
                    let (epoch, offset) = env.topics.position(ch)?;
                    Some(Position {
                        epoch: epoch.into(),
                        offset,
                    })
                })
        };
        self.session.freeze(&position, env.now, w)?;
        w.positions(token.iter().map(|(c, p)| (c.as_str(), p)));
        w.u64(self.st.interval_ms);
        w.u64(self.st.deadline.saturating_sub(env.now));
        Ok(())
    }

    /// Read what [`Stream::freeze`] wrote.
    pub(super) fn thaw(r: &mut StateReader<'_>) -> Result<FrozenStream, StateError> {
        let session = Session::thaw(r)?;
        let token = r.positions()?;
        let interval_ms = r.u64()?;
        let keepalive_in = r.u64()?;
        Ok(FrozenStream {
            session,
            token,
            interval_ms,
            keepalive_in,
        })
    }

    /// The stream in the worker that took its connection: its session
    /// asks its subscriptions again from their positions.
    pub(super) fn thawed(f: FrozenStream, env: &mut Env, key: crate::base::ConnKey) -> Stream {
        let now = env.now;
        let st = StreamState::thawed(
            ResumeToken { positions: f.token },
            now,
            f.interval_ms,
            f.keepalive_in,
            env.cfg.gateway.max_queued_bytes,
        );
        let session = Session::thawed(f.session, &mut env.ctx(key), now);
        Stream {
            session,
            st,
            keep: false,
        }
    }

    /// The answer to a subscription asked again after a handoff: no
    /// `subscribed` event (the client had it), the recovered gap, then the
    /// live stream; a gap that cannot be recovered is the `resync` event a
    /// broken stream gets; a refused channel its `error` event.
    fn resumed(
        &mut self,
        env: &mut Env,
        link: &mut Link<'_>,
        tag: Tag,
        body: ReplyBody,
    ) -> Effects {
        let joined = self.session.resumed(&mut env.ctx(link.key), tag, body);
        let st = &mut self.st;
        match joined {
            Ok(Joined::Subscribed { channel, answer }) => {
                let out = &mut *link.out;
                if answer.recovered != Some(true) {
                    log::warn!(
                        "connection {:?}: moved, but {channel:?} could not be recovered: resync",
                        link.key
                    );
                    let ev = crate::broker::encode_event(
                        &serde_json::json!({
                            "channel": &*channel,
                            "resync": {
                                "epoch": answer.position.epoch,
                                "offset": answer.position.offset,
                            },
                        }),
                        crate::base::FrameKind::Resync,
                    );
                    st.on_frame(&channel, &ev, out);
                }
                let mut sink = StreamSink { st, out };
                let mut ctx = env.ctx(link.key);
                self.session
                    .begin_replay(&mut ctx, &channel, &answer, true, &mut sink);
                ctx.topics
                    .answered(&channel, &answer.position.epoch, answer.position.offset);
            }
            Ok(Joined::Refused { channel, error }) => st.on_error(&channel, &error, link.out),
            Ok(Joined::Asked) => return Effects::NONE,
            Err(body) => env.undo(link.key, body),
        }
        Effects::DIRTY
    }

    pub(super) fn is_poll(&self) -> bool {
        self.st.kind == Kind::Poll
    }

    pub(super) fn deadline(&self) -> u64 {
        self.st.deadline
    }

    /// A poll's answer, unless it was written.
    pub(super) fn answer(&mut self) -> Option<Vec<u8>> {
        (!self.st.done).then(|| self.st.poll_answer())
    }

    /// Is a poll's answer due?
    fn due(&self) -> bool {
        self.st.kind == Kind::Poll && self.st.ready && !self.st.done
    }

    /// The token expired: a poll answers, an SSE stream ends.
    pub(super) fn expired(&mut self, env: &mut Env, link: &mut Link<'_>) -> Effects {
        if self.is_poll() {
            return Effects::DUE;
        }
        link.proto.shutdown(env.now);
        Effects::REARM | Effects::DIRTY
    }

    /// The stream's timer: SSE's keepalive, or the end of a poll's wait.
    pub(super) fn handle_timeout(&mut self, env: &mut Env, link: &mut Link<'_>) -> Effects {
        if env.now < self.st.deadline {
            return Effects::REARM;
        }
        match self.st.kind {
            Kind::Sse => {
                self.st.keepalive(env.now, link.out);
                Effects::DIRTY | Effects::REARM
            }
            Kind::Poll => Effects::DUE,
        }
    }

    /// A subscribe answered: `subscribed` (SSE: an event; poll: its
    /// cursor), and the replay; or the channel's error.
    pub(super) fn handle_reply(
        &mut self,
        env: &mut Env,
        link: &mut Link<'_>,
        tag: Tag,
        body: ReplyBody,
    ) -> Effects {
        if self.session.resuming(tag) && link.proto.state() != State::Closed {
            return self.resumed(env, link, tag, body);
        }
        // Nothing goes out on an ended stream; the session still takes the
        // answer.
        let mut scratch = Vec::new();
        let out: &mut dyn Output = if link.proto.state() != State::Closed {
            link.out
        } else {
            &mut scratch
        };
        let st = &mut self.st;
        let joined = self.session.joined(&mut env.ctx(link.key), tag, body);
        match joined {
            Ok(Joined::Subscribed { channel, answer }) => {
                st.on_subscribed(&channel, &answer.position, answer.recovered, out);
                let paced = st.kind == Kind::Sse;
                let mut sink = StreamSink { st, out };
                let mut ctx = env.ctx(link.key);
                let begin = self
                    .session
                    .begin_replay(&mut ctx, &channel, &answer, paced, &mut sink);
                if begin == Begin::Cut {
                    // A long-poll answers with what fits.
                    st.cut();
                }
                // Its position, for a live handoff.
                ctx.topics
                    .answered(&channel, &answer.position.epoch, answer.position.offset);
            }
            Ok(Joined::Refused { channel, error }) => st.on_error(&channel, &error, out),
            // The subscribe proxy allowed it; the broker answers next.
            Ok(Joined::Asked) => return Effects::NONE,
            Err(body) => env.undo(link.key, body),
        }
        // A short poll (`wait=0`) answers once every channel is in.
        if st.kind == Kind::Poll && st.waiting == 0 && st.interval_ms == 0 {
            st.ready = true;
        }
        // A subscribe proxy's grant may end at a time: the timer moves.
        let granted = if self.session.next_sub_expiry().is_some() {
            Effects::REARM
        } else {
            Effects::NONE
        };
        if self.due() {
            Effects::DIRTY | Effects::DUE | granted
        } else {
            Effects::DIRTY | granted
        }
    }

    /// A part of one of the stream's replays.
    pub(super) fn replay_part(
        &mut self,
        env: &mut Env,
        link: &mut Link<'_>,
        chunk: ReplayChunk,
    ) -> Step {
        let cap = env.cfg.gateway.max_queued_bytes;
        let mut sink = StreamSink {
            st: &mut self.st,
            out: link.out,
        };
        self.session.replay_chunk(chunk, cap, &mut sink)
    }

    /// A live publication or event.
    pub(super) fn deliver<O: Output + ?Sized>(
        &mut self,
        out: &mut O,
        channel: &str,
        frame: &Frame,
    ) -> Delivery {
        // SSE and long-poll write their own framing (per connection: the
        // event id is this stream's resume token).
        self.st.on_frame(channel, frame, out);
        if self.due() {
            Delivery::Due
        } else {
            Delivery::Queued
        }
    }

    /// Channels whose subscribe proxy grant ran out by `now` (Unix ms).
    pub(super) fn expire_subs(&mut self, env: &mut Env, link: &mut Link<'_>, now: u64) {
        let mut ctx = env.ctx(link.key);
        for notice in self.session.expire_subs(&mut ctx, now) {
            if let crate::gateway::reply::Notice::Unsubscribed { channel, error } = notice {
                self.st.on_unsubscribed(&channel, &error, link.out);
            }
        }
    }

    /// The drop policy took a channel from a slow stream.
    pub(super) fn drop_channel(
        &mut self,
        env: &mut Env,
        link: &mut Link<'_>,
        channel: &str,
        last: u64,
    ) {
        let mut ctx = env.ctx(link.key);
        if let Some(notice) = self.session.drop_channel(&mut ctx, channel, last) {
            self.st.on_dropped(&notice.to_json(), link.out);
        }
    }
}
