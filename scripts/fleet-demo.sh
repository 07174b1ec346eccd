#!/usr/bin/env bash
# Try fleet mode in one command: a local redis-server, two verve instances and nginx in front
# of them, all on free loopback ports. Prints where to send requests and where the count logs
# are; Ctrl-C stops everything (or pass SECONDS to stop by itself).
#   scripts/fleet-demo.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need redis-server redis-server
need redis-cli redis-tools
need nginx nginx-light
cargo build --release --quiet --bin verve

KEEP_TMP=1
scratch
dir=$tmp

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$dir/redis.out" 2>&1 &
pids+=("$!")
for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done

upstreams=""
for n in 1 2; do
  start_server pid addr "$dir/verve$n.out" target/release/verve --listen 127.0.0.1:0 \
    --log-file "$dir/requests-$n.log" --redis-url "redis://127.0.0.1:$redis_port" \
    --redis-shards 1 --window-secs 10
  pids+=("$pid")
  upstreams+="    server $addr;"$'\n'
done

lb_port=$(free_port)
cat >"$dir/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  upstream verve {
$upstreams    keepalive 64;
  }
  server {
    listen 127.0.0.1:$lb_port;
    location / { proxy_pass http://verve; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
nginx -c "$dir/nginx.conf" -p "$dir" &
pids+=("$!")

cat <<TXT
fleet up: redis 127.0.0.1:$redis_port, nginx 127.0.0.1:$lb_port -> two verve instances (10 s windows)
  curl 'http://127.0.0.1:$lb_port/api/verve/accept?id=42'
  tail -f $dir/requests-1.log $dir/requests-2.log     # both log the same scope=fleet counts
TXT
if [ -n "${1:-}" ]; then sleep "$1"; else wait; fi
