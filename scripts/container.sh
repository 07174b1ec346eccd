#!/usr/bin/env bash
# The container image, built and tested with podman (no base image is pulled: FROM scratch).
#   scripts/container.sh build   static binary (with the kafka feature) + context in
#                                .cache/container, image verve:latest
#   scripts/container.sh test    builds, runs the image (runc, host network, loopback only),
#                                checks /healthz, /readyz, accepts, a callback by host name and
#                                the count-log line in the mounted volume, then stops it with
#                                SIGTERM and expects exit 0; then streams a window from the image
#                                to a real Kafka broker over SASL_SSL with zstd and reads it back
#                                (tests/image.rs). Prints image size and time to ready.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

image=verve:latest
target=x86_64-unknown-linux-gnu
context=.cache/container
# podman's default runtime (crun) fails in these VMs; runc with explicit ulimits works.
podman_run=(podman --runtime /usr/sbin/runc run --network host
  --ulimit nofile=4096:4096 --ulimit nproc=4096:4096)

build() {
  need podman podman
  need runc runc
  need curl curl
  [ -f /etc/ssl/certs/ca-certificates.crt ] || need update-ca-certificates ca-certificates
  need make make
  need cc gcc
  need perl perl
  # The kafka feature links librdkafka, OpenSSL (vendored) and zstd statically too.
  RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --quiet --bin verve \
    --features kafka --target "$target"
  rm -rf "$context"
  mkdir -p "$context/data"
  cp "target/$target/release/verve" "$context/verve"
  cp /etc/ssl/certs/ca-certificates.crt "$context/"
  # The image's creation time is the last commit's, so the same tree builds the same image.
  podman build --quiet --timestamp "$(git log -1 --format=%ct 2>/dev/null || echo 0)" \
    -f Containerfile -t "$image" "$context" >/dev/null
  echo "built $image: $(podman image inspect "$image" --format '{{.Size}}' | awk '{printf "%.1f MiB", $1/1048576}')"
}

run_test() {
  build
  local tmp name port hook_port started ready_ms
  tmp=$(mktemp -d)
  name=verve-test-$$
  port=$(free_port)
  hook_port=$(free_port)
  chmod 0777 "$tmp"
  # A callback receiver on loopback that records each POST body.
  python3 - "$hook_port" "$tmp/hook.json" <<'PY' &
import http.server, sys
port, out = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(out, "ab") as f: f.write(body + b"\n")
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
PY
  local hook_pid=$!
  trap 'podman rm -f '"$name"' >/dev/null 2>&1 || true; kill '"$hook_pid"' 2>/dev/null || true; rm -rf '"$tmp" EXIT

  started=$(date +%s%N)
  "${podman_run[@]}" -d --name "$name" -v "$tmp:/data" \
    -e VERVE_LISTEN="127.0.0.1:$port" -e VERVE_WINDOW_SECS=2 -e VERVE_GRACE_MS=200 \
    -e VERVE_CALLBACK_ALLOW=127.0.0.0/8 "$image" >/dev/null
  for _ in $(seq 1 200); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.025
  done
  ready_ms=$(( ($(date +%s%N) - started) / 1000000 ))
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || { podman logs "$name"; echo "not ready" >&2; exit 1; }
  [ "$(curl -fs "http://127.0.0.1:$port/healthz")" = ok ] || { echo "/healthz did not answer ok" >&2; exit 1; }
  echo "podman run to ready: ${ready_ms} ms"

  # Five distinct ids (and repeats) in one window, one of them with a callback by host name.
  local now=$(date +%s%3N)
  sleep "$(awk -v n="$now" 'BEGIN {printf "%.3f", (2000 - n % 2000 + 100) / 1000}')"
  local hook="http%3A%2F%2Flocalhost%3A${hook_port}%2Fhook"
  [ "$(curl -fs "http://127.0.0.1:$port/api/verve/accept?id=1&endpoint=$hook")" = ok ]
  for id in 2 3 4 5 5 1 -7; do
    [ "$(curl -fs "http://127.0.0.1:$port/api/verve/accept?id=$id")" = ok ]
  done
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/api/verve/accept?id=x")" = 400 ]

  local line=""
  for _ in $(seq 1 100); do
    line=$(grep -m1 'unique_requests=6 scope=local' "$tmp/requests.log" 2>/dev/null || true)
    [ -n "$line" ] && [ -s "$tmp/hook.json" ] && break
    sleep 0.1
  done
  [ -n "$line" ] || { echo "no count line with 6 ids in the volume:" >&2; cat "$tmp/requests.log" >&2 || true; exit 1; }
  echo "count log in the volume: $line"
  grep -q '"unique_requests":6' "$tmp/hook.json" || { echo "callback not received:" >&2; cat "$tmp/hook.json" >&2 || true; podman logs "$name" >&2; exit 1; }
  echo "callback received: $(head -n1 "$tmp/hook.json")"

  podman stop -t 10 "$name" >/dev/null
  local code
  code=$(podman inspect "$name" --format '{{.State.ExitCode}}')
  [ "$code" = 0 ] || { echo "exit code $code after SIGTERM" >&2; podman logs "$name" >&2; exit 1; }
  grep -q 'partial=true' "$tmp/requests.log" || { echo "no partial line at shutdown" >&2; exit 1; }
  echo "stopped with SIGTERM: exit 0, open window logged partial"

  bash scripts/kafka-libs.sh
  VERVE_IMAGE="$image" cargo test --quiet --features kafka --test image -- --ignored --nocapture
  echo "container test passed"
}

case ${1:-} in
  build) build ;;
  test) run_test ;;
  *) echo "usage: $0 build|test" >&2; exit 2 ;;
esac
