-- Redis Cluster, step 3: the index of calls in progress, in its own slot.
-- KEYS[2] is "{<prefix>:calls:active}:versions", in the index's slot thanks to its hash tag.
--
-- KEYS[1] active calls sorted set   KEYS[2] versions sorted set (CallSid -> state version)
-- ARGV[1] CallSid   ARGV[2] state id (call stream entry id)   ARGV[3] in progress (1 | 0)
-- ARGV[4] now, ms   ARGV[5] retention, ms
--
-- Applies the state only when it is newer than the last one applied for this call, so two
-- receivers applying states of one call in the wrong order cannot resurrect a stopped call.
-- Returns 1 when applied, 0 when a newer state was applied before.

-- Calls idle for longer than the retention leave the index, as their keys expire.
local now, retention = tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.0f', now - retention))
local ms, seq = string.match(ARGV[2], '^(%d+)-(%d+)$')
if not ms then
  return 0
end
-- ms * 1000 + seq is exact in a double (below 2^53) for any date before the year 2255.
local version = tonumber(ms) * 1000 + math.min(tonumber(seq), 999)
local applied = redis.call('ZSCORE', KEYS[2], ARGV[1])
if applied and tonumber(applied) >= version then
  if tonumber(applied) == version and ARGV[3] == '1' then
    -- The same state again (a partial, a retry): only the time of the latest event moves,
    -- and only for a call still listed (XX never brings back a stopped call).
    redis.call('ZADD', KEYS[1], 'XX', 'GT', now, ARGV[1])
  end
  return 0
end
redis.call('ZADD', KEYS[2], version, ARGV[1])
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
-- Versions of calls idle for longer than the retention: their keys are gone too.
local horizon = (now - retention) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%.0f', horizon))
return 1
