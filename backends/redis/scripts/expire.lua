-- expire.lua: deletes a finished run, unless it changed since the caller looked.
-- KEYS: run hash, idx of its status
-- ARGV: run id, record version the caller saw
if redis.call('HGET', KEYS[1], 'rv') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
