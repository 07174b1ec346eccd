#!/usr/bin/env bash
# Soak: a single node under paced load for MINUTES (default 10) at about half the maximum
# rate measured here, with duplicates and callback endpoints (to a receiver on loopback).
# Prints throughput, wrk's latency percentiles, callbacks received, and RSS sampled 30 s into
# a window after one warm-up window and again 30 s into the last full window (goal: growth
# under 5 %). Loopback only; stops by itself. Not part of CI.
# Usage: scripts/soak.sh [MINUTES] [CONNECTIONS]   (connections x ~1000 req/s each)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

minutes=${1:-10}
conns=${2:-48}
need wrk wrk
cargo build --release --quiet --bin verve
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

hook_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 - "$hook_port" "$tmp/posts" <<'PY' &
import http.server, sys
port, out = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(out, "a") as f: f.write(self.path + "\n")
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PY
pids+=("$!")
start_server pid addr "$tmp/verve.out" target/release/verve --listen 127.0.0.1:0 \
  --log-file "$tmp/requests.log" --callback-allow 127.0.0.0/8
pids+=("$pid")

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$pid/status"; }
# Seconds until 30 s into the next minute.
until_mid() { local s; s=$(date +%S); s=${s#0}; echo $(( (90 - s) % 60 )); }

secs=$(( minutes * 60 ))
echo "soak: ${minutes} min, wrk -t2 -c$conns (paced ~1 req/ms per connection), verve=$addr"
SOAK_HOOK_PORT=$hook_port wrk -t2 -c"$conns" -d"${secs}s" --latency -s scripts/wrk/soak.lua \
  "http://$addr/api/verve/accept" >"$tmp/wrk.out" 2>&1 &
wrk_pid=$!
pids+=("$wrk_pid")
started=$(date +%s)

# After one warm-up window: 30 s into the second full minute.
sleep $(( $(until_mid) + 60 ))
first=$(rss); first_at=$(( $(date +%s) - started ))
last=$first; last_at=$first_at
while :; do
  wait_s=$(until_mid); [ "$wait_s" -eq 0 ] && wait_s=60
  [ $(( $(date +%s) + wait_s - started )) -lt "$secs" ] || break
  sleep "$wait_s"
  last=$(rss); last_at=$(( $(date +%s) - started ))
  echo "  t=${last_at}s RSS $(( last / 1024 )) MiB"
done
wait "$wrk_pid" || true

grep -q "Non-2xx" "$tmp/wrk.out" && { echo "non-2xx answers:"; cat "$tmp/wrk.out"; exit 1; }
rate=$(awk '/^Requests\/sec:/ {print $2}' "$tmp/wrk.out")
lat=$(awk '$1 == "50%" || $1 == "99%" {printf "%s %s  ", $1, $2}' "$tmp/wrk.out")
windows=$(grep -c ' unique_requests ' "$tmp/requests.log" || true)
posts=$(wc -l <"$tmp/posts" 2>/dev/null || echo 0)
printf 'throughput %.0f req/s over %d s; latency %s\n' "$rate" "$secs" "$lat"
echo "windows reported $windows; callbacks received $posts"
awk -v a="$first" -v b="$last" -v ta="$first_at" -v tb="$last_at" \
  'BEGIN {printf "RSS %.1f MiB at t=%ds -> %.1f MiB at t=%ds: growth %+.1f%% (goal < 5%%)\n", a/1024, ta, b/1024, tb, (b-a)*100/a}'
