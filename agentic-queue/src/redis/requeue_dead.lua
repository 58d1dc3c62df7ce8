-- Move the named dead letters back to ready with fresh attempts. ARGV: ids.
-- Returns how many moved.
local moved = 0
for _, id in ipairs(ARGV) do
  if redis.call('LREM', DEAD, 1, id) > 0 then
    local jk = job_key(id)
    local p = redis.call('HGET', jk, 'priority')
    if p then
      redis.call('HSET', jk, 'attempts', 0)
      redis.call('HDEL', jk, 'reason', 'dead_at')
      redis.call('RPUSH', ready_key(p), id)
      moved = moved + 1
    end
  end
end
return moved
