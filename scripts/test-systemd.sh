#!/usr/bin/env bash
# Checks the systemd deployment kit in deploy/systemd with the real tools:
#   1. `systemd-analyze verify` on verve.service: no warning about the unit;
#   2. `systemd-analyze security --offline=yes`: overall exposure <= 2.0;
#   3. with strace (when present; required under CI=true), a live verve's system calls,
#      socket families, mappings and written files against what the unit's sandbox allows
#      (SystemCallFilter=, RestrictAddressFamilies=, MemoryDenyWriteExecute=,
#      ProtectSystem=strict + LogsDirectory=, ProcSubset=pid);
#   4. the shipped logrotate snippet (path and MainPID lookup substituted, `kill -HUP` kept)
#      run by real logrotate 4 times over a live verve's count log while ids are sent: every
#      window once, contiguous, across all rotated files, with the counts of the ids sent.
# The machine needs no systemd as PID 1: nothing here starts the unit.
#
# Usage: scripts/test-systemd.sh   (VERVE_BIN=path/to/verve, default target/debug/verve)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

started=$(date +%s)
fail() { echo "FAIL: $*" >&2; exit 1; }

need systemd-analyze systemd || fail "systemd-analyze is missing and could not be installed"
need logrotate logrotate || fail "logrotate is missing and could not be installed"
use_strace=0
if [ "${CI:-}" = true ]; then
  need strace strace || fail "strace is missing and could not be installed"
fi
if [ "${VERVE_STRACE:-1}" != 0 ] && command -v strace >/dev/null 2>&1; then use_strace=1; fi
[ "${CI:-}" != true ] || [ "$use_strace" = 1 ] || fail "CI=true needs the strace check (VERVE_STRACE=0 is not allowed)"
[ "$use_strace" = 1 ] || echo "strace not found (or VERVE_STRACE=0): the sandbox-vs-behaviour check is skipped"
command -v systemd-analyze >/dev/null && command -v logrotate >/dev/null || fail "tools missing"

bin=$(realpath "${VERVE_BIN:-target/debug/verve}" 2>/dev/null) || true
[ -n "$bin" ] && [ -x "$bin" ] || fail "no verve binary at ${VERVE_BIN:-target/debug/verve}"

kit=deploy/systemd
scratch

# --- 1. systemd-analyze verify -------------------------------------------------------------
# verify insists that ExecStart='s binary exists: the shipped unit names /usr/local/bin/verve,
# so it is checked twice: as shipped, where the only message allowed is that one, and as a copy
# with ExecStart= pointing at the binary under test, which must be silent.
mkdir "$tmp/unit"
sed "s#^ExecStart=/usr/local/bin/verve\$#ExecStart=$bin#" "$kit/verve.service" >"$tmp/unit/verve.service"
grep -qxF "ExecStart=$bin" "$tmp/unit/verve.service" || fail "ExecStart= of verve.service not found"
rc=0
out=$(timeout 60 systemd-analyze verify "$tmp/unit/verve.service" 2>&1) || rc=$?
if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
  echo "$out" >&2
  fail "systemd-analyze verify (exit $rc)"
fi
out=$(timeout 60 systemd-analyze verify "$kit/verve.service" 2>&1 || true)
other=$(printf '%s\n' "$out" | grep -v '^verve.service: Command /usr/local/bin/verve is not executable' | grep -v '^$' || true)
[ -z "$other" ] || { echo "$other" >&2; fail "systemd-analyze verify $kit/verve.service"; }
echo "verify: clean (ExecStart= -> $bin)"

# --- 2. systemd-analyze security -----------------------------------------------------------
out=$(timeout 60 systemd-analyze security --offline=yes --no-pager "$tmp/unit/verve.service" 2>&1) ||
  { echo "$out" >&2; fail "systemd-analyze security"; }
exposure=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for verve.service: \([0-9.]*\) .*/\1/p')
[ -n "$exposure" ] || { echo "$out" >&2; fail "no exposure figure"; }
verdict=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for verve.service: [0-9.]* \([A-Z]*\).*/\1/p')
echo "security: overall exposure $exposure $verdict (limit 2.0)"
awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }' || { printf '%s\n' "$out" | grep '✗' >&2; fail "exposure $exposure > 2.0"; }

# --- 3 and 4. a live verve, its count log rotated by logrotate ------------------------------
W=2
log="$tmp/requests.log"
# The shipped snippet with the log path and the MainPID lookup replaced; `kill -HUP` stays.
lookup='systemctl show --property=MainPID --value verve.service 2>/dev/null'
grep -qF "$lookup" "$kit/verve.logrotate" || fail "verve.logrotate: MainPID lookup not found"
grep -qF '/var/log/verve/requests.log {' "$kit/verve.logrotate" || fail "verve.logrotate: log path not found"
sed -e "s#/var/log/verve/requests.log#$log#" -e "s#$lookup#cat $tmp/verve.pid#" \
  "$kit/verve.logrotate" >"$tmp/verve.logrotate"
chmod 0644 "$tmp/verve.logrotate"
grep -qF '/bin/kill -HUP "$pid"' "$tmp/verve.logrotate" || fail "generated config lost kill -HUP"
grep -qF "cat $tmp/verve.pid" "$tmp/verve.logrotate" || fail "generated config lost the pid lookup"
! grep -v "^ *#" "$tmp/verve.logrotate" | grep -q systemctl || fail "generated config still calls systemctl"

port=$(free_port)
admin=$(free_port)
# verve.env's settings, with the test's listeners, log, short window and quick stop as flags
# (flags win over the environment): a bad value in verve.env fails start-up here.
mapfile -t envs < <(grep -E '^[A-Z_][A-Z0-9_]*=' "$kit/verve.env")
cmd=(env "${envs[@]}" "$bin" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin"
  --log-file "$log" --window-secs "$W" --grace-ms 200 --shutdown-delay-ms 0 --shutdown-timeout-ms 1000)
# The unit's LimitNOFILE= (soft = hard), as systemd would set it, where this shell allows it.
nofile=$(sed -n 's/^LimitNOFILE=//p' "$kit/verve.service")
hard=$(ulimit -Hn)
if command -v prlimit >/dev/null && { [ "$hard" = unlimited ] || [ "$hard" -ge "$nofile" ]; }; then
  cmd=(prlimit "--nofile=$nofile:$nofile" "${cmd[@]}")
  echo "LimitNOFILE=$nofile applied with prlimit"
fi
if [ "$use_strace" = 1 ]; then
  start_server spid addr "$tmp/verve.out" strace -f -q -o "$tmp/strace.txt" "${cmd[@]}"
  pids+=("$spid")
  vpid=$(pgrep -P "$spid" | head -n1)
else
  start_server vpid addr "$tmp/verve.out" "${cmd[@]}"
fi
[ -n "$vpid" ] || fail "no verve pid"
pids+=("$vpid")
echo "$vpid" >"$tmp/verve.pid"
echo "verve pid $vpid on $addr (window ${W}s, grace 200 ms)"
curl -fsS -m 2 "http://127.0.0.1:$admin/metrics" | grep -q '^process_resident_memory_bytes ' ||
  fail "/metrics has no process_resident_memory_bytes"

# The sender: ids only in the middle of a window (300 ms after its start to 700 ms before its
# end, each curl bounded at 500 ms), so an `ok` id's window is known from the client's clock:
# id = window_start * 1000 + i, with 3 to 6 distinct ids per window (and one duplicate).
# Lines "<window_start> <id> ok|unknown" go to $tmp/sent.
sender() {
  local ws=0 i=0 n now off r t1
  while :; do
    now=$(date +%s%3N)
    if [ $((now / 1000 / W * W)) -ne "$ws" ]; then ws=$((now / 1000 / W * W)); i=0; fi
    off=$((now - ws * 1000))
    n=$((3 + (ws / W) % 4))
    if [ "$off" -lt 300 ] || [ "$off" -gt $((W * 1000 - 700)) ] || [ "$i" -gt "$n" ]; then
      sleep 0.05; continue
    fi
    # i = n sends the window's first id again: a duplicate, not counted.
    id=$((ws * 1000 + (i < n ? i : 0)))
    r=$(curl -s -m 0.5 "http://$addr/api/verve/accept?id=$id" 2>/dev/null || true)
    t1=$(date +%s%3N)
    if [ "$i" -lt "$n" ]; then
      if [ "$r" = ok ] && [ $((t1 / 1000 / W * W)) -eq "$ws" ]; then echo "$ws $id ok"; else echo "$ws $id unknown"; fi
    fi
    i=$((i + 1))
  done >>"$tmp/sent"
}
sender &
sender_pid=$!
pids+=("$sender_pid")

rotations=4
for k in $(seq 1 "$rotations"); do
  sleep 2.7
  timeout 20 logrotate -f -s "$tmp/state" "$tmp/verve.logrotate" || fail "logrotate run $k"
  echo "rotation $k: $(ls "$tmp" | grep -c '^requests\.log\.') rotated file(s)"
done
sleep 2.5
kill "$sender_pid"
wait "$sender_pid" 2>/dev/null || true
sleep 0.3
kill -TERM "$vpid"
for _ in $(seq 1 150); do kill -0 "$vpid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$vpid" 2>/dev/null && { kill -9 "$vpid"; fail "verve did not exit within 15 s of SIGTERM"; }
if [ "$use_strace" = 1 ]; then
  wait "$spid" 2>/dev/null || true
  grep -q '+++ exited with 0 +++' <(grep "^$vpid " "$tmp/strace.txt") || fail "verve did not exit 0"
else
  wait "$vpid" || fail "verve exited $?"
fi

# verve warns when --max-connections + its reserve of 256 do not fit in the descriptor limit.
if grep -F 'file descriptors but the limit is' "$tmp/verve.out"; then fail "LimitNOFILE too small"; fi

# Windows across the rotated files, oldest first.
python3 - "$tmp" "$W" "$rotations" <<'EOF' || fail "count log check"
import gzip, os, re, sys, datetime
tmp, W, rotations = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
names = sorted((n for n in os.listdir(tmp) if re.fullmatch(r'requests\.log\.\d+(\.gz)?', n)),
               key=lambda n: -int(n.split('.')[2]))
bad = []
if len(names) != rotations:
    bad.append(f"{len(names)} rotated files, expected {rotations}: {names}")
if any(n.endswith('.gz') for n in names[-1:]) or not all(n.endswith('.gz') for n in names[:-1]):
    bad.append(f"compress/delaycompress not as configured: {names}")
windows = []  # (window_start epoch, count, partial, file)
for n in names + ['requests.log']:
    p = os.path.join(tmp, n)
    data = (gzip.open(p) if n.endswith('.gz') else open(p, 'rb')).read().decode('ascii')
    lines = [l for l in data.splitlines() if ' unique_requests ' in l]
    print(f"  {n}: {len(lines)} window line(s)")
    if not lines:
        bad.append(f"{n} has no window line (the SIGHUP did not move the writes)")
    for l in lines:
        kv = dict(w.split('=', 1) for w in l.split() if '=' in w)
        ws = int(datetime.datetime.strptime(kv['window_start'], '%Y-%m-%dT%H:%M:%SZ')
                 .replace(tzinfo=datetime.timezone.utc).timestamp())
        if kv.get('scope') != 'local' or int(kv['window_secs']) != W:
            bad.append(f"unexpected line: {l}")
        windows.append((ws, int(kv['unique_requests']), kv.get('partial') == 'true', n))
starts = [w[0] for w in windows]
if len(set(starts)) != len(starts):
    bad.append("a window appears more than once")
for a, b in zip(starts, starts[1:]):
    if b != a + W:
        bad.append(f"windows not contiguous: {a} then {b}")
partial = [w for w in windows if w[2]]
if [w[0] for w in partial] != starts[-1:]:
    bad.append(f"partial=true on {[w[0] for w in partial]}, expected only the last window")
ok, unknown = {}, {}
for l in open(os.path.join(tmp, 'sent')):
    ws, _id, r = l.split()
    (ok if r == 'ok' else unknown).setdefault(int(ws), set()).add(_id)
sent_ok = sum(len(s) for s in ok.values())
exact = 0
for ws, count, _, n in windows:
    lo = len(ok.get(ws, ())); hi = lo + len(unknown.get(ws, ()))
    if not lo <= count <= hi:
        bad.append(f"window {ws} ({n}): count {count}, ids answered ok {lo}, unknown {hi - lo}")
    exact += count == lo
for ws in set(ok) | set(unknown):
    if ws not in starts:
        bad.append(f"window {ws} got ids but has no line")
print(f"windows: {len(windows)} contiguous ({starts[0]}..{starts[-1]}), each once; "
      f"{sent_ok} ids answered ok, {sum(len(s) for s in unknown.values())} unknown; "
      f"{exact}/{len(windows)} counts exactly the ok ids")
if sent_ok < 3 * (len(windows) - 3):
    bad.append(f"only {sent_ok} ids answered ok")
for b in bad:
    print("  " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
EOF

# --- 3. what the sandbox allows, against what verve did -----------------------------------
if [ "$use_strace" = 1 ]; then
  expand() { # the system calls of a systemd-analyze syscall-filter group, nested groups expanded
    systemd-analyze syscall-filter --no-pager "$1" | sed 1d | while read -r w _; do
      case "$w" in '' | '#'*) ;; @*) expand "$w" ;; *) echo "$w" ;; esac
    done
  }
  comm -23 <(expand @system-service | sort -u) <( (expand @privileged; expand @resources) | sort -u) >"$tmp/allowed"
  # From verve's own execve on (prlimit and env ran before it, outside the sandbox's concern).
  awk -v b="execve(\"$bin\"" 'index($0, b) && / = 0$/ { on = 1 } on && /^[0-9]+ /' "$tmp/strace.txt" >"$tmp/trace"
  [ -s "$tmp/trace" ] || fail "no trace of verve's execve in strace's output"
  sed -nE 's/^[0-9]+ +(<\.\.\. )?([a-z_0-9]+)(\(| resumed>).*/\2/p' "$tmp/trace" | sort -u >"$tmp/used"
  denied=$(comm -23 "$tmp/used" "$tmp/allowed" | grep -vxE 'execve' || true)
  echo "strace: $(wc -l <"$tmp/used") distinct system calls, $(wc -l <"$tmp/trace") traced lines"
  [ -z "$denied" ] || fail "system calls outside SystemCallFilter=: $(echo $denied)"
  families=$(grep -oE '^[0-9]+ +socket\(AF_[A-Z0-9]+' "$tmp/trace" | grep -oE 'AF_[A-Z0-9]+' | sort -u | tr '\n' ' ')
  echo "strace: socket families: $families"
  for f in $families; do
    case "$f" in AF_INET | AF_INET6 | AF_UNIX) ;; *) fail "socket($f) outside RestrictAddressFamilies=" ;; esac
  done
  if grep -E '^[0-9]+ +(mmap|mprotect|pkey_mprotect)\(' "$tmp/trace" | grep -E 'PROT_WRITE\|PROT_EXEC|PROT_EXEC\|PROT_WRITE' | grep -v '= -1' | head -n1 | grep .; then
    fail "a writable and executable mapping (MemoryDenyWriteExecute=)"
  fi
  # Files opened for writing: only under the log directory (ProtectSystem=strict), /dev/null.
  wrote=$(grep -E '^[0-9]+ +openat\(.*(O_WRONLY|O_RDWR|O_CREAT)' "$tmp/trace" | grep -v '= -1' |
    sed -nE 's/^[^"]*"([^"]*)".*/\1/p' | sort -u)
  for f in $wrote; do
    case "$f" in "$tmp"/requests.log | /dev/null) ;; *) fail "opened $f for writing (ProtectSystem=strict)" ;; esac
  done
  procs=$(grep -E '^[0-9]+ +(openat|open|stat|statx|newfstatat)\(.*"/proc/' "$tmp/trace" |
    sed -nE 's/^[^"]*"(\/proc\/[^"]*)".*/\1/p' | sort -u)
  for f in $procs; do
    case "$f" in /proc/self/* | /proc/thread-self/* | /proc/"$vpid"/*) ;;
      *) fail "read $f: hidden by ProcSubset=pid / ProtectProc=invisible" ;; esac
  done
  echo "strace: writes only to the count log; /proc: $(echo $procs)"
  hups=$(grep -cE '^[0-9]+ +--- SIGHUP' "$tmp/trace" || true)
  opens=$(grep -E '^[0-9]+ +openat\(.*requests\.log", .*O_CREAT' "$tmp/trace" | grep -c . || true)
  echo "strace: $hups SIGHUP(s) received, count log opened $opens time(s)"
  [ "$hups" -eq "$rotations" ] || fail "$hups SIGHUPs for $rotations rotations"
  [ "$opens" -ge $((rotations + 1)) ] || fail "count log opened $opens times for $rotations rotations"
  if grep -E '^[0-9]+ +(setrlimit|prlimit64)\(0, RLIMIT_NOFILE, \{' "$tmp/trace" | grep .; then
    fail "verve changed RLIMIT_NOFILE although soft = hard (setrlimit is outside the filter)"
  fi
fi

echo "test-systemd: ok in $(($(date +%s) - started)) s (exposure $exposure, $rotations rotations)"
