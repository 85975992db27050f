//! Who is in a channel: one entry per client (connection), carrying the
//! user identity when the client has one.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A member as the API and the join/leave events show it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub client: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user: Option<String>,
}

impl Member {
    /// Does it hold what a node writes: a client id of the server's own
    /// (a few ASCII characters), and a valid user id if any? (Checked on
    /// members read back from Redis.)
    pub fn valid(&self) -> bool {
        !self.client.is_empty()
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
        let m = |c: &str, u: Option<&str>| {
            Arc::new(Member {
                client: c.into(),
                user: u.map(Into::into),
            })
        };
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
}
