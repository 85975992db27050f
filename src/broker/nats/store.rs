//! History and offsets in JetStream: one stream per channel.
//!
//! A channel's offsets must grow by one per publication (the wire contract)
//! and be assigned atomically with storing the publication, as the Redis
//! publish script does. The only atomic counter JetStream has is a stream's
//! sequence, so each channel gets a stream of its own, and its sequence is
//! the channel's offset. Its limits are the channel's history limits
//! (`max_msgs` = `history_size`, `max_bytes` = `history_bytes`, `max_age` =
//! `history_ttl`, oldest discarded first), and it **republishes** every
//! stored message, in sequence order, to the channel's live subject with
//! `Nats-Stream` and `Nats-Sequence` headers: the server does what the
//! Redis script's `PUBLISH` does, and only a stored publication is ever
//! delivered.
//!
//! **Epoch.** A stream's name is `PREFIX_EPOCH` with a fresh random epoch,
//! and the stream is found by the subject it captures (`PREFIX.h.TOKEN`),
//! not by name. Every answer that carries an offset also carries the
//! stream's name (the publish acknowledgement, the republished headers, the
//! stream info), so an offset can never be paired with another stream's
//! epoch, even while nodes hold stale caches. When a channel's stream is
//! lost (deleted, expired by [`Store::sweep`], gone with a server that kept
//! it in memory) the next publish or subscribe creates a new one, with a new
//! epoch: clients asking with the old one get `"recovered":false`, current
//! subscribers a `resync` event (the hub's rules, as with Redis).
//!
//! Requests use the JetStream API directly (JSON over request/reply,
//! `$JS.API.STREAM.*`), which every server since 2.9 answers the same way.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::names::Names;
use crate::broker::publication_frame;
use crate::broker::redis::hub::Snap;
use crate::config::{ChannelPolicy, NatsStorage};
use crate::pubsub::history::Publication;

/// Stream messages read at once (concurrent `MSG.GET` requests).
const READ_CONCURRENCY: usize = 64;
/// Channels whose stream name a node remembers; beyond, it forgets them
/// all (they are looked up again by subject).
const CACHE_MAX: usize = 100_000;
/// Streams listed per sweep page.
const PAGE: usize = 256;

/// What a JetStream request can fail with.
#[derive(Debug)]
pub(crate) enum JsError {
    /// The stream does not exist (JetStream error 10059).
    NoStream,
    /// Another stream already captures the subject (10065).
    Overlap,
    /// No such message (10037): removed by the limits since it was seen.
    NoMessage,
    /// Any other JetStream error.
    Api(u32, String),
    /// No answer: timeout, no responders (JetStream is not available),
    /// connection lost.
    Unreachable(String),
}

impl std::fmt::Display for JsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsError::NoStream => write!(f, "stream not found"),
            JsError::Overlap => write!(f, "subjects overlap with an existing stream"),
            JsError::NoMessage => write!(f, "no message found"),
            JsError::Api(code, d) => write!(f, "jetstream error {code}: {d}"),
            JsError::Unreachable(why) => write!(f, "{why}"),
        }
    }
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u32,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct StreamNames {
    #[serde(default)]
    total: usize,
    #[serde(default)]
    streams: Option<Vec<String>>,
}

#[derive(Deserialize, Debug)]
struct NameOnly {
    name: String,
}

/// The parts of a stream's info the broker reads.
#[derive(Deserialize, Debug)]
pub(crate) struct StreamInfo {
    config: NameOnly,
    #[serde(default)]
    created: String,
    pub state: StreamState,
}

#[derive(Deserialize, Debug)]
pub(crate) struct StreamState {
    #[serde(default)]
    pub messages: u64,
    #[serde(default)]
    pub first_seq: u64,
    #[serde(default)]
    pub last_seq: u64,
    #[serde(default)]
    last_ts: String,
}

#[derive(Deserialize)]
struct MsgGet {
    message: StoredMsg,
}

#[derive(Deserialize)]
struct StoredMsg {
    seq: u64,
    /// The header block, base64.
    #[serde(default)]
    hdrs: String,
    /// The payload, base64.
    #[serde(default)]
    data: String,
}

#[derive(Deserialize)]
struct InfoSubjects {
    state: SubjectsState,
}

#[derive(Deserialize)]
struct SubjectsState {
    #[serde(default)]
    subjects: Option<HashMap<String, u64>>,
}

/// The JetStream API of one connection.
#[derive(Clone)]
pub(crate) struct Js {
    client: Client,
    timeout: Duration,
}

impl Js {
    pub fn new(client: Client, timeout: Duration) -> Js {
        Js { client, timeout }
    }

    /// A request to the JetStream API; its answer's JSON (errors mapped).
    async fn request<T: serde::de::DeserializeOwned>(
        &self,
        subject: String,
        body: Vec<u8>,
    ) -> Result<T, JsError> {
        let msg = match tokio::time::timeout(
            self.timeout,
            self.client.request(subject, Bytes::from(body)),
        )
        .await
        {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(JsError::Unreachable(e.to_string())),
            Err(_) => return Err(JsError::Unreachable("request timed out".into())),
        };
        let v: serde_json::Value = serde_json::from_slice(&msg.payload)
            .map_err(|e| JsError::Api(0, format!("unreadable answer: {e}")))?;
        if let Some(err) = v.get("error") {
            let e: ApiError = serde_json::from_value(err.clone()).unwrap_or(ApiError {
                err_code: 0,
                description: err.to_string(),
            });
            return Err(match e.err_code {
                10059 => JsError::NoStream,
                10065 => JsError::Overlap,
                10037 => JsError::NoMessage,
                c => JsError::Api(c, e.description),
            });
        }
        serde_json::from_value(v).map_err(|e| JsError::Api(0, format!("unexpected answer: {e}")))
    }

    /// The stream that captures `subject`, if any.
    pub async fn stream_for(&self, subject: &str) -> Result<Option<String>, JsError> {
        let body = serde_json::json!({ "subject": subject })
            .to_string()
            .into_bytes();
        let names: StreamNames = self.request("$JS.API.STREAM.NAMES".into(), body).await?;
        Ok(names.streams.and_then(|s| s.into_iter().next()))
    }

    /// Every stream name capturing a subject under `filter`.
    pub async fn streams_under(&self, filter: &str) -> Result<Vec<String>, JsError> {
        let mut out = Vec::new();
        loop {
            let body = serde_json::json!({ "subject": filter, "offset": out.len() })
                .to_string()
                .into_bytes();
            let page: StreamNames = self.request("$JS.API.STREAM.NAMES".into(), body).await?;
            let got = page.streams.unwrap_or_default();
            let done = got.len() < PAGE.min(page.total.max(1)) || got.is_empty();
            out.extend(got);
            if done || out.len() >= page.total {
                return Ok(out);
            }
        }
    }

    pub async fn create(&self, config: &serde_json::Value) -> Result<(), JsError> {
        let name = config["name"].as_str().unwrap_or_default();
        let _: serde_json::Value = self
            .request(
                format!("$JS.API.STREAM.CREATE.{name}"),
                config.to_string().into_bytes(),
            )
            .await?;
        Ok(())
    }

    pub async fn info(&self, stream: &str) -> Result<StreamInfo, JsError> {
        self.request(format!("$JS.API.STREAM.INFO.{stream}"), Vec::new())
            .await
    }

    /// A stored message: its sequence, header block and data (`None`: no
    /// such message, or no longer held).
    async fn get_msg(
        &self,
        stream: &str,
        query: serde_json::Value,
    ) -> Result<Option<(u64, String, Vec<u8>)>, JsError> {
        use base64::engine::general_purpose::STANDARD;
        use base64::Engine;
        let body = query.to_string().into_bytes();
        match self
            .request::<MsgGet>(format!("$JS.API.STREAM.MSG.GET.{stream}"), body)
            .await
        {
            Ok(m) => {
                let bad = |e| JsError::Api(0, format!("message {}: {e}", m.message.seq));
                let data = STANDARD.decode(m.message.data.as_bytes()).map_err(bad)?;
                let hdrs = STANDARD.decode(m.message.hdrs.as_bytes()).map_err(bad)?;
                let hdrs = String::from_utf8_lossy(&hdrs).into_owned();
                Ok(Some((m.message.seq, hdrs, data)))
            }
            Err(JsError::NoMessage) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The data of message `seq` (`None`: no longer held).
    pub async fn get(&self, stream: &str, seq: u64) -> Result<Option<(u64, Vec<u8>)>, JsError> {
        let got = self
            .get_msg(stream, serde_json::json!({ "seq": seq }))
            .await?;
        Ok(got.map(|(seq, _, data)| (seq, data)))
    }

    /// The last message on `subject`: its header block and data.
    pub async fn last_for(
        &self,
        stream: &str,
        subject: &str,
    ) -> Result<Option<(String, Vec<u8>)>, JsError> {
        let q = serde_json::json!({ "last_by_subj": subject });
        let got = self.get_msg(stream, q).await?;
        Ok(got.map(|(_, hdrs, data)| (hdrs, data)))
    }

    /// The subjects of `stream` under `filter` that hold messages.
    pub async fn subjects(&self, stream: &str, filter: &str) -> Result<Vec<String>, JsError> {
        let body = serde_json::json!({ "subjects_filter": filter })
            .to_string()
            .into_bytes();
        let info: InfoSubjects = self
            .request(format!("$JS.API.STREAM.INFO.{stream}"), body)
            .await?;
        Ok(info
            .state
            .subjects
            .map(|m| m.into_keys().collect())
            .unwrap_or_default())
    }

    pub async fn delete(&self, stream: &str) -> Result<(), JsError> {
        match self
            .request::<serde_json::Value>(format!("$JS.API.STREAM.DELETE.{stream}"), Vec::new())
            .await
        {
            Ok(_) | Err(JsError::NoStream) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether JetStream answers at all (the account's info).
    pub async fn probe(&self) -> Result<(), JsError> {
        self.request::<serde_json::Value>("$JS.API.INFO".into(), Vec::new())
            .await
            .map(|_| ())
    }
}

/// How a read is shaped (as the Redis read script's modes).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Read {
    /// The position only.
    Meta,
    /// Publications after this offset, at most `count`.
    After(u64, usize),
    /// The last `count` publications.
    Last(usize),
}

/// Streams per channel: creation, lookup, reads, rebase, sweep.
pub(crate) struct Store {
    pub js: Js,
    names: Names,
    policy: Arc<ChannelPolicy>,
    storage: NatsStorage,
    replicas: usize,
    /// channel → the name of its stream (as last seen).
    cache: RefCell<HashMap<Arc<str>, String>>,
}

impl Store {
    pub fn new(
        js: Js,
        names: Names,
        policy: Arc<ChannelPolicy>,
        storage: NatsStorage,
        replicas: usize,
    ) -> Store {
        Store {
            js,
            names,
            policy,
            storage,
            replicas,
            cache: RefCell::new(HashMap::new()),
        }
    }

    pub fn cached(&self, channel: &str) -> bool {
        self.cache.borrow().contains_key(channel)
    }

    pub fn forget(&self, channel: &str) {
        self.cache.borrow_mut().remove(channel);
    }

    fn remember(&self, channel: &str, stream: &str) {
        let mut c = self.cache.borrow_mut();
        if c.len() >= CACHE_MAX {
            c.clear();
        }
        c.insert(channel.into(), stream.to_owned());
    }

    /// The configuration of a new stream for `channel` under `epoch`.
    pub fn stream_config(&self, channel: &str, epoch: &str) -> serde_json::Value {
        let o = self.policy.options(channel);
        let stored = self.names.stored(channel);
        serde_json::json!({
            "name": self.names.stream(epoch),
            "description": channel,
            "subjects": [stored],
            "retention": "limits",
            "max_consumers": -1,
            // A stream keeps at least one message; reads honour a
            // history_size of 0 by returning none.
            "max_msgs": o.history_size.max(1),
            "max_bytes": if o.history_bytes == 0 { 1 } else { o.history_bytes as i64 },
            "max_age": Duration::from_millis(o.history_ttl.0.max(1)).as_nanos() as u64,
            // Idempotency keys (Nats-Msg-Id) are remembered this long:
            // Centrifugo's 5 minutes, or the history's TTL if shorter (the
            // server refuses a window longer than `max_age`).
            "duplicate_window": Duration::from_millis(
                crate::broker::IDEMPOTENCY_WINDOW_MS.min(o.history_ttl.0.max(1))
            )
            .as_nanos() as u64,
            "max_msgs_per_subject": -1,
            "max_msg_size": -1,
            "discard": "old",
            "storage": match self.storage {
                NatsStorage::File => "file",
                NatsStorage::Memory => "memory",
            },
            "num_replicas": self.replicas,
            "republish": { "src": stored, "dest": self.names.live(channel) },
        })
    }

    /// The stream of `channel`: from the cache, else looked up by subject,
    /// else (if `create`) made with a fresh epoch. `None`: there is none.
    pub async fn stream(&self, channel: &str, create: bool) -> Result<Option<String>, JsError> {
        if let Some(s) = self.cache.borrow().get(channel) {
            return Ok(Some(s.clone()));
        }
        let stored = self.names.stored(channel);
        for _ in 0..3 {
            if let Some(s) = self.js.stream_for(&stored).await? {
                self.remember(channel, &s);
                return Ok(Some(s));
            }
            if !create {
                return Ok(None);
            }
            let cfg = self.stream_config(channel, &crate::broker::new_epoch());
            match self.js.create(&cfg).await {
                Ok(()) => {
                    let name = cfg["name"].as_str().unwrap_or_default().to_owned();
                    log::debug!("channel {channel:?}: stream {name} created");
                    self.remember(channel, &name);
                    return Ok(Some(name));
                }
                // Another node created it first: look it up again.
                Err(JsError::Overlap) => {}
                Err(e) => return Err(e),
            }
        }
        Err(JsError::Api(0, "stream creation kept conflicting".into()))
    }

    /// Read a channel's position and publications (`None`: the channel has
    /// no stream and `create` is false). A stream that vanished since it
    /// was cached is looked up (or created) again.
    pub async fn snapshot(
        &self,
        channel: &str,
        read: Read,
        create: bool,
        now_ms: u64,
    ) -> Result<Option<Snap>, JsError> {
        for _ in 0..2 {
            let Some(stream) = self.stream(channel, create).await? else {
                return Ok(None);
            };
            match self.read(channel, &stream, read, now_ms).await {
                Err(JsError::NoStream) => self.forget(channel),
                other => return other.map(Some),
            }
        }
        Err(JsError::NoStream)
    }

    async fn read(
        &self,
        channel: &str,
        stream: &str,
        read: Read,
        now_ms: u64,
    ) -> Result<Snap, JsError> {
        let info = self.js.info(stream).await?;
        let epoch = self
            .names
            .epoch_of(&info.config.name)
            .ok_or_else(|| JsError::Api(0, format!("stream {stream} is not a wsgate stream")))?;
        let top = info.state.last_seq;
        let size = self.policy.options(channel).history_size;
        // Messages held: first_seq..=last_seq (none if empty).
        let first = if info.state.messages == 0 {
            top + 1
        } else {
            info.state.first_seq.max(1)
        };
        let (from, to) = match read {
            Read::Meta => (1, 0),
            Read::After(after, count) => {
                let count = count.min(size) as u64;
                (first.max(after + 1), top.min(after.saturating_add(count)))
            }
            Read::Last(count) => {
                let count = count.min(size) as u64;
                (first.max((top + 1).saturating_sub(count)), top)
            }
        };
        let mut pubs = Vec::new();
        if from <= to {
            let gets = stream::iter(from..=to)
                .map(|seq| self.js.get(stream, seq))
                .buffered(READ_CONCURRENCY);
            futures_util::pin_mut!(gets);
            while let Some(got) = gets.next().await {
                let Some((seq, data)) = got? else {
                    continue; // removed by the limits meanwhile
                };
                let Ok(raw) = serde_json::from_slice::<&RawValue>(&data) else {
                    log::warn!("channel {channel:?}: offset {seq} is not JSON; skipped");
                    continue;
                };
                pubs.push(Publication {
                    offset: seq,
                    at_ms: now_ms,
                    frame: publication_frame(channel, seq, raw),
                });
            }
        }
        Ok(Snap {
            epoch: epoch.into(),
            top,
            pubs,
        })
    }

    /// The channel's offset went backwards under `epoch` (below `last`,
    /// which this node delivered): JetStream lost acknowledged
    /// publications, so the same offsets would name others. Replace the
    /// stream by a new one (a new epoch), unless someone already did.
    pub async fn rebase(&self, channel: &str, epoch: &str, last: u64) -> Result<(), JsError> {
        self.forget(channel);
        let Some(stream) = self.stream(channel, false).await? else {
            return Ok(());
        };
        if self.names.epoch_of(&stream) != Some(epoch) {
            return Ok(());
        }
        let info = self.js.info(&stream).await?;
        if info.state.last_seq < last {
            log::warn!(
                "channel {channel:?}: stream {stream} is at {} below the {last} delivered: \
                 replacing it (a new epoch)",
                info.state.last_seq
            );
            self.js.delete(&stream).await?;
            self.forget(channel);
        }
        Ok(())
    }

    /// Delete the streams of channels idle for `idle` (no publication, and
    /// created before that): what the Redis meta key's TTL does. Times are
    /// the server's (stream creation, last message) against this node's
    /// clock. Returns how many were deleted.
    pub async fn sweep(&self, idle: Duration) -> Result<usize, JsError> {
        let now = time::OffsetDateTime::now_utc();
        let names = self.js.streams_under(&self.names.stored_all()).await?;
        let mut deleted = 0;
        for name in names {
            if self.names.epoch_of(&name).is_none() {
                continue;
            }
            let info = match self.js.info(&name).await {
                Ok(i) => i,
                Err(JsError::NoStream) => continue,
                Err(e) => return Err(e),
            };
            let last = [&info.created, &info.state.last_ts]
                .iter()
                .filter_map(|t| parse_time(t))
                .max();
            let Some(last) = last else { continue };
            if now - last >= idle {
                self.js.delete(&name).await?;
                self.cache.borrow_mut().retain(|_, s| *s != name);
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_times_parse() {
        let t = parse_time("2026-12-03T08:09:03.779467396Z").unwrap();
        assert_eq!(t.year(), 2026);
        assert!(parse_time("0001-01-01T00:00:00Z").is_some());
        assert!(parse_time("").is_none());
    }
}
