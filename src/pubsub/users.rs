//! User presence on one node: how many live connections each user has
//! here. A user is online while any connection of theirs is alive
//! (anywhere, with a shared broker: see `broker::redis` for the
//! cluster-wide part), offline at once when the last one ends.
//!
//! Nothing here fans out: the answer to "is this user online?" is computed
//! when asked (`GET /api/presence/users`), and a change of state is only
//! reported to the caller (for the `user_online` / `user_offline`
//! webhooks).

use std::collections::HashMap;
use std::sync::Mutex;

/// Connections per user on this node (users with none are not kept).
#[derive(Debug, Default)]
pub struct UserCounts {
    counts: Mutex<HashMap<String, u32>>,
}

impl UserCounts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection of `user` opened; true if it is the user's first here.
    pub fn up(&self, user: &str) -> bool {
        let mut m = self.lock();
        match m.get_mut(user) {
            Some(n) => {
                *n += 1;
                false
            }
            None => {
                m.insert(user.to_owned(), 1);
                true
            }
        }
    }

    /// A connection of `user` ended; true if it was the user's last here.
    /// A user this node does not count (never up) changes nothing.
    pub fn down(&self, user: &str) -> bool {
        let mut m = self.lock();
        let Some(n) = m.get_mut(user) else {
            return false;
        };
        *n -= 1;
        if *n > 0 {
            return false;
        }
        m.remove(user);
        if m.capacity() > 64 && m.len() * 4 < m.capacity() {
            let keep = m.len() * 2;
            m.shrink_to(keep);
        }
        true
    }

    /// Does `user` have a connection on this node?
    pub fn online(&self, user: &str) -> bool {
        self.lock().contains_key(user)
    }

    /// Every user with a connection here (for the shared broker's
    /// heartbeat).
    pub fn users(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_up_and_last_down_are_reported() {
        let u = UserCounts::default();
        assert!(u.up("ann"));
        assert!(!u.up("ann"));
        assert!(u.up("bob"));
        assert!(u.online("ann"));
        assert!(!u.down("ann"));
        assert!(u.online("ann"));
        assert!(u.down("ann"));
        assert!(!u.online("ann"));
        assert!(!u.down("ann"), "not counted: nothing changes");
        assert!(!u.down("nobody"));
        assert_eq!(u.users(), vec!["bob".to_string()]);
    }
}
