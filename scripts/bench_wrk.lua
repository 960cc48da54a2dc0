-- wrk script for scripts/bench.sh: one request shape, rotating over a list
-- of bearer credentials, and a JSON summary written at the end.
--
-- Configured through the environment (wrk passes no options to scripts):
--   BENCH_METHOD       GET, HEAD or POST (default GET)
--   BENCH_PATH         request path (default /healthz)
--   BENCH_CREDENTIALS  file with one bearer credential per line; empty or
--                      unset: no Authorization header
--   BENCH_OUT          where done() writes its JSON summary (unset: stdout)
--
-- Every request is built once in init(), so the per-request cost on the
-- client is the same for every route (a table lookup), whether it carries a
-- credential or not. Each wrk thread starts at a different place in the list.

local method = os.getenv("BENCH_METHOD") or "GET"
local path = os.getenv("BENCH_PATH") or "/healthz"
local credentials = os.getenv("BENCH_CREDENTIALS") or ""
local out = os.getenv("BENCH_OUT") or ""

local threads = 0

function setup(thread)
   thread:set("thread_index", threads)
   threads = threads + 1
end

local requests_ = {}
local count = 0
local next_index = 0

function init(args)
   local creds = {}
   if credentials ~= "" then
      for line in io.lines(credentials) do
         if line ~= "" then
            creds[#creds + 1] = line
         end
      end
   end
   if #creds == 0 then
      requests_[1] = wrk.format(method, path)
   else
      for i, c in ipairs(creds) do
         requests_[i] = wrk.format(method, path, { ["Authorization"] = "Bearer " .. c })
      end
   end
   count = #requests_
   -- Spread the threads over the list (a prime stride keeps them apart).
   next_index = ((thread_index or 0) * 7919) % count
end

function request()
   next_index = next_index + 1
   if next_index > count then
      next_index = 1
   end
   return requests_[next_index]
end

function done(summary, latency, requests)
   local e = summary.errors
   local json = string.format(
      '{"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max)
   if out == "" then
      io.write(json)
   else
      local f = assert(io.open(out, "w"))
      f:write(json)
      f:close()
   end
end
