-- deadletter.lua: moves a delivered job, whose lease the caller still holds, to the
-- dead-letter hash with the reason.
-- KEYS: leased, dead
-- ARGV: leased member, now ms, reason
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
deadLetter(KEYS[2], ARGV[1], tonumber(ARGV[2]), ARGV[3])
return 1
