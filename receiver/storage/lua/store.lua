-- Append one normalized transcription event, exactly once, in one atomic step (one Redis).
-- Runs after call_store.lua, whose text is prepended (streams.STORE_SCRIPT).
--
-- KEYS[1] call stream        KEYS[2] global events stream   KEYS[3] seen set (dedup)
-- KEYS[4] labels hash         KEYS[5] finals sorted set       KEYS[6] active calls sorted set
-- KEYS[7] transcriptions hash (TranscriptionSid -> active | stopped)
-- KEYS[8] recent calls sorted set (CallSid -> ms of its latest event)
--
-- ARGV[1] dedup key           ARGV[2] retention seconds       ARGV[3] events MAXLEN
-- ARGV[4] CallSid             ARGV[5] TranscriptionSid        ARGV[6] event
-- ARGV[7] track (inbound | outbound | "")                     ARGV[8] label sent in Track
-- ARGV[9] URL inbound label   ARGV[10] URL outbound label     ARGV[11] final ("1" | "")
-- ARGV[12] SequenceId or ""   ARGV[13] now, ms                ARGV[14] started: inbound label
-- ARGV[15] started: outbound label
-- ARGV[16..] field, value, ... of the stream entry (without track and track_label)
--
-- Returns the call stream entry id, or false when the event was stored before.

local id, fields, active = store_call({
  stream = KEYS[1], seen = KEYS[3], labels = KEYS[4], finals = KEYS[5], transcriptions = KEYS[7],
})
if not id then
  return false
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'call_entry_id', id, unpack(fields))
if active then
  redis.call('ZADD', KEYS[6], tonumber(ARGV[13]), ARGV[4])
else
  redis.call('ZREM', KEYS[6], ARGV[4])
end
-- Calls whose latest event is older than the retention: their keys are gone too.
redis.call('ZADD', KEYS[8], tonumber(ARGV[13]), ARGV[4])
local horizon = tonumber(ARGV[13]) - tonumber(ARGV[2]) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', '(' .. string.format('%.0f', horizon))
return id
