-- enqueue.lua: adds jobs.
-- KEYS: ready, delayed, waiting
-- ARGV: now ms, wake channel, n, then n × (sequence, not-before ms, body)
push(KEYS, tonumber(ARGV[1]), ARGV, 4, tonumber(ARGV[3]), ARGV[2])
return 1
