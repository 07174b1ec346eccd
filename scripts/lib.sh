# Shared helpers for the scripts in this folder (sourced, not run).

# start_server VAR_PID VAR_ADDR LOGFILE CMD...: starts CMD in the background, waits for its
# "listening on ADDR" line, and stores its pid and address in the named variables.
start_server() {
  local pid_var=$1 addr_var=$2 out=$3
  shift 3
  "$@" >"$out" 2>&1 &
  local _pid=$!
  local _addr=""
  for _ in $(seq 1 100); do
    _addr=$(grep -o 'listening on [^ ]*' "$out" 2>/dev/null | head -n1 | awk '{print $3}' || true)
    [ -n "$_addr" ] && break
    kill -0 "$_pid" 2>/dev/null || { cat "$out" >&2; echo "server exited: $*" >&2; return 1; }
    sleep 0.05
  done
  [ -n "$_addr" ] || { echo "server did not start: $*" >&2; return 1; }
  printf -v "$pid_var" "%s" "$_pid"
  printf -v "$addr_var" "%s" "$_addr"
}

# need CMD PACKAGE: installs the Debian package if CMD is missing.
need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "installing $2 for $1" >&2
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq >/dev/null; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

# free_port: a free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# scratch: sets $tmp to a fresh directory and $pids to an empty list; at exit, kills every
# pid in $pids and removes $tmp (unless KEEP_TMP is set, for a demo's logs).
scratch() {
  tmp=$(mktemp -d)
  pids=()
  trap scratch_cleanup EXIT
}
scratch_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP_TMP:-}" ]; then echo "logs kept in $tmp"; else rm -rf "$tmp"; fi
}
