"""The Lua scripts of :class:`~fmredis.RedisLock`: each step of the lock is one script, so one round trip.

The keys of one lock (all in one cluster slot: they share the name's hash tag):

- ``base``: the lock, holding its owner's random id, with the lease as its expiry (``PX``);
- ``base:fence``: the last fencing token issued (kept a day after the last acquisition);
- ``base:queue``: a sorted set of waiting owner ids, scored by arrival (the server's clock in microseconds), and
  ``base:waiters``: a hash of each waiter's deadline (milliseconds), which it pushes back on every attempt. A waiter
  whose deadline passes (its process died) is dropped when it reaches the head of the queue;
- ``base:wake:<owner>``: the list a waiter blocks on (``BLPOP``); whoever frees the lock pushes to the head waiter's;
- ``base:released``: the owner id of the last release, for a few seconds, so that a release re-sent after a lost reply
  reports what the first one did.

The wake lists are named in the scripts, not in ``KEYS``: they are only known once the queue is read. They share the
lock's hash tag, so a cluster node serves them with the lock.

Tokens are ``max(last + 1, server time in microseconds)``: strictly growing while the counter lives, and still growing
(by the clock) if it is lost: a restart without persistence, a failover that lost the last writes, an eviction.
Tokens stay exact: a Lua number holds integers up to 2**53 (microseconds until the year 2255).
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "EXTEND", "LEAVE", "RELEASE"]

_HELPERS = """
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
-- The first live waiter of the queue (KEYS of the caller: queue, waiters), dropping dead ones on the way; nil if
-- none. `me` is never dropped: it is asking now.
local function head_of(queue, waiters, now_ms, me)
  while true do
    local head = redis.call('ZRANGE', queue, 0, 0)[1]
    if not head then return nil end
    local deadline = tonumber(redis.call('HGET', waiters, head))
    if head == me or (deadline and deadline >= now_ms) then return head end
    redis.call('ZREM', queue, head)
    redis.call('HDEL', waiters, head)
  end
end
-- The lock is free: wake the head waiter, once (a wake list already holding a push is left alone).
local function wake(queue, waiters, now_ms, prefix, lease_ms, me)
  local head = head_of(queue, waiters, now_ms, me)
  if head and head ~= me then
    local list = prefix .. head
    if redis.call('LLEN', list) == 0 then
      redis.call('LPUSH', list, '1')
      redis.call('PEXPIRE', list, lease_ms)
    end
  end
end
"""

#: KEYS: lock, fence, queue, waiters, own wake list. ARGV: owner id, lease ms, "1" to queue if not acquired (else a
#: single attempt), waiter lease ms, fence keep ms, wake list prefix. Returns {1, token} when acquired, else
#: {0, PTTL of the lock} (-2: free, but another waiter is ahead). Finding its own id in the lock means a re-send
#: after a lost reply: acquired.
ACQUIRE = (
    _HELPERS
    + """
local me = ARGV[1]
local holder = redis.call('GET', KEYS[1])
if holder == me then return {1, redis.call('GET', KEYS[2])} end
local now = clock()
local now_ms = math.floor(now / 1000)
local head = head_of(KEYS[3], KEYS[4], now_ms, me)
if not holder and (not head or head == me) then
  if head then
    redis.call('ZREM', KEYS[3], me)
    redis.call('HDEL', KEYS[4], me)
  end
  redis.call('DEL', KEYS[5])
  local token = string.format('%d', math.max(tonumber(redis.call('GET', KEYS[2]) or '0') + 1, now))
  redis.call('SET', KEYS[2], token, 'PX', ARGV[5])
  redis.call('SET', KEYS[1], me, 'PX', ARGV[2])
  return {1, token}
end
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[3], 'NX', now, me)
  redis.call('HSET', KEYS[4], me, now_ms + tonumber(ARGV[4]))
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
  if not holder then wake(KEYS[3], KEYS[4], now_ms, ARGV[6], ARGV[4], me) end
end
return {0, redis.call('PTTL', KEYS[1])}
"""
)

#: KEYS: lock, queue, waiters, released. ARGV: owner id, wake list prefix, waiter lease ms. Returns 1 if it released
#: the lock (or a first send of this release did), 0 if the lock was not this owner's.
RELEASE = (
    _HELPERS
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  if redis.call('GET', KEYS[4]) == ARGV[1] then return 1 end
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[4], ARGV[1], 'PX', 10000)
wake(KEYS[2], KEYS[3], math.floor(clock() / 1000), ARGV[2], ARGV[3], nil)
return 1
"""
)

#: KEYS: lock. ARGV: owner id, lease ms. Returns 1 if the lease was restarted, 0 if the lock is not this owner's.
EXTEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

#: KEYS: lock, queue, waiters, own wake list. ARGV: owner id, wake list prefix, waiter lease ms. A waiter gives up:
#: it leaves the queue, and if the lock is free the next waiter is woken (the push may have been meant for it).
LEAVE = (
    _HELPERS
    + """
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[4])
if redis.call('EXISTS', KEYS[1]) == 0 then wake(KEYS[2], KEYS[3], math.floor(clock() / 1000), ARGV[2], ARGV[3], nil) end
return 1
"""
)
