#!/usr/bin/env bash
# Old against new broker binary, interleaved: for each workload and round, one run of each (the
# order alternates between rounds), `sync` before every run, each broker started fresh by the
# load generator. Prints the medians of each broker and their ratio.
#
#   benches/ab.sh OLD_BROKER NEW_BROKER LOADGEN ROUNDS OUT_DIR [WORKLOADS] [-- LOADGEN_ARGS...]
#
# WORKLOADS is a comma-separated list (default: throughput,latency,fanout,fanin,persistent,offline).
# OLD_LOADGEN_ARGS and NEW_LOADGEN_ARGS, when set, are added to the load generator's arguments
# for that side only (for example --tls-ca for a broker started by benches/tls-broker.sh).
# Raw JSON lines, each with "broker":"old" or "new", are appended to OUT_DIR/ab.jsonl.
set -euo pipefail

if [ $# -lt 5 ]; then
  sed -n '2,9p' "$0" >&2
  exit 2
fi
old=$1 new=$2 loadgen=$3 rounds=$4 out=$5
workloads=${6:-throughput,latency,fanout,fanin,persistent,offline}
shift $(( $# >= 6 ? 6 : 5 ))
[ "${1:-}" = "--" ] && shift
extra=("$@")

mkdir -p "$out"
raw="$out/ab.jsonl"
mine=$(mktemp)
trap 'rm -f "$mine"' EXIT

run() { # broker label workload
  sync
  local side=()
  if [ "$2" = old ]; then read -r -a side <<<"${OLD_LOADGEN_ARGS:-}"; else read -r -a side <<<"${NEW_LOADGEN_ARGS:-}"; fi
  "$loadgen" --spawn-binary "$1" --workload "$3" --runs 1 "${extra[@]}" "${side[@]}" 2>>"$out/ab.stderr" |
    grep -v '"run":"median"' | sed "s/^{/{\"broker\":\"$2\",/" | tee -a "$raw" >>"$mine"
}

IFS=, read -r -a list <<<"$workloads"
for w in "${list[@]}"; do
  for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) -eq 1 ]; then
      run "$old" old "$w"; run "$new" new "$w"
    else
      run "$new" new "$w"; run "$old" old "$w"
    fi
    echo "$w round $r/$rounds done" >&2
  done
done

python3 - "$mine" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(w, b, k):
    v = [r[k] for r in rows if r["workload"] == w and r["broker"] == b and k in r]
    return (statistics.median(v), len(v)) if v else (None, 0)
print(f"{'workload':<11} {'figure':<19} {'old':>12} {'new':>12} {'new/old':>8}  runs  lost(old/new)")
for w in dict.fromkeys(r["workload"] for r in rows):
    keys = {
        "latency": ["p50_us", "p99_us", "p999_us"],
        "fanout": ["deliveries_per_s"],
        "offline": ["store_msgs_per_s", "drain_msgs_per_s"],
    }.get(w, ["msgs_per_s"])
    keys += ["broker_cpu_secs", "broker_peak_rss_kib"]
    lost = tuple(sum(r.get("lost", 0) for r in rows if r["workload"] == w and r["broker"] == b)
                 for b in ("old", "new"))
    for k in keys:
        (o, n1), (n, n2) = med(w, "old", k), med(w, "new", k)
        if o is None or n is None:
            continue
        ratio = n / o if o else float("nan")
        print(f"{w:<11} {k:<19} {o:>12,.1f} {n:>12,.1f} {ratio:>8.3f}  {n1}/{n2}  {lost[0]}/{lost[1]}")
PY
