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
