#!/usr/bin/env bash
# Peak memory of verve holding one window of N distinct ids (default 1 000 000): wrk sends
# exactly N fresh ids (then only /healthz), and the script reads verve's peak RSS (VmHWM)
# once /metrics shows all N answered in the current window. Targets (SPEC §8): exact, single
# node, 10^6 ids <= 64 MiB; approx, 10^7 ids through HTTP <= 16 MiB.
#   scripts/bench-memory.sh [IDS] [exact|approx] [single|fleet]
# With `fleet` the instance runs on its own redis-server, and the script also prints the
# window's Redis memory: MEMORY USAGE of its keys (the id set, or the HyperLogLog) and the
# growth of used_memory. In approx mode the estimate is printed beside the truth.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ids=${1:-1000000}
mode=${2:-exact}
topology=${3:-single}
threads=2
need wrk wrk
cargo build --release --quiet --bin verve
scratch

fleet_args=()
if [ "$topology" = fleet ]; then
  need redis-server redis-server
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$tmp/redis.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
  fleet_args=(--redis-url "redis://127.0.0.1:$redis_port")
fi
redis_used() { redis-cli -p "$redis_port" info memory | awk -F: '$1 == "used_memory" {print $2+0}'; }
# A long window, so all ids land in one (the script checks that they did).
start_server pid addr "$tmp/verve.out" target/release/verve \
  --listen 127.0.0.1:0 --log-file "$tmp/requests.log" --window-secs 3600 --count "$mode" \
  "${fleet_args[@]}"
pids+=("$pid")
rss() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$pid/status"; }
metric() { curl -s "http://$addr/metrics" | awk -v k="$1" '$1 == k {print $2}'; }
# Exact mode counts the ids the window holds; approx mode the requests answered ok (the
# window's count is an estimate).
answered() {
  if [ "$mode" = approx ]; then metric 'verve_requests_total{status="200"}'; else metric verve_window_ids; fi
}
echo "idle: VmRSS $(rss VmRSS) KiB"
[ "$topology" = fleet ] && used0=$(redis_used)

wrk -t$threads -c64 -d$((ids / 20000 + 30))s -s scripts/wrk/unique.lua "http://$addr/api/verve/accept" -- $((ids / threads)) >"$tmp/wrk.out" &
wrk_pid=$!
pids+=("$wrk_pid")
start=$(date +%s.%N)
prev=-1
for _ in $(seq 1 600); do
  n=$(answered)
  [ "${n:-0}" -ge "$ids" ] && break
  # wrk may drop a request or two when it opens connections: once the count settles just
  # short of the target, top it up with the missing ids.
  if [ "${n:-0}" -eq "$prev" ] && [ "$n" -ge $((ids - 256)) ]; then
    for k in $(seq 1 $((ids - n))); do
      curl -sf "http://$addr/api/verve/accept?id=-$k" >/dev/null
    done
  fi
  prev=${n:-0}
  sleep 0.2
done
kill "$wrk_pid" 2>/dev/null || true
wait "$wrk_pid" 2>/dev/null || true
elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e-s}')
n=$(answered)
[ "$n" -eq "$ids" ] || { echo "window holds $n ids, expected $ids (window boundary crossed?)" >&2; exit 1; }
hwm=$(rss VmHWM)
target=64
[ "$mode" = approx ] && target=16
printf '%s %s: ids in window: %d (sent in %ss)\npeak RSS (VmHWM): %d KiB = %.1f MiB (target <= %s MiB)\nVmRSS now: %d KiB\n' \
  "$mode" "$topology" "$n" "$elapsed" "$hwm" "$(awk -v k="$hwm" 'BEGIN {print k/1024}')" "$target" "$(rss VmRSS)"
if [ "$mode" = approx ]; then
  estimate=$(metric verve_window_ids)
  printf 'estimate %d of %d: error %+.3f %%\n' "$estimate" "$ids" "$(awk -v e="$estimate" -v n="$ids" 'BEGIN {print (e-n)*100/n}')"
fi
if [ "$topology" = fleet ]; then
  sleep 2 # approx mode merges its sketch every second
  window=$(( $(date +%s) / 3600 * 3600 ))
  if [ "$mode" = approx ]; then keys=("verve:{$window}:hll"); else keys=("verve:{$window:0}:ids"); fi
  for k in "${keys[@]}"; do
    printf 'redis MEMORY USAGE %s: %s bytes\n' "$k" "$(redis-cli -p "$redis_port" memory usage "$k" samples 0)"
  done
  printf 'redis used_memory grew by %d bytes (%.1f bytes per id)\n' "$(( $(redis_used) - used0 ))" \
    "$(awk -v d="$(( $(redis_used) - used0 ))" -v n="$ids" 'BEGIN {print d/n}')"
fi
