-- Moves values written by earlier releases (one hash `kv:<key>` holding `v` and the version
-- in `ver` or `n`) to the current layout (`n:<key>` and `v:<key>`), keeping their versions
-- and TTLs. ARGV: cursor ('' from the start), limit. Returns the next cursor, '' when done.
-- A key already in the current layout is left as it is (its old hash is only removed).
local cursor, limit = ARGV[1], tonumber(ARGV[2])
local lo = '-'
if cursor ~= '' then lo = '(' .. cursor end
local keys = redis.call('ZRANGEBYLEX', IDX, lo, '+', 'LIMIT', 0, limit)
for _, key in ipairs(keys) do
  local h = base .. 'kv:' .. key
  if redis.call('TYPE', h)['ok'] == 'hash' then
    if redis.call('EXISTS', nkey(key)) == 0 then
      local f = redis.call('HMGET', h, 'v', 'n', 'ver')
      local version = tonumber(f[2] or f[3])
      if f[1] and version then
        local ttl = redis.call('PTTL', h)
        if ttl > 0 then
          redis.call('SET', nkey(key), 't' .. digits(version), 'PX', ttl)
          redis.call('SET', vkey(key), f[1], 'PX', ttl)
        else
          redis.call('MSET', nkey(key), digits(version), vkey(key), f[1])
        end
      end
    end
    redis.call('DEL', h)
  end
end
if #keys < limit then return '' end
return keys[#keys]
