#!/usr/bin/env bash
# Throughput of verve against a bare hyper server answering `ok`, measured alternately in the
# same run with the same release profile (SPEC §8):
#   single        single node, every id fresh                       target >= 0.90 x bare
#   fleet-unique  fleet mode on a local redis-server, every id fresh target >= 0.60 x bare
#   fleet-repeat  fleet mode, every id sent 10 times                 target >= 0.85 x bare
# Usage: scripts/bench.sh [SECONDS_PER_RUN] [ROUNDS] [SCENARIO...]   (defaults: 10 3, all)
# Every run is paired with a bare run just before it; prints each run's rate, p99 (wrk's,
# indicative) and ratio, the median ratio per scenario, and for the fleet scenarios the Redis
# commands per request from INFO commandstats. BENCH_CONNECTIONS (64) sets wrk's connections.
# The fleet instance runs as the README says to run against one Redis server, with
# --redis-shards 1; BENCH_FLEET_ARGS replaces its extra flags (BENCH_FLEET_ARGS="" runs the
# default 16 shards, the layout meant for a cluster). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

secs=${1:-10}
rounds=${2:-3}
shift $(( $# < 2 ? $# : 2 ))
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(single fleet-unique fleet-repeat)
conns=${BENCH_CONNECTIONS:-64}
need wrk wrk
need redis-server redis-server

cargo build --release --quiet --bin verve --example bare
scratch

start_server bare_pid bare_addr "$tmp/bare.out" target/release/examples/bare 127.0.0.1:0
pids+=("$bare_pid")
start_server single_pid single_addr "$tmp/single.out" target/release/verve \
  --listen 127.0.0.1:0 --log-file "$tmp/single.log"
pids+=("$single_pid")
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$tmp/redis.out" 2>&1 &
pids+=("$!")
for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
start_server fleet_pid fleet_addr "$tmp/fleet.out" target/release/verve \
  --listen 127.0.0.1:0 --log-file "$tmp/fleet.log" --redis-url "redis://127.0.0.1:$redis_port" \
  ${BENCH_FLEET_ARGS---redis-shards 1}
pids+=("$fleet_pid")

run() { # run ADDR SCRIPT -> prints "rate p99 requests"
  wrk -t2 -c"$conns" -d"${secs}s" --latency -s "scripts/wrk/$2.lua" "http://$1/api/verve/accept" >"$tmp/wrk.out"
  grep -q "Non-2xx" "$tmp/wrk.out" && { echo "non-2xx answers:" >&2; cat "$tmp/wrk.out" >&2; exit 1; }
  local rate p99 n
  rate=$(awk '/^Requests\/sec:/ {print $2}' "$tmp/wrk.out")
  p99=$(awk '$1 == "99%" {print $2}' "$tmp/wrk.out")
  n=$(awk '/requests in/ {print $1}' "$tmp/wrk.out")
  echo "$rate $p99 $n"
}
redis_calls() { redis-cli -p "$redis_port" info commandstats | awk -F'[:=,]' '/^cmdstat_/ {n += $3} END {print n+0}'; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo "wrk -t2 -c$conns -d${secs}s, $rounds rounds, each run paired with a bare run; bare=$bare_addr single=$single_addr fleet=$fleet_addr (${BENCH_FLEET_ARGS---redis-shards 1}) redis=:$redis_port"
: >"$tmp/bare.rates"
for s in "${scenarios[@]}"; do : >"$tmp/$s.rates"; : >"$tmp/$s.ratios"; : >"$tmp/$s.cpr"; done
for r in $(seq 1 "$rounds"); do
  for s in "${scenarios[@]}"; do
    case $s in
      single) addr=$single_addr script=unique ;;
      fleet-unique) addr=$fleet_addr script=unique ;;
      fleet-repeat) addr=$fleet_addr script=repeat10 ;;
      *) echo "unknown scenario $s" >&2; exit 2 ;;
    esac
    # Each run is paired with a bare run just before it: this VM's speed drifts by 10-20 %
    # within minutes, and a ratio of neighbours cancels most of that drift.
    read -r bare p99 _ <<<"$(run "$bare_addr" unique)"
    echo "$bare" >>"$tmp/bare.rates"
    printf 'round %d  %-13s %9.0f req/s  p99 %s\n' "$r" bare "$bare" "$p99"
    before=$(redis_calls)
    read -r rate p99 n <<<"$(run "$addr" "$script")"
    echo "$rate" >>"$tmp/$s.rates"
    awk -v v="$rate" -v b="$bare" 'BEGIN {printf "%.4f\n", v/b}' >>"$tmp/$s.ratios"
    extra=""
    if [ "$s" != single ]; then
      cpr=$(awk -v c="$(( $(redis_calls) - before ))" -v n="$n" 'BEGIN {printf "%.3f", c/n}')
      echo "$cpr" >>"$tmp/$s.cpr"
      extra="  redis commands/request $cpr"
    fi
    printf 'round %d  %-13s %9.0f req/s  p99 %s  ratio %s%s\n' "$r" "$s" "$rate" "$p99" \
      "$(tail -n1 "$tmp/$s.ratios")" "$extra"
  done
done
printf '\nmedian bare %.0f req/s\n' "$(median <"$tmp/bare.rates")"
for s in "${scenarios[@]}"; do
  target=$(case $s in single) echo 0.90 ;; fleet-unique) echo 0.60 ;; fleet-repeat) echo 0.85 ;; esac)
  cpr=""
  [ -s "$tmp/$s.cpr" ] && cpr=", redis commands/request $(median <"$tmp/$s.cpr")"
  printf '%-13s %9.0f req/s  median ratio %.3f (target >= %s)%s\n' "$s" \
    "$(median <"$tmp/$s.rates")" "$(median <"$tmp/$s.ratios")" "$target" "$cpr"
done
