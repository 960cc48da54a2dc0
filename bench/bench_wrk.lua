-- wrk script for bench/bench.sh: one request shape (or two, interleaved in
-- time slices), rotating over a list of bearer credentials, and a JSON
-- summary written at the end.
--
-- Configured through the environment (wrk passes no options to scripts):
--   BENCH_METHOD       GET, HEAD or POST (default GET)
--   BENCH_PATH         request path (default /healthz)
--   BENCH_CREDENTIALS  file with one bearer credential per line; empty or
--                      unset: no Authorization header
--   BENCH_HOST         Host header (default: wrk's, from the URL)
--   BENCH_OUT          where done() writes its JSON summary (unset: stdout)
-- With BENCH_B_PATH set, a second request shape B (BENCH_B_METHOD,
-- BENCH_B_PATH, BENCH_B_CREDENTIALS, BENCH_B_HOST) takes turns with the
-- first (A) in time slices on the same connections:
--   BENCH_SLICE_MS     slice length (default 50)
--   BENCH_GUARD_MS     requests sent in a slice's first milliseconds are not
--                      counted (default 5): the other shape's requests still
--                      in flight are finishing then
-- With BENCH_SIDE=b instead, the one request shape is B and sends only in
-- B slices (delay() holds each connection until the next one starts): the A
-- slices belong to another process on the same clock (bench_helper.py's
-- fdatasync probe).
-- Slices are numbered by the monotonic clock (the same for every thread and
-- process) and go A B B A A B B A ..., so pair k (slices 2k, 2k+1) has one of
-- each and a steady drift favours neither. done() adds "slices": [[index, "a"|"b",
-- requests sent], ...]; bench_helper.py turns them into per-pair ratios.
-- Why: the host's speed moves by 15% from one 100 ms to the next and stays
-- correlated for about a second, so two shapes measured 50 ms apart see the
-- same host while separate multi-second runs do not.
--
-- Every request is built once in init(), so the per-request cost on the
-- client is the same for every route (a table lookup), whether it carries a
-- credential or not. Each wrk thread starts at a different place in the list.

local function side(prefix, default_path)
   local path = os.getenv(prefix .. "PATH") or default_path
   if path == nil or path == "" then
      return nil
   end
   return {
      method = os.getenv(prefix .. "METHOD") or "GET",
      path = path,
      credentials = os.getenv(prefix .. "CREDENTIALS") or "",
      host = os.getenv(prefix .. "HOST") or "",
   }
end

local spec_a = side("BENCH_", "/healthz")
local spec_b = side("BENCH_B_", nil)
local only_b = os.getenv("BENCH_SIDE") == "b"
local sliced = spec_b ~= nil or only_b
local out = os.getenv("BENCH_OUT") or ""
local slice_ms = tonumber(os.getenv("BENCH_SLICE_MS") or "50")
local guard_ms = tonumber(os.getenv("BENCH_GUARD_MS") or "5")

local now_ms
if sliced then
   local ffi = require("ffi")
   ffi.cdef [[
      typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
      int clock_gettime(int clock_id, bench_timespec *tp);
   ]]
   local ts = ffi.new("bench_timespec")
   local CLOCK_MONOTONIC = 1
   now_ms = function()
      ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
      return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
   end
end

local threads = {}
local thread_count = 0

function setup(thread)
   thread:set("thread_index", thread_count)
   thread_count = thread_count + 1
   threads[thread_count] = thread
end

local function build(spec)
   local headers = {}
   if spec.host ~= "" then
      headers["Host"] = spec.host
   end
   local list = {}
   if spec.credentials ~= "" then
      for line in io.lines(spec.credentials) do
         if line ~= "" then
            headers["Authorization"] = "Bearer " .. line
            list[#list + 1] = wrk.format(spec.method, spec.path, headers)
         end
      end
   end
   if #list == 0 then
      headers["Authorization"] = nil
      list[1] = wrk.format(spec.method, spec.path, headers)
   end
   return list
end

-- Per shape: its prepared requests and the index of the last one sent.
local shape_a, shape_b
-- Global, so done() can read it from each thread (thread:get).
slice_counts = {}

local function prepare(spec)
   local requests = build(spec)
   -- Spread the threads over the list (a prime stride keeps them apart).
   return { requests = requests, next = ((thread_index or 0) * 7919) % #requests }
end

function init(args)
   shape_a = prepare(spec_a)
   if spec_b then
      shape_b = prepare(spec_b)
   end
end

local function take(shape)
   shape.next = shape.next + 1
   if shape.next > #shape.requests then
      shape.next = 1
   end
   return shape.requests[shape.next]
end

local function is_b(slice)
   -- A B B A A B B A ...
   return (slice + math.floor(slice / 2)) % 2 == 1
end

function request()
   if not sliced then
      return take(shape_a)
   end
   local t = now_ms()
   local slice = math.floor(t / slice_ms)
   -- In BENCH_SIDE=b mode a send outside a B slice (a timer late or early)
   -- is made but not counted.
   if t - slice * slice_ms >= guard_ms and (not only_b or is_b(slice)) then
      slice_counts[slice] = (slice_counts[slice] or 0) + 1
   end
   if only_b then
      return take(shape_a)
   end
   return take(is_b(slice) and shape_b or shape_a)
end

if only_b then
   -- Milliseconds until the next B slice (0 inside one). wrk calls this
   -- before every request once a script defines it.
   function delay()
      local t = now_ms()
      local slice = math.floor(t / slice_ms)
      if is_b(slice) then
         return 0
      end
      local next = slice + 1
      while not is_b(next) do
         next = next + 1
      end
      -- +1: wrk's timers have whole milliseconds and can fire early.
      return math.ceil(next * slice_ms - t) + 1
   end
end

local function slices_json()
   local merged = {}
   for _, thread in ipairs(threads) do
      local counts = thread:get("slice_counts") or {}
      for slice, n in pairs(counts) do
         merged[slice] = (merged[slice] or 0) + n
      end
   end
   local order = {}
   for slice in pairs(merged) do
      order[#order + 1] = slice
   end
   table.sort(order)
   local items = {}
   for i, slice in ipairs(order) do
      items[i] = string.format('[%d,"%s",%d]', slice, is_b(slice) and "b" or "a", merged[slice])
   end
   return string.format(',"slice_ms":%g,"guard_ms":%g,"slices":[%s]',
      slice_ms, guard_ms, table.concat(items, ","))
end

function done(summary, latency, requests)
   local e = summary.errors
   local json = string.format(
      '{"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d}%s}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, sliced and slices_json() or "")
   if out == "" then
      io.write(json)
   else
      local f = assert(io.open(out, "w"))
      f:write(json)
      f:close()
   end
end
