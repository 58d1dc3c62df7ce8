-- ARGV: prefix, cursor ('' for the start), limit. Returns a flat list of
-- (key, value, version) and, last, the next cursor ('' when done).
-- Index entries of expired keys are removed as they are met.
local prefix, cursor, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local lo
if cursor == '' then lo = '[' .. prefix else lo = '(' .. cursor end
-- Every key with the prefix sorts before prefix .. '\255'.
local hi = '[' .. prefix .. '\255'
local out = {}
local found = 0
local last = ''
local more = false
while found < limit do
  local batch = redis.call('ZRANGEBYLEX', IDX, lo, hi, 'LIMIT', 0, limit - found + 1)
  if #batch == 0 then break end
  for i, key in ipairs(batch) do
    if found >= limit then more = true; break end
    local f = redis.call('MGET', nkey(key), vkey(key))
    local version = parse_version(f[1] or nil)
    if version and f[2] then
      out[#out + 1] = key
      out[#out + 1] = f[2]
      out[#out + 1] = digits(version)
      found = found + 1
      last = key
    else
      redis.call('ZREM', IDX, key)
    end
    lo = '(' .. key
  end
  if more then break end
end
if found >= limit and not more then
  -- Exactly `limit` found: is there anything after the last one?
  more = #redis.call('ZRANGEBYLEX', IDX, '(' .. last, hi, 'LIMIT', 0, 1) > 0
end
if more then out[#out + 1] = last else out[#out + 1] = '' end
return out
