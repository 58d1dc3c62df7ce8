-- Versions of unconditional puts without TTL (watch off), several in one call. It runs in
-- one MULTI/EXEC right after a plain MSET that wrote the values, so the values never pass
-- through Lua (passing a 256-byte value into a script costs Redis more than writing it).
-- Sent as EVAL with its text, never EVALSHA: inside a transaction a missing script would
-- fail after the MSET ran, leaving new values beside old versions. Comment lines and
-- indentation are stripped before sending, and the code is terse on purpose: Redis hashes
-- the text (SHA1) on every EVAL, about 45 instructions per byte, which was a third of
-- this call's cost with the earlier, longer script.
--
-- KEYS[1] is the base; KEYS[i] (i > 1) is the `n:` key of the (i - 1)-th put. Returns per
-- put the new version, or an error string when that key cannot be written (another Redis
-- type at its `n:` key, or a new key while the namespace's `ver` or `idx` holds another
-- type; its value is deleted again, so the key stays absent as it was, and the other puts
-- are unaffected).
--
-- Versions as in put.lua: a key counts its own version up on every write; a new key takes
-- `INCR <base>ver`; a key that had a TTL (version 't<digits>') becomes permanent, leaves
-- `exp`, and counts on from its version.
--
-- The common case, a key that exists without TTL, is one INCR (a key repeated in the call
-- counts up once per put, as it should). INCR answers 1 for a new key (it created the
-- counter: versions start above 1 otherwise, since a permanent key's INCR gives at least
-- 2), and an error for a TTL version or another type; those go the long way below.
local b = KEYS[1]
local o = {}
for i = 2, #KEYS do
  local n = KEYS[i]
  local r = redis.pcall('INCR', n)
  if type(r) == 'number' and r > 1 then
    o[i - 1] = r
  else
    local k = string.sub(n, #b + 3)
    local v, e
    if r ~= 1 then
      -- Not a plain counter: a TTL version, another type, or a corrupt string (which, as a
      -- corrupt version anywhere, is taken as absent).
      local t = redis.call('TYPE', n)['ok']
      if t == 'string' then
        local s = redis.call('GET', n)
        -- 116 is 't'.
        if string.byte(s, 1) == 116 then v = tonumber(string.sub(s, 2)) end
        if v then
          v = v + 1
          -- Only the expiry index: if it cannot be cleaned, a write prunes the entry later.
          redis.pcall('ZREM', b .. 'exp', k)
        end
      elseif t ~= 'none' then
        e = 'WRONGTYPE ' .. n .. ' holds a ' .. t .. ', not a version'
      end
    end
    if not (v or e) then
      -- A new key. pcall: the values are written already, so a failure here (the
      -- namespace's counter or index holding another type) must fail this put alone.
      v = redis.pcall('INCR', b .. 'ver')
      if type(v) == 'table' then
        e = v.err
      else
        local z = redis.pcall('ZADD', b .. 'idx', 0, k)
        if type(z) == 'table' then e = z.err end
      end
    end
    if e then
      -- The key was absent (or unreadable): removing what this call wrote for it (the
      -- counter INCR created, the value) leaves it as it was.
      if r == 1 then redis.call('DEL', n) end
      redis.call('DEL', b .. 'v:' .. k)
      o[i - 1] = e
    else
      redis.call('SET', n, v)
      o[i - 1] = v
    end
  end
end
return o
