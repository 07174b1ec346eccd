#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run sets CI=true): installs what the tests need,
# checks formatting and lints (with and without the kafka feature), then runs unit tests, the
# black-box tests against the real binary (real callback receivers, Redis, Redis Cluster,
# Sentinel, nginx and a Kafka broker on loopback) and every criterion benchmark once, then builds the
# container image and tests it with podman, and checks the Kubernetes manifests (schemas, and
# the Deployment played with podman kube play). Under CI=true a test whose server is missing
# fails.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

# Tools the tests call: `kill` (signals to the service), `date` (independent RFC 3339),
# the real servers of the fleet tests: Redis (also as a cluster) and nginx, and a real
# browser for the status page.
need kill procps
need date coreutils
need redis-server redis-server
need redis-cli redis-tools
need redis-sentinel redis-sentinel
need nginx nginx-light
need openssl openssl
need chromium chromium
# The kafka feature builds librdkafka from source; its tests run a real broker from Maven
# Central jars (the script installs a JDK and Maven when missing).
need make make
need cc gcc
need perl perl  # OpenSSL (vendored, for librdkafka) builds with perl
bash scripts/kafka-libs.sh
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo clippy --all-targets --quiet --features kafka -- -D warnings
cargo test --all-targets --features kafka
bash scripts/container.sh test
bash scripts/test-systemd.sh
bash scripts/test-monitoring.sh
bash scripts/test-kubernetes.sh
