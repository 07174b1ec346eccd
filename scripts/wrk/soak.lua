-- Soak traffic: a paced request stream (delay() holds each connection to about one request per
-- millisecond), ids drawn from a pool that moves on over time so every window sees fresh ids
-- and repeats, and one request in 500 carrying one of 20 callback endpoints on loopback.
-- The receiver's port comes from the environment (SOAK_HOOK_PORT).
local hook_port = os.getenv("SOAK_HOOK_PORT") or "9"
local counter = 0
local thread_seed = 0

function setup(thread)
  thread_seed = thread_seed + 1
  thread:set("seed", thread_seed)
end

function init(args)
  math.randomseed(os.time() * 1000 + (seed or 0))
end

function delay()
  return 1
end

function request()
  counter = counter + 1
  -- The pool's base advances by 20 000 ids per second; repeats fall within the last 50 000.
  local base = math.floor(os.time() * 20000)
  local id = base - math.random(0, 50000)
  local path = "/api/verve/accept?id=" .. id
  if counter % 500 == 0 then
    local hook = "http%3A%2F%2F127.0.0.1%3A" .. hook_port .. "%2Fhook" .. math.random(1, 20)
    path = path .. "&endpoint=" .. hook
  end
  return wrk.format("GET", path)
end
