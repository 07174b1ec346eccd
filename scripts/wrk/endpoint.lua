-- wrk script: every request carries a fresh id (as unique.lua) and one of 16 callback
-- endpoints, percent-encoded as a client must (encodeURIComponent). The endpoints are on
-- loopback, which the SSRF guard refuses without --callback-allow: each window's 16
-- deliveries are one `error=blocked` line apiece and nothing is sent.
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
  return wrk.format("GET", string.format(
    "/api/verve/accept?id=%d%02d%010d&endpoint=https%%3A%%2F%%2F127.0.0.1%%3A9%%2Fhooks%%2FT0K3N%%2F%d%%3Fsource%%3Dverve",
    salt, tid, counter, counter % 16))
end
