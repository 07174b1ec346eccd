-- wrk script: every request carries an id never sent before in this run or a recent one.
-- id = <salt: 5 digits from the clock><thread: 2 digits><counter: 10 digits>.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  counter = 0
  salt = os.time() % 90000 + 10000
  -- Stop sending ids after LIMIT requests per thread (the memory benchmark sends an exact
  -- number of ids); later requests go to /healthz and count nothing.
  limit = tonumber(args[1] or "0")
end

function request()
  counter = counter + 1
  if limit > 0 and counter > limit then
    return wrk.format("GET", "/healthz")
  end
  return wrk.format("GET", string.format("/api/verve/accept?id=%d%02d%010d", salt, tid, counter))
end
