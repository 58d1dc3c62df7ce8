-- Dequeue up to ARGV[1] jobs (at most 1000) leased for ARGV[2] ms. ARGV[3]: dead-letter
-- cap, ARGV[4]: promote limit. Promotes due delays and reclaims expired leases first.
-- Returns the first job's fencing token (the i-th job has token first + i - 1; 0 when
-- none), then 3 fields per job: id, attempt, last_error.
--
-- The jobs themselves (header, headers, payload) are not read here: the client reads them
-- with a plain MGET of the returned ids, so payloads never enter Lua (which hashes every
-- byte of every string it makes). The jobs are leased by then, so nobody else can delete
-- them; an entry whose job is missing (none is expected) is skipped by the client, and
-- its lease expires harmlessly.
--
-- Per call, whatever the batch: the LPOPs, one INCRBY for all the tokens and one ZADD for
-- all the leases (and the sentinel, see common.lua). Nothing is written to a job on
-- delivery.
local want = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local now = now_ms()
promote(now, tonumber(ARGV[3]), tonumber(ARGV[4]))
local out = { 0 }
local ids = {}
for p = 9, 0, -1 do
  if want <= 0 then break end
  local popped = redis.call('LPOP', ready_key(p), want)
  if popped then
    for _, e in ipairs(popped) do
      local id, n, marked = split_entry(e)
      ids[#ids + 1] = id
      local o = #out
      out[o + 1] = id
      out[o + 2] = n + 1
      if marked then
        local _, _, err = read_state(id)
        out[o + 3] = err or false
      else
        out[o + 3] = false
      end
      want = want - 1
    end
  end
end
if #ids > 0 then
  local first = redis.call('INCRBY', SEQ, #ids) - #ids + 1
  local leases = { '+inf', LEASED_SENTINEL }
  local expiry = tostring(now + lease)
  for i, id in ipairs(ids) do
    leases[2 * i + 1] = expiry
    local token = first + i - 1
    -- tostring prints integers below 1e14 exactly; past that, format them in full.
    if token >= 1e14 then token = string.format('%.0f', token) end
    leases[2 * i + 2] = lease_member(id, token)
  end
  call_sliced('ZADD', LEASED, leases)
  out[1] = first
end
return out
