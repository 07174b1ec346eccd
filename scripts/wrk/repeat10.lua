-- wrk script: every id is sent 10 times, the repeats spread out as in real traffic: each
-- thread cycles 10 times through a block of 5000 fresh ids, then moves to the next block.
-- (Ten copies of one id sent at the same instant would all wait on one shared SADD.)
-- id = <salt: 5 digits from the clock><thread: 2 digits><index: 10 digits>.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  counter = 0
  block = 5000
  salt = os.time() % 90000 + 10000
end

function request()
  local n = counter
  counter = counter + 1
  local index = math.floor(n / (10 * block)) * block + n % block
  return wrk.format("GET", string.format("/api/verve/accept?id=%d%02d%010d", salt, tid, index))
end
