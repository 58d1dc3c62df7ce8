-- Give a delivery back. ARGV: id, token, mode ('retry' or 'dead'), delay_ms, reason,
-- dead-letter cap. Returns 1 retrying, 2 dead-lettered, 0 stale/expired, -1 no job.
local id = ARGV[1]
local now = now_ms()
local code = check_lease(id, ARGV[2], now)
if code ~= 1 then return code end
redis.call('ZREM', LEASED, lease_member(id, ARGV[2]))
local delay = tonumber(ARGV[4])
local reason = ARGV[5]
local dead = give_back(id, ARGV[3] == 'dead', now, tonumber(ARGV[6]), function() return reason end,
  function(p, e)
    if delay > 0 then
      redis.call('ZADD', DELAYED, now + delay, e)
    else
      redis.call('RPUSH', ready_key(p), e)
    end
  end)
if dead then return 2 end
return 1
