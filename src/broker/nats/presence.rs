//! Presence in a JetStream key-value bucket with a TTL.
//!
//! One bucket per deployment (`PREFIX_presence`, `max_age` =
//! `presence_ttl`, one value per key), one key per member:
//! `CHANNEL_TOKEN.CLIENT_TOKEN` → the member's JSON. Each node re-puts its
//! members every `presence_refresh`, which moves their age back to zero;
//! the members of a node that died expire with the bucket's `max_age`, as
//! the Redis hash fields expire with theirs. A channel's members are the
//! live (not deleted) keys under its token, found with the stream info's
//! subject filter and read one by one.
//!
//! The bucket is the standard layout (stream `KV_BUCKET`, subjects
//! `$KV.BUCKET.KEY`, a delete is an empty message with `KV-Operation: DEL`),
//! so the `nats kv` tools read it; it is driven through the JetStream API
//! directly because async-nats' key-value calls do not parse nats-server
//! 2.9's answers (Debian's server; bucket creation fails there).
//!
//! Join and leave events go to the channel's live subject as `j`/`l` +
//! member JSON (core NATS), as with Redis.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use tokio::sync::mpsc::UnboundedReceiver;

use super::names::Names;
use super::store::{Js, JsError};
use super::{Settings, JS_ERROR, UNREACHABLE};
use crate::base::OpError;
use crate::config::NatsStorage;
use crate::pubsub::presence::{Member, Presence, PresenceInfo};

/// Member reads and refreshes in flight at once.
const CONCURRENCY: usize = 64;

pub(crate) struct Bucket {
    js: Js,
    ctx: Context,
    /// `$KV.BUCKET.`
    prefix: String,
    stream: String,
}

/// Open the bucket, creating it if needed.
pub(crate) async fn open(
    js: &Js,
    ctx: &Context,
    names: &Names,
    ttl: Duration,
    storage: NatsStorage,
    replicas: usize,
) -> Result<Bucket, JsError> {
    let bucket = names.bucket();
    let stream = format!("KV_{bucket}");
    let b = Bucket {
        js: js.clone(),
        ctx: ctx.clone(),
        prefix: format!("$KV.{bucket}."),
        stream: stream.clone(),
    };
    match js.info(&stream).await {
        Ok(_) => return Ok(b),
        Err(JsError::NoStream) => {}
        Err(e) => return Err(e),
    }
    let cfg = serde_json::json!({
        "name": stream,
        "description": "wsgate presence: channel.client -> member",
        "subjects": [format!("$KV.{bucket}.>")],
        "retention": "limits",
        "max_consumers": -1,
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": ttl.as_nanos() as u64,
        "max_msgs_per_subject": 1,
        "max_msg_size": -1,
        "discard": "old",
        "storage": match storage {
            NatsStorage::File => "file",
            NatsStorage::Memory => "memory",
        },
        "num_replicas": replicas,
        "allow_rollup_hdrs": true,
        "deny_delete": true,
        "allow_direct": true,
    });
    match js.create(&cfg).await {
        // Created here, or by another node meanwhile.
        Ok(()) | Err(JsError::Api(10058, _)) => Ok(b),
        Err(e) => Err(e),
    }
}

impl Bucket {
    async fn put(&self, key: &str, json: Bytes, headers: Option<HeaderMap>) -> Result<(), JsError> {
        use async_nats::jetstream::context::PublishErrorKind;
        let subject = format!("{}{key}", self.prefix);
        let sent = match headers {
            Some(h) => self.ctx.publish_with_headers(subject, h, json).await,
            None => self.ctx.publish(subject, json).await,
        };
        let acked = match sent {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        acked.map(|_| ()).map_err(|e| match e.kind() {
            PublishErrorKind::StreamNotFound => JsError::NoStream,
            PublishErrorKind::TimedOut => JsError::Unreachable(e.to_string()),
            _ => JsError::Api(0, e.to_string()),
        })
    }

    /// Add (or refresh) a member.
    pub async fn join(&self, key: &str, json: &str) -> Result<(), JsError> {
        self.put(key, Bytes::from(json.to_owned()), None).await
    }

    pub async fn leave(&self, key: &str) -> Result<(), JsError> {
        let mut h = HeaderMap::new();
        h.insert("KV-Operation", "DEL");
        self.put(key, Bytes::new(), Some(h)).await
    }

    /// Re-put members (their TTL starts again).
    pub async fn refresh(&self, members: Vec<(String, String)>) -> Result<(), JsError> {
        let puts = stream::iter(members)
            .map(|(key, json)| async move { self.join(&key, &json).await })
            .buffer_unordered(CONCURRENCY);
        futures_util::pin_mut!(puts);
        while let Some(r) = puts.next().await {
            r?;
        }
        Ok(())
    }

    /// The channel's live members.
    pub async fn members(&self, names: &Names, channel: &str) -> Result<PresenceInfo, JsError> {
        let subjects = self
            .js
            .subjects(&self.stream, &names.members_filter(channel))
            .await?;
        let lasts = stream::iter(subjects)
            .map(|s| async move { self.js.last_for(&self.stream, &s).await })
            .buffer_unordered(CONCURRENCY);
        futures_util::pin_mut!(lasts);
        let mut p = Presence::default();
        while let Some(last) = lasts.next().await {
            let Some((headers, data)) = last? else {
                continue; // expired meanwhile
            };
            if headers.contains("KV-Operation") {
                continue; // deleted or purged
            }
            if let Ok(m) = serde_json::from_slice::<Member>(&data) {
                p.join(m);
            }
        }
        Ok(p.info())
    }
}

/// Work for the presence task.
pub(super) enum PresenceOp {
    Join {
        key: String,
        json: String,
        /// The live subject to announce a new member on.
        event: Option<String>,
    },
    Leave {
        key: String,
        json: String,
        event: Option<String>,
    },
    Refresh(Vec<(String, String)>),
    /// A join or leave of a member not tracked (`j`/`l` + its JSON) on
    /// a live subject.
    Announce {
        subject: String,
        payload: String,
    },
    Read {
        channel: String,
        answer: tokio::sync::oneshot::Sender<Result<PresenceInfo, OpError>>,
    },
}

/// Presence, one operation at a time, in the order queued.
pub(super) async fn presence_task(
    mut rx: UnboundedReceiver<PresenceOp>,
    ctx: async_nats::jetstream::Context,
    client: Client,
    s: Settings,
    js_ok: Arc<AtomicBool>,
) {
    let js = Js::new(client.clone(), s.command_timeout);
    let mut bucket: Option<Bucket> = None;
    while let Some(op) = rx.recv().await {
        if let PresenceOp::Announce { subject, payload } = op {
            // No bucket needed: a member not tracked is only announced.
            if let Err(e) = client.publish(subject, Bytes::from(payload)).await {
                log::warn!("presence event not sent: {e}");
            }
            continue;
        }
        if bucket.is_none() {
            match open(&js, &ctx, &s.names, s.presence_ttl, s.storage, s.replicas).await {
                Ok(b) => bucket = Some(b),
                Err(e) => log::warn!("presence bucket: {e}"),
            }
        }
        let Some(b) = &bucket else {
            if let PresenceOp::Read { answer, .. } = op {
                let _ = answer.send(Err(UNREACHABLE));
            }
            continue;
        };
        let announce = |subject: Option<String>, payload: String| {
            let client = client.clone();
            async move {
                if let Some(subject) = subject {
                    if let Err(e) = client.publish(subject, Bytes::from(payload)).await {
                        log::warn!("presence event not sent: {e}");
                    }
                }
            }
        };
        let failed = match op {
            PresenceOp::Join { key, json, event } => match b.join(&key, &json).await {
                Ok(()) => {
                    announce(event, format!("j{json}")).await;
                    None
                }
                Err(e) => Some((format!("join {key:?}"), e)),
            },
            PresenceOp::Leave { key, json, event } => match b.leave(&key).await {
                Ok(()) => {
                    announce(event, format!("l{json}")).await;
                    None
                }
                Err(e) => Some((format!("leave {key:?}"), e)),
            },
            PresenceOp::Refresh(all) => b.refresh(all).await.err().map(|e| ("refresh".into(), e)),
            PresenceOp::Announce { .. } => None,
            PresenceOp::Read { channel, answer } => {
                let (info, failed) = match b.members(&s.names, &channel).await {
                    Ok(info) => (Ok(info), None),
                    Err(e) => {
                        let unreachable =
                            matches!(e, JsError::Unreachable(_)) || !js_ok.load(Ordering::Acquire);
                        let code = if unreachable { UNREACHABLE } else { JS_ERROR };
                        (Err(code), Some((format!("read of {channel:?}"), e)))
                    }
                };
                let _ = answer.send(info);
                failed
            }
        };
        if let Some((what, e)) = failed {
            log::warn!("presence {what}: {e}");
            if matches!(e, JsError::NoStream) {
                // The bucket was lost with its server (memory storage): the
                // next operation makes it anew, the refresh puts the
                // members back.
                bucket = None;
            }
        }
    }
}
