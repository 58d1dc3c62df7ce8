-- Shared by every script of the Redis queue (prepended by the Rust side).
--
-- KEYS[1] is the queue's key prefix, `<prefix>:{<queue>}:`. Every key a script touches is
-- that prefix plus a suffix, so all of a queue's keys share the hash tag `{<queue>}` and
-- live in one Redis Cluster slot.
--
-- A job is two keys. `job:<id>` is a string written once by enqueue (by the script, or for
-- jobs without idempotency key or delay by the client's MULTI/EXEC of MSET and RPUSH): the header
-- `<priority>,<max_attempts>,<headers length>;` then the headers (JSON, or nothing) and the
-- payload, encoded and decoded by the client, so enqueue is one MSET and dequeue one MGET
-- for a whole batch; scripts read only the header (GETRANGE), and only on rare paths.
-- `state` is one hash per queue with a field per job that had a delivery end without an
-- ack: `<attempts>,<dead_at ms or empty>;<last error>` (for a dead letter the last error
-- is the reason). While no job has any, the hash does not exist and an ack skips it
-- after one EXISTS.
--
-- Entries of the ready lists and of `delayed` are `<id>` for a job never given back, else
-- `<id>:<attempts>`, so a dequeue knows the attempt without reading anything; only an
-- entry with attempts makes it read `state` (for last_error).
--
-- Fencing: `seq` is one counter per queue; every dequeue call takes the next number as the
-- token of its deliveries (a job is delivered at most once per call), so a job's tokens
-- grow with every delivery and are never reused, and a dequeue of n jobs costs one INCR
-- instead of a write per job. A lease is the member `<id>:<token>`
-- of `leased`, scored by its expiry: a lease is current exactly when its member is there
-- with a score in the future, so ack, extend and nack check it with one ZSCORE (ack with
-- one ZMSCORE for a whole batch) and never read the job.
--
-- Time is the server's (`TIME`), so workers on machines with skewed clocks agree on
-- delays and lease expiry.

local base = KEYS[1]
local LEASED = base .. 'leased'
local DELAYED = base .. 'delayed'
local DEAD = base .. 'dead'
local SEQ = base .. 'seq'
local STATE = base .. 'state'
-- A permanent member of `leased` at +inf, longer than `zset-max-listpack-value` (64 by
-- default): it keeps the set in skiplist encoding, where ZADD, ZMSCORE and ZREM are O(log
-- n) per lease, instead of the compact listpack Redis uses for a small set, where each is a
-- linear scan and a batch of 100 leases costs about twice as much. No lease matches it (a
-- lease member always ends in ':<digits>'), +inf is never due, and `stats` leaves it out.
local LEASED_SENTINEL = 'agentic-leased-set-keeps-skiplist-encoding-with-this-member-longer-than-64-bytes'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function job_key(id) return base .. 'job:' .. id end
local function ready_key(p) return base .. 'ready:' .. p end

-- The `leased` member of the delivery of `id` with `token` (`lease_id` below reads the
-- id back from one).
local function lease_member(id, token) return id .. ':' .. token end

-- A ready or delayed entry: (id, attempts so far, true when written with attempts).
local function split_entry(e)
  -- Ids never contain ':' (the client makes them from hex digits).
  local at = string.find(e, ':', 1, true)
  if not at then return e, 0, false end
  return string.sub(e, 1, at - 1), tonumber(string.sub(e, at + 1)), true
end

local function lease_id(member) return (split_entry(member)) end

-- A job's state: attempts so far, dead_at ('' unless dead), last error (or nil).
local function read_state(id)
  local s = redis.call('HGET', STATE, id)
  if not s then return 0, '', nil end
  local c = string.find(s, ',', 1, true)
  local e = string.find(s, ';', c + 1, true)
  return tonumber(string.sub(s, 1, c - 1)), string.sub(s, c + 1, e - 1), string.sub(s, e + 1)
end

local function write_state(id, attempts, dead_at, err)
  redis.call('HSET', STATE, id, attempts .. ',' .. dead_at .. ';' .. (err or ''))
end

-- The job's priority and max_attempts from its header; nil when the job is gone.
local function job_head(id)
  -- pcall: a job key holding another Redis type (written behind the queue's back) is an
  -- unreadable record, not an error that would stop every dequeue of the queue.
  local h = redis.pcall('GETRANGE', job_key(id), 0, 63)
  if type(h) ~= 'string' then return nil end
  local p, m = string.match(h, '^(%d+),(%d+),')
  if not p then return nil end
  return p, tonumber(m)
end

-- `cmd key args[1..n]` in slices small enough for Lua's stack (`unpack` of a huge table
-- fails); `step` must be even for commands taking pairs.
local function call_sliced(cmd, key, args)
  local step = 4000
  for i = 1, #args, step do
    redis.call(cmd, key, unpack(args, i, math.min(i + step - 1, #args)))
  end
end

-- Moves a job to the dead-letter list after `attempts` deliveries and trims the list to
-- `max_dead` (0: unbounded); trimmed jobs are deleted, so memory stays bounded.
local function dead_letter(id, reason, now, max_dead, attempts)
  write_state(id, attempts, now, reason)
  redis.call('RPUSH', DEAD, id)
  if max_dead > 0 then
    local excess = redis.call('LLEN', DEAD) - max_dead
    while excess > 0 do
      local old = redis.call('LPOP', DEAD)
      if old then
        redis.call('DEL', job_key(old))
        redis.call('HDEL', STATE, old)
      end
      excess = excess - 1
    end
  end
end

-- Ends the delivery of `id` that was its (attempts + 1)th: records the attempt and the
-- error `err(attempts, dead)`, then dead-letters the job if `dead` or its attempts are
-- spent, else hands `retry(priority, entry)` the entry to queue again. Returns true when
-- dead-lettered.
local function give_back(id, dead, now, max_dead, err, retry)
  local p, max = job_head(id)
  local attempts = read_state(id) + 1
  if not p then
    -- Gone (acked, trimmed): nothing to give back. Present but unreadable (written behind
    -- the queue's back): dead-lettered with the reason, never left in no list at all.
    if redis.call('EXISTS', job_key(id)) == 0 then return false end
    dead = true
    local why = err
    err = function(a, d) return 'unreadable job record; ' .. why(a, d) end
  end
  if dead or attempts >= max then
    dead_letter(id, err(attempts, true), now, max_dead, attempts)
    return true
  end
  write_state(id, attempts, '', err(attempts, false))
  retry(p, id .. ':' .. attempts)
  return false
end

local function lease_expired(attempts, dead)
  if dead then return 'lease expired after ' .. attempts .. ' attempt(s)' end
  return 'lease expired'
end

-- Moves due delayed jobs to ready and reclaims expired leases (redeliver, or dead-letter
-- once attempts are spent). At most `limit` of each per call, so one call stays short.
local function promote(now, max_dead, limit)
  local due = redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'LIMIT', 0, limit)
  for _, e in ipairs(due) do
    redis.call('ZREM', DELAYED, e)
    local id = split_entry(e)
    local p = job_head(id)
    if p then
      redis.call('RPUSH', ready_key(p), e)
    elseif redis.call('EXISTS', job_key(id)) == 1 then
      dead_letter(id, 'unreadable job record', now, max_dead, read_state(id))
    end
  end
  local expired = redis.call('ZRANGEBYSCORE', LEASED, '-inf', now, 'LIMIT', 0, limit)
  for _, m in ipairs(expired) do
    redis.call('ZREM', LEASED, m)
    local id = lease_id(m)
    give_back(id, false, now, max_dead, lease_expired,
      function(p, e) redis.call('RPUSH', ready_key(p), e) end)
  end
end

-- 1: the lease (id, token) is current; 0: stale or expired; -1: no such job.
local function check_lease(id, token, now)
  local exp = redis.call('ZSCORE', LEASED, lease_member(id, token))
  if exp and tonumber(exp) > now then return 1 end
  if redis.call('EXISTS', job_key(id)) == 0 then return -1 end
  return 0
end
