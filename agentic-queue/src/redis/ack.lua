-- Ack a batch of leases. ARGV: n x (id, token). Returns one code per lease:
-- 1 acked (the job is deleted), 0 stale or expired lease, -1 no such job.
local now = now_ms()
local out = {}
for i = 1, #ARGV, 2 do
  local id = ARGV[i]
  local code = check_lease(id, ARGV[i + 1], now)
  if code == 1 then
    redis.call('ZREM', LEASED, id)
    redis.call('DEL', job_key(id))
  end
  out[#out + 1] = code
end
return out
