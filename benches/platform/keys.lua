-- wrk script: every request uses the key of a random tenant (keys read from $WARREN_BENCH_KEYS).
-- At the end it prints the 2xx count and rate (the figure to report) and the count of every other
-- status, summed over wrk's threads.
local keys = {}
local path = os.getenv("WARREN_BENCH_KEYS") or "/tmp/warren-bench-keys.txt"
for line in io.lines(path) do keys[#keys + 1] = line end
local target = os.getenv("WARREN_BENCH_PATH") or "/api/v1/tenant"
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  statuses = {}
end

-- With $WARREN_BENCH_ZIPF = s, tenant i (1-based, in the file's order) is chosen with probability
-- proportional to 1 / i^s (Zipf), as real tenants' traffic is skewed; without it, uniformly.
local zipf = tonumber(os.getenv("WARREN_BENCH_ZIPF") or "")
local cdf = nil
if zipf then
  cdf = {}
  local total = 0
  for i = 1, #keys do total = total + 1 / (i ^ zipf); cdf[i] = total end
  for i = 1, #keys do cdf[i] = cdf[i] / total end
end

local function pick()
  if not cdf then return math.random(#keys) end
  local u, lo, hi = math.random(), 1, #cdf
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end

request = function()
  local key = keys[pick()]
  return wrk.format("GET", target, { ["Authorization"] = "Bearer " .. key })
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("statuses") or {}) do
      total[status] = (total[status] or 0) + n
    end
  end
  local ok, others = 0, {}
  for status, n in pairs(total) do
    if status >= 200 and status < 300 then
      ok = ok + n
    else
      others[#others + 1] = string.format("%d x %d", n, status)
    end
  end
  local secs = summary.duration / 1e6
  io.write(string.format("2xx: %d in %.1f s = %.0f req/s; other statuses: %s; socket errors: %d\n", ok, secs, ok / secs,
    #others > 0 and table.concat(others, ", ") or "none",
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
