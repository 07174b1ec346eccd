-- wrk script: every id is sent 10 times in a row, then never again in this run.
-- id = <salt: 5 digits from the clock><thread: 2 digits><counter / 10: 10 digits>.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  counter = 0
  salt = os.time() % 90000 + 10000
end

function request()
  counter = counter + 1
  return wrk.format("GET", string.format("/api/verve/accept?id=%d%02d%010d", salt, tid, math.floor(counter / 10)))
end
