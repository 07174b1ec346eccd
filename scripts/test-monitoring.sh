#!/usr/bin/env bash
# Checks the monitoring kit in deploy/ against the real thing:
#  1. promtool: the alert rules, their unit tests (alerts.test.yml), the example config;
#  2. the dashboard's JSON (every panel has targets with an expr, the datasource variable);
#  3. end to end: redis-server, three verve instances in fleet mode (2 s windows; the third
#     with its clock 40 ms ahead of a 50 ms skew budget), a callback receiver and a real
#     Prometheus (1 s scrape and evaluation) loaded with a copy of alerts.yml whose non-zero
#     `for` durations are cut to 2 s (expressions unchanged). Then
#     - every dashboard query, its Grafana variables substituted, must parse and return a
#       series (after accepts and delivered callbacks, so the histogram and counters moved);
#     - `promtool check metrics` on every instance's /metrics must find nothing;
#     - VerveClockOffset must fire for the skewed instance, and for no other;
#     - SIGKILL Redis: VerveRedisDown must fire for every instance within a bound; restart
#       Redis on the same port: it must resolve within a bound (both times printed), and
#       verve_redis_reconnections_total must rise;
#     - SIGTERM one instance: VerveInstanceDown must fire for it within a bound.
# The binary is ${VERVE_BIN:-target/debug/verve}. Under CI=true a missing tool fails the test;
# otherwise it is skipped. Takes about 30 s (180 s at most).
set -euo pipefail
# The whole test is bounded: rerun under timeout(1), whose TERM runs the cleanup trap.
if [ -z "${TEST_MONITORING_TIMED:-}" ]; then
  TEST_MONITORING_TIMED=1 exec timeout 180 bash "$0" "$@"
fi
cd "$(dirname "$0")/.."
source scripts/lib.sh

need prometheus prometheus || true
need promtool prometheus || true
need redis-server redis-server || true
need curl curl || true
missing=()
for t in prometheus promtool redis-server curl python3; do
  command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "${CI:-}" = true ]; then echo "FAIL: missing ${missing[*]}" >&2; exit 1; fi
  echo "SKIP: missing ${missing[*]}" >&2
  exit 0
fi
BIN=${VERVE_BIN:-target/debug/verve}
[ -x "$BIN" ] || { echo "FAIL: no verve binary at $BIN (cargo build, or set VERVE_BIN)" >&2; exit 1; }
BIN=$(realpath "$BIN")

started=$(date +%s.%N)
scratch
trap 'echo "FAIL: interrupted (test-monitoring.sh is bounded to 180 s)" >&2; exit 124' TERM INT

echo "== promtool"
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml
promtool check config --syntax-only deploy/prometheus/prometheus.yml

# The helper: dashboard checks, Prometheus queries, alert polling.
cat >"$tmp/mon.py" <<'PY'
import json, math, re, sys, time, urllib.parse, urllib.request

def get(base, path, **params):
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)

def targets(dash):
    for p in dash["panels"]:
        if p.get("type") == "row":
            continue
        yield p, p.get("targets", [])

def lint_dashboard(path):
    d = json.load(open(path))
    names = {v["name"]: v for v in d["templating"]["list"]}
    assert names["datasource"]["type"] == "datasource" and names["datasource"]["query"] == "prometheus", "datasource variable"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids not unique"
    n = m = 0
    for p, ts in targets(d):
        assert ts, f"panel {p['title']!r} has no targets"
        assert p["datasource"]["uid"] == "${datasource}", f"panel {p['title']!r} datasource"
        for t in ts:
            assert t.get("expr"), f"panel {p['title']!r} target without expr"
            m += 1
        n += 1
    print(f"dashboard: schemaVersion {d['schemaVersion']}, {n} panels, {m} queries")

# Grafana's variables: $__rate_interval is max($__interval + scrape, 4 x scrape) = 4 s at a 1 s
# scrape; 15 s is used so that the test's bursts of accepts and callbacks stay in range (a
# series is returned either way). $instance is "All" (allValue .*).
SUBST = {"$__rate_interval": "15s", "$__interval": "2s", "$__range": "1m", "$instance": ".*",
         "${instance}": ".*"}

def query_check(base, path):
    d = json.load(open(path))
    n = m = bad = 0
    for p, ts in targets(d):
        n += 1
        for t in ts:
            m += 1
            expr = t["expr"]
            for k, v in SUBST.items():
                expr = expr.replace(k, v)
            if "$" in expr:
                print(f"  FAIL unsubstituted variable: {expr}"); bad += 1; continue
            try:
                res = get(base, "/api/v1/query", query=expr)
            except Exception as e:
                print(f"  FAIL {p['title']} / {t['refId']}: {e}: {expr}"); bad += 1; continue
            series = res["data"]["result"] if res.get("status") == "success" else []
            vals = [float(s["value"][1]) for s in series]
            shown = ", ".join(f"{v:.4g}" for v in vals[:3])
            ok = bool(series)
            # The latency quantiles must be numbers: the histogram moved.
            if ok and "histogram_quantile" in expr and any(math.isnan(v) for v in vals):
                ok = False
            print(f"  {'ok  ' if ok else 'FAIL'} {len(series)} series [{shown}]  {p['title']} / {t['refId']}")
            bad += 0 if ok else 1
    print(f"dashboard queries: {n} panels, {m} queries, {m - bad} returned series, {bad} failed")
    sys.exit(1 if bad else 0)

def value(base, expr):
    r = get(base, "/api/v1/query", query=expr)["data"]["result"]
    return float(r[0]["value"][1]) if r else None

def wait_value(base, expr, want, timeout):
    end = time.time() + timeout
    while time.time() < end:
        try:
            v = value(base, expr)
            if v is not None and v >= want:
                return
        except Exception:
            pass
        time.sleep(0.25)
    sys.exit(f"FAIL: {expr} did not reach {want} within {timeout} s (last {value(base, expr)})")

def alerts(base, name, instance=None):
    out = []
    for a in get(base, "/api/v1/alerts")["data"]["alerts"]:
        if a["labels"].get("alertname") == name and (instance is None or a["labels"].get("instance") == instance):
            out.append(a)
    return out

def wait_alert(base, name, t0, timeout, want, instance=None, count=1):
    # want "firing": `count` matching alerts firing (the time of the first is printed too);
    # want "resolved": none firing.
    end = t0 + timeout
    first = None
    while time.time() < end:
        try:
            firing = [a for a in alerts(base, name, instance) if a["state"] == "firing"]
            if firing and first is None:
                first = time.time() - t0
            if (want == "firing" and len(firing) >= count) or (want == "resolved" and not firing):
                dt = time.time() - t0
                who = ",".join(sorted(a["labels"].get("instance", "") for a in firing)) or "-"
                extra = f", first instance after {first:.1f} s" if want == "firing" and count > 1 else ""
                print(f"{name} {want} after {dt:.1f} s{extra} (instances firing: {who})")
                return
        except Exception:
            pass
        time.sleep(0.2)
    sys.exit(f"FAIL: {name} not {want} within {timeout} s; alerts: {alerts(base, name)}")

def values(base, expr):
    r = get(base, "/api/v1/query", query=expr)["data"]["result"]
    print(", ".join(f"{s['metric'].get('instance', '-')}={s['value'][1]}" for s in r) or "none")

cmd = sys.argv[1]
if cmd == "lint":
    lint_dashboard(sys.argv[2])
elif cmd == "queries":
    query_check(sys.argv[2], sys.argv[3])
elif cmd == "wait-value":
    wait_value(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
elif cmd == "wait-alert":
    wait_alert(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), sys.argv[6],
               sys.argv[7] if len(sys.argv) > 7 and sys.argv[7] else None,
               int(sys.argv[8]) if len(sys.argv) > 8 else 1)
elif cmd == "values":
    values(sys.argv[2], sys.argv[3])
elif cmd == "state":
    print(" ".join(f"{a['labels'].get('instance','-')}={a['state']}" for a in alerts(sys.argv[2], sys.argv[3])) or "none")
PY
mon() { nice -n 19 python3 "$tmp/mon.py" "$@"; }

echo "== dashboard JSON"
mon lint deploy/grafana/verve.json

# The test copy of the rules: every non-zero `for` becomes 2 s; nothing else changes.
python3 - deploy/prometheus/alerts.yml "$tmp/alerts.yml" <<'PY'
import re, sys
src = open(sys.argv[1]).read().splitlines(keepends=True)
out = [re.sub(r"^(\s*for:\s*)(\S+)", lambda m: m.group(1) + ("0m" if m.group(2) in ("0m", "0s") else "2s"), l) for l in src]
assert all(a == b or a.lstrip().startswith("for:") for a, b in zip(src, out))
open(sys.argv[2], "w").writelines(out)
PY
promtool check rules "$tmp/alerts.yml" >/dev/null

echo "== fleet"
redis_port=$(free_port)
start_redis() {
  nice -n 19 redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >>"$tmp/redis.out" 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "FAIL: redis-server did not start" >&2; cat "$tmp/redis.out" >&2; return 1
}
start_redis

# A callback receiver that answers 204 to every POST.
cb_port=$(free_port)
cat >"$tmp/receiver.py" <<'PY'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
nice -n 19 python3 "$tmp/receiver.py" "$cb_port" &
pids+=("$!")

# Instances 0 and 1 form the fleet; instance 2's clock runs 40 ms ahead (the hidden test flag
# --clock-offset-ms), beyond half of its 50 ms skew budget, so it fences itself and
# VerveClockOffset must fire for it alone.
declare -a vpid vaddr vadmin
for n in 0 1 2; do
  extra=()
  [ "$n" = 2 ] && extra=(--clock-offset-ms 40)
  start_server p a "$tmp/verve$n.out" nice -n 19 "$BIN" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --redis-url "redis://127.0.0.1:$redis_port" --window-secs 2 --grace-ms 200 \
    --max-clock-skew-ms 50 --redis-timeout-ms 50 --callback-allow 127.0.0.0/8 \
    --log-file "$tmp/count-$n.log" "${extra[@]}"
  pids+=("$p")
  vpid[$n]=$p
  vaddr[$n]=$a
  vadmin[$n]=$(grep -o 'admin=[^ ]*' "$tmp/verve$n.out" | head -n1 | cut -d= -f2)
  [ -n "${vadmin[$n]}" ] || { echo "FAIL: no admin address in $tmp/verve$n.out" >&2; exit 1; }
done
echo "redis 127.0.0.1:$redis_port; verve ${vaddr[0]} (admin ${vadmin[0]}), ${vaddr[1]} (admin ${vadmin[1]}), clock +40 ms ${vaddr[2]} (admin ${vadmin[2]})"

prom_port=$(free_port)
prom="http://127.0.0.1:$prom_port"
cat >"$tmp/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $tmp/alerts.yml
scrape_configs:
  - job_name: verve
    scrape_timeout: 900ms
    static_configs:
      - targets: ["${vadmin[0]}", "${vadmin[1]}", "${vadmin[2]}"]
YML
nice -n 19 prometheus --config.file "$tmp/prometheus.yml" --storage.tsdb.path "$tmp/tsdb" \
  --web.listen-address "127.0.0.1:$prom_port" --log.level warn >"$tmp/prometheus.out" 2>&1 &
pids+=("$!")
for _ in $(seq 1 100); do curl -fs "$prom/-/ready" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "$prom/-/ready" >/dev/null || { cat "$tmp/prometheus.out" >&2; echo "FAIL: prometheus not ready" >&2; exit 1; }
mon wait-value "$prom" 'count(up{job="verve"} == 1)' 3 20
mon wait-value "$prom" 'count(verve_redis_connected == 1)' 3 20

# Traffic: 100 ids on each instance (the same ids: the fleet counts them once), two of them
# with a callback endpoint.
burst() {
  local urls=() n
  for n in 0 1; do
    for i in $(seq "$1" "$(( $1 + 99 ))"); do urls+=("http://${vaddr[$n]}/api/verve/accept?id=$i"); done
    urls+=("http://${vaddr[$n]}/api/verve/accept?id=$1&endpoint=http%3A%2F%2F127.0.0.1%3A$cb_port%2Fhook")
  done
  nice -n 19 curl -s "${urls[@]}" >/dev/null
}
burst 1
mon wait-value "$prom" 'sum(verve_callback_attempts_total{result="delivered"})' 1 20
mon wait-value "$prom" 'sum(verve_dedup_seconds_count)' 1 20
burst 1001
sleep 2

echo "== dashboard queries against the live fleet"
mon queries "$prom" deploy/grafana/verve.json

echo "== promtool check metrics"
lint_bad=0
for n in 0 1 2; do
  curl -fs "http://${vadmin[$n]}/metrics" >"$tmp/metrics-$n.prom"
  if out=$(promtool check metrics <"$tmp/metrics-$n.prom" 2>&1); then
    echo "instance $n: $(grep -c '^# TYPE' "$tmp/metrics-$n.prom") metric families, no findings"
  else
    echo "instance $n findings:"; echo "$out"; lint_bad=1
  fi
done
[ "$lint_bad" = 0 ] || { echo "FAIL: promtool check metrics" >&2; exit 1; }

echo "== alerts (test copy: for 2 s, scrape and evaluation every 1 s)"
t=$(date +%s.%N)
mon wait-alert "$prom" VerveClockOffset "$t" 10 firing "${vadmin[2]}"
clock=$(mon state "$prom" VerveClockOffset)
echo "VerveClockOffset: $clock; offset of instance 2: $(curl -fs "http://${vadmin[2]}/metrics" | grep '^verve_clock_offset_seconds')"
[ "$clock" = "${vadmin[2]}=firing" ] || { echo "FAIL: VerveClockOffset for a well-synced instance" >&2; exit 1; }
[ "$(mon state "$prom" VerveRedisDown)" = none ] || { echo "FAIL: VerveRedisDown active before the kill" >&2; exit 1; }
t0=$(date +%s.%N)
kill -KILL "$redis_pid"
wait "$redis_pid" 2>/dev/null || true
mon wait-alert "$prom" VerveRedisDown "$t0" 15 firing "" 3
sleep 1
t1=$(date +%s.%N)
start_redis
mon wait-alert "$prom" VerveRedisDown "$t1" 20 resolved
mon wait-value "$prom" 'count(verve_fenced == 0)' 2 20
mon wait-value "$prom" 'min(verve_redis_reconnections_total)' 1 10
echo "verve_redis_reconnections_total after the restart: $(mon values "$prom" verve_redis_reconnections_total)"

t2=$(date +%s.%N)
kill -TERM "${vpid[1]}"
mon wait-alert "$prom" VerveInstanceDown "$t2" 20 firing "${vadmin[1]}"

python3 -c "import time; print(f'PASS test-monitoring.sh in {time.time() - $started:.0f} s')"
