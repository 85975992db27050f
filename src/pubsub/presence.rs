//! Who is in a channel: one entry per client (connection), carrying the
//! user identity when the client has one.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};

use serde_json::value::RawValue;
use triomphe::ThinArc;

/// A member of a channel: a client id (the connection's), its user, if
/// any, and what the backend hooks attached, as the API and the join/leave
/// events show it (`{"client","user"?,"conn_info"?,"chan_info"?}`,
/// Centrifugo's `ClientInfo` names).
///
/// One allocation for both strings and their reference count (issue 13,
/// docs/density.md): the session holds its identity as a `Member` and
/// every channel's presence it is in shares it, 8 bytes each. Clones
/// share it. The bytes are the client id then the user; the header says
/// where the client id ends and whether there is a user. (Was an
/// `Arc<Member>` of two `String`s: three blocks, 112 B of malloc chunks
/// for a 13-byte client id, where this is one of 48.)
#[derive(Clone, PartialEq, Eq)]
pub struct Member(ThinArc<Head, u8>);

/// A [`Member`]'s header: where the client id ends in its bytes (low 31
/// bits) and whether a user follows (top bit); the hooks' infos, boxed, so
/// that a member without any costs one word.
#[derive(Clone, PartialEq, Eq)]
struct Head {
    split: u32,
    info: Option<Box<MemberInfo>>,
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

const HAS_USER: u32 = 1 << 31;

impl Member {
    /// A member; a client id of 2^31 bytes or more is cut (they are a few
    /// characters: [`Member::valid`]).
    pub fn new(client: &str, user: Option<&str>) -> Member {
        Member::with_info(client, user, None)
    }

    /// A member with the hooks' infos (`None`: none).
    pub fn with_info(client: &str, user: Option<&str>, info: Option<Box<MemberInfo>>) -> Member {
        let mut end = client.len().min((HAS_USER - 1) as usize);
        while !client.is_char_boundary(end) {
            end -= 1;
        }
        let client = &client[..end];
        let user_bytes = user.map_or(&[][..], str::as_bytes);
        let split = end as u32 | if user.is_some() { HAS_USER } else { 0 };
        let bytes: Vec<u8> = client.bytes().chain(user_bytes.iter().copied()).collect();
        Member(ThinArc::from_header_and_slice(Head { split, info }, &bytes))
    }

    fn part(&self, user: bool) -> &str {
        let split = self.0.header.header.split;
        let end = (split & !HAS_USER) as usize;
        let bytes = if user {
            &self.0.slice[end..]
        } else {
            &self.0.slice[..end]
        };
        // Both halves were whole `str`s joined at `end`: never invalid;
        // the empty string would be the defined outcome if they were.
        std::str::from_utf8(bytes).unwrap_or_default()
    }

    /// The client (connection) id.
    pub fn client(&self) -> &str {
        self.part(false)
    }

    /// Its user, if any.
    pub fn user(&self) -> Option<&str> {
        (self.0.header.header.split & HAS_USER != 0).then(|| self.part(true))
    }

    /// What the backend hooks attached, if anything.
    pub fn info(&self) -> Option<&MemberInfo> {
        self.0.header.header.info.as_deref()
    }

    /// The same client with another user (its infos kept).
    pub fn with_user(&self, user: Option<&str>) -> Member {
        Member::with_info(self.client(), user, self.0.header.header.info.clone())
    }

    /// The same client and user with other infos.
    pub fn with_infos(&self, info: Option<Box<MemberInfo>>) -> Member {
        Member::with_info(self.client(), self.user(), info)
    }

    /// This member with `chan_info` for one channel (its `conn_info`
    /// kept).
    pub fn with_chan_info(&self, chan: Box<RawValue>) -> Member {
        let conn = self.info().and_then(|i| i.conn.clone());
        self.with_infos(Some(Box::new(MemberInfo {
            conn,
            chan: Some(chan),
        })))
    }

    /// Does it hold what a node writes: a client id of the server's own
    /// (a few ASCII characters), a valid user id if any, and infos within
    /// [`MAX_MEMBER_INFO`]? (Checked on members read back from Redis.)
    pub fn valid(&self) -> bool {
        let client = self.client();
        let small =
            |v: &Option<Box<RawValue>>| v.as_ref().is_none_or(|r| r.get().len() <= MAX_MEMBER_INFO);
        self.info().is_none_or(|i| small(&i.conn) && small(&i.chan))
            && !client.is_empty()
            && client.len() <= 64
            && client
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            && self
                .user()
                .is_none_or(|u| super::valid_user(u, usize::MAX).is_ok())
    }
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("client", &self.client())
            .field("user", &self.user())
            .field("info", &self.info())
            .finish()
    }
}

/// A member as it is written and read (JSON, Redis).
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    client: std::borrow::Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none", default, borrow)]
    user: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    conn_info: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    chan_info: Option<Box<RawValue>>,
}

impl serde::Serialize for Member {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let info = self.info();
        Wire {
            client: self.client().into(),
            user: self.user().map(Into::into),
            conn_info: info.and_then(|i| i.conn.clone()),
            chan_info: info.and_then(|i| i.chan.clone()),
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Member {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Member, D::Error> {
        let w = Wire::deserialize(d)?;
        let info = (w.conn_info.is_some() || w.chan_info.is_some()).then(|| {
            Box::new(MemberInfo {
                conn: w.conn_info,
                chan: w.chan_info,
            })
        });
        Ok(Member::with_info(&w.client, w.user.as_deref(), info))
    }
}

/// A member as presence holds it: the session's own identity (shared by
/// the session and every channel it is present in), found by its client
/// id. 8 bytes a slot.
#[derive(Debug)]
struct Present(Member);

impl Hash for Present {
    fn hash<H: Hasher>(&self, h: &mut H) {
        // As `str` hashes: `Borrow<str>` requires the same hash.
        self.0.client().hash(h);
    }
}

impl PartialEq for Present {
    fn eq(&self, other: &Present) -> bool {
        self.0.client() == other.0.client()
    }
}

impl Eq for Present {}

impl Borrow<str> for Present {
    fn borrow(&self) -> &str {
        self.0.client()
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
    pub fn join(&mut self, m: Member) -> bool {
        self.clients.replace(Present(m)).is_none()
    }

    /// Returns the member if the client was present.
    pub fn leave(&mut self, client: &str) -> Option<Member> {
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
        let mut members: Vec<Member> = self.clients.iter().map(|p| p.0.clone()).collect();
        members.sort_by(|a, b| a.client().cmp(b.client()));
        let mut users: Vec<&str> = members
            .iter()
            .map(|m| m.user().unwrap_or(m.client()))
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
        let m = Member::new;
        assert!(p.join(m("c1", Some("alice"))));
        assert!(p.join(m("c2", Some("alice"))));
        assert!(p.join(m("c3", None)));
        assert!(!p.join(m("c3", None)));
        let info = p.info();
        assert_eq!((info.clients, info.users), (3, 2));
        assert_eq!(
            p.leave("c1")
                .and_then(|m| m.user().map(String::from))
                .as_deref(),
            Some("alice")
        );
        assert!(p.leave("c1").is_none());
        assert_eq!(p.info().members.len(), 2);
    }

    #[test]
    fn hook_infos_travel_as_conn_info_and_chan_info() {
        let raw = |s: &str| RawValue::from_string(s.into()).unwrap();
        let plain = Member::new("c1", Some("ann"));
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"client":"c1","user":"ann"}"#
        );
        let m = plain.with_infos(Some(Box::new(MemberInfo {
            conn: Some(raw(r#"{"name":"Ann"}"#)),
            chan: None,
        })));
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
        assert_eq!(back, Member::new("c1", None));
        let huge = format!(r#"{{"client":"c1","chan_info":"{}"}}"#, "x".repeat(5000));
        let m: Member = serde_json::from_str(&huge).unwrap();
        assert!(!m.valid(), "an info over {MAX_MEMBER_INFO} bytes read back");
    }
}
