//! The commands of the NATS thread: each [`Cmd`] turned into requests
//! (publishes sent in order, reads, presence work for its task), and each
//! answer handed back in the order the commands came; what waits for NATS
//! while it is unreachable.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use bytes::Bytes;
use futures_util::stream::FuturesOrdered;
use serde_json::value::RawValue;

use super::{Engine, Job, MAX_READ};
use crate::base::OpError;
use crate::broker::nats::names::Names;
use crate::broker::nats::presence::PresenceOp;
use crate::broker::nats::store::{JsError, Read};
use crate::broker::nats::{JS_ERROR, UNREACHABLE};
use crate::broker::redis::history_page;
use crate::broker::redis::hub::Snap;
use crate::broker::redis::Cmd;
use crate::broker::{ReplyBody, ReplyTo};
use crate::pubsub::Position;

/// A finished command, handed back in pipeline order.
pub(super) enum Done {
    Published {
        channel: Arc<str>,
        data: Box<RawValue>,
        /// Its `client_event`, sent once acknowledged (not for a repeat).
        event_from: Option<crate::pubsub::presence::Member>,
        /// Its idempotency key (JetStream's `Nats-Msg-Id`).
        key: Option<String>,
        reply: Option<ReplyTo>,
        ack: Result<async_nats::jetstream::publish::PublishAck, PublishErrorKind>,
        retried: bool,
    },
    Batch {
        reply: ReplyTo,
        results: Vec<Result<Position, OpError>>,
    },
    Sync {
        channel: Arc<str>,
        sub: crate::broker::redis::hub::PendingSub,
        snap: Result<Option<Snap>, JsError>,
    },
    CatchUp {
        channel: Arc<str>,
        gen: u64,
        snap: Result<Option<Snap>, JsError>,
    },
    /// A part of a paced replay (gateway::replay), read from the stream.
    Replay {
        worker: usize,
        req: crate::broker::ReplayRequest,
        reply: ReplyTo,
        snap: Result<Option<Snap>, JsError>,
    },
    /// An answer ready to go (in its turn).
    Reply {
        to: ReplyTo,
        body: ReplyBody,
    },
    Nothing,
}

/// A job whose answer is known already: it waits for its turn only.
fn ready(done: Done) -> Job {
    Box::pin(std::future::ready(done))
}

impl Engine {
    /// Keep this node's presence registry (for the refreshes) in step, and
    /// hand presence work to its task.
    fn presence_cmd(&mut self, c: Cmd, pipeline: &mut FuturesOrdered<Job>) -> Option<Cmd> {
        match c {
            Cmd::Join {
                channel,
                member,
                event,
            } => {
                let json = serde_json::to_string(&member).expect("member serializes");
                let key = self.s.names.member_key(&channel, &member.client());
                self.members
                    .entry(channel.clone())
                    .or_default()
                    .insert(member.client().to_string(), (key.clone(), json.clone()));
                if self.up {
                    let event = event.then(|| self.s.names.live(&channel));
                    let _ = self.presence.send(PresenceOp::Join { key, json, event });
                }
                // (Down: the refresh after the reconnection re-adds it.)
                None
            }
            Cmd::Leave {
                channel,
                client,
                event,
                ..
            } => {
                let held = self
                    .members
                    .get_mut(&channel)
                    .and_then(|m| m.remove(&client));
                if self.members.get(&channel).is_some_and(|m| m.is_empty()) {
                    self.members.remove(&channel);
                }
                if let Some((key, json)) = held {
                    // Down: the key is no longer refreshed and expires.
                    if self.up {
                        let event = event.then(|| self.s.names.live(&channel));
                        let _ = self.presence.send(PresenceOp::Leave { key, json, event });
                    }
                }
                None
            }
            Cmd::Announce {
                channel,
                member,
                join,
            } => {
                if self.up {
                    let json = serde_json::to_string(&member).expect("member serializes");
                    let kind = if join { 'j' } else { 'l' };
                    let _ = self.presence.send(PresenceOp::Announce {
                        subject: self.s.names.live(&channel),
                        payload: format!("{kind}{json}"),
                    });
                }
                None
            }
            Cmd::Presence { channel, reply } => {
                // The presence task reads; the answer waits for its turn
                // in the pipeline.
                let (tx, rx) = tokio::sync::oneshot::channel();
                if self.up {
                    let _ = self.presence.send(PresenceOp::Read {
                        channel,
                        answer: tx,
                    });
                } else {
                    let _ = tx.send(Err(UNREACHABLE));
                }
                pipeline.push_back(Box::pin(async move {
                    let info = rx.await.unwrap_or(Err(UNREACHABLE));
                    Done::Reply {
                        to: reply,
                        body: ReplyBody::Presence(info),
                    }
                }));
                None
            }
            Cmd::Users { users, reply } => {
                // Per node with NATS (docs/hooks.md): this node's users.
                let online = users
                    .into_iter()
                    .map(|u| {
                        let on = self.hub.users.online(&u);
                        (u, on)
                    })
                    .collect();
                pipeline.push_back(ready(Done::Reply {
                    to: reply,
                    body: ReplyBody::Users(Ok(online)),
                }));
                None
            }
            // Decided per node by the hub with NATS: never sent.
            Cmd::Occupancy { .. } | Cmd::UserUp { .. } | Cmd::UserDown { .. } => None,
            other => Some(other),
        }
    }

    /// NATS is unreachable: answer at once (in turn), keep what can wait.
    fn fail(&mut self, c: Cmd, pipeline: &mut FuturesOrdered<Job>) {
        let answer = |to, body| ready(Done::Reply { to, body });
        match c {
            Cmd::Publish { reply, .. } => {
                if let Some(to) = reply {
                    pipeline.push_back(answer(to, ReplyBody::Published(Err(UNREACHABLE))));
                }
            }
            Cmd::PublishBatch { items, reply } => {
                let all = items.iter().map(|_| Err(UNREACHABLE)).collect();
                pipeline.push_back(answer(reply, ReplyBody::PublishedBatch(all)));
            }
            Cmd::Sync { channel, sub } => self.hub.sync_done(&channel, sub, None),
            Cmd::Replay { worker, req, reply } => self.hub.replay_done(worker, req, reply, None),
            Cmd::Rebase { channel, gen, .. } | Cmd::CatchUp { channel, gen } => {
                self.defer(channel, gen)
            }
            Cmd::History { reply, .. } => {
                pipeline.push_back(answer(reply, ReplyBody::History(Err(UNREACHABLE))))
            }
            Cmd::Disconnect { user } => log::warn!(
                "disconnect of user {user:?} done on this node only: nats is unreachable"
            ),
            other => {
                let _ = self.presence_cmd(other, pipeline);
            }
        }
    }

    pub(super) async fn submit(&mut self, cmds: Vec<Cmd>, pipeline: &mut FuturesOrdered<Job>) {
        for c in cmds {
            let Some(c) = self.presence_cmd(c, pipeline) else {
                continue;
            };
            if !self.up {
                self.fail(c, pipeline);
                continue;
            }
            match c {
                Cmd::Publish {
                    channel,
                    data,
                    opts,
                    reply,
                } => {
                    let (from, key) = (opts.event_from, opts.idempotency_key);
                    let job = self.publish(channel, data, from, key, reply, false).await;
                    pipeline.push_back(job);
                }
                Cmd::PublishBatch { items, reply } => {
                    let mut acks = Vec::with_capacity(items.len());
                    for (channel, data) in items {
                        acks.push(self.send_publication(&channel, &data, None).await);
                    }
                    let names = self.s.names.clone();
                    pipeline.push_back(Box::pin(async move {
                        let mut results = Vec::with_capacity(acks.len());
                        for a in acks {
                            results.push(match a {
                                Ok(fut) => position(&names, fut.await.map_err(|e| e.kind())),
                                Err(e) => Err(e),
                            });
                        }
                        Done::Batch { reply, results }
                    }));
                }
                Cmd::Sync { channel, sub } => {
                    let read = match &sub.since {
                        Some(p) => Read::After(p.offset, self.recovery_count(&channel)),
                        None if sub.latest => Read::Last(1),
                        None => Read::Meta,
                    };
                    let (store, now) = (self.store.clone(), self.hub.now_ms());
                    pipeline.push_back(Box::pin(async move {
                        let snap = store.snapshot(&channel, read, true, now).await;
                        Done::Sync { channel, sub, snap }
                    }));
                }
                Cmd::Replay { worker, req, reply } => {
                    let read = Read::After(req.after, self.recovery_count(&req.channel));
                    let (store, now) = (self.store.clone(), self.hub.now_ms());
                    pipeline.push_back(Box::pin(async move {
                        let snap = store.snapshot(&req.channel, read, false, now).await;
                        Done::Replay {
                            worker,
                            req,
                            reply,
                            snap,
                        }
                    }));
                }
                Cmd::CatchUp { channel, gen } => {
                    let read = match self.hub.catch_up_from(&channel, gen) {
                        None => continue,
                        Some(None) => Read::Meta,
                        Some(Some(last)) => Read::After(last, self.recovery_count(&channel)),
                    };
                    let (store, now) = (self.store.clone(), self.hub.now_ms());
                    pipeline.push_back(Box::pin(async move {
                        let snap = store.snapshot(&channel, read, true, now).await;
                        Done::CatchUp { channel, gen, snap }
                    }));
                }
                Cmd::Rebase {
                    channel,
                    gen,
                    epoch,
                    last,
                } => {
                    let (store, now) = (self.store.clone(), self.hub.now_ms());
                    pipeline.push_back(Box::pin(async move {
                        let snap = match store.rebase(&channel, &epoch, last).await {
                            Ok(()) => store.snapshot(&channel, Read::Meta, true, now).await,
                            Err(e) => Err(e),
                        };
                        Done::CatchUp { channel, gen, snap }
                    }));
                }
                Cmd::History {
                    channel,
                    since,
                    limit,
                    reverse,
                    reply,
                } => {
                    let read = match &since {
                        Some(p) => Read::After(p.offset, limit),
                        None => Read::Last(limit),
                    };
                    let (store, now) = (self.store.clone(), self.hub.now_ms());
                    pipeline.push_back(Box::pin(async move {
                        let page = match store.snapshot(&channel, read, false, now).await {
                            Ok(snap) => Ok(history_page(snap, since).reversed(reverse)),
                            Err(e) => {
                                log::warn!("history read of {channel:?}: {e}");
                                Err(match e {
                                    JsError::Unreachable(_) => UNREACHABLE,
                                    _ => JS_ERROR,
                                })
                            }
                        };
                        Done::Reply {
                            to: reply,
                            body: ReplyBody::History(page),
                        }
                    }));
                }
                Cmd::Disconnect { user } => {
                    let msg = format!("d{}\n{user}", self.s.instance);
                    let sending = self
                        .client
                        .publish(self.s.names.control(), Bytes::from(msg));
                    match tokio::time::timeout(self.s.command_timeout, sending).await {
                        Ok(Ok(())) => {
                            log::info!("disconnect of user {user:?} sent to the other nodes")
                        }
                        failed => log::warn!(
                            "disconnect of user {user:?} not sent to other nodes: {failed:?}"
                        ),
                    }
                    pipeline.push_back(ready(Done::Nothing));
                }
                Cmd::Join { .. }
                | Cmd::Leave { .. }
                | Cmd::Announce { .. }
                | Cmd::Presence { .. }
                | Cmd::Users { .. }
                | Cmd::Occupancy { .. }
                | Cmd::UserUp { .. }
                | Cmd::UserDown { .. } => {}
            }
        }
    }

    fn recovery_count(&self, channel: &str) -> usize {
        self.policy.options(channel).history_size.clamp(1, MAX_READ)
    }

    /// Send one publication to its channel's stream (the stream is found,
    /// or created, first); the acknowledgement comes later. An idempotency
    /// `key` goes as `Nats-Msg-Id`: the stream (one per channel) stores a
    /// repeat within its `duplicate_window` not again, and its
    /// acknowledgement says `duplicate` with the first one's sequence.
    async fn send_publication(
        &mut self,
        channel: &str,
        data: &RawValue,
        key: Option<&str>,
    ) -> Result<PublishAckFuture, OpError> {
        if !self.store.cached(channel) {
            // (The first publication of a channel on this node: one lookup,
            // or a creation, before it is sent; later ones go straight.)
            if let Err(e) = self.store.stream(channel, true).await {
                log::warn!("stream of channel {channel:?}: {e}");
                self.js_failed(&e);
                return Err(match e {
                    JsError::Unreachable(_) => UNREACHABLE,
                    _ => JS_ERROR,
                });
            }
        }
        let payload = Bytes::copy_from_slice(data.get().as_bytes());
        let subject = self.s.names.stored(channel);
        let sent = match key {
            Some(k) => {
                let mut h = async_nats::HeaderMap::new();
                h.insert("Nats-Msg-Id", k);
                self.jsctx.publish_with_headers(subject, h, payload).await
            }
            None => self.jsctx.publish(subject, payload).await,
        };
        sent.map_err(|e| {
            log::warn!("publish to channel {channel:?}: {e}");
            UNREACHABLE
        })
    }

    async fn publish(
        &mut self,
        channel: Arc<str>,
        data: Box<RawValue>,
        event_from: Option<crate::pubsub::presence::Member>,
        key: Option<String>,
        reply: Option<ReplyTo>,
        retried: bool,
    ) -> Job {
        match self.send_publication(&channel, &data, key.as_deref()).await {
            Ok(fut) => Box::pin(async move {
                let ack = fut.await.map_err(|e| e.kind());
                Done::Published {
                    channel,
                    data,
                    event_from,
                    key,
                    reply,
                    ack,
                    retried,
                }
            }),
            Err(e) => ready(match reply {
                Some(to) => Done::Reply {
                    to,
                    body: ReplyBody::Published(Err(e)),
                },
                None => Done::Nothing,
            }),
        }
    }

    /// Hand a finished command's answer back.
    pub(super) async fn complete(&mut self, done: Done, pipeline: &mut FuturesOrdered<Job>) {
        match done {
            Done::Published {
                channel,
                data,
                event_from,
                key,
                reply,
                ack,
                retried,
            } => {
                if let (Err(PublishErrorKind::StreamNotFound), false) = (&ack, retried) {
                    // The channel's stream is gone (deleted, or lost with a
                    // server): a new one, a new epoch, and the same
                    // publication once more.
                    self.store.forget(&channel);
                    if self.up {
                        let job = self
                            .publish(channel, data, event_from, key, reply, true)
                            .await;
                        pipeline.push_back(job);
                        return;
                    }
                }
                if let Err(PublishErrorKind::TimedOut) = &ack {
                    self.js_failed(&JsError::Unreachable("publish timed out".into()));
                }
                // A repeated idempotency key: the first one's position,
                // nothing stored, no second `client_event`.
                let repeat = matches!(&ack, Ok(a) if a.duplicate);
                let r = position(&self.s.names, ack);
                if r.is_ok() && !repeat {
                    self.publications.fetch_add(1, Ordering::Relaxed);
                }
                let opts = crate::broker::PublishOptions {
                    event_from,
                    ..Default::default()
                };
                crate::broker::client_event(&self.hub.events, &channel, &data, &opts, &r, repeat);
                if let Some(to) = reply {
                    self.reply(to, ReplyBody::Published(r));
                }
            }
            Done::Batch { reply, results } => {
                let ok = results.iter().filter(|r| r.is_ok()).count();
                self.publications.fetch_add(ok as u64, Ordering::Relaxed);
                self.reply(reply, ReplyBody::PublishedBatch(results));
            }
            Done::Sync { channel, sub, snap } => {
                let snap = match snap {
                    Ok(s) => s,
                    Err(e) => {
                        log::warn!("subscribe read of {channel:?}: {e}");
                        self.js_failed(&e);
                        None
                    }
                };
                self.hub.sync_done(&channel, sub, snap);
            }
            Done::Replay {
                worker,
                req,
                reply,
                snap,
            } => {
                let snap = snap.unwrap_or_else(|e| {
                    log::warn!("replay read of {:?}: {e}", req.channel);
                    self.js_failed(&e);
                    None
                });
                self.hub.replay_done(worker, req, reply, snap);
            }
            Done::CatchUp { channel, gen, snap } => match snap {
                Ok(Some(snap)) => {
                    self.retry_delay = self.s.retry_min;
                    self.hub.catch_up_done(&channel, gen, snap)
                }
                Ok(None) => {}
                Err(e) => {
                    log::warn!("catch-up read of {channel:?}: {e}; tried again later");
                    self.js_failed(&e);
                    self.defer(channel, gen);
                }
            },
            Done::Reply { to, body } => self.reply(to, body),
            Done::Nothing => {}
        }
    }
}

/// A publish acknowledgement as a position: the stream names the epoch,
/// its sequence is the offset.
fn position(
    names: &Names,
    ack: Result<async_nats::jetstream::publish::PublishAck, PublishErrorKind>,
) -> Result<Position, OpError> {
    match ack {
        Ok(a) => match names.epoch_of(&a.stream) {
            Some(epoch) => Ok(Position {
                epoch: epoch.to_owned(),
                offset: a.sequence,
            }),
            None => {
                log::error!(
                    "publication stored in stream {:?}, not one of ours",
                    a.stream
                );
                Err(JS_ERROR)
            }
        },
        // Sent and not acknowledged: it may have been stored (error 13, not
        // 10, which promises it was not).
        Err(PublishErrorKind::TimedOut) => Err(OpError::OutcomeUnknown(
            "nats timeout: the publication may have been stored",
        )),
        Err(e) => {
            log::warn!("publish failed: {e}");
            Err(JS_ERROR)
        }
    }
}
