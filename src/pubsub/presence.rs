//! Who is in a channel: one entry per client (connection), carrying the
//! user identity when the client has one.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde_json::value::RawValue;

/// A member as the API and the join/leave events show it:
/// `{"client","user"?,"conn_info"?,"chan_info"?}` (Centrifugo's
/// `ClientInfo` names).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(from = "MemberWire")]
pub struct Member {
    pub client: String,
    pub user: Option<String>,
    /// What the backend hooks attached (issue 15), when they did: boxed,
    /// so that a member without any costs one word.
    pub info: Option<Box<MemberInfo>>,
}

/// Longest `conn_info` or `chan_info` a member carries (the proxies
/// refuse larger ones; members read back from Redis are checked).
pub const MAX_MEMBER_INFO: usize = 4096;

/// What the backend hooks attached to a member: the connect proxy's
/// `info` for the connection (`conn_info`, replaced by the refresh
/// proxy's) and the subscribe proxy's (or the connect answer's `subs`)
/// for this channel (`chan_info`). Compact JSON, compared by its text.
#[derive(Clone, Debug, Default)]
pub struct MemberInfo {
    pub conn: Option<Box<RawValue>>,
    pub chan: Option<Box<RawValue>>,
}

impl PartialEq for MemberInfo {
    fn eq(&self, o: &MemberInfo) -> bool {
        let text = |v: &Option<Box<RawValue>>| v.as_ref().map(|r| r.get().to_owned());
        text(&self.conn) == text(&o.conn) && text(&self.chan) == text(&o.chan)
    }
}

impl Eq for MemberInfo {}

/// A member as JSON carries it.
#[derive(serde::Deserialize)]
struct MemberWire {
    client: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    conn_info: Option<Box<RawValue>>,
    #[serde(default)]
    chan_info: Option<Box<RawValue>>,
}

impl From<MemberWire> for Member {
    fn from(w: MemberWire) -> Member {
        let info = (w.conn_info.is_some() || w.chan_info.is_some()).then(|| {
            Box::new(MemberInfo {
                conn: w.conn_info,
                chan: w.chan_info,
            })
        });
        Member {
            client: w.client,
            user: w.user,
            info,
        }
    }
}

impl serde::Serialize for Member {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let info = self.info.as_deref();
        let conn = info.and_then(|i| i.conn.as_deref());
        let chan = info.and_then(|i| i.chan.as_deref());
        let n = 1 + [self.user.is_some(), conn.is_some(), chan.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        let mut m = s.serialize_map(Some(n))?;
        m.serialize_entry("client", &self.client)?;
        if let Some(u) = &self.user {
            m.serialize_entry("user", u)?;
        }
        if let Some(c) = conn {
            m.serialize_entry("conn_info", c)?;
        }
        if let Some(c) = chan {
            m.serialize_entry("chan_info", c)?;
        }
        m.end()
    }
}

impl Member {
    /// A member without hook info.
    pub fn new(client: String, user: Option<String>) -> Member {
        Member {
            client,
            user,
            info: None,
        }
    }

    /// This member with `chan_info` for one channel (its `conn_info`
    /// kept).
    pub fn with_chan_info(&self, chan: Box<RawValue>) -> Member {
        let conn = self.info.as_ref().and_then(|i| i.conn.clone());
        Member {
            info: Some(Box::new(MemberInfo {
                conn,
                chan: Some(chan),
            })),
            ..self.clone()
        }
    }

    /// Does it hold what a node writes: a client id of the server's own
    /// (a few ASCII characters), a valid user id if any, and infos within
    /// [`MAX_MEMBER_INFO`]? (Checked on members read back from Redis.)
    pub fn valid(&self) -> bool {
        let small =
            |v: &Option<Box<RawValue>>| v.as_ref().is_none_or(|r| r.get().len() <= MAX_MEMBER_INFO);
        self.info
            .as_ref()
            .is_none_or(|i| small(&i.conn) && small(&i.chan))
            && !self.client.is_empty()
            && self.client.len() <= 64
            && self
                .client
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            && self
                .user
                .as_deref()
                .is_none_or(|u| super::valid_user(u, usize::MAX).is_ok())
    }
}

/// A member as presence holds it: the session's own identity (one
/// allocation shared by the session and every channel it is present in),
/// found by its client id. 8 bytes a slot, where a map from a copy of the
/// client id to a copy of the user took 48 and two allocations.
#[derive(Debug)]
struct Present(Arc<Member>);

impl Hash for Present {
    fn hash<H: Hasher>(&self, h: &mut H) {
        // As `str` hashes: `Borrow<str>` requires the same hash.
        self.0.client.as_str().hash(h);
    }
}

impl PartialEq for Present {
    fn eq(&self, other: &Present) -> bool {
        self.0.client == other.0.client
    }
}

impl Eq for Present {}

impl Borrow<str> for Present {
    fn borrow(&self) -> &str {
        &self.0.client
    }
}

/// The members of one channel.
#[derive(Debug, Default)]
pub struct Presence {
    clients: HashSet<Present>,
}

/// The answer to a presence request.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PresenceInfo {
    pub members: Vec<Member>,
    /// Clients (connections) present.
    pub clients: usize,
    /// Distinct users present (clients without a user count once each).
    pub users: usize,
}

impl Presence {
    /// Returns true if the client was not present before (a client present
    /// already is replaced: its user is the one given last).
    pub fn join(&mut self, m: Arc<Member>) -> bool {
        self.clients.replace(Present(m)).is_none()
    }

    /// Returns the member if the client was present.
    pub fn leave(&mut self, client: &str) -> Option<Arc<Member>> {
        let m = self.clients.take(client).map(|p| p.0);
        // A crowd that left gives its table back (it keeps its peak
        // capacity otherwise, for as long as the channel lives).
        if self.clients.capacity() > 64 && self.clients.len() * 4 < self.clients.capacity() {
            self.clients.shrink_to(self.clients.len() * 2);
        }
        m
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    pub fn info(&self) -> PresenceInfo {
        let mut members: Vec<Member> = self.clients.iter().map(|p| Member::clone(&p.0)).collect();
        members.sort_by(|a, b| a.client.cmp(&b.client));
        let mut users: Vec<&str> = members
            .iter()
            .map(|m| m.user.as_deref().unwrap_or(&m.client))
            .collect();
        users.sort_unstable();
        users.dedup();
        PresenceInfo {
            clients: members.len(),
            users: users.len(),
            members,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_clients_and_users() {
        let mut p = Presence::default();
        let m = |c: &str, u: Option<&str>| Arc::new(Member::new(c.into(), u.map(Into::into)));
        assert!(p.join(m("c1", Some("alice"))));
        assert!(p.join(m("c2", Some("alice"))));
        assert!(p.join(m("c3", None)));
        assert!(!p.join(m("c3", None)));
        let info = p.info();
        assert_eq!((info.clients, info.users), (3, 2));
        assert_eq!(
            p.leave("c1").and_then(|m| m.user.clone()).as_deref(),
            Some("alice")
        );
        assert!(p.leave("c1").is_none());
        assert_eq!(p.info().members.len(), 2);
    }

    #[test]
    fn hook_infos_travel_as_conn_info_and_chan_info() {
        let raw = |s: &str| RawValue::from_string(s.into()).unwrap();
        let plain = Member::new("c1".into(), Some("ann".into()));
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"client":"c1","user":"ann"}"#
        );
        let mut m = plain.clone();
        m.info = Some(Box::new(MemberInfo {
            conn: Some(raw(r#"{"name":"Ann"}"#)),
            chan: None,
        }));
        let m = m.with_chan_info(raw(r#"{"role":"mod"}"#));
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(
            text,
            r#"{"client":"c1","user":"ann","conn_info":{"name":"Ann"},"chan_info":{"role":"mod"}}"#
        );
        let back: Member = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
        assert!(back.valid());
        let back: Member = serde_json::from_str(r#"{"client":"c1"}"#).unwrap();
        assert_eq!(back, Member::new("c1".into(), None));
        let huge = format!(r#"{{"client":"c1","chan_info":"{}"}}"#, "x".repeat(5000));
        let m: Member = serde_json::from_str(&huge).unwrap();
        assert!(!m.valid(), "an info over {MAX_MEMBER_INFO} bytes read back");
    }
}
