-- Give a delivery back. ARGV: id, token, mode ('retry' or 'dead'), delay_ms, reason,
-- dead-letter cap. Returns 1 retrying, 2 dead-lettered, 0 stale/expired, -1 no job.
local id = ARGV[1]
local now = now_ms()
local code = check_lease(id, ARGV[2], now)
if code ~= 1 then return code end
redis.call('ZREM', LEASED, id)
local jk = job_key(id)
local f = redis.call('HMGET', jk, 'attempts', 'max_attempts', 'priority')
if ARGV[3] == 'dead' or tonumber(f[1]) >= tonumber(f[2]) then
  dead_letter(id, ARGV[5], now, tonumber(ARGV[6]))
  return 2
end
redis.call('HSET', jk, 'last_error', ARGV[5])
local delay = tonumber(ARGV[4])
if delay > 0 then
  redis.call('ZADD', DELAYED, now + delay, id)
else
  redis.call('RPUSH', ready_key(f[3]), id)
end
return 1
