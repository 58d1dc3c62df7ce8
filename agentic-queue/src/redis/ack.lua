-- Ack a batch of leases. ARGV: n, then n lease members `<id>:<token>`, then the n job
-- keys (`<base>job:<id>`), both built by the client so this script concatenates nothing;
-- the client sends each lease once. Returns one code per lease: 1 acked (the job is
-- deleted), 0 stale or expired lease, -1 no such job. On the common path three calls for
-- the whole batch (ZMSCORE, ZREM, DEL) and an EXISTS; per refused lease an EXISTS.
local now = now_ms()
local n = tonumber(ARGV[1])
local scores = redis.call('ZMSCORE', LEASED, unpack(ARGV, 2, n + 1))
local out, gone, keys = {}, {}, {}
for i = 1, n do
  local s, jk = scores[i], ARGV[n + i + 1]
  if s and tonumber(s) > now then
    gone[#gone + 1] = ARGV[i + 1]
    keys[#keys + 1] = jk
    out[i] = 1
  elseif redis.call('EXISTS', jk) == 1 then
    out[i] = 0
  else
    out[i] = -1
  end
end
if #gone > 0 then
  redis.call('ZREM', LEASED, unpack(gone))
  redis.call('DEL', unpack(keys))
  if redis.call('EXISTS', STATE) == 1 then
    for i, m in ipairs(gone) do gone[i] = lease_id(m) end
    redis.call('HDEL', STATE, unpack(gone))
  end
end
return out
