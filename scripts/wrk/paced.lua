-- wrk script for latency under faults: the fresh ids of unique.lua, each connection paced to
-- about one request per millisecond (delay()). Run from the repository's top directory.
dofile("scripts/wrk/unique.lua")

function delay()
  return 1
end
