#!/usr/bin/env bash
# The Kubernetes manifests in deploy/kubernetes, checked with real tools (no cluster needed):
#   1. every manifest (and, with kubectl, the kustomize build) validated offline against the
#      Kubernetes OpenAPI schemas with kubernetes-validate --strict, for 1.30 (the first
#      release whose preStop `sleep` action is on by default) and the newest it ships;
#   2. the Deployment played for real with `podman kube play` (runc, host network, the image
#      localhost/verve:latest): a copy of the shipped file with only what a one-machine play
#      needs changed (ports on 127.0.0.1, 2 s windows, the emptyDir as a host directory,
#      replicas 1, a podman secret for the secretKeyRef). It waits for the probe paths the
#      manifest names, checks which of its securityContext/resources podman applied, sends
#      accepts, reads the count line, stops the pod (SIGTERM) and expects exit 0 and the
#      partial line;
#   3. the fleet: a redis-server on loopback and two plays of the Deployment sharing it,
#      distinct ids split across both, and both pods' logs holding the same scope=fleet line.
# Needs podman, runc, catatonit (podman builds its pod's pause image from it), redis-server,
# curl (installed when missing) and kubernetes-validate (pip install when missing). A tool
# that cannot be had fails the script, under CI=true or not: nothing is skipped. kubectl is
# optional (it renders the kustomization). About 20 s.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

t0=$(date +%s%N)
manifests=deploy/kubernetes
image=${VERVE_IMAGE:-localhost/verve:latest}
schema_versions=(1.30.0 1.37.0)
tag=kt$$
say() { echo "== $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

need podman podman
need runc runc
need catatonit catatonit
need redis-server redis-server
need redis-cli redis-tools
need curl curl
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "installing kubernetes-validate (pip)" >&2
  need pip3 python3-pip
  # Debian's own python3 refuses pip installs into it (PEP 668) unless told otherwise.
  pip3 install --quiet kubernetes-validate==1.37.0 2>/dev/null \
    || pip3 install --quiet --break-system-packages kubernetes-validate==1.37.0 || true
  hash -r
fi
command -v kubernetes-validate >/dev/null 2>&1 || fail "kubernetes-validate missing (pip3 install kubernetes-validate)"
python3 -c 'import yaml' 2>/dev/null || fail "python3 yaml (PyYAML) missing"
podman image exists "$image" || fail "no image $image: build it with scripts/container.sh build"

tmp=$(mktemp -d)
chmod 0755 "$tmp"
pods=()
secrets=()
redis_pid=""
cleanup() {
  local p s
  for p in "${pods[@]}"; do podman pod rm -f "$p" >/dev/null 2>&1 || true; done
  for s in "${secrets[@]}"; do podman secret rm "$s" >/dev/null 2>&1 || true; done
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null || true
  if [ -n "${KEEP_TMP:-}" ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# podman's default runtime (crun) fails in these VMs; runc with explicit ulimits works.
cat >"$tmp/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF=$tmp/containers.conf

# ---------------------------------------------------------------------------------------
say "1. schema validation (kubernetes-validate $(kubernetes-validate --version), --strict)"
files=()
rendered=0
for f in "$manifests"/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || files+=("$f")
done
# The kustomization lists exactly the manifests in the folder.
python3 - "$manifests" <<'PY'
import os, sys, yaml
d = sys.argv[1]
listed = sorted(yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))["resources"])
present = sorted(f for f in os.listdir(d) if f.endswith(".yaml") and f != "kustomization.yaml")
if listed != present:
    sys.exit(f"kustomization.yaml lists {listed}, the folder holds {present}")
print(f"kustomization.yaml lists all {len(listed)} manifests")
PY
if command -v kubectl >/dev/null 2>&1; then
  kubectl kustomize "$manifests" >"$tmp/rendered.yaml"
  files+=("$tmp/rendered.yaml")
  rendered=$(grep -c '^kind:' "$tmp/rendered.yaml")
  echo "kubectl kustomize $manifests: $(grep -c '^kind:' "$tmp/rendered.yaml") resources rendered, validated too"
else
  echo "kubectl not installed (optional): the kustomize build is not rendered"
fi
for v in "${schema_versions[@]}"; do
  out=$(kubernetes-validate --strict --no-warn -k "$v" "${files[@]}" 2>&1) \
    || { echo "$out" >&2; fail "schema validation against $v"; }
  n=$(grep -c 'passed for resource' <<<"$out" || true)
  grep -q 'ERROR\|did not validate' <<<"$out" && { echo "$out" >&2; fail "schema validation against $v"; }
  echo "Kubernetes $v: $n resources passed ($(( n - rendered )) manifests, $rendered rendered by kustomize)"
done

# The check can fail: a misspelled field in the Deployment must be refused.
sed 's/^\( *\)readOnlyRootFilesystem: true/\1readOnlyRootFileSystem: true/' "$manifests/deployment.yaml" >"$tmp/typo.yaml"
if kubernetes-validate --strict --quiet --no-warn -k "${schema_versions[0]}" "$tmp/typo.yaml" >/dev/null 2>&1; then
  fail "kubernetes-validate --strict accepted a misspelled field (readOnlyRootFileSystem)"
fi
echo "a misspelled field (readOnlyRootFileSystem) is refused: the validation is strict"

# ---------------------------------------------------------------------------------------
# play_copy NAME HTTP_PORT ADMIN_PORT DATA_DIR SECRET CONFIG_OVERRIDES MODE: writes
# $tmp/NAME.yaml (the Deployment) and $tmp/NAME-cm.yaml (the ConfigMap) for podman, the
# secretKeyRefs pointing at the podman secret SECRET. MODE single: the Redis URL's env entry
# is dropped, as README.md in deploy/kubernetes says to for a single node.
play_copy() {
  python3 - "$manifests" "$tmp" "$image" "$@" <<'PY'
import sys, yaml
src, tmp, image, name, http, admin, data, secret, overrides, mode = sys.argv[1:11]
dep = yaml.safe_load(open(f"{src}/deployment.yaml"))
cm = yaml.safe_load(open(f"{src}/configmap.yaml"))
dep["metadata"]["name"] = name
dep["spec"]["replicas"] = 1
spec = dep["spec"]["template"]["spec"]
spec["hostNetwork"] = True
c = spec["containers"][0]
c["image"] = image
# With the host network podman refuses port declarations; the probes name ports, so they get
# the numbers the named ports would have had.
numbers = {"http": int(http), "admin": int(admin)}
declared = {p["name"]: p["containerPort"] for p in c.pop("ports")}
for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
    port = c[probe]["httpGet"]["port"]
    c[probe]["httpGet"]["port"] = numbers[port] if isinstance(port, str) else numbers[
        next(k for k, v in declared.items() if v == port)]
for e in c["env"]:
    ref = e.get("valueFrom", {}).get("secretKeyRef")
    if ref:
        ref["name"] = secret
if mode == "single":
    c["env"] = [e for e in c["env"] if e["name"] != "VERVE_REDIS_URL"]
for v in spec["volumes"]:
    if v["name"] == "data":
        v.pop("emptyDir")
        v["hostPath"] = {"path": data, "type": "Directory"}
cm["data"]["VERVE_LISTEN"] = f"127.0.0.1:{http}"
cm["data"]["VERVE_ADMIN_LISTEN"] = f"127.0.0.1:{admin}"
for kv in filter(None, overrides.split(",")):
    k, v = kv.split("=", 1)
    cm["data"][k] = v
yaml.safe_dump(dep, open(f"{tmp}/{name}.yaml", "w"), sort_keys=False)
yaml.safe_dump(cm, open(f"{tmp}/{name}-cm.yaml", "w"), sort_keys=False)
PY
}

# make_secret NAME REDIS_URL: the Secret of secret.yaml as a podman secret (podman 4.3 reads
# a secretKeyRef from a podman secret holding a JSON object of base64 values), with the
# Redis URL replaced.
make_secret() {
  python3 - "$manifests/secret.yaml" "$2" <<'PY' >"$tmp/$1.json"
import base64, json, sys, yaml
sec = yaml.safe_load(open(sys.argv[1]))
data = dict(sec.get("stringData", {}))
data.update({k: base64.b64decode(v).decode() for k, v in sec.get("data", {}).items()})
data["VERVE_REDIS_URL"] = sys.argv[2]
print(json.dumps({k: base64.b64encode(v.encode()).decode() for k, v in data.items()}))
PY
  podman secret create "$1" "$tmp/$1.json" >/dev/null
  secrets+=("$1")
}

# play NAME ADMIN_PORT: plays $tmp/NAME.yaml, records the pod, sets $ready_ms: the
# milliseconds from the play to /readyz 200 on the admin port. podman turns the livenessProbe into a healthcheck it cannot schedule
# without systemd (its error lines are filtered out); the probes are exercised by this script.
play() {
  local name=$1 admin=$2 started
  started=$(date +%s%N)
  pods+=("$name-pod-0")
  timeout 60 podman kube play --configmap "$tmp/$name-cm.yaml" "$tmp/$name.yaml" \
    >"$tmp/$name.play" 2>&1 || { cat "$tmp/$name.play" >&2; fail "podman kube play $name"; }
  for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin$readyz_path")" = 200 ] && break
    sleep 0.02
  done
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin$readyz_path")" = 200 ] \
    || { podman logs "$name-pod-0-verve" >&2 || true; fail "$name: $readyz_path never 200"; }
  ready_ms=$(ms_since "$started")
}

# stop NAME LOG: SIGTERM to the pod (podman pod stop waits, as the kubelet does up to the
# grace period), then exit code 0 and a partial line in the log; then podman kube down.
stop_pod() {
  local name=$1 log=$2 started code
  started=$(date +%s%N)
  timeout 60 podman pod stop -t 30 "$name-pod-0" >"$tmp/$name.stop" 2>&1 \
    || { cat "$tmp/$name.stop" >&2; fail "podman pod stop $name"; }
  local took; took=$(ms_since "$started")
  code=$(podman inspect "$name-pod-0-verve" --format '{{.State.ExitCode}}')
  [ "$code" = 0 ] || { podman logs "$name-pod-0-verve" >&2; fail "$name: exit code $code after SIGTERM"; }
  local line; line=$(grep 'partial=true reason=shutdown' "$log" | tail -n1 || true)
  [ -n "$line" ] || { cat "$log" >&2; fail "$name: no partial line at shutdown"; }
  timeout 60 podman kube down "$tmp/$name.yaml" >/dev/null 2>&1 || fail "podman kube down $name"
  echo "$name: SIGTERM -> exit 0 in $took ms; kube down; last line: ${line#* INFO }"
}

# The probe paths and ports as the manifest names them.
read -r readyz_path readyz_port healthz_path healthz_port < <(python3 - "$manifests/deployment.yaml" <<'PY'
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))["spec"]["template"]["spec"]["containers"][0]
r, l = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"]
print(r["path"], r["port"], l["path"], l["port"])
PY
)
[ "$readyz_port" = admin ] && [ "$healthz_port" = admin ] \
  || fail "the probes are expected on the admin port (this script plays them there)"

# sleep_to_window_start SECS: until 100 ms into the next window.
sleep_to_window_start() {
  local now; now=$(date +%s%3N)
  sleep "$(awk -v n="$now" -v w="$(( $1 * 1000 ))" 'BEGIN {printf "%.3f", (w - n % w + 100) / 1000}')"
}

# ---------------------------------------------------------------------------------------
say "2. the Deployment on a single node, played with podman kube play"
single=verve-$tag-single
p_http=$(free_port); p_admin=$(free_port)
mkdir -m 0777 "$tmp/single"
make_secret "verve-$tag-single" unused
play_copy "$single" "$p_http" "$p_admin" "$tmp/single" "verve-$tag-single" \
  "VERVE_WINDOW_SECS=2,VERVE_GRACE_MS=200,VERVE_SHUTDOWN_DELAY_MS=500,VERVE_SHUTDOWN_TIMEOUT_MS=2000" single
kubernetes-validate --strict --quiet --no-warn -k "${schema_versions[0]}" "$tmp/$single.yaml" \
  || fail "the play copy is no valid Deployment"
play "$single" "$p_admin"
echo "kube play to $readyz_path 200 (admin port): $ready_ms ms"

code() { curl -s -o /dev/null -w '%{http_code}' "$1"; }
[ "$(curl -s "http://127.0.0.1:$p_admin$healthz_path")" = ok ] || fail "$healthz_path on the admin port"
for check in "$p_http /healthz 200" "$p_http /readyz 200" "$p_http /metrics 404" \
             "$p_admin /metrics 200" "$p_admin /api/verve/stats 200" "$p_admin /api/verve/accept?id=1 404"; do
  read -r port path want <<<"$check"
  got=$(code "http://127.0.0.1:$port$path")
  [ "$got" = "$want" ] || fail "GET $path on port $port: $got, not $want"
done
echo "routes: probes on both listeners; /metrics and stats only on admin; accept only on http"
curl -s "http://127.0.0.1:$p_admin/metrics" | grep -q '^verve_window_seconds 2$' \
  || fail "the ConfigMap's VERVE_WINDOW_SECS did not reach the pod"

# What podman applied of the pod's securityContext and resources.
c=$single-pod-0-verve
insp=$(podman inspect "$c" --format '{{.Config.User}} {{.HostConfig.ReadonlyRootfs}} {{len .EffectiveCaps}} {{.HostConfig.SecurityOpt}} {{.HostConfig.Memory}} {{.HostConfig.CpuQuota}} {{.HostConfig.CpuPeriod}} {{.State.Pid}}')
read -r user ro ncaps secopt mem quota period pid <<<"$insp"
[ "$user" = 65534:65534 ] || fail "user $user"
[ "$ro" = true ] || fail "root filesystem not read-only"
[ "$ncaps" = 0 ] || fail "$ncaps capabilities left"
grep -q no-new-privileges <<<"$secopt" || fail "allowPrivilegeEscalation not applied ($secopt)"
[ "$mem" = $((256 * 1024 * 1024)) ] || fail "memory limit $mem"
[ "$((quota / period))" = 2 ] || fail "CPU quota $quota/$period"
seccomp=$(awk '$1 == "Seccomp:" {print $2}' "/proc/$pid/status")
[ "$seccomp" = 2 ] || fail "no seccomp filter (Seccomp: $seccomp)"
echo "podman applied: user 65534:65534, read-only root, 0 capabilities, no-new-privileges, seccomp filter, memory limit 256 MiB, CPU quota 2 cores"
grep -q '^VERVE_CALLBACK_SECRET=whsec_' < <(podman inspect "$c" --format '{{range .Config.Env}}{{println .}}{{end}}') \
  || fail "VERVE_CALLBACK_SECRET (secretKeyRef) not in the environment"
echo "secretKeyRef VERVE_CALLBACK_SECRET and the ConfigMap (envFrom) reached the pod"

# Eight distinct ids (1-7 and -3, with repeats; then one bad id) in one window.
for attempt in 1 2 3; do
  sleep_to_window_start 2
  w_start=$(( $(date +%s) / 2 * 2 ))
  out=$(curl -fs $(for id in 1 2 3 4 5 6 7 7 1 -3; do echo "http://127.0.0.1:$p_http/api/verve/accept?id=$id"; done))
  [ "$out" = "$(printf 'ok%.0s' $(seq 1 10))" ] || fail "accepts answered: $out"
  [ "$(( $(date +%s) / 2 * 2 ))" = "$w_start" ] && break
  echo "(the accepts straddled a window; again)"
done
[ "$(code "http://127.0.0.1:$p_http/api/verve/accept?id=x")" = 400 ] || fail "a bad id not 400"
ws=$(date -u -d "@$w_start" +%Y-%m-%dT%H:%M:%SZ)
line=""
for _ in $(seq 1 100); do
  line=$(grep "window_start=$ws " "$tmp/single/requests.log" 2>/dev/null || true)
  [ -n "$line" ] && break
  sleep 0.05
done
grep -q "unique_requests=8 scope=local$" <<<"$line" || { cat "$tmp/single/requests.log" >&2; fail "count line: '$line'"; }
echo "count log (hostPath in place of the emptyDir): ${line#* INFO }"
# Ids in the open window, then SIGTERM.
curl -fs "http://127.0.0.1:$p_http/api/verve/accept?id=100" "http://127.0.0.1:$p_http/api/verve/accept?id=101" >/dev/null
stop_pod "$single" "$tmp/single/requests.log"

# ---------------------------------------------------------------------------------------
say "3. the fleet: two plays of the Deployment sharing one redis-server"
r_port=$(free_port)
redis-server --port "$r_port" --bind 127.0.0.1 --save "" --appendonly no >"$tmp/redis.out" 2>&1 &
redis_pid=$!
for _ in $(seq 1 100); do
  redis-cli -p "$r_port" ping 2>/dev/null | grep -q PONG && break
  sleep 0.05
done
redis-cli -p "$r_port" ping | grep -q PONG || fail "redis-server did not start"
echo "redis-server on 127.0.0.1:$r_port (pid $redis_pid)"
make_secret "verve-$tag-fleet" "redis://127.0.0.1:$r_port"
fleet_cfg="VERVE_WINDOW_SECS=2,VERVE_GRACE_MS=700,VERVE_SHUTDOWN_DELAY_MS=300,VERVE_SHUTDOWN_TIMEOUT_MS=2000"
declare -A fh fa
for m in a b; do
  fh[$m]=$(free_port); fa[$m]=$(free_port)
  mkdir -m 0777 "$tmp/$m"
  play_copy "verve-$tag-$m" "${fh[$m]}" "${fa[$m]}" "$tmp/$m" "verve-$tag-fleet" "$fleet_cfg" fleet
done
for m in a b; do
  play "verve-$tag-$m" "${fa[$m]}"
  echo "pod $m: kube play to $readyz_path 200 (fleet member): $ready_ms ms"
done
grep -q 'mode=fleet' < <(podman logs "verve-$tag-a-pod-0-verve" 2>&1) || fail "pod a is not in fleet mode"

# Ten distinct ids: 1-6 to pod a, 4-10 to pod b (4, 5, 6 reach both), in one window.
urls() { local p=$1; shift; for id in "$@"; do echo "http://127.0.0.1:$p/api/verve/accept?id=$id"; done; }
for attempt in 1 2 3; do
  sleep_to_window_start 2
  w_start=$(( $(date +%s) / 2 * 2 ))
  out=$(curl -fs $(urls "${fh[a]}" 1 2 3 4 5 6))$(curl -fs $(urls "${fh[b]}" 4 5 6 7 8 9 10 10))
  [ "$out" = "$(printf 'ok%.0s' $(seq 1 14))" ] || fail "fleet accepts answered: $out"
  [ "$(( $(date +%s) / 2 * 2 ))" = "$w_start" ] && break
  echo "(the accepts straddled a window; again)"
done
ws=$(date -u -d "@$w_start" +%Y-%m-%dT%H:%M:%SZ)
declare -A fl
for m in a b; do
  fl[$m]=""
  for _ in $(seq 1 200); do
    fl[$m]=$(grep "window_start=$ws .*scope=fleet" "$tmp/$m/requests.log" 2>/dev/null || true)
    [ -n "${fl[$m]}" ] && break
    sleep 0.05
  done
  grep -q "unique_requests=10 scope=fleet$" <<<"${fl[$m]}" \
    || { cat "$tmp/$m/requests.log" >&2; fail "pod $m: fleet line '${fl[$m]}'"; }
  echo "pod $m: ${fl[$m]#* INFO }"
done
[ "${fl[a]#* INFO }" = "${fl[b]#* INFO }" ] || fail "the pods logged different fleet lines"
for m in a b; do stop_pod "verve-$tag-$m" "$tmp/$m/requests.log"; done
kill "$redis_pid" 2>/dev/null || true
wait "$redis_pid" 2>/dev/null || true
redis_pid=""

say "kubernetes test passed in $(( $(ms_since "$t0") / 1000 )) s"
