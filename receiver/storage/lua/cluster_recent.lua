-- Redis Cluster, step 4: the dashboard's index of calls, in its own slot.
--
-- KEYS[1] recent calls sorted set (CallSid -> ms of the call's latest event)
-- ARGV[1] CallSid   ARGV[2] now, ms   ARGV[3] retention, ms
--
-- Idempotent: GT never moves a call back in time, whichever receiver comes last.

local now = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'GT', now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.0f', now - tonumber(ARGV[3])))
return 1
