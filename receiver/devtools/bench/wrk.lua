-- wrk script for `receiver bench`: plays precomputed, signed raw HTTP requests in order.
--
-- args[1] is a path prefix: thread N reads "<prefix>.N", a file of requests, each written as
-- "<byte length>\n<raw request>". Signing happens in Python before the timed phase, so wrk only
-- copies bytes. When a thread runs out of requests it starts over (the receiver then answers
-- "duplicate"); `receiver bench` sizes the files from what the fastest target answered, so
-- that this does not happen, and reports it when it does.

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
end

function request()
  index = index + 1
  if index > #pool then
    index = 1
  end
  return pool[index]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    parts[#parts + 1] = string.format('"%d": %d', status, n)
  end
  local errors = summary.errors
  io.write(string.format(
    'RECEIVER-BENCH-RESULT {"requests": %d, "duration_us": %d, "statuses": {%s}, '
      .. '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, '
      .. '"latency_us": {"p50": %d, "p95": %d, "p99": %d, "max": %d}}\n',
    summary.requests, summary.duration, table.concat(parts, ", "),
    errors.connect, errors.read, errors.write, errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max
  ))
end
