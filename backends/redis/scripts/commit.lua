-- commit.lua: one transition of one run, applied only when everything it read is
-- unchanged (optimistic concurrency, validated here, atomically): the run's writes,
-- its record, its status indexes, its expiry once finished, and its jobs.
--
-- KEYS: run hash, ready, delayed, waiting, idx running, idx progress,
--       idx of the old status, idx of the new status, leased, dead
-- ARGV: [1] mode: 'c' create (only if the run does not exist) or 'u' update
--       [2] now ms  [3] expected record version  [4] run id  [5] wake channel
--       [6] done channel  [7] ttl ms (0: keep)  [8] old status  [9] new status
--       [10] created ms  [11] new record ('' when unchanged)  [12] now in µs
--       [13] n reads  [14] n sets  [15] n deletes  [16] n jobs
--       [17] jobs to lease to the caller, for its waiting Dequeue calls (see
--            lease in lib.lua)  [18] lease ms  [19] run key prefix
--       [20] largest run hash to snapshot  [21] n acks, then
--       reads  n × (field, kind, value): kind 'e' exists, 'a' absent, 'v' equals value
--       sets   n × (field, value)
--       deletes n × field
--       jobs   n × (sequence, not-before ms, body)
--       acks   n × leased member of a job to ack (see ack.lua), applied whatever the
--              outcome
-- Every change bumps "sv", the version of the run's state, which orders the snapshots
-- Dequeue returns (see dequeue.lua).
-- Returns {1, record version, state version, then what lease appends} when applied, {2} when creating a run that exists, {3}
-- when updating a run that does not exist, and on a conflict {0, record version,
-- record (false when the version is the expected one), updated µs, the current value
-- of each read field (false when absent)...}.
local run = KEYS[1]
local now, id = tonumber(ARGV[2]), ARGV[4]
local ttl, oldStatus, newStatus = tonumber(ARGV[7]), ARGV[8], ARGV[9]
local rec = ARGV[11]
local nReads, nSets, nDels, nJobs = tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15]), tonumber(ARGV[16])
local iReads = 22
local iSets = iReads + 3 * nReads
local iDels = iSets + 2 * nSets
local iJobs = iDels + nDels
local iAcks = iJobs + 3 * nJobs
local nAcks = tonumber(ARGV[21])
if nAcks > 0 then call('ZREM', KEYS[9], ARGV, iAcks, iAcks + nAcks - 1) end

local rv, oldUpdated, sv
if ARGV[1] == 'c' then
  if redis.call('EXISTS', run) == 1 then return {2} end
  rv, oldUpdated, sv = 0, 0, 0
else
  local fields = {'rv', 'u', 'sv'}
  for i = 0, nReads - 1 do fields[#fields + 1] = ARGV[iReads + 3 * i] end
  local cur = redis.call('HMGET', run, unpack(fields))
  if not cur[1] then return {3} end
  local ok = cur[1] == ARGV[3]
  if ok then
    for i = 0, nReads - 1 do
      local v, kind = cur[4 + i], ARGV[iReads + 3 * i + 1]
      if (kind == 'e' and not v) or (kind == 'a' and v) or (kind == 'v' and v ~= ARGV[iReads + 3 * i + 2]) then
        ok = false
        break
      end
    end
  end
  if not ok then
    local r = false
    if cur[1] ~= ARGV[3] then r = redis.call('HGET', run, 'rec') end
    local out = {0, cur[1], r, cur[2]}
    for i = 4, #cur do out[#out + 1] = cur[i] end
    return out
  end
  rv, oldUpdated, sv = tonumber(cur[1]), math.floor((tonumber(cur[2]) or 0) / 1000), tonumber(cur[3]) or 0
  if nSets == 0 and nDels == 0 and nJobs == 0 and rec == '' then
    return {1, rv, sv} -- nothing to write: the reads were current
  end
end

sv = sv + 1
local sets = {'u', ARGV[12], 'sv', sv}
if rec ~= '' then
  rv = rv + 1
  sets[5], sets[6], sets[7], sets[8] = 'rec', rec, 'rv', rv
end
for i = iSets, iDels - 1 do sets[#sets + 1] = ARGV[i] end
call('HSET', run, sets, 1, #sets, true)
if nDels > 0 then call('HDEL', run, ARGV, iDels, iJobs - 1) end

if oldStatus ~= newStatus then
  if oldStatus == 'running' then
    redis.call('ZREM', KEYS[5], id)
    redis.call('ZREM', KEYS[6], id)
  elseif oldStatus ~= '' then
    redis.call('ZREM', KEYS[7], id)
  end
  if newStatus == 'running' then
    redis.call('ZADD', KEYS[5], ARGV[10], id)
    redis.call('ZADD', KEYS[6], now, id)
    redis.call('PERSIST', run)
  else
    redis.call('ZADD', KEYS[8], now, id)
    if ttl > 0 then
      redis.call('PEXPIRE', run, ttl)
      redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', now - ttl)
    end
    -- the notification carries the record when it is small, so that waiters need
    -- not read it: "<length of id>:<id>[<updated µs>:<record>]"
    local msg = #id .. ':' .. id
    if #rec <= 4096 then msg = msg .. ARGV[12] .. ':' .. rec end
    redis.call('PUBLISH', ARGV[6], msg)
  end
elseif newStatus == 'running' and now - oldUpdated >= 1000 then
  -- the progress index moves in steps of a second: the reconciler counts in minutes
  redis.call('ZADD', KEYS[6], now, id)
end

local out = {1, rv, sv}
local pop = tonumber(ARGV[17])
local due = push({KEYS[2], KEYS[3], KEYS[4]}, now, ARGV, iJobs, nJobs, ARGV[5], pop > 0)
if pop > 0 then
  -- The caller has Dequeue calls waiting: lease them jobs at once, and wake the other
  -- processes only for what is left.
  local n = lease({KEYS[2], KEYS[9], KEYS[10]}, pop, now, tonumber(ARGV[18]), ARGV[19], tonumber(ARGV[20]), out)
  if due > n then wake(KEYS[4], now, ARGV[5]) end
end
return out
