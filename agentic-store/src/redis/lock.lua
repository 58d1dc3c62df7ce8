-- ARGV: name, ttl_ms. Returns the new fencing token, or 0 when held by someone else.
local l = base .. 'lock:' .. ARGV[1]
if redis.call('EXISTS', l) == 1 then return 0 end
local token = redis.call('INCR', base .. 'fence')
redis.call('SET', l, token, 'PX', tonumber(ARGV[2]))
return token
