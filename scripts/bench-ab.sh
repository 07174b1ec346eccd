#!/usr/bin/env bash
# A/B of two verve builds on the single node's request path (exact mode, every id fresh):
# alternating wrk runs against both, each run's rate and CPU time per request (µs, from
# /proc/<pid>/stat). For "did this change make the request path slower": the pairs cancel
# most of this VM's drift, which separate bench.sh runs do not.
#   scripts/bench-ab.sh OLD_BINARY [NEW_BINARY] [VERVE_FLAGS...]
#   (NEW_BINARY defaults to target/release/verve; SECS=6 per run, ROUNDS=6)
# AB_FLEET=1 runs both in fleet mode on one local redis-server (each its own prefix,
# --redis-shards 1) and adds Redis's CPU per request; AB_SCRIPT picks the wrk script
# (unique, or repeat10).
# e.g. git show OLD:... build into /tmp/verve-old, then scripts/bench-ab.sh /tmp/verve-old
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

old=${1:?usage: scripts/bench-ab.sh OLD_BINARY [NEW_BINARY] [VERVE_FLAGS...]}
new=${2:-target/release/verve}
shift $(( $# < 2 ? $# : 2 ))
need wrk wrk
[ "$new" != target/release/verve ] || cargo build --release --quiet --bin verve
scratch
a_flags=() b_flags=() redis_pid=""
if [ "${AB_FLEET:-0}" = 1 ]; then
  need redis-server redis-server
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$tmp/redis.out" 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
  for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
  a_flags=(--redis-url "redis://127.0.0.1:$redis_port" --redis-shards 1 --redis-prefix ab-old)
  b_flags=(--redis-url "redis://127.0.0.1:$redis_port" --redis-shards 1 --redis-prefix ab-new)
fi
start_server a_pid a_addr "$tmp/a.out" "$old" --listen 127.0.0.1:0 --log-file "$tmp/a.log" "${a_flags[@]}" "$@"
pids+=("$a_pid")
start_server b_pid b_addr "$tmp/b.out" "$new" --listen 127.0.0.1:0 --log-file "$tmp/b.log" "${b_flags[@]}" "$@"
pids+=("$b_pid")
ticks() { if [ -n "$1" ]; then awk '{print $14 + $15}' "/proc/$1/stat"; else echo 0; fi; }
tick_us=$(awk -v hz="$(getconf CLK_TCK)" 'BEGIN {print 1000000 / hz}')
run() { # run ADDR PID -> "rate cpu_us_per_request redis_cpu_us_per_request"
  local t0 t1 r0 r1 n rate
  t0=$(ticks "$2"); r0=$(ticks "$redis_pid")
  wrk -t2 -c64 -d"${SECS:-6}s" -s "scripts/wrk/${AB_SCRIPT:-unique}.lua" "http://$1/api/verve/accept" >"$tmp/wrk.out"
  t1=$(ticks "$2"); r1=$(ticks "$redis_pid")
  n=$(awk '/requests in/ {print $1}' "$tmp/wrk.out")
  rate=$(awk '/^Requests\/sec:/ {print $2}' "$tmp/wrk.out")
  awk -v t=$((t1 - t0)) -v r2=$((r1 - r0)) -v n="$n" -v r="$rate" -v us="$tick_us" \
    'BEGIN {printf "%.0f %.3f %.3f\n", r, t * us / n, r2 * us / n}'
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
: >"$tmp/old"; : >"$tmp/new"
for r in $(seq 1 "${ROUNDS:-6}"); do
  read -r ra ca xa <<<"$(run "$a_addr" "$a_pid")"
  read -r rb cb xb <<<"$(run "$b_addr" "$b_pid")"
  echo "$ra $ca $xa" >>"$tmp/old"; echo "$rb $cb $xb" >>"$tmp/new"
  printf 'round %d  old %7.0f req/s %s us/req (redis %s)   new %7.0f req/s %s us/req (redis %s)\n' \
    "$r" "$ra" "$ca" "$xa" "$rb" "$cb" "$xb"
done
col() { awk -v c="$2" '{print $c}' "$tmp/$1" | median; }
printf 'median  old %7.0f req/s %s us/req (redis %s)   new %7.0f req/s %s us/req (redis %s)\n' \
  "$(col old 1)" "$(col old 2)" "$(col old 3)" "$(col new 1)" "$(col new 2)" "$(col new 3)"
