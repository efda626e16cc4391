-- Append one normalized transcription event, exactly once, in one atomic step (one Redis).
-- Runs after call_store.lua, whose text is prepended (store.STORE_SCRIPT).
--
-- KEYS[1] call stream        KEYS[2] global events stream
-- KEYS[3] seen bitmap of the event's transcription (dedup: bit SequenceId)
-- KEYS[4] labels hash         KEYS[5] finals sorted set       KEYS[6] active calls sorted set
-- KEYS[7] transcriptions hash (TranscriptionSid -> active | stopped)
-- KEYS[8] partials stream     KEYS[9] recent calls sorted set
-- KEYS[10] the call's seen set ("TranscriptionSid:SequenceId"; consulted, never written)
--
-- ARGV[1] dedup key           ARGV[2] retention seconds       ARGV[3] events MAXLEN
-- ARGV[4] CallSid             ARGV[5] TranscriptionSid        ARGV[6] event
-- ARGV[7] track (inbound | outbound | "")                     ARGV[8] label sent in Track
-- ARGV[9] URL inbound label   ARGV[10] URL outbound label     ARGV[11] final ("1" | "")
-- ARGV[12] SequenceId         ARGV[13] now, ms                ARGV[14] started: inbound label
-- ARGV[15] started: outbound label                            ARGV[16] seen bitmap lifetime, s
-- ARGV[17] partials retention, s                              ARGV[18] finals score or ""
-- ARGV[19..] field, value, ... of the stream entry (without track and track_label)
--
-- Returns the entry id (call stream, or partials stream for a partial result), or false when
-- the event was stored before.

local id, fields, active, partial = store_call({
  stream = KEYS[1], seen = KEYS[3], labels = KEYS[4], finals = KEYS[5], transcriptions = KEYS[7],
  partials = KEYS[8], seen_set = KEYS[10],
})
if not id then
  return false
end
local id_field = partial and 'partials_entry_id' or 'call_entry_id'
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', id_field, id, unpack(fields))
local now = tonumber(ARGV[13])
if active then
  redis.call('ZADD', KEYS[6], now, ARGV[4])
else
  redis.call('ZREM', KEYS[6], ARGV[4])
end
redis.call('ZADD', KEYS[9], 'GT', now, ARGV[4])
-- A call without an event for the retention leaves both indexes, as its keys expire.
local horizon = '(' .. string.format('%.0f', now - tonumber(ARGV[2]) * 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', horizon)
redis.call('ZREMRANGEBYSCORE', KEYS[9], '-inf', horizon)
return id
