-- ARGV: key, expect, publish 0/1. Returns { 'ok', 1 deleted / 0 absent } or
-- { 'conflict', found_version or -1 }.
local key, expect = ARGV[1], ARGV[2]
local k = kv(key)
local cur = redis.call('HGET', k, 'ver')
local bad = check_expect(expect, cur)
if bad then return bad end
if not cur then return { 'ok', 0 } end
redis.call('DEL', k)
redis.call('ZREM', IDX, key)
redis.call('ZREM', EXP, key)
if ARGV[3] == '1' then publish('D', key, cur, '') end
return { 'ok', 1 }
