//! Channels: their history (epoch + offset, for recovery), their presence,
//! and each worker's index of local subscribers.

pub mod history;
pub mod presence;
pub mod topics;

use std::sync::Arc;

/// A whole WebSocket frame (header + payload), encoded once and shared by
/// every subscriber of one worker.
pub type Frame = Arc<[u8]>;

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
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-:.@/=".contains(&b))
    {
        return Err("channel name has a character outside [A-Za-z0-9_-:.@/=]");
    }
    Ok(())
}

/// The personal channel of a user: every connection of that user is
/// subscribed to it, on every node.
pub fn user_channel(user: &str) -> String {
    format!("$user:{user}")
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
}
