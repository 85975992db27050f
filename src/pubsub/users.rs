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
    /// `first` runs then, under the lock, so that what it reports is
    /// ordered with the user's last connection going.
    pub fn up(&self, user: &str, first: impl FnOnce()) -> bool {
        let mut m = self.lock();
        match m.get_mut(user) {
            Some(n) => {
                *n += 1;
                false
            }
            None => {
                m.insert(user.to_owned(), 1);
                first();
                true
            }
        }
    }

    /// A connection of `user` ended; true if it was the user's last here
    /// (`last` runs then, under the lock). A user this node does not count
    /// (never up) changes nothing.
    pub fn down(&self, user: &str, last: impl FnOnce()) -> bool {
        let mut m = self.lock();
        let Some(n) = m.get_mut(user) else {
            return false;
        };
        *n -= 1;
        if *n > 0 {
            return false;
        }
        m.remove(user);
        last();
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
        let seen = std::cell::RefCell::new(Vec::new());
        let seen = &seen;
        let note = |what: &'static str| move || seen.borrow_mut().push(what);
        assert!(u.up("ann", note("ann up")));
        assert!(!u.up("ann", note("ann up again")));
        assert!(u.up("bob", note("bob up")));
        assert!(u.online("ann"));
        assert!(!u.down("ann", note("ann down early")));
        assert!(u.online("ann"));
        assert!(u.down("ann", note("ann down")));
        assert!(!u.online("ann"));
        assert!(
            !u.down("ann", note("ann down again")),
            "not counted: nothing changes"
        );
        assert!(!u.down("nobody", note("nobody")));
        assert_eq!(*seen.borrow(), ["ann up", "bob up", "ann down"]);
        assert_eq!(u.users(), vec!["bob".to_string()]);
    }
}
