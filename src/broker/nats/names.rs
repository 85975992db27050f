//! NATS subjects, stream names and key-value keys of a deployment, and the
//! conversions between them and gateway channel names.
//!
//! A channel name may hold any character the gateway allows (`:`, `$`, `.`,
//! …) while a NATS subject token may not hold `.`, `*`, `>` or white space
//! and a key-value key is limited to `[-/_=.a-zA-Z0-9]`. A channel becomes
//! one token: ASCII letters, digits, `-` and `_` stay, every other byte is
//! written `=XX` (upper-case hex). The encoding is injective, so two
//! channels never share a subject, and readable for the usual names
//! (`news:eu` → `news=3Aeu`).
//!
//! | what | name |
//! |---|---|
//! | a channel's stream (its history and offsets) | `PREFIX_EPOCH`, capturing subject `PREFIX.h.TOKEN` |
//! | its live subject (the stream republishes there; presence events) | `PREFIX.ch.TOKEN` |
//! | the nodes' control subject | `PREFIX.control` |
//! | the presence bucket | `PREFIX_presence`, key `TOKEN.CLIENT_TOKEN` |

/// Names for one deployment (one prefix).
#[derive(Clone, Debug)]
pub(crate) struct Names {
    prefix: String,
}

/// The header that names the stream of a republished message.
pub(crate) const HDR_STREAM: &str = "Nats-Stream";
/// The header that gives its stream sequence (the channel offset).
pub(crate) const HDR_SEQUENCE: &str = "Nats-Sequence";

impl Names {
    /// `prefix` must be a valid stream-name and subject token: ASCII
    /// letters, digits, `-` and `_` (checked by the configuration).
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_owned(),
        }
    }

    /// Where publications of `channel` are stored: the subject its stream
    /// captures.
    pub fn stored(&self, channel: &str) -> String {
        format!("{}.h.{}", self.prefix, token(channel))
    }

    /// Every channel's stored subject (for listing the streams).
    pub fn stored_all(&self) -> String {
        format!("{}.h.>", self.prefix)
    }

    /// Where the stream republishes each stored publication (with its
    /// sequence), and where presence events go.
    pub fn live(&self, channel: &str) -> String {
        format!("{}.ch.{}", self.prefix, token(channel))
    }

    /// The nodes' control subject: `d<INSTANCE>\n<USER>` asks every other
    /// node to disconnect USER.
    pub fn control(&self) -> String {
        format!("{}.control", self.prefix)
    }

    /// A new stream's name for `epoch`.
    pub fn stream(&self, epoch: &str) -> String {
        format!("{}_{epoch}", self.prefix)
    }

    /// The epoch a stream name carries (`None`: not one of ours).
    pub fn epoch_of<'a>(&self, stream: &'a str) -> Option<&'a str> {
        stream
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('_')
            .filter(|e| !e.is_empty())
    }

    /// The presence bucket.
    pub fn bucket(&self) -> String {
        format!("{}_presence", self.prefix)
    }

    /// A member's key in the presence bucket.
    pub fn member_key(&self, channel: &str, client: &str) -> String {
        format!("{}.{}", token(channel), token(client))
    }

    /// The subjects of every member key of `channel` in the bucket's stream.
    pub fn members_filter(&self, channel: &str) -> String {
        format!("$KV.{}.{}.>", self.bucket(), token(channel))
    }
}

/// A channel (or client id) as one subject token.
pub(crate) fn token(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    for &b in name.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('=');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
    out
}

/// The name a token stands for (`None`: not a token [`token`] makes).
#[cfg(test)]
pub(crate) fn untoken(t: &str) -> Option<String> {
    let b = t.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The payload the hub reads for a publication, `OFFSET:EPOCH:DATA`, from
/// a republished message: its stream (which names the epoch), its stream
/// sequence (the offset) and its data. `None`: not one of this
/// deployment's streams, or no sequence.
pub(crate) fn live_payload(
    names: &Names,
    stream: Option<&str>,
    sequence: Option<&str>,
    data: &[u8],
) -> Option<Vec<u8>> {
    let epoch = names.epoch_of(stream?)?;
    let seq: u64 = sequence?.trim().parse().ok()?;
    let seq = seq.to_string();
    let mut out = Vec::with_capacity(seq.len() + epoch.len() + data.len() + 2);
    out.extend_from_slice(seq.as_bytes());
    out.push(b':');
    out.extend_from_slice(epoch.as_bytes());
    out.push(b':');
    out.extend_from_slice(data);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_become_one_token_and_back() {
        for ch in ["chat", "news:eu", "$user:a.b", "a b*c>d", "é=x", "-_"] {
            let t = token(ch);
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)),
                "{ch:?} → {t:?}"
            );
            assert_eq!(untoken(&t).as_deref(), Some(ch));
        }
        assert_eq!(token("news:eu"), "news=3Aeu");
        // Injective: `=` itself is escaped.
        assert_ne!(token("a=3A"), token("a:"));
    }

    #[test]
    fn subjects_streams_and_keys() {
        let n = Names::new("wsgate");
        assert_eq!(n.stored("news:eu"), "wsgate.h.news=3Aeu");
        assert_eq!(n.live("news:eu"), "wsgate.ch.news=3Aeu");
        assert_eq!(n.stream("Ab3-_x"), "wsgate_Ab3-_x");
        assert_eq!(n.epoch_of("wsgate_Ab3-_x"), Some("Ab3-_x"));
        assert_eq!(n.epoch_of("other_Ab3"), None);
        assert_eq!(n.epoch_of("wsgate_"), None);
        assert_eq!(n.member_key("room", "c.1"), "room.c=2E1");
        assert_eq!(n.members_filter("room"), "$KV.wsgate_presence.room.>");
    }

    #[test]
    fn republished_messages_become_hub_payloads() {
        let n = Names::new("wsgate");
        assert_eq!(
            live_payload(&n, Some("wsgate_E1"), Some("42"), br#"{"a":1}"#).as_deref(),
            Some(&br#"42:E1:{"a":1}"#[..])
        );
        assert_eq!(live_payload(&n, Some("KV_x"), Some("1"), b"1"), None);
        assert_eq!(live_payload(&n, Some("wsgate_E1"), None, b"1"), None);
        assert_eq!(live_payload(&n, Some("wsgate_E1"), Some("x"), b"1"), None);
    }
}
