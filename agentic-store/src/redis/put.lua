-- ARGV: key, value, expect ('any' | 'absent' | '<version>'), ttl_ms (0: none), publish 0/1.
-- Returns the new version (> 0), or on a conflict 0 when the key is absent and minus the
-- current version when it is not (versions start at 1): a bare integer, so neither side
-- builds or parses a table on the hot path.
--
-- The common path (no TTL involved) is four calls: HMGET, INCR, HSET, and ZADD for a new
-- key; the clock, the expiry index and PERSIST are touched only when a TTL is.
local key, value, expect, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local k = kv(key)
local f = redis.call('HMGET', k, 'ver', 't')
local cur, had_ttl = f[1], f[2]
local bad = check_expect(expect, cur)
if bad then
  if cur then return -tonumber(cur) end
  return 0
end
local version = redis.call('INCR', base .. 'ver')
if ttl > 0 then
  local now = now_ms()
  prune(now, 16)
  redis.call('HSET', k, 'v', value, 'ver', version, 't', 1)
  redis.call('PEXPIRE', k, ttl)
  redis.call('ZADD', EXP, now + ttl, key)
else
  redis.call('HSET', k, 'v', value, 'ver', version)
  if had_ttl then
    -- An update without TTL makes the key permanent again.
    redis.call('PERSIST', k)
    redis.call('HDEL', k, 't')
    redis.call('ZREM', EXP, key)
  end
end
if not cur then redis.call('ZADD', IDX, 0, key) end
if ARGV[5] == '1' then publish('P', key, version, value) end
return version
