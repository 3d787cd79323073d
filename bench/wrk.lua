-- One request shape per run, set by the environment; prints a JSON summary for bench.web.
--   BENCH_METHOD  GET or POST
--   BENCH_PATH    a path, "%d" is replaced by an id in 1..BENCH_IDS
--   BENCH_ORDER   "cycle" (default: each thread counts up from a random start) or "random"
--   BENCH_BODY    a JSON body (POST)
--   BENCH_IDEMPOTENCY_KEY  "1": every request carries an Idempotency-Key never sent before
local method = os.getenv("BENCH_METHOD") or "GET"
local path = os.getenv("BENCH_PATH") or "/"
local ids = tonumber(os.getenv("BENCH_IDS") or "1")
local random_order = os.getenv("BENCH_ORDER") == "random"
local body = os.getenv("BENCH_BODY")
local keyed = os.getenv("BENCH_IDEMPOTENCY_KEY") == "1"

wrk.method = method
if body ~= nil and body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

local counter = 0
local threads = 0
local key_prefix = ""
local sent = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

function init(args)
  -- Each thread has its own Lua state: seed each differently, or all draw the same ids.
  math.randomseed(os.time() * 1000 + (thread_number or 0))
  counter = math.random(ids)
  if keyed then  -- unique across threads and runs: 8 random bytes, the thread, a count
    local urandom = assert(io.open("/dev/urandom", "rb"))
    local bytes = urandom:read(8)
    urandom:close()
    key_prefix = bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end)
    key_prefix = key_prefix .. "-" .. (thread_number or 0)
  end
end

function request()
  if random_order then
    counter = math.random(ids)
  else
    counter = counter % ids + 1
  end
  if keyed then
    sent = sent + 1
    wrk.headers["Idempotency-Key"] = key_prefix .. "-" .. sent
  end
  return wrk.format(nil, string.format(path, counter))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "non2xx": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "timeout": %d, "p50_us": %.0f, "p99_us": %.0f, ' ..
    '"p999_us": %.0f, "max_us": %.0f}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
