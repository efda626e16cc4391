-- Redis Cluster, step 2: append to the global stream, at most once per call entry.
-- Both keys live in the slot of the global stream: KEYS[2] is "{<prefix>:events}:seen", whose
-- hash tag is the global stream's own name.
--
-- KEYS[1] global events stream   KEYS[2] seen sorted set (member -> ms when appended)
-- ARGV[1] MAXLEN   ARGV[2] member (CallSid/entry ref)   ARGV[3] entry ref (step 1)
-- ARGV[4] dedup window, ms   ARGV[5..] field, value, ... of the entry (call_entry_id first)
--
-- Returns the global entry id, or false when it was appended within the window. Beyond the
-- window, step 1 knows (step 2b marked the entry published) and does not ask again. The key
-- expires one window after the last append, so an idle cluster keeps none of it.

local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local window = tonumber(ARGV[4])
if redis.call('ZADD', KEYS[2], 'NX', now_ms, ARGV[2]) == 0 then
  return false
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%.0f', now_ms - window))
redis.call('PEXPIRE', KEYS[2], window)
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
