#!/usr/bin/env bash
# The soak scenarios against the broker binary, each printing one JSON line of figures:
# ghost names, expiry, queue depth across a restart, partial frames, connections that never
# finish their handshake (slowloris), a publisher held to its rate (flood), a recipient that
# reads nothing, and a full disk (on a tmpfs: needs root). Small counts by default (a few
# minutes, as CI runs it); `full` for the counts of the bounded-resources issue.
#
#   benches/soak.sh BROKER SOAK [full]
set -euo pipefail
broker=$1 soak=$2 size=${3:-small}

run() { "$soak" --broker "$broker" "$@"; }
field() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" <<<"$2"; }
fail() { echo "soak: FAILED: $*" >&2; exit 1; }

if [ "$size" = full ]; then
  ghosts=(--names 100000 --rounds 3); expiry=(--count 100000 --names 100000)
  queued=(--count 6000000); partial=(--connections 1000); slowloris=(--connections 5000)
else
  ghosts=(--names 5000 --rounds 3); expiry=(--count 20000 --names 200)
  queued=(--count 100000); partial=(--connections 100); slowloris=(--connections 500)
fi

out=$(run ghosts "${ghosts[@]}"); echo "$out"
out=$(run expiry "${expiry[@]}"); echo "$out"
out=$(run queued "${queued[@]}"); echo "$out"
[ "$(field lost "$out")" = 0 ] || fail "queued messages lost across a restart"
out=$(run partial "${partial[@]}"); echo "$out"
[ "$(field normal_client_served "$out")" = true ] || fail "a normal client was not served"
out=$(run slowloris "${slowloris[@]}"); echo "$out"
[ "$(field new_client_during "$out")" = '"served"' ] || fail "a new client was not served during slowloris"
out=$(run flood --secs 3 --broker-args --publish-messages-per-sec 2000); echo "$out"
[ "$(field lost "$out")" = 0 ] || fail "messages of a publisher held to its rate were lost"
rate=$(field flooder_msgs_per_sec "$out")
# Three seconds at 2,000 a second plus a second's burst is 2,667 a second at most.
[ "${rate%.*}" -le 3000 ] || fail "a publisher over its rate was not held back ($rate a second)"
out=$(run stall); echo "$out"
grep -q '"SlowConsumer":[1-9]' <<<"$out" || fail "a recipient that reads nothing was never reported too slow"
if [ "$(id -u)" = 0 ]; then
  out=$(run diskfull); echo "$out"
  [ "$(field lost "$out")" = 0 ] || fail "confirmed messages lost to a full disk"
  [ "$(field heal_secs "$out")" != null ] || fail "the store did not heal once space returned"
else
  echo "soak: diskfull skipped (mounting a tmpfs needs root)"
fi
echo "soak: ok"
