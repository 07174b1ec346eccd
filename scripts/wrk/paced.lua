-- wrk script for latency under faults: each connection sends about one request per
-- millisecond (delay()), every id fresh; the accept path's latency is what wrk reports.
-- id = <salt: 5 digits from the clock><thread: 2 digits><counter: 10 digits>.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  counter = 0
  salt = os.time() % 90000 + 10000
end

function delay()
  return 1
end

function request()
  counter = counter + 1
  return wrk.format("GET", string.format("/api/verve/accept?id=%d%02d%010d", salt, tid, counter))
end
