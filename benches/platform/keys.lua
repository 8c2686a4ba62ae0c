-- wrk script: every request uses the key of a random tenant (keys read from $WARREN_BENCH_KEYS).
local keys = {}
local path = os.getenv("WARREN_BENCH_KEYS") or "/tmp/warren-bench-keys.txt"
for line in io.lines(path) do keys[#keys + 1] = line end
local target = os.getenv("WARREN_BENCH_PATH") or "/api/v1/tenant"
math.randomseed(os.time())
request = function()
  local key = keys[math.random(#keys)]
  return wrk.format("GET", target, { ["Authorization"] = "Bearer " .. key })
end
