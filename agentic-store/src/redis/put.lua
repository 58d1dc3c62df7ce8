-- ARGV: key, value, expect ('any' | 'absent' | '<version>'), ttl_ms (0: none), publish 0/1.
-- Returns { 'ok', version } or { 'conflict', found_version or -1 }.
local key, value, expect, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local k = kv(key)
local now = now_ms()
prune(now, 16)
local cur = redis.call('HGET', k, 'ver')
local bad = check_expect(expect, cur)
if bad then return bad end
local version = redis.call('INCR', base .. 'ver')
redis.call('HSET', k, 'v', value, 'ver', version)
if not cur then redis.call('ZADD', IDX, 0, key) end
if ttl > 0 then
  redis.call('PEXPIRE', k, ttl)
  redis.call('ZADD', EXP, now + ttl, key)
elseif cur then
  -- An update without TTL makes the key permanent again.
  if redis.call('PERSIST', k) == 1 then redis.call('ZREM', EXP, key) end
end
if ARGV[5] == '1' then publish('P', key, version, value) end
return { 'ok', version }
