-- Dequeue up to ARGV[1] jobs (at most 1000) leased for ARGV[2] ms. ARGV[3]: dead-letter
-- cap, ARGV[4]: promote limit. Promotes due delays and reclaims expired leases first.
-- Returns the fencing token of this call's deliveries (0 when none), then per job its
-- ready entry as popped (`<id>`, or `<id>:<attempts>`, which the client reads the attempt
-- from), and after an entry with attempts only, the job's last error (or nil).
--
-- The jobs themselves (header, headers, payload) are not read here: the client reads them
-- with a plain MGET of the returned ids, so payloads never enter Lua (which hashes every
-- byte of every string it makes). The jobs are leased by then, so nobody else can delete
-- them; an entry whose job is missing (none is expected) is skipped by the client, and
-- its lease expires harmlessly.
--
-- Per call, whatever the batch: the LPOPs, one INCR for the token and one ZADD for all the
-- leases (and the sentinel, see common.lua). Nothing is written to a job on delivery, and
-- per job Lua makes one string, the lease member.
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
      out[#out + 1] = e
      local id, _, marked = split_entry(e)
      ids[#ids + 1] = id
      if marked then
        local _, _, err = read_state(id)
        out[#out + 1] = err or false
      end
      want = want - 1
    end
  end
end
if #ids > 0 then
  -- One token for every delivery of this call: a job appears at most once in a call, so
  -- `<id>:<token>` still names one delivery, and a job's tokens still grow with every
  -- delivery and are never reused.
  local token = redis.call('INCR', SEQ)
  -- tostring prints integers below 1e14 exactly; past that, format them in full.
  local suffix = ':' .. (token >= 1e14 and string.format('%.0f', token) or tostring(token))
  local leases = { '+inf', LEASED_SENTINEL }
  local expiry = tostring(now + lease)
  for i, id in ipairs(ids) do
    leases[2 * i + 1] = expiry
    leases[2 * i + 2] = id .. suffix
  end
  call_sliced('ZADD', LEASED, leases)
  out[1] = token
end
return out
