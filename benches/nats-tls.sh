#!/usr/bin/env bash
# NATS over TLS against NATS in plain text, interleaved: for each workload and round, one run of
# each (the order alternates between rounds), `sync` before every run, each nats-server started
# fresh for its run by benches/peers/servers.sh (nats-tls with a new CA and certificate from
# benches/tls-certs.sh). Prints one JSON line per figure: the median of each and tls/plain.
#
#   benches/nats-tls.sh PEERS ROUNDS OUT_DIR [WORKLOADS] [-- PEERS_ARGS...]
#
# PEERS is the harness binary (benches/peers/target/release/peers). WORKLOADS is a comma-separated
# list (default: throughput,latency; fanout and fanin work too). PEERS_ARGS go to every run of
# both targets (for example --count 200000, or --rate 5000 --secs 10). Raw JSON lines, each with
# "round", "server_cpu_secs" and "server_peak_rss_kib", are appended to OUT_DIR/nats-tls.jsonl.
set -euo pipefail

if [ $# -lt 3 ]; then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
peers=$1 rounds=$2 out=$3
workloads=throughput,latency
if [ $# -ge 4 ] && [ "$4" != "--" ]; then workloads=$4; shift 4; else shift 3; fi
[ "${1:-}" = "--" ] && shift
extra=("$@")

command -v nats-server >/dev/null || { echo "nats-server not found (apt-get install nats-server)" >&2; exit 1; }
[ -x "$peers" ] || { echo "$peers: not an executable (cargo build --release in benches/peers)" >&2; exit 1; }
servers="$(dirname "$0")/peers/servers.sh"
export BENCH_TMP=${BENCH_TMP:-/tmp/peerbench}
ulimit -n 65536 2>/dev/null || true # fan-in opens 1,000 connections

mkdir -p "$out" "$BENCH_TMP"
raw="$out/nats-tls.jsonl"
mine=$(mktemp)
running=""
cleanup() {
  if [ -n "$running" ]; then "$servers" stop "$running" >/dev/null || true; fi
  rm -f "$mine"
}
trap cleanup EXIT

run() { # target workload round
  sync
  local tls=()
  if [ "$1" = nats-tls ]; then tls=(--tls-ca "$BENCH_TMP/nats-tls/certs/ca.pem"); fi
  "$servers" start "$1"
  running=$1
  local lines
  lines=$("$peers" bench --target "$1" --workload "$2" --runs 1 "${tls[@]}" "${extra[@]}" \
    2>>"$out/nats-tls.stderr")
  local server
  server=$("$servers" stop "$1")
  running=""
  local cpu hwm
  cpu=$(sed -n 's/.*"cpu_secs":\([0-9.e+-]*\).*/\1/p' <<<"$server")
  hwm=$(sed -n 's/.*"vmhwm_kb":\([0-9]*\).*/\1/p' <<<"$server")
  { grep -v '"run":"median"' <<<"$lines" || true; } |
    sed "s/^{/{\"round\":$3,\"server_cpu_secs\":$cpu,\"server_peak_rss_kib\":$hwm,/" |
    tee -a "$raw" >>"$mine"
}

IFS=, read -r -a list <<<"$workloads"
for w in "${list[@]}"; do
  for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) -eq 1 ]; then
      run nats "$w" "$r"; run nats-tls "$w" "$r"
    else
      run nats-tls "$w" "$r"; run nats "$w" "$r"
    fi
    echo "$w round $r/$rounds done" >&2
  done
done

python3 - "$mine" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def runs(w, t):
    return [r for r in rows if r["workload"] == w and r["target"] == t]
for w in dict.fromkeys(r["workload"] for r in rows):
    keys = {
        "latency": ["p50_us", "p99_us", "p999_us"],
        "fanout": ["deliveries_per_s"],
        "fanin": ["msgs_per_s", "connect_secs"],
    }.get(w, ["msgs_per_s", "publish_msgs_per_s"])
    keys += ["server_cpu_secs", "server_peak_rss_kib"]
    plain, tls = runs(w, "nats"), runs(w, "nats-tls")
    for k in keys:
        a = [r[k] for r in plain if k in r and "error" not in r]
        b = [r[k] for r in tls if k in r and "error" not in r]
        if not a or not b:
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        print(json.dumps({
            "workload": w, "figure": k, "nats": ma, "nats_tls": mb,
            "tls_over_plain": round(mb / ma, 4) if ma else None,
            "runs": [len(a), len(b)],
            "lost": [sum(r.get("lost", 0) for r in plain), sum(r.get("lost", 0) for r in tls)],
            "errors": [sum("error" in r for r in plain), sum("error" in r for r in tls)],
        }))
PY
