-- wrk hooks for bench/proxy_bench.py.
-- Only done() (and delay() in paced mode) are defined, so wrk keeps its fast
-- path for building requests. done() prints one machine-readable line.

local think_min = tonumber(os.getenv("BENCH_THINK_MIN_MS") or "")
local think_max = tonumber(os.getenv("BENCH_THINK_MAX_MS") or "")

if think_min and think_max then
  function init(args)
    math.randomseed(os.time() + math.floor(os.clock() * 1000000))
  end

  -- Random think time per connection before each request; wrk starts the
  -- latency clock after it, so this measures service latency, not queueing.
  function delay()
    return math.random(think_min, think_max)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %.0f, "duration_us": %.0f, "bytes": %.0f, ' ..
    '"mean_us": %.1f, "p50_us": %.0f, "p90_us": %.0f, "p99_us": %.0f, "max_us": %.0f, ' ..
    '"errors": {"connect": %.0f, "read": %.0f, "write": %.0f, "status": %.0f, "timeout": %.0f}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
