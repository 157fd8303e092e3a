-- dequeue.lua: acks the jobs given, promotes due delayed jobs and expired leases, then
-- leases up to max ready jobs, highest priority first and FIFO among equals, and
-- returns them with a snapshot of each one's run (when its hash is small), which the
-- worker's first read of the run and its transition start from, or else the version
-- of the run's state ("sv"), which tells the worker that older snapshots are stale.
-- KEYS: ready, delayed, leased, waiting, dead
-- ARGV: [1] now ms  [2] max  [3] lease ms  [4] max deliveries (0: no limit)
--       [5] the caller's waiter id  [6] promote: '1' to promote before popping
--       [7] run key prefix  [8] largest run hash to snapshot (fields)  [9] n acks
--       [10] until when the caller waits (ms), then the n leased members to ack
--       first (see ack.lua)
-- A caller that finds nothing ready is registered in the waiting set (see wake in
-- lib.lua) until then.
-- Returns {1, n, leased member, deliveries, body ×n, then for each run: run id and
-- either {field, value, ...} or its state version}, or when nothing is ready
-- {0, next delayed due ms or -1, next lease deadline ms or -1}.
local ready, delayed, leased, waiting, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now, max, leaseMs, maxDeliveries = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local nAcks = tonumber(ARGV[9])
if nAcks > 0 then call('ZREM', leased, ARGV, 11, 10 + nAcks) end

local function promote()
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 500)
  if #due > 0 then
    local z = {}
    for _, m in ipairs(due) do
      local seq, n, body = parse(m)
      if seq then
        z[#z + 1] = -priority(body)
        z[#z + 1] = m
      end
    end
    redis.call('ZREM', delayed, unpack(due))
    if #z > 0 then redis.call('ZADD', ready, unpack(z)) end
  end
  local expired = redis.call('ZRANGEBYSCORE', leased, '-inf', now, 'LIMIT', 0, 500)
  if #expired > 0 then
    redis.call('ZREM', leased, unpack(expired))
    local z = {}
    for _, m in ipairs(expired) do
      local seq, n, body = parse(m)
      if seq and maxDeliveries > 0 and n >= maxDeliveries then
        deadLetter(dead, m, now, 'the lease expired on each of its ' .. n .. ' deliveries (the workers running it stopped or lost it)')
      elseif seq then
        z[#z + 1] = -priority(body)
        z[#z + 1] = m
      end
    end
    if #z > 0 then redis.call('ZADD', ready, unpack(z)) end
  end
end

local promoted = ARGV[6] == '1'
if promoted then promote() end
local out = {1}
local n = lease({ready, leased, dead}, max, now, leaseMs, ARGV[7], tonumber(ARGV[8]), out)
if n == 0 and not promoted then
  promote()
  out = {1}
  n = lease({ready, leased, dead}, max, now, leaseMs, ARGV[7], tonumber(ARGV[8]), out)
end
if n == 0 then
  if tonumber(ARGV[10]) > now then
    redis.call('ZREMRANGEBYSCORE', waiting, '-inf', now)
    redis.call('ZADD', waiting, ARGV[10], ARGV[5])
  end
  local d = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  local l = redis.call('ZRANGE', leased, 0, 0, 'WITHSCORES')
  return {0, d[2] or -1, l[2] or -1}
end
return out
