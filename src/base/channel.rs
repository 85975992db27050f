//! Channels as clients name them: channel names, user ids (which name
//! personal channels), and a [`Position`] in a channel's stream.

/// Where a client stands in a channel's stream. The `epoch` changes when the
/// channel's history is lost, so an offset is only meaningful with it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// Is `name` a channel a client may name? Letters, digits and `_-:.@/=`,
/// 1..=`max_len` bytes. Channels starting with `$` are the server's own
/// (personal channels): clients cannot subscribe to them by name.
pub fn valid_channel(name: &str, max_len: usize) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("channel name is empty");
    }
    if name.len() > max_len {
        return Err("channel name too long");
    }
    if !name.bytes().all(name_byte) {
        return Err("channel name has a character outside [A-Za-z0-9_-:.@/=]");
    }
    Ok(())
}

/// The characters of channel names and user ids.
fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_-:.@/=".contains(&b)
}

/// The prefix of personal channels.
pub const USER_PREFIX: &str = "$user:";

/// Is `id` a user id? User ids name channels (`$user:<id>`), Redis keys and
/// log lines, so they follow the channel rules: letters, digits and
/// `_-:.@/=`, at least one, and short enough that `$user:<id>` is within
/// `max_channel_len` (`limits.max_channel_length`: ids of up to 249 bytes
/// by default). Checked on every path that names a user:
/// `?user=` (open mode), a token's `sub`, the API's `{"user":…}`,
/// `POST /api/disconnect`, `channel=$user:…` on the API, and what other
/// nodes send through Redis.
pub fn valid_user(id: &str, max_channel_len: usize) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("user id is empty");
    }
    if id.len() > max_channel_len.saturating_sub(USER_PREFIX.len()) {
        return Err("user id too long");
    }
    if !id.bytes().all(name_byte) {
        return Err("user id has a character outside [A-Za-z0-9_-:.@/=]");
    }
    Ok(())
}

/// The personal channel of a user: every connection of that user is
/// subscribed to it, on every node.
pub fn user_channel(user: &str) -> String {
    format!("{USER_PREFIX}{user}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        assert!(valid_channel("chat", 255).is_ok());
        assert!(valid_channel("news:eu/fr.sport@v2=x_y-z", 255).is_ok());
        for bad in ["", "with space", "$user:alice", "ünï", "a\"b", "a\nb"] {
            assert!(valid_channel(bad, 255).is_err(), "{bad:?}");
        }
        assert_eq!(
            valid_channel(&"a".repeat(256), 255),
            Err("channel name too long")
        );
    }

    #[test]
    fn user_ids() {
        for good in [
            "alice",
            "a",
            "user@example.com",
            "auth0:5f3a",
            "a/b=c_d-e.f",
        ] {
            assert!(valid_user(good, 255).is_ok(), "{good:?}");
            assert!(valid_channel(&user_channel(good)[1..], 255).is_ok());
        }
        for bad in [
            "",
            "a\r\nb",
            "a\0b",
            "a\"b",
            "a b",
            "$user:x",
            "auth0|5f3a",
            "ünï",
            "{tag}",
        ] {
            assert!(valid_user(bad, 255).is_err(), "{bad:?}");
        }
        assert!(valid_user(&"x".repeat(249), 255).is_ok());
        assert_eq!(valid_user(&"x".repeat(250), 255), Err("user id too long"));
        assert!(valid_user(&"x".repeat(30_000), 40_000).is_ok());
        // The personal channel stays within a smaller channel limit.
        assert!(valid_user(&"x".repeat(10), 16).is_ok());
        assert!(valid_user(&"x".repeat(11), 16).is_err());
        assert!(user_channel(&"x".repeat(10)).len() <= 16);
    }
}
