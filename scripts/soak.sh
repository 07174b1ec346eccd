#!/usr/bin/env bash
# Soak: a single node under paced load for MINUTES (default 10) at about half the maximum
# rate measured here, with duplicates and callback endpoints (to a receiver on loopback).
# Prints throughput, wrk's latency percentiles, callbacks received, and RSS per window (its
# peak and its value 30 s in, sampled every 2 s); growth compares the value at :30 of the first
# window after two warm-up windows with the last complete window's (goal under 5 %), and the
# peaks likewise (a peak falls at rotation, while the closed window's table and the next one,
# presized from it, are both held). Loopback only;
# stops by itself. Not part of CI.
# Usage: scripts/soak.sh [MINUTES] [CONNECTIONS]   (connections x ~1000 req/s each)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

minutes=${1:-10}
conns=${2:-48}
need wrk wrk
cargo build --release --quiet --bin verve
scratch

hook_port=$(free_port)
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

secs=$(( minutes * 60 ))
echo "soak: ${minutes} min, wrk -t2 -c$conns (paced ~1 req/ms per connection), verve=$addr"
SOAK_HOOK_PORT=$hook_port wrk -t2 -c"$conns" -d"${secs}s" --latency -s scripts/wrk/soak.lua \
  "http://$addr/api/verve/accept" >"$tmp/wrk.out" 2>&1 &
wrk_pid=$!
pids+=("$wrk_pid")

# RSS every 2 s, grouped by wall-clock minute (= window): each window's peak and its value
# 30 s in. The first two windows are warm-up (the next window is presized from the last).
while kill -0 "$wrk_pid" 2>/dev/null; do
  echo "$(date +%s) $(rss)" >>"$tmp/rss"
  sleep 2
done &
sampler=$!
pids+=("$sampler")
wait "$wrk_pid" || true

grep -q "Non-2xx" "$tmp/wrk.out" && { echo "non-2xx answers:"; cat "$tmp/wrk.out"; exit 1; }
rate=$(awk '/^Requests\/sec:/ {print $2}' "$tmp/wrk.out")
lat=$(awk '$1 == "50%" || $1 == "99%" {printf "%s %s  ", $1, $2}' "$tmp/wrk.out")
windows=$(grep -c ' unique_requests ' "$tmp/requests.log" || true)
posts=$(wc -l <"$tmp/posts" 2>/dev/null || echo 0)
printf 'throughput %.0f req/s over %d s; latency %s\n' "$rate" "$secs" "$lat"
echo "windows reported $windows; callbacks received $posts"
wait "$sampler" 2>/dev/null || true
# Complete windows only (drop the first partial minute and the last one).
awk '{ w = int($1 / 60); if (!(w in peak) || $2 > peak[w]) peak[w] = $2;
       if ($1 % 60 >= 30 && !(w in mid)) mid[w] = $2; if (!first || w < first) first = w; if (w > last) last = w }
     END { n = 0
       for (w = first + 1; w < last; w++) if (w in peak) { n++; p[n] = peak[w]; m[n] = mid[w] }
       printf "RSS per window (peak / at :30, MiB):"
       for (i = 1; i <= n; i++) printf " %.0f/%.0f", p[i] / 1024, m[i] / 1024
       printf "\n"
       if (n >= 4) {
         printf "RSS at :30 after two warm-up windows %.1f MiB -> last window %.1f MiB: growth %+.1f%% (goal < 5%%)\n", m[3] / 1024, m[n] / 1024, (m[n] - m[3]) * 100 / m[3]
         printf "peak RSS after two warm-up windows %.1f MiB -> last window %.1f MiB (%+.1f%%)\n", p[3] / 1024, p[n] / 1024, (p[n] - p[3]) * 100 / p[3] } }' "$tmp/rss"
