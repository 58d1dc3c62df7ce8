-- ARGV: key, expect, publish 0/1. Returns { 'ok', 1 deleted / 0 absent } or
-- { 'conflict', found_version or -1 }.
local key, expect = ARGV[1], ARGV[2]
local k = kv(key)
local f = redis.call('HMGET', k, 'n', 'ver')
local cur = f[1] or f[2]
local bad = check_expect(expect, cur)
if bad then return bad end
if not cur then return { 'ok', 0 } end
redis.call('DEL', k)
redis.call('ZREM', IDX, key)
redis.call('ZREM', EXP, key)
-- Keep the version counter above every version this key had, so a re-created key
-- continues above them (see put.lua).
local counter = base .. 'ver'
if tonumber(cur) > tonumber(redis.call('GET', counter) or '0') then
  redis.call('SET', counter, cur)
end
if ARGV[3] == '1' then publish('D', key, cur, '') end
return { 'ok', 1 }
