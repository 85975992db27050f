//! Who is in a channel: one entry per client (connection), carrying the
//! user identity when the client has one.

use std::collections::HashMap;

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

/// The members of one channel.
#[derive(Debug, Default)]
pub struct Presence {
    clients: HashMap<String, Option<String>>,
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
    /// Returns true if the client was not present before.
    pub fn join(&mut self, m: &Member) -> bool {
        self.clients
            .insert(m.client.clone(), m.user.clone())
            .is_none()
    }

    /// Returns the member if the client was present.
    pub fn leave(&mut self, client: &str) -> Option<Member> {
        let m = self
            .clients
            .remove_entry(client)
            .map(|(client, user)| Member { client, user });
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
        let mut members: Vec<Member> = self
            .clients
            .iter()
            .map(|(c, u)| Member {
                client: c.clone(),
                user: u.clone(),
            })
            .collect();
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
        let m = |c: &str, u: Option<&str>| Member {
            client: c.into(),
            user: u.map(Into::into),
        };
        assert!(p.join(&m("c1", Some("alice"))));
        assert!(p.join(&m("c2", Some("alice"))));
        assert!(p.join(&m("c3", None)));
        assert!(!p.join(&m("c3", None)));
        let info = p.info();
        assert_eq!((info.clients, info.users), (3, 2));
        assert_eq!(p.leave("c1").and_then(|m| m.user).as_deref(), Some("alice"));
        assert!(p.leave("c1").is_none());
        assert_eq!(p.info().members.len(), 2);
    }
}
