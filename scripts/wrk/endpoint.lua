-- wrk script: the fresh ids of unique.lua, each with one of 16 callback endpoints,
-- percent-encoded as a client must (encodeURIComponent). The endpoints are on loopback,
-- which the SSRF guard refuses without --callback-allow: each window's 16 deliveries are one
-- `error=blocked` line apiece and nothing is sent. Run from the repository's top directory.
dofile("scripts/wrk/unique.lua")

function request()
  counter = counter + 1
  return wrk.format("GET", string.format(
    "/api/verve/accept?id=%d%02d%010d&endpoint=https%%3A%%2F%%2F127.0.0.1%%3A9%%2Fhooks%%2FT0K3N%%2F%d%%3Fsource%%3Dverve",
    salt, tid, counter, counter % 16))
end
