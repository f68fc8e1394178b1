"""The Lua scripts of :class:`~fmredis.context_cache.ContextCache`'s writes (its reads are plain pipelined commands:
a script would copy the value in and out of Lua, ~25% more server time on a 60 KB value).

As in :mod:`fmredis.redis_scripts`, a script that writes checks the type of every key before its first write, so a
``WRONGTYPE`` refuses it with nothing written.
"""

from __future__ import annotations

__all__ = ["APPEND", "DELETE", "LEASE", "RELEASE_LEASE", "SET", "WRITE_AND_RELEASE"]

#: KEYS: history list, its hash {bytes, nonce}. ARGV: message, max messages (0: none), max bytes (0: none), ttl ms,
#: nonce. Appends, drops the oldest messages until both bounds hold (the new one always stays: the client refuses a
#: message over max bytes), and restarts both keys' TTL (the sliding TTL). Returns {messages, bytes} kept. The same
#: nonce again (redis-py re-sending the call after a lost reply) appends nothing.
APPEND = """
for i, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key).ok
  if kind ~= 'none' and kind ~= (i == 1 and 'list' or 'hash') then
    return redis.error_reply('WRONGTYPE history key ' .. i .. ' holds a ' .. kind)
  end
end
if redis.call('HGET', KEYS[2], 'nonce') == ARGV[5] then
  return {redis.call('LLEN', KEYS[1]), tonumber(redis.call('HGET', KEYS[2], 'bytes')) or 0}
end
local count = redis.call('LLEN', KEYS[1])
local total = 0
if count > 0 then
  total = tonumber(redis.call('HGET', KEYS[2], 'bytes'))
  -- lost (evicted) or garbled (each stored message takes at least 2 bytes): count again rather than let it drift
  if not total or total ~= math.floor(total) or total < 2 * count or total >= 2 ^ 53 then
    total = 0
    for _, message in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do total = total + #message end
  end
end
count = redis.call('RPUSH', KEYS[1], ARGV[1])
total = total + #ARGV[1]
local max_count, max_bytes = tonumber(ARGV[2]), tonumber(ARGV[3])
while count > 1 and ((max_count > 0 and count > max_count) or (max_bytes > 0 and total > max_bytes)) do
  total = total - #redis.call('LPOP', KEYS[1])
  count = count - 1
end
redis.call('HSET', KEYS[2], 'bytes', total, 'nonce', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {count, total}
"""

#: KEYS: value, lease. ARGV: stored value, ttl ms. A write that a load in progress must not undo: it marks the lease
#: (keeping its TTL), and the loader, finding the lease no longer its own, does not write.
SET = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('SET', KEYS[2], '', 'KEEPTTL') end
return 1
"""

#: KEYS: value, lease. As SET, for a delete; returns how many keys were deleted.
DELETE = """
local deleted = redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('SET', KEYS[2], '', 'KEEPTTL') end
return deleted
"""

#: KEYS: lease, value. ARGV: token, ttl ms, stale ms, force (1: the caller cannot read the value there). 1 if the
#: lease is (now) ours, also when the call is re-sent after a lost reply; 0 if another loader holds it; 2 if the value
#: is there and fresh (a loader wrote it since the caller's read: read it again rather than load it twice). The mark
#: a write leaves on a lease ('') does not hold it.
LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return 1 end
if ARGV[4] ~= '1' then
  local ttl = redis.call('PTTL', KEYS[2])
  if ttl == -1 or ttl > tonumber(ARGV[3]) then return 2 end
end
if holder and holder ~= '' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

#: KEYS: value, lease. ARGV: stored value, ttl ms, lease token, stale ms. Writes the loaded value and ends the lease
#: if the lease is ours. If it is not (a write or delete marked it during the load, another loader holds it) nothing
#: is written, and if there is no lease (it ran out during a slow load) only over a missing or stale value: a
#: value written since is newer than the load. 1 if written.
WRITE_AND_RELEASE = """
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[3] then return 0 end
if not holder then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl == -1 or ttl > tonumber(ARGV[4]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if holder then redis.call('DEL', KEYS[2]) end
return 1
"""

#: KEYS: lease. ARGV: token. Ends the lease if it is still ours (the loader failed).
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
