-- requeue.lua: atomically replaces a delivered job, whose lease the caller still
-- holds, with the next job.
-- KEYS: ready, delayed, waiting, leased
-- ARGV: leased member, now ms, wake channel, next's sequence, not-before ms, body
if redis.call('ZREM', KEYS[4], ARGV[1]) == 0 then return 0 end
push(KEYS, tonumber(ARGV[2]), ARGV, 4, 1, ARGV[3])
return 1
