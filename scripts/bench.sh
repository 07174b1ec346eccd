#!/usr/bin/env bash
# Throughput of verve against a bare hyper server answering `ok`, measured alternately in the
# same run with the same release profile (SPEC §8). Every request carries a fresh id.
#   scripts/bench.sh [SECONDS_PER_RUN] [ROUNDS]       (defaults: 10 s, 3 rounds)
# Prints each run's rate and the ratio of the medians. Loopback only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

secs=${1:-10}
rounds=${2:-3}
conns=${BENCH_CONNECTIONS:-64}
need wrk wrk

cargo build --release --quiet --bin verve --example bare
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

start_server bare_pid bare_addr "$tmp/bare.out" target/release/examples/bare 127.0.0.1:0
pids+=("$bare_pid")
start_server verve_pid verve_addr "$tmp/verve.out" target/release/verve \
  --listen 127.0.0.1:0 --log-file "$tmp/requests.log"
pids+=("$verve_pid")

run() { # run ADDR -> prints "rate p99"
  wrk -t2 -c"$conns" -d"${secs}s" --latency -s scripts/wrk/unique.lua "http://$1/api/verve/accept" >"$tmp/wrk.out"
  local rate p99
  rate=$(awk '/^Requests\/sec:/ {print $2}' "$tmp/wrk.out")
  p99=$(awk '$1 == "99%" {print $2}' "$tmp/wrk.out")
  grep -q "Non-2xx" "$tmp/wrk.out" && { echo "non-2xx answers:" >&2; cat "$tmp/wrk.out" >&2; exit 1; }
  echo "$rate $p99"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo "wrk -t2 -c$conns -d${secs}s, $rounds rounds, unique ids; bare=$bare_addr verve=$verve_addr"
: >"$tmp/bare.rates"; : >"$tmp/verve.rates"
for r in $(seq 1 "$rounds"); do
  read -r b bp <<<"$(run "$bare_addr")"
  read -r v vp <<<"$(run "$verve_addr")"
  echo "$b" >>"$tmp/bare.rates"; echo "$v" >>"$tmp/verve.rates"
  printf 'round %d: bare %10.0f req/s (p99 %s)   verve %10.0f req/s (p99 %s)\n' "$r" "$b" "$bp" "$v" "$vp"
done
bare_med=$(median <"$tmp/bare.rates")
verve_med=$(median <"$tmp/verve.rates")
ratio=$(awk -v v="$verve_med" -v b="$bare_med" 'BEGIN {printf "%.3f", v/b}')
printf 'median: bare %.0f req/s, verve %.0f req/s, ratio %s (target >= 0.90)\n' "$bare_med" "$verve_med" "$ratio"
grep -o 'unique_requests=[0-9]*' "$tmp/requests.log" | tail -n 3 | sed 's/^/verve window: /' || true
