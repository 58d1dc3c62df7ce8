-- List up to ARGV[1] dead letters, oldest first. Returns 7 fields per job:
-- id, payload, headers, priority, attempts, reason, dead_at.
local ids = redis.call('LRANGE', DEAD, 0, tonumber(ARGV[1]) - 1)
local out = {}
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', job_key(id), 'payload', 'headers', 'priority', 'attempts', 'reason', 'dead_at')
  if f[1] then
    out[#out + 1] = id
    for j = 1, 6 do out[#out + 1] = f[j] or '' end
  end
end
return out
