"""The Lua scripts of the Redis backend: each verb that must be atomic is one.

Every script gets the same three keys, which share one hash tag (``{name}``)
so they live in one Redis Cluster slot:

* ``KEYS[1]`` meta:  a hash: layout spec, capacity, key_size, created;
* ``KEYS[2]`` data:  a hash: encoded key -> value (the table's keys);
* ``KEYS[3]`` rlock: a hash: encoded key -> lease state of a Struct
  record being updated;
* ``KEYS[5]`` exp:   a hash: encoded key -> deadline (ms of the server's
  ``TIME``) of a Counter key given a TTL (see expire_field below);
* ``KEYS[4]`` fence: an integer, the last fencing token an exclusive lock
  acquire was given (``INCR`` in the acquiring script).

Values in ``data``: a Counter is a decimal int64 (so ``HINCRBY`` applies); a
Lock is its lease state; a Struct record is its packed bytes.  Lua numbers
are doubles, so int64 values never pass through ``tonumber``: they are
compared as strings (all writers store the canonical decimal form).

A lease state is ``""`` (free) or JSON ``{"w": token, "x": expiry_ms,
"r": {token: [count, expiry_ms]}}``: ``w`` holds the exclusive owner, ``r``
the shared owners.  Expiry is in the server's clock (``TIME``), so hosts
with skewed clocks agree.  A lease whose expiry has passed belongs to a
holder that stopped renewing it (it died, or lost the server for longer than
the lease): the next acquirer drops it, and is told when it was a writer's.

Errors come back as replies whose first word the Python side maps:
``SHMDICT_FULL live capacity``, ``SHMDICT_NOTABLE``, ``SHMDICT_HELD``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

_PRELUDE = r"""
local META, DATA, RLOCK, FENCE, EXP = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
-- The channel a release is announced on (see RedisTable._wait).
local WAKE = META .. ':wake'

-- Expiry (the server's clock): EXP maps a field to its deadline, in ms of
-- TIME; a field past its deadline is absent for every verb.  Every script
-- that reads or writes a field calls expire_field first, which deletes it
-- (from DATA and EXP) when its deadline has passed; a full table drops all
-- expired fields (purge_expired) before it refuses a new one.
local function time_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function expire_field(f)
  local d = redis.call('HGET', EXP, f)
  if d and tonumber(d) <= time_ms() then
    redis.call('HDEL', DATA, f)
    redis.call('HDEL', EXP, f)
    return true
  end
  return false
end

local function purge_expired()
  if redis.call('HLEN', EXP) == 0 then return 0 end
  local now, n = time_ms(), 0
  local all = redis.call('HGETALL', EXP)
  for i = 1, #all, 2 do
    if tonumber(all[i + 1]) <= now then
      redis.call('HDEL', DATA, all[i])
      redis.call('HDEL', EXP, all[i])
      n = n + 1
    end
  end
  return n
end

-- Give field f a deadline ttl_ms from now ('' or nil: keep its expiry); one
-- ms later than asked, so that a key never expires early on a ms clock.
local function set_deadline(f, ttl_ms)
  if ttl_ms ~= nil and ttl_ms ~= '' then
    redis.call('HSET', EXP, f, time_ms() + tonumber(ttl_ms) + 1)
  end
end

-- 'existed' or 'created' (field now holds `default`), else 'notable' or 'full'.
-- (A key present in DATA proves the table exists: meta and data are only
-- ever deleted together.)
local function ensure(f, default)
  expire_field(f)
  if redis.call('HEXISTS', DATA, f) == 1 then return 'existed' end
  local cap = redis.call('HGET', META, 'capacity')
  if not cap then return 'notable' end
  if redis.call('HLEN', DATA) >= tonumber(cap)
      and (purge_expired() == 0 or redis.call('HLEN', DATA) >= tonumber(cap)) then
    return 'full'
  end
  redis.call('HSET', DATA, f, default)
  return 'created'
end

local function fail(status)
  if status == 'notable' then return redis.error_reply('SHMDICT_NOTABLE') end
  return redis.error_reply('SHMDICT_FULL ' .. redis.call('HLEN', DATA) .. ' ' ..
                           redis.call('HGET', META, 'capacity'))
end

-- Abort the script with an error reply.  Redis 7 and Valkey return a
-- raised reply table as it is; Redis 6's error handler concatenates what was
-- raised with its position and fails on a table, so it gets the reply's text
-- (which then comes back after a position prefix: the Python side looks for
-- the SHMDICT_ word anywhere in the message).
local function raise(reply)
  if redis.REDIS_VERSION_NUM then error(reply) end
  error(reply['err'], 0)
end

-- ensure(), raising the table-full / no-table error reply instead of
-- returning it: 'existed' or 'created'.
local function ensured(f, default)
  local st = ensure(f, default)
  if st ~= 'existed' and st ~= 'created' then raise(fail(st)) end
  return st
end

-- Create (within capacity) or overwrite field f with value.
local function put(f, value)
  ensured(f, value)
  redis.call('HSET', DATA, f, value)
end

-- Compare-and-swap the value of field f: old -> new, 1 or 0.  A missing
-- field becomes `new` (1) only when set_missing.
local function cas_field(f, old, new, set_missing)
  expire_field(f)
  local cur = redis.call('HGET', DATA, f)
  if not cur then
    if not set_missing then return 0 end
    ensured(f, new)
    return 1
  end
  if cur ~= old then return 0 end
  redis.call('HSET', DATA, f, new)
  return 1
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function lease_load(raw)
  if not raw or raw == '' then return {r = {}} end
  local s = cjson.decode(raw)
  if type(s.r) ~= 'table' then s.r = {} end
  return s
end

local function lease_save(hash, f, s)
  if s.w == nil and next(s.r) == nil then
    redis.call('HSET', hash, f, '')
  else
    if next(s.r) == nil then s.r = nil end
    redis.call('HSET', hash, f, cjson.encode(s))
    if s.r == nil then s.r = {} end
  end
end

-- Drop expired leases; true when an exclusive holder's lease had expired.
local function lease_expire(s, now)
  local died = false
  if s.w ~= nil and s.x < now then s.w = nil; s.x = nil; died = true end
  for tok, e in pairs(s.r) do
    if e[2] < now then s.r[tok] = nil end
  end
  return died
end

-- Whether someone other than `tok` holds a live exclusive lease.
local function held_by_other(raw, tok, now)
  if not raw or raw == '' then return false end
  local s = lease_load(raw)
  return s.w ~= nil and s.w ~= tok and s.x >= now
end

-- A writer that finds field f's record lease expired takes it over: the
-- lease is dropped, so its stopped holder can neither renew nor commit it.
local function drop_expired_rlock(f, raw, now)
  if raw and raw ~= '' then
    local s = lease_load(raw)
    if s.w ~= nil and s.x < now then redis.call('HDEL', RLOCK, f) end
  end
end

-- Take a lease in `hash` at field f: returns {1, died} or {0, ms until the
-- blocking lease expires}.
local function lease_take(hash, f, tok, lease, shared)
  local now = now_ms()
  local s = lease_load(redis.call('HGET', hash, f))
  local died = lease_expire(s, now)
  if shared then
    if s.w ~= nil then return {0, s.x - now} end
    local e = s.r[tok]
    if e then e[1] = e[1] + 1; e[2] = now + lease else s.r[tok] = {1, now + lease} end
  else
    if s.w ~= nil then return {0, s.x - now} end
    local first = next(s.r)
    if first ~= nil then return {0, s.r[first][2] - now} end
    s.w = tok; s.x = now + lease
  end
  lease_save(hash, f, s)
  return {1, died and 1 or 0}
end
"""


@dataclass(frozen=True)
class Script:
    """A Lua script with its SHA1 (for ``EVALSHA``)."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


def _script(name: str, body: str, prelude: bool = True) -> Script:
    return Script(name, (_PRELUDE if prelude else "") + body)


# ----------------------------------------------------------------- tables
OPEN = _script("open", r"""
local cur = redis.call('HMGET', META, 'layout', 'capacity', 'key_size')
if not cur[1] then
  if ARGV[4] == '0' then return {0} end
  local t = redis.call('TIME')
  redis.call('HSET', META, 'layout', ARGV[1], 'capacity', ARGV[2], 'key_size', ARGV[3],
             'created', t[1], 'format', '1')
  return {1}
end
return {2, cur[1], cur[2], cur[3]}
""")

UNLINK = _script("unlink", r"""
local existed = redis.call('EXISTS', META)
redis.call('UNLINK', META, DATA, RLOCK, FENCE, EXP)
return existed
""")

# Get-or-create with the default value: 1 if created, 0 if it existed.
ENSURE = _script("ensure", r"""
if ensured(ARGV[1], ARGV[2]) == 'created' then return 1 end
return 0
""")

# ---------------------------------------------------------------- Counter
COUNTER_ADD = _script("counter_add", r"""
local st = ensured(ARGV[1], '0')
local r = redis.pcall('HINCRBY', DATA, ARGV[1], ARGV[2])
if type(r) == 'table' and r.err then
  if st == 'created' then redis.call('HDEL', DATA, ARGV[1]) end
  return redis.error_reply('SHMDICT_OVERFLOW')
end
set_deadline(ARGV[1], ARGV[3])
-- The new value as stored (a decimal string): HINCRBY's reply became a Lua
-- double, exact only up to 2^53.
return redis.call('HGET', DATA, ARGV[1])
""")

# add_many: ARGV pairs (field, increment); the new values as decimal strings,
# in order.  Each add is checked as COUNTER_ADD's (capacity, overflow); an
# error stops the batch with the adds before it applied, as on shared memory.
COUNTER_ADD_MANY = _script("counter_add_many", r"""
local out = {}
local ttl = ARGV[1]
for i = 2, #ARGV, 2 do
  local st = ensured(ARGV[i], '0')
  local r = redis.pcall('HINCRBY', DATA, ARGV[i], ARGV[i + 1])
  if type(r) == 'table' and r.err then
    if st == 'created' then redis.call('HDEL', DATA, ARGV[i]) end
    return redis.error_reply('SHMDICT_OVERFLOW')
  end
  set_deadline(ARGV[i], ttl)
  out[#out + 1] = redis.call('HGET', DATA, ARGV[i])
end
return out
""")

# Create-or-overwrite; returns the previous value (the default if created).
COUNTER_EXCHANGE = _script("counter_exchange", r"""
expire_field(ARGV[1])
local old = redis.call('HGET', DATA, ARGV[1]) or '0'
put(ARGV[1], ARGV[2])
set_deadline(ARGV[1], ARGV[3])
return old
""")

# ARGV: field, old, new, set_on_not_exists ('1'/'0'), ttl_ms ('': keep).
COUNTER_CAS = _script("counter_cas", r"""
local ok = cas_field(ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1')
if ok == 1 then set_deadline(ARGV[1], ARGV[5]) end
return ok
""")

# The value, or nil when absent or expired (read, `in`).
READ = _script("read", r"""
expire_field(ARGV[1])
return redis.call('HGET', DATA, ARGV[1])
""")

# The number of keys, expired ones dropped first.
LENGTH = _script("length", r"""
purge_expired()
return redis.call('HLEN', DATA)
""")

# ARGV: field, ttl_ms ('': persist).  1 if the key exists (now with that
# expiry), 0 if absent or expired.
SET_TTL = _script("set_ttl", r"""
if expire_field(ARGV[1]) or redis.call('HEXISTS', DATA, ARGV[1]) == 0 then return 0 end
if ARGV[2] == '' then redis.call('HDEL', EXP, ARGV[1]) else set_deadline(ARGV[1], ARGV[2]) end
return 1
""")

# {0}: absent or expired, {1}: no expiry, {2, ms left}.
TTL = _script("ttl", r"""
if expire_field(ARGV[1]) or redis.call('HEXISTS', DATA, ARGV[1]) == 0 then return {0} end
local d = redis.call('HGET', EXP, ARGV[1])
if not d then return {1} end
local left = tonumber(d) - time_ms()
if left < 0 then left = 0 end
return {2, left}
""")

# Drop every expired field now; how many.
PURGE = _script("purge", r"""
return purge_expired()
""")

# The value, creating the key at 0 (a handle's `.value`).
COUNTER_VALUE = _script("counter_value", r"""
ensured(ARGV[1], '0')
return redis.call('HGET', DATA, ARGV[1])
""")

# The old value and the delete in one step; nil if absent.
TAKE = _script("take", r"""
expire_field(ARGV[1])
local v = redis.call('HGET', DATA, ARGV[1])
if v then redis.call('HDEL', DATA, ARGV[1]); redis.call('HDEL', EXP, ARGV[1]) end
return v
""")

# GCRA, on the server's clock, with exactly the rule of
# shmdict.ratelimit.gcra_step.  ARGV: field, emission_interval_ns (T),
# tolerance_ns (tau), cost.  The theoretical arrival time (TAT, int64 ns
# since the epoch of the server's TIME) is the counter's value; it is split
# into (seconds, nanoseconds) so no double ever holds more than 2^53, and
# only `base - now` (exact while under 2^53 ns, about 104 days) is computed.
# Returns {allowed, remaining, retry_after_ns, reset_after_ns}.  A refused
# hit, and a hit of cost 0, change nothing and create nothing.
GCRA = _script("gcra", r"""
local f = ARGV[1]
local T, tau, cost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now_s, now_n = tonumber(t[1]), tonumber(t[2]) * 1000
expire_field(f)
local raw = redis.call('HGET', DATA, f)
local rel = 0                                -- base - now, base = max(tat, now)
if raw and string.match(raw, '^%d+$') and #raw > 9 then
  local n = #raw
  local s, ns = tonumber(string.sub(raw, 1, n - 9)), tonumber(string.sub(raw, n - 8))
  rel = (s - now_s) * 1000000000 + (ns - now_n)
  if rel < 0 then rel = 0 end
end
local ahead = rel + cost * T                 -- new_tat - now
if ahead > tau then
  return {0, math.floor((tau - rel) / T), ahead - tau, rel}
end
if cost > 0 then
  local total = now_n + ahead                -- new_tat = now + ahead, as sec/ns
  local carry = math.floor(total / 1000000000)
  local value = string.format('%d%09d', now_s + carry, total - carry * 1000000000)
  put(f, value)
  -- The key expires when its TAT passes (then it allows what no key does).
  set_deadline(f, math.ceil(ahead / 1000000))
end
return {1, math.floor((tau - ahead) / T), 0, ahead}
""")

# ------------------------------------------------------------------ Lock
# ARGV: field, token, lease_ms, shared ('1'/'0').  {1, died, fence} or
# {0, wait_ms}.  An exclusive acquire takes the next fencing token in the
# same step (as a decimal string: exact past 2^53); a shared one gets '0'.
LOCK_ACQUIRE = _script("lock_acquire", r"""
ensured(ARGV[1], '')
local got = lease_take(DATA, ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1')
if got[1] == 1 then
  if ARGV[4] == '1' then
    got[3] = '0'
  else
    redis.call('INCR', FENCE)
    got[3] = redis.call('GET', FENCE)
  end
end
return got
""")

# ARGV: field, token, shared.  1 if released, 0 if `token` did not hold it.
LOCK_RELEASE = _script("lock_release", r"""
local hash = DATA
if ARGV[4] == 'r' then hash = RLOCK end
local raw = redis.call('HGET', hash, ARGV[1])
if not raw then return 0 end
local s = lease_load(raw)
if ARGV[3] == '1' then
  local e = s.r[ARGV[2]]
  if not e then return 0 end
  e[1] = e[1] - 1
  if e[1] <= 0 then s.r[ARGV[2]] = nil end
else
  if s.w ~= ARGV[2] then return 0 end
  s.w = nil; s.x = nil
end
if hash == RLOCK then
  redis.call('HDEL', RLOCK, ARGV[1])
else
  lease_save(hash, ARGV[1], s)
end
redis.call('PUBLISH', WAKE, ARGV[1])   -- waiters of this table look again
return 1
""")

# ARGV: lease_ms, then (where 'd'|'r', field, token, shared) per held lease.
# Extends each lease still held; returns 1/0 per lease (0: it was lost).
LEASE_RENEW = _script("lease_renew", r"""
local lease = tonumber(ARGV[1])
local now = now_ms()
local out = {}
local i = 2
while i <= #ARGV do
  local hash = DATA
  if ARGV[i] == 'r' then hash = RLOCK end
  local f, tok, shared = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3] == '1'
  local raw = redis.call('HGET', hash, f)
  local ok = 0
  if raw and raw ~= '' then
    local s = lease_load(raw)
    -- Only a lease still live is renewed: one that expired while its holder
    -- was stopped or cut off may have been taken over, or written past.
    if shared then
      if s.r[tok] and s.r[tok][2] >= now then s.r[tok][2] = now + lease; ok = 1 end
    elseif s.w == tok and s.x >= now then
      s.x = now + lease; ok = 1
    end
    if ok == 1 then lease_save(hash, f, s) end
  end
  out[#out + 1] = ok
  i = i + 4
end
return out
""")

# The live holders of a lease: {writer token or '', reader tokens...}.
LEASE_INFO = _script("lease_info", r"""
local hash = DATA
if ARGV[2] == 'r' then hash = RLOCK end
local s = lease_load(redis.call('HGET', hash, ARGV[1]))
lease_expire(s, now_ms())
local out = {s.w or ''}
for tok, _ in pairs(s.r) do out[#out + 1] = tok end
return out
""")

# Delete a lock key unless someone holds a live lease on it.  ARGV: field.
# Returns 1 if it existed, 0 if not.
LOCK_DELETE = _script("lock_delete", r"""
local raw = redis.call('HGET', DATA, ARGV[1])
if not raw then return 0 end
local s = lease_load(raw)
lease_expire(s, now_ms())
if s.w ~= nil or next(s.r) ~= nil then
  return redis.error_reply('SHMDICT_HELD ' .. (s.w or next(s.r)))
end
redis.call('HDEL', DATA, ARGV[1])
return 1
""")

# ---------------------------------------------------------------- Struct
# Writers other than update() wait while another token holds the record's
# lease; they return 'busy' (with the ms left on it) and the client retries.

# ARGV: field, token, bytes.  1 done, or {'busy', ms}.
STRUCT_SET = _script("struct_set", r"""
local now = now_ms()
local raw = redis.call('HGET', RLOCK, ARGV[1])
if held_by_other(raw, ARGV[2], now) then return {'busy', lease_load(raw).x - now} end
drop_expired_rlock(ARGV[1], raw, now)
put(ARGV[1], ARGV[3])
return 1
""")

# ARGV: field, token, old, new, set_on_not_exists.  1/0, or {'busy', ms}.
STRUCT_CAS = _script("struct_cas", r"""
local now = now_ms()
local raw = redis.call('HGET', RLOCK, ARGV[1])
if held_by_other(raw, ARGV[2], now) then return {'busy', lease_load(raw).x - now} end
drop_expired_rlock(ARGV[1], raw, now)
return cas_field(ARGV[1], ARGV[3], ARGV[4], ARGV[5] == '1')
""")

# Start update(): create the key with the default, take the record's lease,
# return {1, died, record bytes} or {0, wait_ms}.
# ARGV: field, token, lease_ms, default bytes.
STRUCT_BEGIN = _script("struct_begin", r"""
ensured(ARGV[1], ARGV[4])
local got = lease_take(RLOCK, ARGV[1], ARGV[2], tonumber(ARGV[3]), false)
if got[1] == 0 then return got end
return {1, got[2], redis.call('HGET', DATA, ARGV[1])}
""")

# Finish update(): write the record and drop the lease, if it is still ours
# and live.  ARGV: field, token, bytes.  1, or 0 when the lease was lost
# (taken over, or expired: a write may have slipped past it).
STRUCT_COMMIT = _script("struct_commit", r"""
local now = now_ms()
local raw = redis.call('HGET', RLOCK, ARGV[1])
local s = lease_load(raw)
if s.w ~= ARGV[2] then return 0 end
if s.x < now then          -- expired: others may have written past it
  redis.call('HDEL', RLOCK, ARGV[1])
  return 0
end
redis.call('HDEL', RLOCK, ARGV[1])
if redis.call('EXISTS', META) == 0 then return redis.error_reply('SHMDICT_NOTABLE') end
redis.call('HSET', DATA, ARGV[1], ARGV[3])
redis.call('PUBLISH', WAKE, ARGV[1])
return 1
""")

# Delete a record, waiting out another's update.  ARGV: field, token.
# Returns the record bytes (nil if absent), or {'busy', ms}.
STRUCT_TAKE = _script("struct_take", r"""
local now = now_ms()
local raw = redis.call('HGET', RLOCK, ARGV[1])
if held_by_other(raw, ARGV[2], now) then return {'busy', lease_load(raw).x - now} end
drop_expired_rlock(ARGV[1], raw, now)
local v = redis.call('HGET', DATA, ARGV[1])
redis.call('HDEL', DATA, ARGV[1])
redis.call('HDEL', RLOCK, ARGV[1])
return v
""")
