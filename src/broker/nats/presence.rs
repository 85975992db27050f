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
//! Join and leave events go to the channel's live subject as `j`/`l` +
//! member JSON (core NATS), as with Redis: a join when the key did not
//! exist, a leave when this node held the member.

use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, Store};
use async_nats::jetstream::Context;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::names::Names;
use crate::config::NatsStorage;
use crate::pubsub::presence::{Member, Presence, PresenceInfo};

/// Member reads and refreshes in flight at once.
const CONCURRENCY: usize = 64;

pub(crate) struct Bucket {
    store: Store,
}

/// Open the bucket, creating it if needed.
pub(crate) async fn open(
    js: &Context,
    names: &Names,
    ttl: Duration,
    storage: NatsStorage,
    replicas: usize,
) -> Result<Bucket, String> {
    if let Ok(store) = js.get_key_value(names.bucket()).await {
        return Ok(Bucket { store });
    }
    let cfg = kv::Config {
        bucket: names.bucket(),
        description: "wsgate presence: channel.client -> member".into(),
        history: 1,
        max_age: ttl,
        storage: match storage {
            NatsStorage::File => async_nats::jetstream::stream::StorageType::File,
            NatsStorage::Memory => async_nats::jetstream::stream::StorageType::Memory,
        },
        num_replicas: replicas,
        ..Default::default()
    };
    match js.create_key_value(cfg).await {
        Ok(store) => Ok(Bucket { store }),
        // Created by another node meanwhile.
        Err(e) => js
            .get_key_value(names.bucket())
            .await
            .map(|store| Bucket { store })
            .map_err(|e2| format!("presence bucket: {e}; {e2}")),
    }
}

impl Bucket {
    /// Add (or refresh) a member; true if it was not there.
    pub async fn join(&self, key: &str, json: &str) -> Result<bool, String> {
        let value = Bytes::from(json.to_owned());
        match self.store.create(key, value.clone()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => self
                .store
                .put(key, value)
                .await
                .map(|_| false)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    pub async fn leave(&self, key: &str) -> Result<(), String> {
        self.store.delete(key).await.map_err(|e| e.to_string())
    }

    /// Re-put members (their TTL starts again).
    pub async fn refresh(&self, members: Vec<(String, String)>) -> Result<(), String> {
        let puts = stream::iter(members)
            .map(|(key, json)| async move { self.store.put(key, Bytes::from(json)).await })
            .buffer_unordered(CONCURRENCY);
        futures_util::pin_mut!(puts);
        while let Some(r) = puts.next().await {
            r.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The channel's live members.
    pub async fn members(&self, names: &Names, channel: &str) -> Result<PresenceInfo, String> {
        let subjects: Vec<String> = self
            .store
            .stream
            .info_with_subjects(names.members_filter(channel))
            .await
            .map_err(|e| e.to_string())?
            .map_ok(|(subject, _)| subject)
            .try_collect()
            .await
            .map_err(|e| e.to_string())?;
        let keys: Vec<String> = subjects
            .iter()
            .filter_map(|s| names.key_of_subject(s).map(str::to_owned))
            .collect();
        let entries = stream::iter(keys)
            .map(|key| async move { self.store.entry(key).await })
            .buffer_unordered(CONCURRENCY);
        futures_util::pin_mut!(entries);
        let mut p = Presence::default();
        while let Some(e) = entries.next().await {
            let Some(e) = e.map_err(|e| e.to_string())? else {
                continue;
            };
            if e.operation != Operation::Put {
                continue;
            }
            if let Ok(m) = serde_json::from_slice::<Member>(&e.value) {
                p.join(&m);
            }
        }
        Ok(p.info())
    }
}
