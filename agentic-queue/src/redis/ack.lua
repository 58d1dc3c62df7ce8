-- Ack a batch of leases. ARGV: n x (id, token). Returns one code per lease:
-- 1 acked (the job is deleted), 0 stale or expired lease, -1 no such job (or a lease
-- listed twice: the first acked it). Three calls for the whole batch (ZMSCORE, ZREM, DEL)
-- on the common path; EXISTS only for refused leases.
local now = now_ms()
local n = #ARGV / 2
local members = {}
for i = 1, n do members[i] = lease_member(ARGV[2 * i - 1], ARGV[2 * i]) end
local scores = redis.call('ZMSCORE', LEASED, unpack(members))
local out, gone, keys, seen = {}, {}, {}, {}
for i = 1, n do
  local m, s = members[i], scores[i]
  local id = ARGV[2 * i - 1]
  if seen[m] then
    out[i] = -1
  elseif s and tonumber(s) > now then
    seen[m] = true
    gone[#gone + 1] = m
    keys[#keys + 1] = job_key(id)
    keys[#keys + 1] = state_key(id)
    out[i] = 1
  elseif redis.call('EXISTS', job_key(id)) == 1 then
    out[i] = 0
  else
    out[i] = -1
  end
end
if #gone > 0 then
  redis.call('ZREM', LEASED, unpack(gone))
  redis.call('DEL', unpack(keys))
end
return out
