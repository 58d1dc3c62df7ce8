-- Move the named dead letters back to ready with fresh attempts. ARGV: ids.
-- Returns how many moved. A dead letter whose record cannot be read stays where it is: it
-- could not be delivered, and leaving the list would lose it.
local moved = 0
for _, id in ipairs(ARGV) do
  local p = job_head(id)
  if p and redis.call('LREM', DEAD, 1, id) > 0 then
    local _, _, err = read_state(id)
    write_state(id, 0, '', err)
    -- With attempts, so the next delivery reads the kept last_error.
    redis.call('RPUSH', ready_key(p), id .. ':0')
    moved = moved + 1
  end
end
return moved
