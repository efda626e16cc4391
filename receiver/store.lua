-- Append one normalized transcription event, exactly once, in one atomic step.
--
-- KEYS[1] call stream        KEYS[2] global events stream   KEYS[3] seen set (dedup)
-- KEYS[4] labels hash         KEYS[5] finals sorted set       KEYS[6] active calls sorted set
-- KEYS[7] transcriptions hash (TranscriptionSid -> active | stopped)
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

if redis.call('SADD', KEYS[3], ARGV[1]) == 0 then
  return false
end
local retention = tonumber(ARGV[2])
redis.call('EXPIRE', KEYS[3], retention)

local tsid = ARGV[5]
local event = ARGV[6]

if event == 'started' then
  if ARGV[14] ~= '' then redis.call('HSET', KEYS[4], tsid .. ':inbound', ARGV[14]) end
  if ARGV[15] ~= '' then redis.call('HSET', KEYS[4], tsid .. ':outbound', ARGV[15]) end
  redis.call('EXPIRE', KEYS[4], retention)
end

local fields = {}
for i = 16, #ARGV do fields[#fields + 1] = ARGV[i] end

local track, label = ARGV[7], ARGV[8]
if event == 'content' then
  if label ~= '' then
    -- Twilio sent the label itself in Track: find which track it names.
    if track == '' then
      if label == redis.call('HGET', KEYS[4], tsid .. ':inbound') or label == ARGV[9] then
        track = 'inbound'
      elseif label == redis.call('HGET', KEYS[4], tsid .. ':outbound') or label == ARGV[10] then
        track = 'outbound'
      end
    end
  elseif track ~= '' then
    label = redis.call('HGET', KEYS[4], tsid .. ':' .. track)
    if not label then
      label = (track == 'inbound') and ARGV[9] or ARGV[10]
      if label == '' then label = track end
    end
  end
  if track ~= '' then fields[#fields + 1] = 'track'; fields[#fields + 1] = track end
  if label ~= '' then fields[#fields + 1] = 'track_label'; fields[#fields + 1] = label end
end

local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
redis.call('EXPIRE', KEYS[1], retention)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'call_entry_id', id, unpack(fields))

if event == 'content' and ARGV[11] == '1' and ARGV[12] ~= '' then
  local text, confidence = '', ''
  for i = 1, #fields, 2 do
    if fields[i] == 'transcript' then text = fields[i + 1] end
    if fields[i] == 'confidence' then confidence = fields[i + 1] end
  end
  redis.call('ZADD', KEYS[5], tonumber(ARGV[12]), cjson.encode({
    transcription_sid = tsid, sequence_id = tonumber(ARGV[12]), track = track,
    track_label = label, transcript = text, confidence = confidence, entry_id = id,
  }))
  redis.call('EXPIRE', KEYS[5], retention)
end

-- The call is active while any of its transcriptions is. Most events belong to a transcription
-- already marked active: then nothing is rewritten and no other transcription is looked at.
local state = redis.call('HGET', KEYS[7], tsid)
local active = false
if event == 'stopped' then
  redis.call('HSET', KEYS[7], tsid, 'stopped')
elseif state ~= 'stopped' then
  if state ~= 'active' then redis.call('HSET', KEYS[7], tsid, 'active') end
  active = true
end
redis.call('EXPIRE', KEYS[7], retention)
if not active then
  for _, s in ipairs(redis.call('HVALS', KEYS[7])) do
    if s == 'active' then active = true end
  end
end
if active then
  redis.call('ZADD', KEYS[6], tonumber(ARGV[13]), ARGV[4])
else
  redis.call('ZREM', KEYS[6], ARGV[4])
end
return id
