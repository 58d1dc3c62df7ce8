-- Counts by state, after promoting. ARGV: dead-letter cap, promote limit.
-- Returns ready, delayed, leased, dead, and the ms until the next delayed job is due
-- (-1 if none), which the client uses to sleep no longer than needed.
local now = now_ms()
promote(now, tonumber(ARGV[1]), tonumber(ARGV[2]))
local ready = 0
for p = 0, 9 do ready = ready + redis.call('LLEN', ready_key(p)) end
local next_due = -1
local first = redis.call('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')
if first[2] then next_due = math.max(0, tonumber(first[2]) - now) end
local leased = redis.call('ZCARD', LEASED)
if leased > 0 and redis.call('ZSCORE', LEASED, LEASED_SENTINEL) then leased = leased - 1 end
return { ready, redis.call('ZCARD', DELAYED), leased, redis.call('LLEN', DEAD), next_due }
