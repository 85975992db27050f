//! Who is in a channel: one entry per client (connection), carrying the
//! user identity when the client has one.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};

use triomphe::ThinArc;

/// A member of a channel: a client id (the connection's) and its user, if
/// any, as the API and the join/leave events show it (`{"client": …,
/// "user": …}`).
///
/// One allocation for both strings and their reference count (issue 13,
/// docs/density.md): the session holds its identity as a `Member` and
/// every channel's presence it is in shares it, 8 bytes each. Clones
/// share it. The bytes are the client id then the user; the header says
/// where the client id ends and whether there is a user. (Was an
/// `Arc<Member>` of two `String`s: three blocks, 112 B of malloc chunks
/// for a 13-byte client id, where this is one of 48.)
#[derive(Clone, PartialEq, Eq)]
pub struct Member(ThinArc<Split, u8>);

/// Where the client id ends in a [`Member`]'s bytes (low 31 bits) and
/// whether a user follows (top bit).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Split(u32);

const HAS_USER: u32 = 1 << 31;

impl Member {
    /// A member; a client id of 2^31 bytes or more is cut (they are a few
    /// characters: [`Member::valid`]).
    pub fn new(client: &str, user: Option<&str>) -> Member {
        let mut end = client.len().min((HAS_USER - 1) as usize);
        while !client.is_char_boundary(end) {
            end -= 1;
        }
        let client = &client[..end];
        let user_bytes = user.map_or(&[][..], str::as_bytes);
        let split = Split(end as u32 | if user.is_some() { HAS_USER } else { 0 });
        let bytes: Vec<u8> = client.bytes().chain(user_bytes.iter().copied()).collect();
        Member(ThinArc::from_header_and_slice(split, &bytes))
    }

    fn part(&self, user: bool) -> &str {
        let split = self.0.header.header.0;
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
        (self.0.header.header.0 & HAS_USER != 0).then(|| self.part(true))
    }

    /// The same client with another user.
    pub fn with_user(&self, user: Option<&str>) -> Member {
        Member::new(self.client(), user)
    }

    /// Does it hold what a node writes: a client id of the server's own
    /// (a few ASCII characters), and a valid user id if any? (Checked on
    /// members read back from Redis.)
    pub fn valid(&self) -> bool {
        let client = self.client();
        !client.is_empty()
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
}

impl serde::Serialize for Member {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            client: self.client().into(),
            user: self.user().map(Into::into),
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Member {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Member, D::Error> {
        let w = Wire::deserialize(d)?;
        Ok(Member::new(&w.client, w.user.as_deref()))
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
}
