-- Extend a lease. ARGV: id, token, lease_ms. Returns 1, 0 (stale/expired) or -1 (no job).
local now = now_ms()
local code = check_lease(ARGV[1], ARGV[2], now)
if code == 1 then
  redis.call('ZADD', LEASED, 'XX', now + tonumber(ARGV[3]), lease_member(ARGV[1], ARGV[2]))
end
return code
