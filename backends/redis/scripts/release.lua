-- release.lua: puts back in the ready set jobs leased to a process that closes before
-- handing them to a worker, with the delivery they were leased by uncounted.
-- KEYS: ready, leased
-- ARGV: the leased members
local released = 0
for _, m in ipairs(ARGV) do
  if redis.call('ZREM', KEYS[2], m) == 1 then
    local seq, n, body = parse(m)
    if seq then
      redis.call('ZADD', KEYS[1], -priority(body), seq .. math.max(n - 1, 0) .. '|' .. body)
      released = released + 1
    end
  end
end
return released
