-- Dequeue up to ARGV[1] jobs leased for ARGV[2] ms. ARGV[3]: dead-letter cap,
-- ARGV[4]: promote limit. Promotes due delays and reclaims expired leases first.
-- Returns a flat list of 8 fields per job:
-- id, payload, headers, priority, attempts, max_attempts, token, last_error.
local want = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local now = now_ms()
promote(now, tonumber(ARGV[3]), tonumber(ARGV[4]))
local out = {}
local leases = {}
for p = 9, 0, -1 do
  if want <= 0 then break end
  local ids = redis.call('LPOP', ready_key(p), want)
  if ids then
    for _, id in ipairs(ids) do
      local jk = job_key(id)
      local f = redis.call('HMGET', jk, 'payload', 'headers', 'max_attempts', 'last_error')
      -- A list entry without its hash was trimmed away as an old dead letter; skip it.
      if f[1] then
        local attempts = redis.call('HINCRBY', jk, 'attempts', 1)
        local token = redis.call('HINCRBY', jk, 'token', 1)
        leases[#leases + 1] = now + lease
        leases[#leases + 1] = id
        out[#out + 1] = id
        out[#out + 1] = f[1]
        out[#out + 1] = f[2]
        out[#out + 1] = p
        out[#out + 1] = attempts
        out[#out + 1] = f[3]
        out[#out + 1] = token
        out[#out + 1] = f[4] or ''
        want = want - 1
      end
    end
  end
end
if #leases > 0 then redis.call('ZADD', LEASED, unpack(leases)) end
return out
