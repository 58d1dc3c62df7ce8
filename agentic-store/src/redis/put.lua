-- Puts, several in one call: the store batches the puts that callers make at the same time
-- (see writer.rs), so one script run and one round trip serve them all. Each put is still
-- all-or-nothing, and conflicts are per put.
--
-- KEYS[1] is the base; KEYS[2i] and KEYS[2i + 1] are the `n:` and `v:` keys of the i-th put.
-- ARGV[1] is '1' to publish changes for watch; ARGV[2] is '1' when a key appears more than
-- once in the call (the client knows, and the common call then keeps no table of the keys
-- it wrote). Then per put: ARGV[3i] the value, ARGV[3i + 1] the condition: 'any',
-- 'absent' or '<version>', followed by ';<ttl ms>' when the put sets a TTL (the key's name
-- is read off its `n:` key, and only on the general path, so it is not sent apart), and
-- ARGV[3i + 2] for a compare-and-set without TTL the version it writes ('<version>' + 1,
-- made by the client), else ''.
-- Returns one entry per put: the new version
-- (> 0); on a conflict 0 when the key is absent and minus the current version when it is
-- not; or, when that one key cannot be written (another Redis type at its `n:` key), the
-- error as a string.
--
-- The common case costs two calls for the whole batch: one `MGET` of every put's version and
-- one `MSET` of the new versions and values of the puts that update a key without TTL (an
-- unconditional put, or a compare-and-set whose version matches). A new key, a TTL or
-- publishing takes the general path, a few calls for that put alone. A compare-and-set
-- whose version matches is the cheapest: the stored version and the expected one are the
-- same interned string, so it compares them and writes the client's next version without
-- turning a number into a string or back.
--
-- Versions. A key counts its own version up on every write. A new key starts at
-- `INCR <base>ver`, and that counter is kept at or above every version of every key that
-- could vanish: a delete raises it to the deleted version, and a write with a TTL (the only
-- kind of key that can expire) takes its version from it. So a key's versions grow across
-- delete and re-create and across expiry, without every write touching one shared counter.
local publish_changes = ARGV[1] == '1'
local repeats = ARGV[2] == '1'
local COUNTER = base .. 'ver'
local count = (#KEYS - 1) / 2

local nkeys = {}
for i = 1, count do nkeys[i] = KEYS[2 * i] end
local found = redis.call('MGET', unpack(nkeys))
-- Only when a key repeats in this call: `n:` key -> its version after the puts so far in
-- this call (false: absent), and whether it has a TTL. Numbers, not strings: every string
-- Lua makes is hashed and interned. (Redis passes a Lua number to a command as `%.17g`,
-- which writes every version below 2^53 as plain digits.)
local latest, latest_ttl = {}, {}
-- MSET arguments of fast writes not yet sent. They are sent before any general-path put, so
-- writes to one key land in the order of the puts.
local pending, np = {}, 0

local function flush()
  if np > 0 then
    redis.call('MSET', unpack(pending, 1, np))
    np = 0
  end
end

local out = {}
for i = 1, count do
  local nk = KEYS[2 * i]
  local value, expect, nextv = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  if nextv ~= '' and found[i] == expect and not repeats and not publish_changes then
    -- A compare-and-set without TTL whose version matches (plain digits: no TTL).
    pending[np + 1] = nk
    pending[np + 2] = nextv
    pending[np + 3] = KEYS[2 * i + 1]
    pending[np + 4] = value
    np = np + 4
    out[i] = tonumber(nextv)
  else
    local ttl = 0
    if expect ~= 'any' and nextv == '' then
      local at = string.find(expect, ';', 1, true)
      if at then
        ttl = tonumber(string.sub(expect, at + 1))
        expect = string.sub(expect, 1, at - 1)
      end
    end
    local cur, had_ttl
    if repeats and latest[nk] ~= nil then
      cur, had_ttl = latest[nk], latest_ttl[nk]
    else
      -- A version without TTL is plain digits, read in one call; anything else (a 't'
      -- prefix, nothing) goes through parse_version.
      local s = found[i]
      cur = s and tonumber(s)
      had_ttl = false
      if not cur then cur, had_ttl = parse_version(s or nil) end
    end
    local ok
    if expect == 'any' then
      ok = true
    elseif expect == 'absent' then
      ok = not cur
    else
      ok = cur and cur == tonumber(expect)
    end
    if not ok then
      if cur then out[i] = -cur else out[i] = 0 end
    elseif cur and not had_ttl and ttl == 0 and not publish_changes then
      -- The fast path: a key without TTL, updated without TTL.
      local v = cur + 1
      pending[np + 1] = nk
      pending[np + 2] = v
      pending[np + 3] = KEYS[2 * i + 1]
      pending[np + 4] = value
      np = np + 4
      if repeats then latest[nk] = v end
      out[i] = v
    else
      flush()
      local vk = KEYS[2 * i + 1]
      -- nk is base .. 'n:' .. key
      local key = string.sub(nk, #base + 3)
      local kind = cur and 'string' or redis.call('TYPE', nk)['ok']
      if kind ~= 'string' and kind ~= 'none' then
        out[i] = 'WRONGTYPE ' .. nk .. ' holds a ' .. kind .. ', not a version'
      else
        local version
        if ttl > 0 then
          version = redis.call('INCR', COUNTER)
          if cur and cur >= version then
            version = cur + 1
            redis.call('SET', COUNTER, version)
          end
          local now = now_ms()
          prune(now, 16)
          redis.call('SET', nk, 't' .. digits(version), 'PX', ttl)
          redis.call('SET', vk, value, 'PX', ttl)
          redis.call('ZADD', EXP, now + ttl, key)
          latest_ttl[nk] = true
        else
          if cur then version = cur + 1 else version = redis.call('INCR', COUNTER) end
          -- SET without KEEPTTL: a key that had a TTL is permanent now.
          redis.call('MSET', nk, version, vk, value)
          if had_ttl then redis.call('ZREM', EXP, key) end
          latest_ttl[nk] = false
        end
        latest[nk] = version
        if not cur then redis.call('ZADD', IDX, 0, key) end
        if publish_changes then publish('P', key, digits(version), value) end
        out[i] = version
      end
    end
  end
end
flush()
return out
