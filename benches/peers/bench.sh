#!/usr/bin/env bash
# Every workload against every peer ($RUNS runs each, median reported), then
# the no-broker limits. Each broker runs alone: started before its workloads,
# stopped (by PID) after them, its peak RSS recorded.
#
#   ./bench.sh                          # all targets
#   TARGETS="nats redis" RUNS=1 ./bench.sh
#
# Writes $OUT/<target>.jsonl, $OUT/limits.jsonl, $OUT/versions.txt and $OUT/table.md.
set -euo pipefail
cd "$(dirname "$0")"

RUNS=${RUNS:-3}
TARGETS=${TARGETS:-"nats nats-tls nats-js redis redis-stream mqtt0 mqtt1"}
OUT=${OUT:-results}
export BENCH_TMP=${BENCH_TMP:-/tmp/peerbench}
PEERS=target/release/peers

# Per-target settings that differ from the harness defaults.
extra_args() {
  case $1 in
    # 50 subscribers x 100,000 persistent messages would take minutes per run.
    nats-js|redis-stream|mqtt1) echo "--fanout-count 20000" ;;
    # The CA servers.sh made for this start.
    nats-tls) echo "--tls-ca $BENCH_TMP/nats-tls/certs/ca.pem" ;;
  esac
}

cargo build --release
mkdir -p "$OUT" "$BENCH_TMP"
ulimit -n 65536 2>/dev/null || true # fan-in opens 1,000 connections

{
  nats-server --version
  redis-server --version
  mosquitto -h | head -n 1
} >"$OUT/versions.txt" 2>&1 || true

running=""
cleanup() { if [ -n "$running" ]; then ./servers.sh stop "$running" >/dev/null || true; fi; }
trap cleanup EXIT

for t in $TARGETS; do
  ./servers.sh start "$t"
  running=$t
  # shellcheck disable=SC2046
  $PEERS bench --target "$t" --runs "$RUNS" $(extra_args "$t") >"$OUT/$t.jsonl" || true
  ./servers.sh stop "$t" >>"$OUT/$t.jsonl"
  running=""
done

{
  $PEERS limit-tcp --runs "$RUNS"
  $PEERS limit-rtt --runs "$RUNS"
  $PEERS limit-fsync --dir "$BENCH_TMP" --runs "$RUNS"
} >"$OUT/limits.jsonl"
# Cross-check of the fsync figure with dd (4 KiB blocks, O_DSYNC).
dd if=/dev/zero of="$BENCH_TMP/dd-dsync" bs=4k count=2000 oflag=dsync 2>&1 | tail -n 1 >"$OUT/dd.txt"
rm -f "$BENCH_TMP/dd-dsync"

# shellcheck disable=SC2046
$PEERS table $(for t in $TARGETS; do echo "$OUT/$t.jsonl"; done) "$OUT/limits.jsonl" >"$OUT/table.md"
cat "$OUT/table.md"
