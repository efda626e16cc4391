-- Keep a dead letter once: a signed callback that could not be normalized.
-- KEYS[2] is "{<prefix>:rejected}:seen", in the dead-letter stream's slot by its hash tag.
--
-- KEYS[1] dead-letter stream   KEYS[2] seen sorted set (digest -> ms when kept)
-- ARGV[1] digest of the text the signature covers (signature.request_digest)   ARGV[2] now, ms
-- ARGV[3] window, ms (MAX_EVENT_AGE_SECONDS)   ARGV[4] MAXLEN   ARGV[5..] field, value, ...
--
-- Returns the entry id, or false when the same request was kept within the window.

local now, window = tonumber(ARGV[2]), tonumber(ARGV[3])
-- Forget first: a request seen longer ago than the window is kept again.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%.0f', now - window))
if redis.call('ZADD', KEYS[2], 'NX', now, ARGV[1]) == 0 then
  return false
end
redis.call('PEXPIRE', KEYS[2], window)
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', unpack(fields))
