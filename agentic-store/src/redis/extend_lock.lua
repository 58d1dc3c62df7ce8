-- ARGV: name, token, ttl_ms. Returns 1, or 0 when the lock is not ours any more.
local l = base .. 'lock:' .. ARGV[1]
if redis.call('GET', l) ~= ARGV[2] then return 0 end
redis.call('PEXPIRE', l, tonumber(ARGV[3]))
return 1
