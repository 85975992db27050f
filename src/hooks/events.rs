//! The engine's and the brokers' side of webhooks: one [`Events`] per node,
//! shared by the workers and the broker, that builds an event only when
//! `[webhooks] events` asks for its kind and hands it to
//! [`Webhooks::emit`] (never blocks: a full queue drops and counts).
//!
//! Who emits what (docs/hooks.md, "Webhooks"):
//!
//! | event | emitted by |
//! |---|---|
//! | `channel_occupied`, `channel_vacated` | the broker: memory, the channel's subscriber count; Redis, a per-channel set of nodes changed by a script (exactly one node sees 0 → 1 and one sees 1 → 0); NATS, per node |
//! | `member_added`, `member_removed` | the broker, on the node of the connection that joined or left a presence channel |
//! | `client_disconnected` | the session, when a WebSocket or SSE connection ends |
//! | `client_event` | the broker, once a client's publication has its position, in namespaces with `client_events = true` (`PublishOptions::event_from`) |
//! | `user_online`, `user_offline` | the broker's user presence ([`crate::pubsub::users`]) |

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;

use super::config::EventKind;
use super::proxy::Json;
use super::webhooks::{Event, WebhookStats, Webhooks};
use crate::pubsub::presence::Member;

/// The node's webhook sender, or none (`webhooks.url` empty): every call
/// is then a no-op costing one branch.
#[derive(Clone, Default)]
pub struct Events(Option<Arc<Webhooks>>);

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Events(on)"
        } else {
            "Events(off)"
        })
    }
}

impl Events {
    /// No webhooks.
    pub const OFF: Events = Events(None);

    pub fn new(hooks: Arc<Webhooks>) -> Events {
        Events(Some(hooks))
    }

    /// Is this kind of event sent?
    pub fn wants(&self, kind: EventKind) -> bool {
        self.0.as_ref().is_some_and(|w| w.wants(kind))
    }

    fn emit(&self, kind: EventKind, build: impl FnOnce() -> Event) {
        if let Some(w) = self.0.as_ref().filter(|w| w.wants(kind)) {
            w.emit(build());
        }
    }

    /// `channel_occupied` (`occupied`) or `channel_vacated`.
    pub fn channel(&self, channel: &str, occupied: bool) {
        let kind = if occupied {
            EventKind::ChannelOccupied
        } else {
            EventKind::ChannelVacated
        };
        self.emit(kind, || Event::channel(kind, channel));
    }

    /// `member_added` (`added`) or `member_removed`.
    pub fn member(&self, channel: &str, m: &Member, added: bool) {
        let kind = if added {
            EventKind::MemberAdded
        } else {
            EventKind::MemberRemoved
        };
        self.emit(kind, || Event::member(kind, channel, &m.client(), m.user()));
    }

    /// `client_disconnected`, with the close code and reason (`""`: none).
    pub fn disconnected(&self, client: &str, user: Option<&str>, code: u16, reason: &str) {
        self.emit(EventKind::ClientDisconnected, || {
            Event::disconnected(client, user, code, reason)
        });
    }

    /// `client_event`: a client's accepted publication.
    pub fn client_event(&self, channel: &str, client: &str, user: Option<&str>, data: &RawValue) {
        self.emit(EventKind::ClientEvent, || {
            Event::client_event(channel, client, user, Json(data.to_owned()))
        });
    }

    /// `user_online` (`online`) or `user_offline`.
    pub fn user(&self, user: &str, online: bool) {
        let kind = if online {
            EventKind::UserOnline
        } else {
            EventKind::UserOffline
        };
        self.emit(kind, || Event::user(kind, user));
    }

    /// The sender's counters, when there is one.
    pub fn stats(&self) -> Option<WebhookStats> {
        self.0.as_ref().map(|w| w.stats())
    }

    /// The counters for `/api/stats` (`null` when webhooks are off).
    pub fn stats_json(&self) -> serde_json::Value {
        match self.stats() {
            None => serde_json::Value::Null,
            Some(s) => serde_json::json!({
                "emitted": s.emitted,
                "dropped": s.dropped,
                "delivered": s.delivered,
                "batches": s.batches,
                "attempts": s.attempts,
                "lost": s.lost,
                "queued": s.queued,
            }),
        }
    }

    /// At drain: deliver what is queued for up to `grace`.
    pub fn stop(&self, grace: Duration) {
        if let Some(w) = &self.0 {
            w.stop(grace);
        }
    }
}
