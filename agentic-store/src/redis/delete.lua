-- ARGV: key, expect, publish 0/1. Returns { 'ok', 1 deleted / 0 absent } or
-- { 'conflict', found_version or -1 }.
local key, expect = ARGV[1], ARGV[2]
local nk = nkey(key)
local cur = parse_version(redis.call('GET', nk) or nil)
local cur_d = cur and digits(cur)
local bad = check_expect(expect, cur_d)
if bad then return bad end
if not cur then return { 'ok', 0 } end
redis.call('DEL', nk, vkey(key))
redis.call('ZREM', IDX, key)
redis.call('ZREM', EXP, key)
-- Keep the version counter at or above every version this key had, so a re-created key
-- continues above them (see put.lua).
local counter = base .. 'ver'
if cur > tonumber(redis.call('GET', counter) or '0') then
  redis.call('SET', counter, cur_d)
end
if ARGV[3] == '1' then publish('D', key, cur_d, '') end
return { 'ok', 1 }
