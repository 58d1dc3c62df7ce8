-- Shared by every script of the Redis store (prepended by the Rust side).
--
-- KEYS[1] is the store's key prefix `<prefix>:{<namespace>}:`; every key shares the hash
-- tag so a whole store namespace lives in one Redis Cluster slot (the ordered index and
-- the version counter must be updated atomically with the value).
--
--   n:<key>    string: the key's version, as decimal digits, or 't' and the digits when the
--              key has a TTL (then both its keys carry it)
--   v:<key>    string: the value
--   idx        sorted set of every key (score 0, ordered by member): prefix scans in key order
--   exp        sorted set of keys with a TTL by expiry (ms): lets writes prune the index
--   ver        counter: a new key's first version; kept at or above every version of every
--              key that was deleted or can expire, so versions grow per key across delete,
--              expiry and re-create (put.lua says how)
--   lock:<n>   the lock's token (SET NX PX); fence: counter of fencing tokens
--   channel `<prefix>:{<namespace>}:watch`: every change, for `watch`

local base = KEYS[1]
local IDX = base .. 'idx'
local EXP = base .. 'exp'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function nkey(key) return base .. 'n:' .. key end
local function vkey(key) return base .. 'v:' .. key end

-- An integer as decimal digits (Lua's tostring switches to exponents above 1e14).
local function digits(n) return string.format('%.0f', n) end

-- The version in an `n:<key>` string (nil when absent), and whether the key has a TTL.
local function parse_version(s)
  if not s then return nil, false end
  -- 116 is 't'; string.byte makes no new string.
  if string.byte(s, 1) == 116 then return tonumber(string.sub(s, 2)), true end
  return tonumber(s), false
end

-- Drops index entries of keys whose TTL passed (Redis already dropped the keys).
local function prune(now, limit)
  local gone = redis.call('ZRANGEBYSCORE', EXP, '-inf', now, 'LIMIT', 0, limit)
  for _, key in ipairs(gone) do
    if redis.call('EXISTS', nkey(key)) == 0 then redis.call('ZREM', IDX, key) end
    redis.call('ZREM', EXP, key)
  end
end

-- A change message: op, version, key length, key, value (binary-safe, no JSON needed).
local function publish(op, key, version, value)
  redis.call('PUBLISH', base .. 'watch', op .. '\n' .. version .. '\n' .. #key .. '\n' .. key .. value)
end

-- nil if `expect` holds for the current version `cur` (false when absent), else an error
-- reply naming what was found.
local function check_expect(expect, cur)
  if expect == 'any' then return nil end
  if expect == 'absent' then
    if cur then return { 'conflict', cur } end
    return nil
  end
  if not cur then return { 'conflict', -1 } end
  if cur ~= expect then return { 'conflict', cur } end
  return nil
end
