-- wrk script: POST the request bodies of the file named by BENCH_BODIES (one per line) to
-- /mparticle, each thread taking every n-th body, and print a JSON summary at the end.
local threads = {}
local count = tonumber(os.getenv("BENCH_THREADS") or "1")
local headers = {
  ["Content-Type"] = "application/json",
  ["Authorization"] = os.getenv("BENCH_AUTHORIZATION"),
}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  bodies = {}
  local file = assert(io.open(os.getenv("BENCH_BODIES"), "rb"))
  for line in file:lines() do
    bodies[#bodies + 1] = line
  end
  file:close()
  position = id
end

function request()
  local body = bodies[position % #bodies + 1]
  position = position + count
  return wrk.format("POST", "/mparticle", headers, body)
end

function done(summary, latency, requests)
  io.write(string.format(
    '\nBENCH {"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"timeouts": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write,
    summary.errors.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
