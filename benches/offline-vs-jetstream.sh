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
# OUT_DIR/offline-js.jsonl and OUT_DIR/offline-broadcast.jsonl, then prints the medians.
set -euo pipefail

peers=$(cd "${1:?PEERS_DIR}" && pwd)
rounds=${2:?ROUNDS}
mkdir -p "${3:?OUT_DIR}"
out=$(cd "$3" && pwd)
order=${4:-jetstream-first}
here=$(cd "$(dirname "$0")/.." && pwd)
bench_tmp=${BENCH_TMP:-/tmp/peerbench}

jetstream() {
  sync
  (cd "$peers" && ./servers.sh start nats-js >/dev/null)
  "$peers/target/release/peers" bench --target nats-js --workload offline --runs 1 2>/dev/null |
    grep -v '"run":"median"' >>"$out/offline-js.jsonl"
  (cd "$peers" && ./servers.sh stop nats-js >/dev/null)
  rm -rf "${bench_tmp:?}/nats-js"
}

broadcast() {
  sync
  "$here/target/release/loadgen" --spawn-binary "$here/target/release/broadcast-broker" \
    --workload offline --runs 1 2>/dev/null |
    grep -v '"run":"median"' >>"$out/offline-broadcast.jsonl"
}

for _ in $(seq "$rounds"); do
  if [ "$order" = broadcast-first ]; then broadcast; jetstream; else jetstream; broadcast; fi
done

python3 - "$out" <<'EOF'
import json, statistics, sys
out = sys.argv[1]
def runs(name):
    return [json.loads(line) for line in open(f"{out}/{name}")]
js, bc = runs("offline-js.jsonl"), runs("offline-broadcast.jsonl")
for field in ("store_msgs_per_s", "drain_msgs_per_s"):
    a = statistics.median(r[field] for r in bc)
    b = statistics.median(r[field] for r in js)
    print(f"{field}: broadcast {a:,.0f} jetstream {b:,.0f} ratio {a / b:.2f} "
          f"(runs {len(bc)} / {len(js)})")
print("lost: broadcast", sum(r["lost"] for r in bc), "jetstream", sum(r["lost"] for r in js))
EOF
