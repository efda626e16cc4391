-- wrk script for `receiver bench`: plays precomputed, signed raw HTTP requests in order, each once.
--
-- args[1] is a path prefix: thread N reads "<prefix>.N", a file of requests, each written as
-- "<byte length>\n<raw request>". Signing happens in Python before the timed phase, so wrk only
-- copies bytes. A request is never sent twice: a repeat would be a duplicate, which the receiver
-- answers without storing, and would flatter its figures. A thread that runs out of requests
-- leaves its connections idle (an empty request writes nothing) and notes when its last answer
-- came; when every thread ran out, the phase lasted until the last of those answers, and
-- "ran_out" tells `receiver bench` to measure it again with a larger pool.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } rtt_timespec;
int clock_gettime(int clock, rtt_timespec *now);
]]
local CLOCK_MONOTONIC = 1
local clock = ffi.new("rtt_timespec")

local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
  return tonumber(clock.tv_sec) * 1e6 + tonumber(clock.tv_nsec) / 1e3
end

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  local file = assert(io.open(args[1] .. "." .. id, "rb"))
  local data = file:read("*a")
  file:close()
  pool = {}
  local pos = 1
  while pos <= #data do
    local newline = string.find(data, "\n", pos, true)
    local length = tonumber(string.sub(data, pos, newline - 1))
    pool[#pool + 1] = string.sub(data, newline + 1, newline + length)
    pos = newline + 1 + length
  end
  index = 0
  statuses = {}
  ran_out = false
  first_us, last_us = 0, 0
  -- wrk calls request() once on thread 0 before the run, to look at the request it builds, and
  -- never sends it: that call must not use up a request of the pool.
  looked_at = id ~= 0
end

function request()
  if not looked_at then
    looked_at = true
    return pool[1] or ""
  end
  if index == 0 then
    first_us = now_us()
  end
  if index >= #pool then
    if not ran_out then
      ran_out, last_us = true, now_us()
    end
    return ""
  end
  index = index + 1
  return pool[index]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if ran_out then
    last_us = now_us()
  end
end

function done(summary, latency, requests)
  local counts = {}
  local any_ran_out, all_ran_out, first, last = false, true, math.huge, 0
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
    any_ran_out = any_ran_out or thread:get("ran_out")
    all_ran_out = all_ran_out and thread:get("ran_out")
    first = math.min(first, thread:get("first_us"))
    last = math.max(last, thread:get("last_us"))
  end
  local parts = {}
  for status, n in pairs(counts) do
    parts[#parts + 1] = string.format('"%d": %d', status, n)
  end
  local duration = summary.duration
  if all_ran_out and last > first then
    duration = last - first
  end
  local errors = summary.errors
  io.write(string.format(
    'RECEIVER-BENCH-RESULT {"requests": %d, "duration_us": %d, "ran_out": %s, "statuses": {%s}, '
      .. '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, '
      .. '"latency_us": {"p50": %d, "p95": %d, "p99": %d, "max": %d}}\n',
    summary.requests, duration, tostring(any_ran_out), table.concat(parts, ", "),
    errors.connect, errors.read, errors.write, errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max
  ))
end
