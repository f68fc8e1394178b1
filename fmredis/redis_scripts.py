"""The Lua scripts that make ``create`` and ``regenerate`` all or nothing, and ``update``'s compare-and-set.

A script that fails half-way keeps what it already wrote, so each one checks, before its first write, everything that
could refuse a later command: the type of every key (``WRONGTYPE``) and the ACL permission of every command it will run
(``NOPERM``: Redis checks the keys named in ``KEYS`` when the script starts, but commands one at a time). Memory
(``OOM``) is checked by Redis before a script's first write and never after it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from redis.exceptions import NoScriptError

__all__ = ["COMPARE_AND_SET", "FENCED", "INSERT", "MOVE", "script"]


def script(source: str) -> Callable[[Any, tuple[str, ...], tuple[Any, ...]], Any]:
    """A function ``run(client, keys, args)`` that runs ``source`` by its SHA-1, sending the source only when the server
    does not have it cached (one round trip either way but the first)."""
    sha = hashlib.sha1(source.encode()).hexdigest()

    def run(client: Any, keys: tuple[str, ...], args: tuple[Any, ...]) -> Any:
        try:
            return client.execute_command("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:  # not cached on this server yet (or flushed, or a new master): it did not run
            return client.execute_command("EVAL", source, len(keys), *keys, *args)

    return run


_HELPERS = """
local function wrong_type(key, kind)
  local found = redis.call('TYPE', key)['ok']
  return found ~= kind and found ~= 'none'
end
local function refused(...)
  for _, command in ipairs({...}) do
    if not redis.acl_check_cmd(unpack(command)) then
      return redis.error_reply('NOPERM this user has no permissions to run the ' .. command[1] .. ' command')
    end
  end
end
local WRONGTYPE = 'WRONGTYPE Operation against a key holding the wrong kind of value'
local function index(key, score, member, expire_at)
  redis.call('ZADD', key, score, member)
  -- NX sets a new key's expiry; GT only moves an existing one later (GT alone skips a key without one).
  redis.call('EXPIREAT', key, expire_at, 'NX')
  redis.call('EXPIREAT', key, expire_at, 'GT')
end
"""

#: KEYS: session, index. ARGV: payload, seconds, created, session id, index expiry. Returns the index's size, or -1
#: if the id is taken. Finding its own payload already there means redis-py re-sent it after a lost reply: done.
INSERT = (
    _HELPERS
    + """
if wrong_type(KEYS[2], 'zset') or wrong_type(KEYS[1], 'string') then return redis.error_reply(WRONGTYPE) end
local no = refused({'set', KEYS[1], 'x', 'EX', '1'}, {'zadd', KEYS[2], '0', 'x'}, {'expireat', KEYS[2], '0'},
                   {'zcard', KEYS[2]})
if no then return no end
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
index(KEYS[2], ARGV[3], ARGV[4], ARGV[5])
return redis.call('ZCARD', KEYS[2])
"""
)

#: KEYS: old session, new session[, index]. ARGV: payload, seconds (0: past its lifetime, only remove), created, old
#: id, new id, index expiry. Returns 1, or 0 if the new id is taken (nothing written).
MOVE = (
    _HELPERS
    + """
if wrong_type(KEYS[2], 'string') or (KEYS[3] and wrong_type(KEYS[3], 'zset')) then
  return redis.error_reply(WRONGTYPE)
end
local no = refused({'set', KEYS[2], 'x', 'EX', '1'}, {'unlink', KEYS[1]})
if not no and KEYS[3] then
  no = refused({'zrem', KEYS[3], 'x'}, {'zadd', KEYS[3], '0', 'x'}, {'expireat', KEYS[3], '0'})
end
if no then return no end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if tonumber(ARGV[2]) > 0 then redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2]) end
redis.call('UNLINK', KEYS[1])
if KEYS[3] then
  redis.call('ZREM', KEYS[3], ARGV[4])
  if tonumber(ARGV[2]) > 0 then index(KEYS[3], ARGV[3], ARGV[5], ARGV[6]) end
end
return 1
"""
)

#: KEYS: session. ARGV: the SHA-1 (hex) of the bytes the update read, the new payload, seconds (0: remove). Writes
#: only if the key still holds those bytes; returns 1, or 0 if another writer got in first (nothing written), a key of
#: another type included (the retry then reads it as missing, as after a WATCH).
COMPARE_AND_SET = """
if redis.call('TYPE', KEYS[1])['ok'] ~= 'string' or redis.sha1hex(redis.call('GET', KEYS[1])) ~= ARGV[1] then
  return 0
end
if ARGV[3] == '0' then redis.call('UNLINK', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
return 1
"""

#: KEYS: a lock's fencing counter, session. ARGV: the writer's token, then "set" with payload and seconds, "delete",
#: or "cas" with payload, seconds (0: remove) and the SHA-1 of the bytes read (as COMPARE_AND_SET). Returns -1 if a
#: newer token than the writer's has been issued (nothing written), else 1 for set, UNLINK's count for delete, and
#: 1 or 0 for cas. The counter is read in the script that writes, so no acquisition can come between the two.
FENCED = """
if tonumber(redis.call('GET', KEYS[1]) or '0') > tonumber(ARGV[1]) then return -1 end
if ARGV[2] == 'set' then
  redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
  return 1
elseif ARGV[2] == 'delete' then
  return redis.call('UNLINK', KEYS[2])
end
if redis.call('TYPE', KEYS[2])['ok'] ~= 'string' or redis.sha1hex(redis.call('GET', KEYS[2])) ~= ARGV[5] then
  return 0
end
if ARGV[4] == '0' then redis.call('UNLINK', KEYS[2]) else redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4]) end
return 1
"""
