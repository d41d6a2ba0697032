#!/usr/bin/env bash
# The offline workload against NATS JetStream and against Broadcast, interleaved, one run of
# each per round, with the disk synced before every run so that no run shares the disk with
# the writeback of the one before it.
#
#   benches/offline-vs-jetstream.sh PEERS_DIR ROUNDS OUT_DIR [jetstream-first|broadcast-first]
#
# PEERS_DIR is the side-by-side harness (built with `cargo build --release`, nats-server
# installed); this project's release binaries must be built (`cargo build --release -p
# broadcast-broker -p broadcast-bench`). Appends one JSON line per run to
# OUT_DIR/offline-js.jsonl and OUT_DIR/offline-broadcast.jsonl, then prints the medians of
# this invocation's runs (lines already in the files are kept and left out of the medians)
# and counts any run that failed (a line with an `error` field).
set -euo pipefail

peers=$(cd "${1:?PEERS_DIR}" && pwd)
rounds=${2:?ROUNDS}
mkdir -p "${3:?OUT_DIR}"
out=$(cd "$3" && pwd)
order=${4:-jetstream-first}
case $order in
  jetstream-first|broadcast-first) ;;
  *) echo "order must be jetstream-first or broadcast-first, not '$order'" >&2; exit 2 ;;
esac
here=$(cd "$(dirname "$0")/.." && pwd)
bench_tmp=${BENCH_TMP:-/tmp/peerbench}
js_file=$out/offline-js.jsonl
bc_file=$out/offline-broadcast.jsonl
touch "$js_file" "$bc_file"
js_before=$(wc -l <"$js_file")
bc_before=$(wc -l <"$bc_file")

# A JetStream server left running by an interrupted round is stopped on the way out.
js_running=false
stop_jetstream() {
  if $js_running; then
    (cd "$peers" && ./servers.sh stop nats-js >/dev/null)
    js_running=false
  fi
  rm -rf "${bench_tmp:?}/nats-js"
}
trap stop_jetstream EXIT

# One run's lines, without the median line that follows a single run.
runs_only() { grep -v '"run":"median"' || true; }

jetstream() {
  sync
  (cd "$peers" && ./servers.sh start nats-js >/dev/null)
  js_running=true
  "$peers/target/release/peers" bench --target nats-js --workload offline --runs 1 |
    runs_only >>"$js_file"
  stop_jetstream
}

broadcast() {
  sync
  "$here/target/release/loadgen" --spawn-binary "$here/target/release/broadcast-broker" \
    --workload offline --runs 1 | runs_only >>"$bc_file"
}

for _ in $(seq "$rounds"); do
  if [ "$order" = broadcast-first ]; then broadcast; jetstream; else jetstream; broadcast; fi
done

python3 - "$bc_file" "$bc_before" "$js_file" "$js_before" <<'EOF'
import json, statistics, sys
def runs(path, skip):
    lines = [json.loads(line) for line in open(path).read().splitlines()[int(skip):]]
    failed = [r for r in lines if "error" in r]
    for r in failed:
        print(f"{r['target']}: run failed: {r['error']}", file=sys.stderr)
    return [r for r in lines if "error" not in r], len(failed)
(bc, bc_failed), (js, js_failed) = runs(*sys.argv[1:3]), runs(*sys.argv[3:5])
if not bc or not js:
    sys.exit("no successful run of one of the brokers: nothing to compare")
for field in ("store_msgs_per_s", "drain_msgs_per_s"):
    a = statistics.median(r[field] for r in bc)
    b = statistics.median(r[field] for r in js)
    print(f"{field}: broadcast {a:,.0f} jetstream {b:,.0f} ratio {a / b:.2f} "
          f"(runs {len(bc)} / {len(js)})")
print("lost: broadcast", sum(r["lost"] for r in bc), "jetstream", sum(r["lost"] for r in js))
print("failed runs: broadcast", bc_failed, "jetstream", js_failed)
EOF
