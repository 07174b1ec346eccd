#!/usr/bin/env bash
# Peak memory of a single node holding one window of N distinct ids (default 1 000 000):
# wrk sends exactly N fresh ids (then only /healthz), and the script reads verve's peak RSS
# (VmHWM) once /metrics shows all N in the current window. Target: <= 64 MiB (SPEC §8).
#   scripts/bench-memory.sh [IDS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ids=${1:-1000000}
threads=2
need wrk wrk
cargo build --release --quiet --bin verve
scratch

# A long window, so all ids land in one (the script checks that they did).
start_server pid addr "$tmp/verve.out" target/release/verve \
  --listen 127.0.0.1:0 --log-file "$tmp/requests.log" --window-secs 3600
pids+=("$pid")
rss() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$pid/status"; }
metric() { curl -s "http://$addr/metrics" | awk -v k="$1" '$1 == k {print $2}'; }
echo "idle: VmRSS $(rss VmRSS) KiB"

wrk -t$threads -c64 -d20s -s scripts/wrk/unique.lua "http://$addr/api/verve/accept" -- $((ids / threads)) >"$tmp/wrk.out" &
wrk_pid=$!
pids+=("$wrk_pid")
start=$(date +%s.%N)
prev=-1
for _ in $(seq 1 600); do
  n=$(metric verve_window_ids)
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
n=$(metric verve_window_ids)
[ "$n" -eq "$ids" ] || { echo "window holds $n ids, expected $ids (window boundary crossed?)" >&2; exit 1; }
hwm=$(rss VmHWM)
printf 'ids in window: %d (sent in %ss)\npeak RSS (VmHWM): %d KiB = %.1f MiB (target <= 64 MiB)\nVmRSS now: %d KiB\n' \
  "$n" "$elapsed" "$hwm" "$(awk -v k="$hwm" 'BEGIN {print k/1024}')" "$(rss VmRSS)"
