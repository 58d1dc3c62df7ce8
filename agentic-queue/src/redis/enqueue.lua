-- Enqueue a batch. ARGV: dedupe_window_ms, n, repeat (1 when this call repeats one whose
-- reply was lost), then n x (id, priority, delay_ms, idempotency_key or '', job), the job
-- encoded by the client (header, headers, payload; see common.lua).
-- Returns a flat list of (index from 0, existing id) for each job whose idempotency key
-- matched an earlier job; every other job was enqueued under the id it was given.
-- One MSET writes every job and one RPUSH per priority queues them.
local window = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local is_repeat = ARGV[3] == '1'
local now = nil
local out = {}
local sets = {}
local pushes = {}
for i = 0, n - 1 do
  local o = 4 + i * 5
  local id, prio, delay, idem = ARGV[o], ARGV[o + 1], ARGV[o + 2], ARGV[o + 3]
  local prev = false
  if idem ~= '' then prev = redis.call('GET', base .. 'idem:' .. idem) end
  if is_repeat and prev == id then
    -- A repeated call finding its own job under the key: the first try enqueued it (it
    -- may even be done by now), so nothing is written, and it is not a duplicate.
  elseif prev then
    out[#out + 1] = i
    out[#out + 1] = prev
  else
    local jk = job_key(id)
    -- The ids are made by the client, so a repeated call (after a lost reply) finds its
    -- own job here instead of enqueueing it twice. A first call cannot, so it skips the check.
    if not is_repeat or redis.call('EXISTS', jk) == 0 then
      sets[#sets + 1] = jk
      sets[#sets + 1] = ARGV[o + 4]
      if delay ~= '0' then
        now = now or now_ms()
        redis.call('ZADD', DELAYED, now + tonumber(delay), id)
      else
        local l = pushes[prio]
        if not l then l = {}; pushes[prio] = l end
        l[#l + 1] = id
      end
      if idem ~= '' then redis.call('SET', base .. 'idem:' .. idem, id, 'PX', window) end
    end
  end
end
if #sets > 0 then redis.call('MSET', unpack(sets)) end
for p, ids in pairs(pushes) do redis.call('RPUSH', ready_key(p), unpack(ids)) end
return out
