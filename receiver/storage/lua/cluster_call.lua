-- Redis Cluster, step 1 of 3: the call's own keys (one slot, hash tag {CallSid}).
-- Runs after call_store.lua, whose text is prepended (cluster.CALL_SCRIPT).
--
-- KEYS[1] call stream   KEYS[2] seen set   KEYS[3] labels hash   KEYS[4] finals sorted set
-- KEYS[5] transcriptions hash   KEYS[6] entries hash (dedup key -> call stream entry id)
-- KEYS[7] published set (call entry ids known to be in the global stream)
-- ARGV as in store.lua.
--
-- Returns {stored (1 | 0), entry id, state id, in progress (1 | 0), field, value, ...}:
-- the entry for the global stream (step 2) and the call's state for the index (step 3). For a
-- duplicate these are the ORIGINAL entry, unless step 2 is known to have appended it, and the
-- current state, so that a retry or a replay from the spool heals a crash between the steps,
-- however late it comes. The state id is the call stream's latest entry id: it orders the states
-- of one call, whichever receiver applies them.

local id, fields, active = store_call({
  stream = KEYS[1], seen = KEYS[2], labels = KEYS[3], finals = KEYS[4], transcriptions = KEYS[5],
})
if id then
  redis.call('HSET', KEYS[6], ARGV[1], id)
  redis.call('EXPIRE', KEYS[6], tonumber(ARGV[2]))
  return {1, id, id, active and 1 or 0, unpack(fields)}
end

local latest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
local state_id = latest and latest[1] or ''
local in_progress = call_in_progress(KEYS[5]) and 1 or 0
local original = redis.call('HGET', KEYS[6], ARGV[1])
if not original then
  -- Stored before the entries hash existed (data from a single Redis): nothing to heal.
  return {0, '', state_id, in_progress}
end
local entry = redis.call('XRANGE', KEYS[1], original, original)[1]
if not entry or redis.call('SISMEMBER', KEYS[7], original) == 1 then
  return {0, '', state_id, in_progress}
end
return {0, original, state_id, in_progress, unpack(entry[2])}
