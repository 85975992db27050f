//! Live messages: a task per channel the node subscribes to, and one for
//! the control subject, each handing what arrives to the hub.

use std::sync::Arc;

use futures_util::StreamExt;

use super::names::{live_payload, Names, HDR_SEQUENCE, HDR_STREAM};
use crate::broker::redis::hub::Hub;

/// Hand a channel's live messages to the hub: republished publications
/// (headers name the stream and the sequence) as `OFFSET:EPOCH:DATA`,
/// presence events (`j`/`l` + member JSON) as they are.
pub(super) async fn live_task(
    mut sub: async_nats::Subscriber,
    hub: Arc<Hub>,
    names: Names,
    channel: Arc<str>,
) {
    while let Some(msg) = sub.next().await {
        match &msg.headers {
            Some(h) => {
                let stream = h.get(HDR_STREAM).map(|v| v.as_str());
                let seq = h.get(HDR_SEQUENCE).map(|v| v.as_str());
                match live_payload(&names, stream, seq, &msg.payload) {
                    Some(p) => hub.on_message(&channel, &p),
                    None => {
                        log::warn!("message on channel {channel:?} from stream {stream:?} ignored")
                    }
                }
            }
            None => hub.on_message(&channel, &msg.payload),
        }
    }
}

/// The control subject: `d<INSTANCE>\n<USER>` from another node
/// disconnects USER here too.
pub(super) async fn control_task(mut sub: async_nats::Subscriber, hub: Arc<Hub>, instance: String) {
    while let Some(msg) = sub.next().await {
        let text = String::from_utf8_lossy(&msg.payload);
        match text.strip_prefix('d').and_then(|r| r.split_once('\n')) {
            Some((node, _)) if node == instance => {}
            Some((node, user)) => {
                log::info!("node {node} disconnects user {user:?}: closing its connections here");
                hub.disconnect_user(user);
            }
            None => log::warn!("unknown control message ignored: {text:?}"),
        }
    }
}
