-- List up to ARGV[1] dead letters, oldest first. Returns 5 fields per job:
-- id, the job as enqueued (header, headers, payload), attempts, reason, dead_at.
local ids = redis.call('LRANGE', DEAD, 0, tonumber(ARGV[1]) - 1)
local out = {}
for _, id in ipairs(ids) do
  local job = redis.pcall('GET', job_key(id))
  -- Another Redis type at the job key: listed with the error as its (unreadable) record.
  if type(job) == 'table' then job = job.err end
  if job then
    local attempts, dead_at, reason = read_state(id)
    out[#out + 1] = id
    out[#out + 1] = job
    out[#out + 1] = attempts
    out[#out + 1] = reason or ''
    out[#out + 1] = dead_at
  end
end
return out
