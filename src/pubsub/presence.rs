//! Who is in a channel: one entry per client (connection), carrying the
//! user identity when the client has one.

use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::mem::ManuallyDrop;

use serde_json::value::RawValue;
use triomphe::ThinArc;

use crate::base::client_id::{ClientName, Packed};

/// A member of a channel: a client id (the connection's), its user, if
/// any, and what the backend hooks attached, as the API and the join/leave
/// events show it (`{"client","user"?,"conn_info"?,"chan_info"?}`,
/// Centrifugo's `ClientInfo` names).
///
/// One word (issue 13, docs/density.md). A member with neither a user nor
/// infos whose client id is one a worker of this process made holds that
/// id as a number ([`Packed`]) and nothing on the heap. Any other is one
/// allocation for both strings, their infos and the reference count, shared
/// by the session and the presence of every channel it is in, 8 bytes
/// each; the bytes are the client id then the user, the header says where
/// the client id ends and whether there is a user. (Was an `Arc<Member>`
/// of two `String`s: three blocks, 112 B of malloc chunks.) Both forms of
/// the same member compare equal.
pub struct Member(Repr);

/// A [`Member`]'s word: a [`Packed`] id (bit 0 set) or the pointer of its
/// block (bit 0 clear: the block is aligned to 8).
union Repr {
    packed: u64,
    shared: ManuallyDrop<ThinArc<Head, u8>>,
}

// The word is either: both fields are 8 bytes without padding.
const _: () = assert!(std::mem::size_of::<ThinArc<Head, u8>>() == 8);
const _: () = assert!(std::mem::size_of::<Repr>() == 8);

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
    fn eq(&self, other: &MemberInfo) -> bool {
        let text = |v: &Option<Box<RawValue>>| v.as_ref().map(|r| r.get().to_owned());
        text(&self.conn) == text(&other.conn) && text(&self.chan) == text(&other.chan)
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
        if user.is_none() && info.is_none() {
            if let Some(p) = Packed::parse(client) {
                return Member(Repr { packed: p.bits() });
            }
        }
        let mut end = client.len().min((HAS_USER - 1) as usize);
        while !client.is_char_boundary(end) {
            end -= 1;
        }
        let client = &client[..end];
        let user_bytes = user.map_or(&[][..], str::as_bytes);
        let split = end as u32 | if user.is_some() { HAS_USER } else { 0 };
        let bytes: Vec<u8> = client.bytes().chain(user_bytes.iter().copied()).collect();
        let arc = ThinArc::from_header_and_slice(Head { split, info }, &bytes);
        Member(Repr {
            shared: ManuallyDrop::new(arc),
        })
    }

    /// The id, when this member holds only a number.
    fn packed(&self) -> Option<Packed> {
        // SAFETY: both fields of `Repr` are 8 initialised bytes (asserted
        // above), so reading the word as a `u64` is defined whichever was
        // written; a block's pointer has bit 0 clear (its `ArcInner` starts
        // with an `AtomicUsize`, aligned to 8), a packed id has it set.
        Packed::from_bits(unsafe { self.0.packed })
    }

    /// The block, when this member has one.
    fn block(&self) -> Option<&ThinArc<Head, u8>> {
        match self.packed() {
            Some(_) => None,
            // SAFETY: bit 0 is clear, so `shared` is the field written (a
            // packed id always has it set: `Packed::from_bits`).
            None => Some(unsafe { &self.0.shared }),
        }
    }

    fn part(&self, user: bool) -> &str {
        let Some(arc) = self.block() else { return "" };
        let split = arc.header.header.split;
        let end = (split & !HAS_USER) as usize;
        let bytes = if user {
            &arc.slice[end..]
        } else {
            &arc.slice[..end]
        };
        // Both halves were whole `str`s joined at `end`: never invalid;
        // the empty string would be the defined outcome if they were.
        std::str::from_utf8(bytes).unwrap_or_default()
    }

    /// The client (connection) id.
    pub fn client(&self) -> ClientName<'_> {
        match self.packed() {
            Some(p) => ClientName::of(p),
            None => ClientName::Str(self.part(false)),
        }
    }

    /// Does it hold a number rather than a block (no allocation)?
    pub fn is_packed(&self) -> bool {
        self.packed().is_some()
    }

    /// Its user, if any.
    pub fn user(&self) -> Option<&str> {
        let arc = self.block()?;
        (arc.header.header.split & HAS_USER != 0).then(|| self.part(true))
    }

    /// What the backend hooks attached, if anything.
    pub fn info(&self) -> Option<&MemberInfo> {
        self.block()?.header.header.info.as_deref()
    }

    /// The same client with another user (its infos kept).
    pub fn with_user(&self, user: Option<&str>) -> Member {
        Member::with_info(&self.client(), user, self.info().cloned().map(Box::new))
    }

    /// The same client and user with other infos.
    pub fn with_infos(&self, info: Option<Box<MemberInfo>>) -> Member {
        Member::with_info(&self.client(), self.user(), info)
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

impl Clone for Member {
    fn clone(&self) -> Member {
        match self.block() {
            Some(arc) => Member(Repr {
                shared: ManuallyDrop::new(arc.clone()),
            }),
            // SAFETY: see `packed`: the word is a packed id, plain bits.
            None => Member(Repr {
                packed: unsafe { self.0.packed },
            }),
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.packed().is_none() {
            // SAFETY: bit 0 is clear, so `shared` holds the block's
            // reference, dropped here once (`Member` is dropped once).
            unsafe { ManuallyDrop::drop(&mut self.0.shared) }
        }
    }
}

impl PartialEq for Member {
    fn eq(&self, other: &Member) -> bool {
        self.client() == other.client()
            && self.user() == other.user()
            && self.info() == other.info()
    }
}

impl Eq for Member {}

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
        let client = self.client();
        Wire {
            client: (&*client).into(),
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
        (*self.0.client()).hash(h);
    }
}

impl PartialEq for Present {
    fn eq(&self, other: &Present) -> bool {
        self.0.client() == other.0.client()
    }
}

impl Eq for Present {}

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
        // A member of the same client id compares equal to the one joined,
        // whatever its form: a worker's own ids are numbers (no allocation).
        let m = self
            .clients
            .take(&Present(Member::new(client, None)))
            .map(|p| p.0);
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
        members.sort_by_cached_key(|m| m.client().to_string());
        let mut users: Vec<String> = members
            .iter()
            .map(|m| {
                m.user()
                    .map_or_else(|| m.client().to_string(), str::to_owned)
            })
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

    #[test]
    fn a_workers_anonymous_member_is_a_number_equal_to_its_text() {
        use crate::base::client_id::ClientPrefix;
        ClientPrefix::register("mQ1_a0w3-").expect("room in the table");
        let m = Member::new("mQ1_a0w3-42", None);
        assert!(m.is_packed(), "no block for a worker's anonymous member");
        assert_eq!(&*m.client(), "mQ1_a0w3-42");
        assert_eq!((m.user(), m.info()), (None, None));
        assert!(m.valid());
        let copies: Vec<Member> = (0..3).map(|_| m.clone()).collect();
        assert!(copies.iter().all(|c| *c == m && c.is_packed()));
        drop(copies);
        // A user or infos take a block; the client id is the same.
        let named = m.with_user(Some("ann"));
        assert!(!named.is_packed());
        assert_eq!(
            (&*named.client(), named.user()),
            ("mQ1_a0w3-42", Some("ann"))
        );
        assert_ne!(named, m);
        let back = named.with_user(None);
        assert!(back.is_packed());
        assert_eq!(back, m);
        // Written and read as any member.
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(text, r#"{"client":"mQ1_a0w3-42"}"#);
        let read: Member = serde_json::from_str(&text).unwrap();
        assert!(read.is_packed());
        assert_eq!(read, m);
        // Joined as a number, found by its text; other ids stay strings.
        let mut p = Presence::default();
        assert!(p.join(m.clone()));
        assert!(!p.join(Member::new("mQ1_a0w3-42", None)));
        assert!(p.join(Member::new("mQ1_a0w3-042", None)));
        assert!(!Member::new("mQ1_a0w3-042", None).is_packed());
        let info = p.info();
        assert_eq!((info.clients, info.users), (2, 2));
        assert_eq!(info.members[1], m);
        assert_eq!(p.leave("mQ1_a0w3-42"), Some(m));
        assert!(p.leave("mQ1_a0w3-42").is_none());
        assert_eq!(
            p.leave("mQ1_a0w3-042")
                .map(|m| m.client().to_string())
                .as_deref(),
            Some("mQ1_a0w3-042")
        );
        assert!(p.is_empty());
    }
}
