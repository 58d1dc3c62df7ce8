-- Shared by every script of the Redis queue (prepended by the Rust side).
--
-- KEYS[1] is the queue's key prefix, `<prefix>:{<queue>}:`. Every key a script touches is
-- that prefix plus a suffix, so all of a queue's keys share the hash tag `{<queue>}` and
-- live in one Redis Cluster slot.
--
-- Job hash `job:<id>` fields: payload, headers (JSON), priority, max_attempts,
-- attempts (deliveries so far), token (fencing number, +1 per delivery, never reset),
-- last_error, reason and dead_at (dead letters only).
--
-- Time is the server's (`TIME`), so workers on machines with skewed clocks agree on
-- delays and lease expiry.

local base = KEYS[1]
local LEASED = base .. 'leased'
local DELAYED = base .. 'delayed'
local DEAD = base .. 'dead'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function job_key(id) return base .. 'job:' .. id end
local function ready_key(p) return base .. 'ready:' .. p end

-- Moves a job to the dead-letter list and trims the list to `max_dead` (0: unbounded);
-- trimmed jobs are deleted, so memory stays bounded.
local function dead_letter(id, reason, now, max_dead)
  redis.call('HSET', job_key(id), 'reason', reason, 'dead_at', now, 'last_error', reason)
  redis.call('RPUSH', DEAD, id)
  if max_dead > 0 then
    local excess = redis.call('LLEN', DEAD) - max_dead
    while excess > 0 do
      local old = redis.call('LPOP', DEAD)
      if old then redis.call('DEL', job_key(old)) end
      excess = excess - 1
    end
  end
end

-- Moves due delayed jobs to ready and reclaims expired leases (redeliver, or dead-letter
-- once attempts are spent). At most `limit` of each per call, so one call stays short.
local function promote(now, max_dead, limit)
  local due = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(due) do
    redis.call('ZREM', DELAYED, id)
    local p = redis.call('HGET', job_key(id), 'priority')
    if p then redis.call('RPUSH', ready_key(p), id) end
  end
  local expired = redis.call('ZRANGEBYSCORE', LEASED, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(expired) do
    redis.call('ZREM', LEASED, id)
    local jk = job_key(id)
    local f = redis.call('HMGET', jk, 'attempts', 'max_attempts', 'priority')
    if f[1] then
      local attempts = tonumber(f[1])
      if attempts >= tonumber(f[2]) then
        dead_letter(id, 'lease expired after ' .. attempts .. ' attempt(s)', now, max_dead)
      else
        redis.call('HSET', jk, 'last_error', 'lease expired')
        redis.call('RPUSH', ready_key(f[3]), id)
      end
    end
  end
end

-- 1: the lease (id, token) is current; 0: stale or expired; -1: no such job.
local function check_lease(id, token, now)
  local tok = redis.call('HGET', job_key(id), 'token')
  if not tok then return -1 end
  if tok ~= token then return 0 end
  local exp = redis.call('ZSCORE', LEASED, id)
  if not exp or tonumber(exp) <= now then return 0 end
  return 1
end
