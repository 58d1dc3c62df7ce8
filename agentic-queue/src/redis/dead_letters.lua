-- List up to ARGV[1] dead letters, oldest first. Returns 5 fields per job:
-- id, the job as enqueued (header, headers, payload), attempts, reason, dead_at.
local ids = redis.call('LRANGE', DEAD, 0, tonumber(ARGV[1]) - 1)
local out = {}
for _, id in ipairs(ids) do
  local job = redis.call('GET', job_key(id))
  if job then
    local f = redis.call('HMGET', state_key(id), 'attempts', 'reason', 'dead_at')
    out[#out + 1] = id
    out[#out + 1] = job
    for j = 1, 3 do out[#out + 1] = f[j] or '' end
  end
end
return out
