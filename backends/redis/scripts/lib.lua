-- lib.lua: helpers shared by the scripts; prepended to each script.
--
-- A job is one sorted-set member, "<sequence, 16 hex digits><deliveries>|<body>": the
-- ready set scores it -priority (equal scores pop in member order, so FIFO by
-- sequence), the delayed set by due time, the leased set by lease deadline. A leased
-- member carries the number of its delivery, which is the lease's token: a new
-- delivery is a new member, so a stale holder's member is gone from the leased set.

-- call runs a command on key with the arguments t[i..j] (default all of t), in chunks
-- of at most 1000 arguments (Lua's unpack has a limit), never splitting a pair when
-- pairs is true.
local function call(cmd, key, t, i, j, pairs)
  i = i or 1
  j = j or #t
  local step = 1000
  while i <= j do
    local k = math.min(i + step - 1, j)
    if pairs and (k - i) % 2 == 0 and k < j then k = k - 1 end
    redis.call(cmd, key, unpack(t, i, k))
    i = k + 1
  end
end

-- parse splits a member into its sequence, delivery count and body.
local function parse(m)
  local seq, n, at = string.match(m, '^(%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x)(%d+)|()')
  if not seq then return nil end
  return seq, tonumber(n), string.sub(m, at)
end

-- priority reads a job body's priority: its leading decimal number.
local function priority(body)
  return tonumber(string.match(body, '^(-?%d+)|')) or 0
end

-- runOf reads the run id from a job body: "<priority>|<length>:<run id>...".
local function runOf(body)
  local n, at = string.match(body, '^%-?%d+|(%d+):()')
  if not n then return nil end
  return string.sub(body, at, at + tonumber(n) - 1)
end

-- wake publishes a wake-up when a Dequeue is waiting: the waiting set holds the
-- waiting Dequeue calls, scored by when they stop waiting.
local function wake(waiting, now, wakeChannel)
  if #redis.call('ZRANGEBYSCORE', waiting, now, '+inf', 'LIMIT', 0, 1) > 0 then
    redis.call('PUBLISH', wakeChannel, '1')
  end
end

-- push adds n jobs given as triples (sequence, not-before ms, body) in args from index
-- i: due jobs to the ready set, later ones to the delayed set, and returns how many
-- were due. It wakes waiting Dequeue calls unless noWake. K = {ready, delayed, waiting}.
local function push(K, now, args, i, n, wakeChannel, noWake)
  if n == 0 then return 0 end
  local ready, delayed = {}, {}
  for j = 0, n - 1 do
    local nb, body = tonumber(args[i + 3 * j + 1]), args[i + 3 * j + 2]
    local m = args[i + 3 * j] .. '0|' .. body
    if nb > now then
      delayed[#delayed + 1] = nb
      delayed[#delayed + 1] = m
    else
      ready[#ready + 1] = -priority(body)
      ready[#ready + 1] = m
    end
  end
  if #ready > 0 then
    call('ZADD', K[1], ready, 1, #ready, true)
    if not noWake then wake(K[3], now, wakeChannel) end
  end
  if #delayed > 0 then call('ZADD', K[2], delayed, 1, #delayed, true) end
  return #ready / 2
end

-- deadLetter stores a job's body under its sequence in the dead-letter hash, with the
-- reason and the number of deliveries.
local function deadLetter(dead, m, now, reason)
  local seq, n, body = parse(m)
  if not seq then return end
  local info = cjson.encode({t = now, n = n, r = reason})
  redis.call('HSET', dead, seq, info .. '\n' .. body)
end

-- lease leases up to max ready jobs until now + leaseMs, highest priority first and
-- FIFO among equals, and appends to out: how many, then member, delivery number and
-- body of each, then for each of their runs its id and either its hash as {field,
-- value, ...} when it has at most maxFields fields, or the version of its state ("sv").
-- K = {ready, leased, dead}; runPrefix .. id .. '}' is a run's key.
local function lease(K, max, now, leaseMs, runPrefix, maxFields, out)
  local popped = redis.call('ZPOPMIN', K[1], max)
  local at = #out + 1
  out[at] = 0
  local z, runs, snaps = {}, {}, {}
  local deadline = now + leaseMs
  for i = 1, #popped, 2 do
    local seq, n, body = parse(popped[i])
    if seq then
      n = n + 1
      local m = seq .. n .. '|' .. body
      z[#z + 1] = deadline
      z[#z + 1] = m
      out[#out + 1] = m
      out[#out + 1] = n
      out[#out + 1] = body
      out[at] = out[at] + 1
      local run = runOf(body)
      if run and not runs[run] then
        runs[run] = true
        local key = runPrefix .. run .. '}'
        local size = redis.call('HLEN', key)
        if size > 0 and size <= maxFields then
          snaps[#snaps + 1] = run
          snaps[#snaps + 1] = redis.call('HGETALL', key)
        elseif size > 0 then
          snaps[#snaps + 1] = run
          snaps[#snaps + 1] = tonumber(redis.call('HGET', key, 'sv')) or 0
        end
      end
    else
      deadLetter(K[3], '0000000000000000' .. '0|' .. popped[i], now, 'not a job')
    end
  end
  if #z > 0 then redis.call('ZADD', K[2], unpack(z)) end
  for _, v in ipairs(snaps) do out[#out + 1] = v end
  return out[at]
end
