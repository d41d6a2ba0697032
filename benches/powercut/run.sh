#!/usr/bin/env bash
# Power cuts under persistent load: the broker's data directory on lazyfs.py (a FUSE file system
# that keeps writes in memory until they are synced and drops them at each cut). With the
# default --store-sync device no confirmed message may be lost; with --store-sync os the same
# test must lose some, which shows that it can see a loss.
#
#   benches/powercut/run.sh BROKER SOAK [CUTS]
#
# Needs root (to mount), /dev/fuse, /usr/bin/python3 and Debian's python3-fusepy.
set -euo pipefail
broker=$1 soak=$2 cuts=${3:-10}
here=$(cd "$(dirname "$0")" && pwd)

lost() { sed -n 's/.*"lost":\([0-9]*\).*/\1/p' <<<"$1"; }

synced=$("$soak" --broker "$broker" powercut --lazyfs "$here/lazyfs.py" --cuts "$cuts" --sync device)
echo "$synced"
unsynced=$("$soak" --broker "$broker" powercut --lazyfs "$here/lazyfs.py" --cuts 2 --sync os)
echo "$unsynced"
if [ "$(lost "$synced")" != 0 ]; then
  echo "power cuts: FAILED: confirmed messages were lost with --store-sync device" >&2
  exit 1
fi
if [ "$(lost "$unsynced")" = 0 ]; then
  echo "power cuts: FAILED: nothing was lost without syncs, so the test cannot see a loss" >&2
  exit 1
fi
echo "power cuts: $cuts cuts, lost 0 with syncs; $(lost "$unsynced") lost without"
