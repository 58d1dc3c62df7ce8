-- Versions of unconditional puts without TTL (watch off), several in one call. It runs in
-- one MULTI/EXEC right after a plain MSET that wrote the values, so the values never pass
-- through Lua (passing a 256-byte value into a script costs Redis more than writing it).
-- Sent as EVAL with its text, never EVALSHA: inside a transaction a missing script would
-- fail after the MSET ran, leaving new values beside old versions. Comment lines are
-- stripped before sending.
--
-- KEYS[1] is the base; KEYS[i + 1] is the `n:` key of the i-th put. ARGV[1] is '1' when a
-- key appears more than once in the call. Returns per put the new version, or an error
-- string when that key cannot be written (another Redis type at its `n:` key, or a new key
-- while the namespace's `ver` or `idx` holds another type; its value is deleted again, so
-- the key stays absent as it was, and the other puts are unaffected).
--
-- Versions as in put.lua: a key counts its own version up on every write; a new key takes
-- `INCR <base>ver`; a key that had a TTL (version 't<digits>') becomes permanent, leaves
-- `exp`, and counts on from its version.
local base = KEYS[1]
local n = #KEYS - 1
local repeats = ARGV[1] == '1'
local found = redis.call('MGET', unpack(KEYS, 2, n + 1))
local latest = {}
local w, nw = {}, 0
local out = {}
for i = 1, n do
  local nk = KEYS[i + 1]
  local cur
  if repeats and latest[nk] then
    cur = latest[nk]
  else
    local s = found[i]
    cur = s and tonumber(s)
  end
  if cur then
    cur = cur + 1
    w[nw + 1] = nk
    w[nw + 2] = cur
    nw = nw + 2
    out[i] = cur
  else
    if nw > 0 then
      redis.call('MSET', unpack(w, 1, nw))
      nw = 0
    end
    local key = string.sub(nk, #base + 3)
    local s = found[i]
    local kind = s and 'string' or redis.call('TYPE', nk)['ok']
    local err
    local v = s and string.byte(s, 1) == 116 and tonumber(string.sub(s, 2))
    if kind ~= 'string' and kind ~= 'none' then
      err = 'WRONGTYPE ' .. nk .. ' holds a ' .. kind .. ', not a version'
    elseif v then
      v = v + 1
      -- Only the expiry index: if it cannot be cleaned, a write prunes the entry later.
      redis.pcall('ZREM', base .. 'exp', key)
    else
      -- pcall: the values are written already, so a failure here (the namespace's counter or
      -- index holding another type) must fail this put alone and leave the rest consistent.
      v = redis.pcall('INCR', base .. 'ver')
      if type(v) == 'table' then
        err = v.err
      else
        local z = redis.pcall('ZADD', base .. 'idx', 0, key)
        if type(z) == 'table' then err = z.err end
      end
    end
    if err then
      -- A key failing here was absent (or unreadable): deleting the value written for it
      -- leaves it as it was.
      redis.call('DEL', base .. 'v:' .. key)
      out[i] = err
      cur = nil
    else
      redis.call('SET', nk, v)
      cur = v
      out[i] = v
    end
  end
  if repeats then latest[nk] = cur end
end
if nw > 0 then redis.call('MSET', unpack(w, 1, nw)) end
return out
