//! The Lua scripts the command thread runs (EVALSHA; loaded at every
//! connection). Each one touches the keys of one channel only, all named
//! with the channel as hash tag, so that they would run unchanged on a
//! Redis Cluster shard.
//!
//! Times come from Redis (`TIME`), never from a node's clock, so nodes with
//! skewed clocks agree on ages and expiries.

/// Publish: assign the next offset, keep the publication in the stream,
/// and PUBLISH it, all in one atomic step, so that offsets, the stream and
/// the pub/sub order agree.
///
/// KEYS: meta hash, history stream, idempotency key. ARGV: pub/sub
/// channel, data (JSON), history size (0: none), history TTL ms, meta TTL
/// ms, epoch to use if the channel has none, history bytes, deadline (ms on
/// Redis's clock; 0: none), `1` if the idempotency key applies (a second
/// publish with it within the window, ms, is answered with the first one's
/// position and does nothing else), the window, `1` to skip the history
/// (published as `u` + DATA, no offset: the answer is the channel's
/// position), a client id not to deliver to (`""`: none; the payload is
/// then prefixed with `x` + CLIENT + `\n`).
/// Returns `{epoch, offset}` (`{epoch, offset, 1}` for a repeat of an
/// idempotency key: nothing made, so no `client_event` either), or the
/// error `EXPIRED` without writing
/// anything when it runs after its deadline: a publish that waited in
/// Redis's input (Redis stopped, or a connection the node gave up on) is
/// not made once the node may have answered that it was not (see
/// `command.rs`).
///
/// The stream id of a publication is `OFFSET-0`, so ranges by offset are
/// ranges by id. The pub/sub payload is `OFFSET:EPOCH:DATA`.
///
/// The stream is trimmed here, oldest first, while it holds more than
/// `history_size` entries or more than `history_bytes` bytes of data (as
/// the in-memory broker does, a publication bigger than `history_bytes` is
/// not kept). The meta hash's `b` field is the stream's data bytes; it
/// restarts at 0 whenever the stream is empty (new, expired or deleted).
pub const PUBLISH: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local deadline = tonumber(ARGV[8])
if deadline > 0 and now > deadline then
  return redis.error_reply('EXPIRED publish deadline passed')
end
if ARGV[9] == '1' then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local c = string.find(seen, ':', 1, true)
    return {string.sub(seen, 1, c - 1), tonumber(string.sub(seen, c + 1)), 1}
  end
end
local x = ''
if ARGV[12] ~= '' then x = 'x' .. ARGV[12] .. '\n' end
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  redis.call('DEL', KEYS[2])
end
if ARGV[11] == '1' then
  local top = tonumber(redis.call('HGET', KEYS[1], 'o'))
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('PUBLISH', ARGV[1], x .. 'u' .. ARGV[2])
  if ARGV[9] == '1' then
    redis.call('SET', KEYS[3], epoch .. ':' .. top, 'PX', ARGV[10])
  end
  return {epoch, top}
end
local off = redis.call('HINCRBY', KEYS[1], 'o', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local size = tonumber(ARGV[3])
if size > 0 then
  local maxb = tonumber(ARGV[7])
  local n = redis.call('XLEN', KEYS[2])
  local b = 0
  if n > 0 then b = tonumber(redis.call('HGET', KEYS[1], 'b') or 0) end
  redis.call('XADD', KEYS[2], off .. '-0', 'd', ARGV[2], 't', now)
  n = n + 1
  b = b + #ARGV[2]
  while n > 0 and (n > size or b > maxb) do
    local e = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
    local f = e[2]
    for j = 1, #f, 2 do
      if f[j] == 'd' then b = b - #f[j + 1] end
    end
    redis.call('XDEL', KEYS[2], e[1])
    n = n - 1
  end
  if n == 0 then b = 0 end
  redis.call('HSET', KEYS[1], 'b', b)
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
redis.call('PUBLISH', ARGV[1], x .. off .. ':' .. epoch .. ':' .. ARGV[2])
if ARGV[9] == '1' then
  redis.call('SET', KEYS[3], epoch .. ':' .. off, 'PX', ARGV[10])
end
return {epoch, off}
"#;

/// Read a channel's position and (some of) its history.
///
/// KEYS: meta hash, history stream. ARGV: mode (`meta`, `after`, `last`),
/// offset (for `after`: publications with a greater offset), count, history
/// TTL ms (older publications are not returned), epoch to create the
/// channel with if it has none (`""`: do not create), meta TTL ms, and
/// optionally the epoch the offset belongs to: if the channel is in another
/// epoch now, `after` reads that epoch from its start (a client whose epoch
/// ended missed all of the current one).
///
/// Returns `{}` if the channel has no epoch (and none was created), else
/// `{epoch, top, off1, data1, off2, data2, …}` in offset order.
pub const READ: &str = r#"
local m = redis.call('HMGET', KEYS[1], 'e', 'o')
local epoch = m[1]
if not epoch then
  if ARGV[5] == '' then return {} end
  redis.call('HSET', KEYS[1], 'e', ARGV[5], 'o', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  redis.call('DEL', KEYS[2])
  return {ARGV[5], 0}
end
local out = {epoch, tonumber(m[2])}
local mode = ARGV[1]
if mode == 'meta' then return out end
local t = redis.call('TIME')
local oldest = t[1] * 1000 + math.floor(t[2] / 1000) - tonumber(ARGV[4])
local entries
if mode == 'after' then
  local after = tonumber(ARGV[2])
  if ARGV[7] and ARGV[7] ~= epoch then after = 0 end
  entries = redis.call('XRANGE', KEYS[2], tostring(after + 1), '+', 'COUNT', ARGV[3])
else
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[3])
end
local first, last, step = 1, #entries, 1
if mode ~= 'after' then first, last, step = #entries, 1, -1 end
for i = first, last, step do
  local e = entries[i]
  local off = tonumber(string.match(e[1], '^(%d+)'))
  local f = e[2]
  local d, at = nil, 0
  for j = 1, #f, 2 do
    if f[j] == 'd' then d = f[j + 1] elseif f[j] == 't' then at = tonumber(f[j + 1]) end
  end
  if d and at >= oldest then
    out[#out + 1] = off
    out[#out + 1] = d
  end
end
return out
"#;

/// Join (or refresh) members: a hash field per client whose value is
/// `EXPIRY_MS|MEMBER_JSON`; a new member is announced on the channel when
/// an event channel is given.
///
/// KEYS: presence hash. ARGV: pub/sub channel for join events (`""`: none),
/// TTL ms, then client, member JSON pairs. Returns the JSON of the members
/// this call added (not there, or removed as a dead node's since): the
/// refresh sends `member_added` for them (a member re-derived, as
/// [`OCCUPANCY`]'s `refresh` re-derives `channel_occupied`).
///
/// The hash outlives its fields (3 × TTL) so that the sweep
/// ([`MEMBERS_EXPIRED`]) finds a dead node's members expired rather than
/// gone, and sends their `member_removed`.
pub const JOIN: &str = r#"
local t = redis.call('TIME')
local exp = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV, 2 do
  local added = redis.call('HSET', KEYS[1], ARGV[i], exp .. '|' .. ARGV[i + 1])
  if added == 1 then
    out[#out + 1] = ARGV[i + 1]
    if ARGV[1] ~= '' then
      redis.call('PUBLISH', ARGV[1], 'j' .. ARGV[i + 1])
    end
  end
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 3)
return out
"#;

/// Leave: remove a member; announce it when an event channel is given.
///
/// KEYS: presence hash. ARGV: pub/sub channel for leave events (`""`:
/// none), client, and for a leave that waited for Redis (made while it was
/// unreachable) the member's JSON. Returns the member's JSON (for
/// `member_removed`), or 0 if it was not there; a leave that waited is
/// answered with its JSON even then (Redis restarted empty and lost the
/// member: its `member_removed` is owed; a repeat if a sweep removed it
/// first, see docs/hooks.md).
pub const LEAVE: &str = r#"
local v = redis.call('HGET', KEYS[1], ARGV[2])
local m
if v then
  redis.call('HDEL', KEYS[1], ARGV[2])
  local bar = string.find(v, '|', 1, true)
  m = string.sub(v, bar + 1)
elseif ARGV[3] and ARGV[3] ~= '' then
  m = ARGV[3]
else
  return 0
end
if ARGV[1] ~= '' then
  redis.call('PUBLISH', ARGV[1], 'l' .. m)
end
return m
"#;

/// The sweep of a channel's members whose node died: remove the fields
/// whose expiry passed, announce each on the channel when an event channel
/// is given. Atomic, so exactly one call removes (and its node sends the
/// `member_removed` of) each.
///
/// KEYS: presence hash. ARGV: pub/sub channel for leave events (`""`:
/// none). Returns `{left, json1, json2, …}`: the fields left, then the
/// members removed. The index the nodes sweep, `PREFIX:members`, holds
/// `INSTANCE\nCHANNEL` → latest expiry of that node's members there.
pub const MEMBERS_EXPIRED: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local all = redis.call('HGETALL', KEYS[1])
local out = {0}
for i = 1, #all, 2 do
  local v = all[i + 1]
  local bar = string.find(v, '|', 1, true)
  local exp = bar and tonumber(string.sub(v, 1, bar - 1))
  if not exp or exp < now then
    redis.call('HDEL', KEYS[1], all[i])
    if bar then
      local m = string.sub(v, bar + 1)
      out[#out + 1] = m
      if ARGV[1] ~= '' then redis.call('PUBLISH', ARGV[1], 'l' .. m) end
    end
  end
end
out[1] = redis.call('HLEN', KEYS[1])
return out
"#;

/// Occupancy: the nodes with a subscriber of a channel, a sorted set of
/// node instance → expiry (ms on Redis's clock), so that exactly one call
/// sees the channel go from no live node to one (`channel_occupied`) and
/// one from some to none (`channel_vacated`), and a node that died stops
/// counting after the TTL.
///
/// KEYS: the channel's node set, its presence hash. ARGV: mode, instance,
/// TTL ms, pub/sub channel for leave events (`""`: none). Expired entries
/// are removed first. Modes:
///
/// - `up`, `refresh`: add or re-assert this node. Occupied when no live
///   node was there (a refresh too: after an outage, or a refresh late past
///   the TTL, the occupancy is re-derived rather than assumed); vacated
///   first when the entries this call removed as expired were the last
///   ones (a dead node's, never swept).
/// - `down`: this node's last subscriber left: vacated when the set had
///   entries and none is left.
/// - `gone`: as `down`, for a channel this node vacated while Redis was
///   unreachable: vacated also when the set is missing (Redis restarted
///   empty, or someone sent it already: a repeat, see docs/hooks.md).
/// - `check`: the sweep of channels whose nodes died: vacated when the
///   entries this call removed as expired were the last ones.
///
/// The key outlives its entries (3 × TTL) so that the sweep finds a dead
/// node's entries expired rather than gone. Returns `{events, left,
/// json1, …}`: `events` is 1 (occupied), 2 (vacated) or 3 (vacated, then
/// occupied), or 0; `left` the live nodes after the call; then the members
/// removed.
///
/// When the channel is vacated (no live node holds it), every member still
/// in its presence hash is a dead node's (a node adds its members after
/// its `up`, and removes them before its `down`): they are removed here,
/// atomically with the decision, so that their `member_removed` come before
/// the `channel_vacated`, whichever node's sweep or subscribe sees it first.
pub const OCCUPANCY: &str = r#"
local function vacate(events, left)
  local out = {events, left}
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    local v = all[i + 1]
    local bar = string.find(v, '|', 1, true)
    if bar then
      local m = string.sub(v, bar + 1)
      out[#out + 1] = m
      if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], 'l' .. m) end
    end
  end
  redis.call('DEL', KEYS[2])
  return out
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local mode = ARGV[1]
local ttl = tonumber(ARGV[3])
local n0 = redis.call('ZCARD', KEYS[1])
local expired = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if mode == 'up' or mode == 'refresh' then
  local live = n0 - expired
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ttl * 3)
  local left = redis.call('ZCARD', KEYS[1])
  if live == 0 then
    if expired > 0 then return vacate(3, left) end
    return {1, left}
  end
  return {0, left}
end
if mode ~= 'check' then
  redis.call('ZREM', KEYS[1], ARGV[2])
end
local left = redis.call('ZCARD', KEYS[1])
if left > 0 then return {0, left} end
if mode == 'gone' or (mode == 'down' and n0 > 0) or (mode == 'check' and expired > 0) then
  return vacate(2, 0)
end
return {0, 0}
"#;

/// Drop members of an index (`PREFIX:occupied`, `PREFIX:users`,
/// `PREFIX:members`: member →
/// latest expiry) whose score is still at or before ARGV[1] (ms on
/// Redis's clock): a channel or user re-announced since the sweep read
/// the index keeps its entry.
///
/// KEYS: the index. ARGV: the time, then the members.
pub const INDEX_DROP: &str = r#"
local n = 0
for i = 2, #ARGV do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) <= tonumber(ARGV[1]) then
    redis.call('ZREM', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
"#;

/// The members whose expiry has not passed (expired ones are left to the
/// sweep, [`MEMBERS_EXPIRED`], which sends their `member_removed`).
///
/// KEYS: presence hash. Returns a list of member JSON.
pub const MEMBERS: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local v = all[i + 1]
  local bar = string.find(v, '|', 1, true)
  local exp = bar and tonumber(string.sub(v, 1, bar - 1))
  if exp and exp >= now then
    out[#out + 1] = string.sub(v, bar + 1)
  end
end
return out
"#;

/// Start a new epoch for a channel whose offset went backwards under the
/// same epoch (a failover to a replica that had not received the last
/// publications): positions of the lost lineage must not look valid.
///
/// KEYS: meta hash, history stream. ARGV: the epoch seen, the offset this
/// node had delivered, the new epoch (which starts at offset 0, with no
/// history). Does nothing if someone already did.
pub const REBASE: &str = r#"
local m = redis.call('HMGET', KEYS[1], 'e', 'o')
if m[1] == ARGV[1] and tonumber(m[2]) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'e', ARGV[3], 'o', 0)
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"#;

/// User presence: a hash per user of node instance → expiry (ms on Redis's
/// clock). A user is online while a field has not expired: a node
/// re-asserts its users every `presence_refresh`, removes one at its last
/// connection, and a dead node's fields expire after `presence_ttl`.
///
/// KEYS: the user's hash. ARGV: mode (`up`, `refresh`, `down`, `gone`,
/// `check`), instance, TTL ms. Expired fields are removed first. Returns
/// `{alive, events}`: the fields alive after the call, and the events this
/// call is the one to send (as [`OCCUPANCY`]: 1 online, 2 offline, 3
/// offline then online), so that exactly one node sends each
/// `user_online` / `user_offline`:
///
/// - `up`, `refresh`: online when no live field was there (a refresh too:
///   after an outage the presence is re-derived), offline first when the
///   fields this call removed as expired were the last (a dead node's,
///   never swept).
/// - `down`, `check`: offline when the hash emptied by this call.
/// - `gone`: `down` for a user whose last connection here ended while
///   Redis was unreachable: offline also when the hash is missing (Redis
///   restarted empty; a repeat when someone sent it already).
pub const USER: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local mode = ARGV[1]
local ttl = tonumber(ARGV[3])
local all = redis.call('HGETALL', KEYS[1])
local n0 = #all / 2
local alive = 0
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    alive = alive + 1
  end
end
if mode == 'down' or mode == 'gone' then
  redis.call('HDEL', KEYS[1], ARGV[2])
elseif mode == 'up' or mode == 'refresh' then
  local was = redis.call('HSET', KEYS[1], ARGV[2], now + ttl)
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
  if alive == 0 then
    if n0 > 0 then return {1, 3} end
    return {1, 1}
  end
  if was == 1 then alive = alive + 1 end
  return {alive, 0}
end
local left = redis.call('HLEN', KEYS[1])
if left == 0 and (n0 > 0 or mode == 'gone') then return {0, 2} end
return {left, 0}
"#;
