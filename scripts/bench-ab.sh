#!/usr/bin/env bash
# A/B of two verve builds on the single node's request path (exact mode, every id fresh):
# alternating wrk runs against both, each run's rate and CPU time per request (µs, from
# /proc/<pid>/stat). For "did this change make the request path slower": the pairs cancel
# most of this VM's drift, which separate bench.sh runs do not.
#   scripts/bench-ab.sh OLD_BINARY [NEW_BINARY] [VERVE_FLAGS...]
#   (NEW_BINARY defaults to target/release/verve; SECS=6 per run, ROUNDS=6)
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
start_server a_pid a_addr "$tmp/a.out" "$old" --listen 127.0.0.1:0 --log-file "$tmp/a.log" "$@"
pids+=("$a_pid")
start_server b_pid b_addr "$tmp/b.out" "$new" --listen 127.0.0.1:0 --log-file "$tmp/b.log" "$@"
pids+=("$b_pid")
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick_us=$(awk -v hz="$(getconf CLK_TCK)" 'BEGIN {print 1000000 / hz}')
run() { # run ADDR PID -> "rate cpu_us_per_request"
  local t0 t1 n rate
  t0=$(ticks "$2")
  wrk -t2 -c64 -d"${SECS:-6}s" -s scripts/wrk/unique.lua "http://$1/api/verve/accept" >"$tmp/wrk.out"
  t1=$(ticks "$2")
  n=$(awk '/requests in/ {print $1}' "$tmp/wrk.out")
  rate=$(awk '/^Requests\/sec:/ {print $2}' "$tmp/wrk.out")
  awk -v t=$((t1 - t0)) -v n="$n" -v r="$rate" -v us="$tick_us" 'BEGIN {printf "%.0f %.3f\n", r, t * us / n}'
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
: >"$tmp/old"; : >"$tmp/new"
for r in $(seq 1 "${ROUNDS:-6}"); do
  read -r ra ca <<<"$(run "$a_addr" "$a_pid")"
  read -r rb cb <<<"$(run "$b_addr" "$b_pid")"
  echo "$ra $ca" >>"$tmp/old"; echo "$rb $cb" >>"$tmp/new"
  printf 'round %d  old %7.0f req/s %s us/req   new %7.0f req/s %s us/req\n' "$r" "$ra" "$ca" "$rb" "$cb"
done
printf 'median  old %7.0f req/s %s us/req   new %7.0f req/s %s us/req\n' \
  "$(awk '{print $1}' "$tmp/old" | median)" "$(awk '{print $2}' "$tmp/old" | median)" \
  "$(awk '{print $1}' "$tmp/new" | median)" "$(awk '{print $2}' "$tmp/new" | median)"
