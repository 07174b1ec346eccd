#!/usr/bin/env bash
# Fuzzes the accept query's parser (fuzz/fuzz_targets/query.rs) with cargo fuzz (libFuzzer)
# for SECONDS (default 300) and prints the executions reached. The corpus grows in
# .cache/fuzz-corpus, seeded from fuzz/seeds; a crash leaves its input in fuzz/artifacts and
# fails the script. Needs a nightly toolchain, or uses RUSTC_BOOTSTRAP on stable. Not in CI.
# Usage: scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi
mkdir -p .cache/fuzz-corpus
cargo "${toolchain[@]}" fuzz build --release query
status=0
cargo "${toolchain[@]}" fuzz run --release query .cache/fuzz-corpus fuzz/seeds -- \
  -max_total_time="$secs" -print_final_stats=1 >.cache/fuzz.out 2>&1 || status=$?
grep -E '^(#[0-9]+ +(INITED|DONE)|Done|==[0-9]+==|SUMMARY|artifact_prefix|Test unit written)' .cache/fuzz.out || true
runs=$(awk '/stat::number_of_executed_units/ {n = $NF} END {print n}' .cache/fuzz.out)
rate=$(awk '/stat::average_exec_per_sec/ {n = $NF} END {print n}' .cache/fuzz.out)
echo "fuzz query: ${runs:-?} executions in ${secs} s (${rate:-?}/s), corpus $(ls .cache/fuzz-corpus | wc -l) inputs, exit $status"
exit "$status"
