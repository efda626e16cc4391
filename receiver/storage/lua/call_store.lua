-- The writes to one call's keys, shared by store.lua (one Redis: a single script, one round
-- trip) and cluster_call.lua (Redis Cluster: step 1). Every key here carries the hash tag
-- {CallSid}, so they all live in the call's slot. Prepended to those scripts' text.
--
-- k: stream, seen, labels, finals, transcriptions, partials, seen_set (key names); ARGV as
-- documented in store.lua. Returns the entry id, its fields, whether the call is still in progress and whether
-- the entry is a partial result (then the id is in the partials stream, not the call stream), or
-- nil when the event was stored before.
-- A call is in progress while any of its transcriptions is.
local function call_in_progress(transcriptions)
  for _, s in ipairs(redis.call('HVALS', transcriptions)) do
    if s == 'active' then return true end
  end
  return false
end

local function store_call(k)
  -- An identity is bit SequenceId of its transcription's bitmap; SETBIT answers the bit it
  -- replaced. An identity in the call's set of "TranscriptionSid:SequenceId" (how receivers
  -- that predate the bitmaps kept them) was stored too, until that set expires by itself.
  if redis.call('SISMEMBER', k.seen_set, ARGV[1]) == 1
      or redis.call('SETBIT', k.seen, ARGV[12], 1) == 1 then
    return nil
  end
  local retention = tonumber(ARGV[2])
  -- Identities are needed only while a retry or a replay can still come (docs/storage.md).
  redis.call('EXPIRE', k.seen, tonumber(ARGV[16]))

  local tsid = ARGV[5]
  local event = ARGV[6]

  if event == 'started' then
    if ARGV[14] ~= '' then redis.call('HSET', k.labels, tsid .. ':inbound', ARGV[14]) end
    if ARGV[15] ~= '' then redis.call('HSET', k.labels, tsid .. ':outbound', ARGV[15]) end
  end

  local fields = {}
  for i = 19, #ARGV do fields[#fields + 1] = ARGV[i] end

  local track, label = ARGV[7], ARGV[8]
  if event == 'content' then
    if label ~= '' then
      -- Twilio sent the label itself in Track: find which track it names.
      if track == '' then
        if label == redis.call('HGET', k.labels, tsid .. ':inbound') or label == ARGV[9] then
          track = 'inbound'
        elseif label == redis.call('HGET', k.labels, tsid .. ':outbound') or label == ARGV[10] then
          track = 'outbound'
        end
      end
    elseif track ~= '' then
      label = redis.call('HGET', k.labels, tsid .. ':' .. track)
      if not label then
        label = (track == 'inbound') and ARGV[9] or ARGV[10]
        if label == '' then label = track end
      end
    end
    if track ~= '' then fields[#fields + 1] = 'track'; fields[#fields + 1] = track end
    if label ~= '' then fields[#fields + 1] = 'track_label'; fields[#fields + 1] = label end
  end

  local partial = event == 'content' and ARGV[11] ~= '1'
  local id
  if partial then
    -- A live feed, not a record: its own stream, trimmed by age (whole nodes from the head,
    -- which frees memory) and gone PARTIALS_RETENTION_SECONDS after the last partial. The
    -- cutoff comes from this entry's id (the server's ms), never from a receiver's clock.
    local keep = tonumber(ARGV[17])
    id = redis.call('XADD', k.partials, '*', unpack(fields))
    local cutoff = tonumber(string.match(id, '^(%d+)')) - keep * 1000
    if cutoff > 0 then
      redis.call('XTRIM', k.partials, 'MINID', '~', string.format('%.0f', cutoff))
    end
    redis.call('EXPIRE', k.partials, keep)
  else
    id = redis.call('XADD', k.stream, '*', unpack(fields))
  end
  redis.call('EXPIRE', k.stream, retention)

  if event == 'content' and not partial and ARGV[18] ~= '' then
    local final = {
      transcription_sid = tsid, sequence_id = tonumber(ARGV[12]), track = track,
      track_label = label, transcript = '', confidence = '', entry_id = id,
    }
    for i = 1, #fields, 2 do
      local name = fields[i]
      if name == 'transcript' or name == 'confidence' or name == 'spoken_start'
          or name == 'spoken_end' then
        final[name] = fields[i + 1]
      end
    end
    redis.call('ZADD', k.finals, tonumber(ARGV[18]), cjson.encode(final))
  end
  -- Every key of the call lives as long as the call's latest event (EXPIRE of a key that does
  -- not exist does nothing), so labels and finals never expire before the stream does.
  redis.call('EXPIRE', k.labels, retention)
  redis.call('EXPIRE', k.finals, retention)

  -- Most events belong to a transcription already marked active: then nothing is rewritten
  -- and the call's other transcriptions are not looked at.
  local state = redis.call('HGET', k.transcriptions, tsid)
  local active = false
  if event == 'stopped' then
    redis.call('HSET', k.transcriptions, tsid, 'stopped')
  elseif state ~= 'stopped' then
    if state ~= 'active' then redis.call('HSET', k.transcriptions, tsid, 'active') end
    active = true
  end
  redis.call('EXPIRE', k.transcriptions, retention)
  return id, fields, active or call_in_progress(k.transcriptions), partial
end
