-- extend.lua: renews the leases the caller still holds (XX: members no longer leased
-- are not added back).
-- KEYS: leased
-- ARGV: deadline ms, then the leased members
local z = {}
for i = 2, #ARGV do
  z[#z + 1] = ARGV[1]
  z[#z + 1] = ARGV[i]
end
local renewed = 0
for i = 1, #z, 1000 do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', unpack(z, i, math.min(i + 999, #z)))
end
return renewed
