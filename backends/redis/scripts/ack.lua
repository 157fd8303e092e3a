-- ack.lua: removes delivered jobs whose lease the caller still holds: their leased
-- members (a redelivered job has another).
-- KEYS: leased
-- ARGV: the leased members
-- Returns how many were removed.
local removed = 0
for i = 1, #ARGV, 1000 do
  removed = removed + redis.call('ZREM', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return removed
