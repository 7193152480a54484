-- wrk script of bench/ingest.py: POST /api/messages, a topic message of about 100 bytes, cycling over the topics.
--
-- wrk -s bench/ingest.lua http://127.0.0.1:PORT -- TOPICS API_KEY
-- Message i goes to topic room.<i mod TOPICS>, which one stream of the runner subscribes to: every publish is
-- delivered once. The requests are formatted once per thread in init(); request() only picks the next one. The
-- API key makes the publisher a trusted back end, which the per-client publish limits leave alone.
-- response() counts every answer outside 200-299 (wrk's own error count only has those >= 400); done() prints one
-- JSON line, prefixed "INGEST ", with the counts and the latency percentiles (microseconds).

local threads = {}
local requests = {}
local next_index = 0
non_2xx = 0

function setup(thread)
  threads[#threads + 1] = thread
end

function init(args)
  local topics = tonumber(args[1]) or 100
  local key = args[2] or ""
  for i = 0, topics - 1 do
    local head = string.format('{"type":"json","topic":"room.%d","payload":{"ingest":1,"pad":"', i)
    local body = head .. string.rep("x", math.max(0, 100 - #head - 3)) .. '"}}'
    local headers = { ["Content-Type"] = "application/json", ["X-Api-Key"] = key }
    requests[#requests + 1] = wrk.format("POST", "/api/messages", headers, body)
  end
end

function request()
  next_index = next_index % #requests + 1
  return requests[next_index]
end

function response(status, _, _)
  if status < 200 or status > 299 then
    non_2xx = non_2xx + 1
  end
end

function done(summary, latency, _)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non_2xx")
  end
  local e = summary.errors
  io.write(string.format(
    'INGEST {"requests":%d,"duration_us":%d,"bytes":%d,"non_2xx":%d,"status_errors":%d,"connect":%d,"read":%d,'
      .. '"write":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, bad, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean
  ))
end
