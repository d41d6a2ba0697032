#!/usr/bin/env bash
# The TypeScript client's one-to-one throughput (non-persistent and persistent) over TCP and
# over WebSocket, beside the Rust client's (the load generator's `throughput` and `persistent`
# workloads), against the same broker binary, in one run: each round starts a fresh broker
# and runs the Rust load generator, then the Node client over TCP and over WebSocket. Prints
# the raw lines, then the medians.
#
#   benches/node-client.sh BROKER LOADGEN ROUNDS OUT_DIR
#
# Needs Node.js 20 or later and the client built (npm --prefix clients/typescript run build).
set -euo pipefail
broker=$1 loadgen=$2 rounds=$3 out=$4
here=$(cd "$(dirname "$0")" && pwd)
bench="$here/../clients/typescript/bench/throughput.mjs"
mkdir -p "$out"
raw="$out/node-client.jsonl"
addr=127.0.0.1:17400 http=127.0.0.1:17480
for round in $(seq 1 "$rounds"); do
  data=$(mktemp -d)
  "$broker" --listen "$addr" --http-listen "$http" --data-dir "$data" --log warn 2>/dev/null &
  pid=$!
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/${http%:*}/${http#*:}") 2>/dev/null && break
    sleep 0.1
  done
  sync
  "$loadgen" --server "$addr" --server-pid "$pid" --workload throughput,persistent --runs 1 2>/dev/null |
    grep -v '"run":"median"' | sed 's/^{/{"client":"rust","transport":"tcp",/' >>"$raw"
  # Node 20 and 21 have a global WebSocket behind a flag; later ones without.
  node --experimental-websocket --no-warnings "$bench" --addr "$addr" --ws "ws://$http" |
    sed 's/^/{"round":'"$round"',"line":/; s/$/}/' >>"$raw"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$data"
  echo "round $round/$rounds done" >&2
done
python3 - "$raw" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
figures = {}
def add(key, v):
    figures.setdefault(key, []).append(v)
for r in rows:
    if r.get("client") == "rust":
        add(("rust", "tcp", r["workload"]), r["msgs_per_s"])
    elif "line" in r:
        line = r["line"]
        for transport in ("tcp", "ws"):
            for workload, fig in (line.get(transport) or {}).items():
                if isinstance(fig, dict) and "msgs_per_s" in fig:
                    add(("typescript", transport, workload), fig["msgs_per_s"])
for (client, transport, workload), values in sorted(figures.items()):
    print(json.dumps({"client": client, "transport": transport, "workload": workload,
                      "msgs_per_s_median": statistics.median(values), "runs": len(values)}))
PY
