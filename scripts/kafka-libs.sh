#!/usr/bin/env bash
# Fetches the jars of a real Apache Kafka broker (scripts/kafka/pom.xml) from Maven Central
# into .cache/kafka-libs, installing a JDK and Maven if missing. The Kafka tests start the
# broker from there (KRaft, one combined node on loopback). Does nothing when the jars for this
# pom are already there.
# Usage: scripts/kafka-libs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need java openjdk-17-jre-headless
need mvn maven
libs=.cache/kafka-libs
stamp="$libs/.pom-$(sha256sum scripts/kafka/pom.xml | cut -c1-16)"
[ -f "$stamp" ] && exit 0
rm -rf "$libs"
mkdir -p "$libs"
mvn -B -q -f scripts/kafka/pom.xml \
  org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
  -Dstyle.color=never -DincludeScope=runtime -DoutputDirectory="$PWD/$libs"
touch "$stamp"
echo "kafka broker jars in $libs: $(ls "$libs"/*.jar | wc -l)"
