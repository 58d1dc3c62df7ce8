-- Enqueue a batch. ARGV: dedupe_window_ms, n, repeat (1 when this call repeats one whose
-- reply was lost), then n x (id, payload, priority, delay_ms, max_attempts,
-- idempotency_key or '', headers_json).
-- Returns a flat list of (id, duplicate 0/1) per job.
local window = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local is_repeat = ARGV[3] == '1'
local now = now_ms()
local out = {}
local pushes = {}
for i = 0, n - 1 do
  local o = 4 + i * 7
  local id, prio, delay, idem = ARGV[o], ARGV[o + 2], tonumber(ARGV[o + 3]), ARGV[o + 5]
  local prev = false
  if idem ~= '' then prev = redis.call('GET', base .. 'idem:' .. idem) end
  if prev then
    out[#out + 1] = prev
    out[#out + 1] = 1
  else
    local jk = job_key(id)
    -- The ids are made by the client, so a repeated call (after a lost reply) finds its
    -- own job here instead of enqueueing it twice. A first call cannot, so it skips the check.
    if not is_repeat or redis.call('EXISTS', jk) == 0 then
      redis.call('HSET', jk, 'payload', ARGV[o + 1], 'priority', prio, 'max_attempts', ARGV[o + 4],
        'attempts', 0, 'token', 0, 'headers', ARGV[o + 6])
      if delay > 0 then
        redis.call('ZADD', DELAYED, now + delay, id)
      else
        local l = pushes[prio]
        if not l then l = {}; pushes[prio] = l end
        l[#l + 1] = id
      end
      if idem ~= '' then redis.call('SET', base .. 'idem:' .. idem, id, 'PX', window) end
    end
    out[#out + 1] = id
    out[#out + 1] = 0
  end
end
for p, ids in pairs(pushes) do redis.call('RPUSH', ready_key(p), unpack(ids)) end
return out
