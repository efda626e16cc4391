-- Redis Cluster, step 1: the call's own keys (one slot, hash tag {CallSid}).
-- Runs after call_store.lua, whose text is prepended (cluster.CALL_SCRIPT).
--
-- KEYS[1] call stream   KEYS[2] seen bitmap of the event's transcription   KEYS[3] labels hash
-- KEYS[4] finals sorted set   KEYS[5] transcriptions hash
-- KEYS[6] entries hash (dedup key -> entry ref)
-- KEYS[7] published set (entry refs known to be in the global stream)   KEYS[8] partials stream
-- KEYS[9] the call's seen set (consulted, never written: see call_store.lua)
-- ARGV as in store.lua.
--
-- An entry ref is the call stream entry id, or "p/<id>" for an entry of the partials stream
-- (the two streams' ids can be equal). The refs live as long as the seen bitmap (ARGV[16]): a
-- retry or a replay that could heal comes within that window, or not at all. A partial's ref
-- goes once it is published (step 2b) or found past healing, so that the refs of a call that
-- has ended are its record's only.
--
-- Returns {stored (1 | 0), entry ref, state id, in progress (1 | 0), field, value, ...}: the
-- entry for the global stream (step 2, its first field names the entry: call_entry_id or
-- partials_entry_id) and the call's state for the index (step 3). For a duplicate these are the
-- ORIGINAL entry, unless step 2 is known to have appended it, and the current state, so that a
-- retry or a replay from the spool heals a crash between the steps, however late it comes. The
-- state id is the call stream's latest entry id: it orders the states of one call, whichever
-- receiver applies them (a partial's own id is used only while the call stream is empty).

local function latest_call_entry()
  local latest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
  return latest and latest[1] or ''
end

local function entry(ref, id, fields)
  local named = {string.sub(ref, 1, 2) == 'p/' and 'partials_entry_id' or 'call_entry_id', id}
  for i = 1, #fields do named[#named + 1] = fields[i] end
  return named
end

local id, fields, active, partial = store_call({
  stream = KEYS[1], seen = KEYS[2], labels = KEYS[3], finals = KEYS[4], transcriptions = KEYS[5],
  partials = KEYS[8], seen_set = KEYS[9],
})
if id then
  local ref, state_id = id, id
  if partial then
    ref = 'p/' .. id
    state_id = latest_call_entry()
    if state_id == '' then state_id = id end
  end
  redis.call('HSET', KEYS[6], ARGV[1], ref)
  redis.call('EXPIRE', KEYS[6], tonumber(ARGV[16]))
  return {1, ref, state_id, active and 1 or 0, unpack(entry(ref, id, fields))}
end

local state_id = latest_call_entry()
local in_progress = call_in_progress(KEYS[5]) and 1 or 0
local original = redis.call('HGET', KEYS[6], ARGV[1])
if not original then
  -- Stored before the entries hash existed (data from a single Redis): nothing to heal.
  return {0, '', state_id, in_progress}
end
local stream, original_id = KEYS[1], original
if string.sub(original, 1, 2) == 'p/' then
  stream, original_id = KEYS[8], string.sub(original, 3)
end
-- A partial trimmed or expired since is past healing: it was a live feed anyway.
local found = redis.call('XRANGE', stream, original_id, original_id)[1]
if not found then
  redis.call('HDEL', KEYS[6], ARGV[1])
  return {0, '', state_id, in_progress}
end
if redis.call('SISMEMBER', KEYS[7], original) == 1 then
  return {0, '', state_id, in_progress}
end
return {0, original, state_id, in_progress, unpack(entry(original, original_id, found[2]))}
