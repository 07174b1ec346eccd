#!/usr/bin/env bash
# The fleet's fault checker (tests/chaos, SPEC §6.1) at length: 2–4 instances behind nginx on
# a real Redis, clocks skewed within the budget, some on a delay link to Redis; clients record
# every answer while faults strike at random moments (Redis SIGKILL and an empty restart,
# instance SIGKILL, the leader's SIGKILL mid-delivery, CLIENT PAUSE, link delay spikes). Every
# window is then checked offline: each ok id counted, one fleet count in every log line and
# POST, the count within the ids sent, every endpoint of an ok request called, service back
# after each fault. Prints windows checked, faults by kind with recovery times, and every
# violation with its window and the faults near it; exits 1 on any violation. Loopback only;
# it stops by itself. Not in CI: the suite runs a short fixed-seed schedule.
#
# Topologies: single (one server; some instances through a delay link), cluster (three
# masters with a replica each, cluster-node-timeout 1000 ms; the instances get one seed) and
# sentinel (a primary, two replicas, three sentinels). In the last two a `failover` fault
# SIGKILLs a master (the primary), waits for the promotion, checks every instance is ready
# again, and brings the killed server back as a replica.
#
# Usage: scripts/chaos.sh [MINUTES] [SEED] [TOPOLOGY]   (defaults: 15, random, single)
# Environment: CHAOS_FAULTS (comma list of the kinds above: redis-restart, instance-kill,
# leader-kill, client-pause, delay-spike, failover; default every kind the topology can
# suffer), CHAOS_INSTANCES (2–4; default from
# the seed), CHAOS_PACE_MS (pause between a client's requests, default 2), CHAOS_COUNT=approx
# (the instances run --count approx; every ok id's register is then checked in the window's
# Redis HyperLogLog, and the count against the error bound), VERVE_BIN (run
# another build of verve, e.g. an older commit's, under the same checker).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

minutes=${1:-15}
seed=${2:-$((RANDOM * 32768 + RANDOM))}
topology=${3:-single}
case "$topology" in
  single | cluster | sentinel) ;;
  *)
    echo "topology $topology: one of single, cluster, sentinel" >&2
    exit 2
    ;;
esac
need redis-server redis-server
need redis-cli redis-tools
need redis-sentinel redis-sentinel
need nginx nginx-light
need date coreutils

export CHAOS_MINUTES=$minutes CHAOS_SEED=$seed CHAOS_TOPOLOGY=$topology
echo "chaos: $minutes minutes, seed $seed, topology $topology (replay with: $0 $minutes $seed $topology)"
if cargo test --release --quiet --test chaos -- --ignored --nocapture --exact chaos_from_the_environment; then
  exit 0
fi
exit 1
