-- Puts, several in one call: the store batches the puts that callers make at the same time
-- (see `writer` in mod.rs), so one script run and one round trip serve them all. Each put
-- is still all-or-nothing, and conflicts are per put.
--
-- KEYS[1] is the base; KEYS[1 + i] the hash of the i-th put. ARGV[1] is '1' to publish
-- changes for watch; then per put: key, value, expect ('any' | 'absent' | '<version>'),
-- ttl_ms ('0': none). Returns one entry per put: the new version (> 0); on a conflict 0
-- when the key is absent and minus the current version when it is not; or, when that one
-- key cannot be written (another type at the key, say), the error as a string.
--
-- Versions. A key without a TTL keeps its version in field `n`, so the common update is two
-- calls: `HINCRBY n` (or `HGET n` for a compare-and-set) and `HSET v`. A key with a TTL
-- keeps it in `ver`. A key that does not exist starts at `INCR <base>ver`, and that counter
-- is kept at or above every version of every key that could vanish: a delete raises it to
-- the deleted version, and a write with a TTL (the only kind of key that can expire) takes
-- its version from it. So a key's versions grow across delete and re-create, and across
-- expiry, without every write touching one shared counter.
local publish_changes = ARGV[1] == '1'
local COUNTER = base .. 'ver'

local function put_one(k, key, value, expect, ttl)
  local fresh = false
  if ttl == 0 and not publish_changes then
    if expect == 'any' then
      local n = redis.pcall('HINCRBY', k, 'n', 1)
      if type(n) == 'table' then return n.err end
      if n > 1 then
        redis.call('HSET', k, 'v', value)
        return n
      end
      -- `n` was absent: the call above just created it as 1; the general path below
      -- overwrites it.
      fresh = true
    elseif expect ~= 'absent' then
      local cur = redis.pcall('HGET', k, 'n')
      if type(cur) == 'table' then return cur.err end
      if cur then
        cur = tonumber(cur)
        if cur ~= tonumber(expect) then return -cur end
        redis.call('HSET', k, 'v', value, 'n', cur + 1)
        return cur + 1
      end
    end
  end

  -- The general path: a new key, a TTL, a key whose version is in `ver`, or publishing.
  local f = redis.pcall('HMGET', k, 'n', 'ver')
  if f.err then return f.err end
  local n_cur, ttl_cur = f[1], f[2]
  if fresh then n_cur = nil end
  local cur = n_cur or ttl_cur
  if check_expect(expect, cur) then
    if cur then return -tonumber(cur) end
    return 0
  end
  local version
  if ttl > 0 then
    version = redis.call('INCR', COUNTER)
    if cur and tonumber(cur) >= version then
      version = tonumber(cur) + 1
      redis.call('SET', COUNTER, version)
    end
    local now = now_ms()
    prune(now, 16)
    redis.call('HSET', k, 'v', value, 'ver', version)
    if n_cur or fresh then redis.call('HDEL', k, 'n') end
    redis.call('PEXPIRE', k, ttl)
    redis.call('ZADD', EXP, now + ttl, key)
  else
    if cur then
      version = tonumber(cur) + 1
    else
      version = redis.call('INCR', COUNTER)
    end
    redis.call('HSET', k, 'v', value, 'n', version)
    if ttl_cur then
      -- The key had a TTL (or was written by a release that kept every version in `ver`):
      -- an update without TTL makes it permanent.
      redis.call('HDEL', k, 'ver', 't')
      redis.call('PERSIST', k)
      redis.call('ZREM', EXP, key)
    end
  end
  if not cur then redis.call('ZADD', IDX, 0, key) end
  if publish_changes then publish('P', key, version, value) end
  return version
end

local out = {}
for i = 2, #KEYS do
  local j = (i - 2) * 4 + 1
  out[i - 1] = put_one(KEYS[i], ARGV[j + 1], ARGV[j + 2], ARGV[j + 3], tonumber(ARGV[j + 4]))
end
return out
