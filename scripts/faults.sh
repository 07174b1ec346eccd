#!/usr/bin/env bash
# The accept path's latency while each fault runs, beside its unloaded latency (SPEC §7, goal:
# p99 within 2x). One single-node verve (5 s windows, so callbacks fire during the run); a
# paced wrk client (16 connections, ~1 request/ms each, fresh ids) measures while, in turn:
# nothing, slowloris, idle connections, malformed requests, hostile callback targets
# (scripts/faults.py), and an unpaced flood (wrk -c256). A figure, not a test: the fault tests
# in tests/ assert the behaviour. Loopback only; each phase stops by itself. With two or more
# CPUs, verve runs on the first half and every client on the rest, so that the local attack
# generators do not take verve's CPU (a real attacker's machines are elsewhere); the generators
# run at nice 19 and the measuring client in the real-time class, so that they do not delay it
# either.
# Usage: scripts/faults.sh [SECONDS_PER_PHASE]   (default 15)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

secs=${1:-15}
need wrk wrk
need python3 python3
ulimit -n "$(ulimit -Hn)"
cargo build --release --quiet --bin verve
scratch

cpus=$(nproc)
server_cpus=() client_cpus=()
if [ "$cpus" -ge 2 ]; then
  half=$((cpus / 2))
  server_cpus=(taskset -c "0-$((half - 1))")
  client_cpus=(taskset -c "$half-$((cpus - 1))")
fi
# The measuring client preempts the generators sharing its CPUs (real-time class when allowed):
# otherwise their CPU use shows up as its own latency, not verve's.
measure_prio=()
chrt -f 10 true 2>/dev/null && measure_prio=(chrt -f 10)

hook_port=$(free_port)
start_server pid addr "$tmp/verve.out" "${server_cpus[@]}" target/release/verve --listen 127.0.0.1:0 \
  --log-file "$tmp/requests.log" --window-secs 5 --callback-allow 127.0.0.0/8 \
  --callback-timeout-ms 2000 --header-read-timeout-ms 2000
pids+=("$pid")
host=${addr%:*} port=${addr##*:}

ms() { # wrk latency (850.00us, 1.20ms, 1.02s) -> milliseconds
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'
}
measure() { # measure NAME: paced wrk for $secs; appends a row to the table
  "${client_cpus[@]}" "${measure_prio[@]}" wrk -t1 -c16 -d"${secs}s" --latency -s scripts/wrk/paced.lua "http://$addr/api/verve/accept" >"$tmp/$1.wrk"
  local rate p50 p99 errors
  rate=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$tmp/$1.wrk")
  p50=$(ms "$(awk '$1 == "50%" {print $2}' "$tmp/$1.wrk")")
  p99=$(ms "$(awk '$1 == "99%" {print $2}' "$tmp/$1.wrk")")
  errors=$(awk '/Non-2xx|Socket errors/ {$1 = $1; printf "%s; ", $0}' "$tmp/$1.wrk")
  [ "$1" = unloaded ] && base=$p99
  printf '%-10s %8s req/s  p50 %6s ms  p99 %6s ms  %5sx unloaded  %s\n' "$1" "$rate" "$p50" "$p99" \
    "$(awk -v a="$p99" -v b="$base" 'BEGIN {printf "%.2f", a / b}')" "$errors" | tee -a "$tmp/table"
}

echo "verve=$addr on ${server_cpus[*]:-all CPUs}; clients on ${client_cpus[*]:-the same}; $secs s per phase"
echo "paced client: ${measure_prio[*]:-} wrk -t1 -c16, ~1 request/ms per connection, fresh ids"
measure unloaded
for fault in slowloris idle malformed callbacks; do
  "${client_cpus[@]}" nice -n 19 python3 scripts/faults.py "$fault" "$host" "$port" "$secs" "$hook_port" >"$tmp/$fault.out" 2>&1 &
  fault_pid=$!
  sleep 1 # let the fault build up
  measure "$fault"
  wait "$fault_pid" || true
  sed 's/^/           /' "$tmp/$fault.out"
done
"${client_cpus[@]}" nice -n 19 wrk -t1 -c256 -d"$((secs + 1))s" -s scripts/wrk/unique.lua "http://$addr/api/verve/accept" >"$tmp/flooder.wrk" &
flood_pid=$!
sleep 1
measure flood
wait "$flood_pid" || true
echo "           flood: $(awk '/^Requests\/sec:/ {printf "%.0f req/s unpaced beside the paced client", $2}' "$tmp/flooder.wrk")"
measure after

curl -sf "http://$addr/healthz" >/dev/null && echo "verve still healthy; $(grep -c ' unique_requests ' "$tmp/requests.log") windows reported"
metrics=$(curl -sf "http://$addr/metrics")
echo "$metrics" | grep -E '^verve_(callback_attempts_total|callbacks_dropped_total|requests_total)' || true
