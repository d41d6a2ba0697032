#!/usr/bin/env bash
# Starts the broker as installed by the Debian package (its binary, its config file) outside
# systemd, waits until /readyz answers 200, reads it with the installed `broadcast stats`,
# and stops it with SIGTERM; fails if any step does.
set -euo pipefail
# On a host where systemd runs, the package started the service: stop it, so that this check
# runs the broker itself on the same ports.
if [ -d /run/systemd/system ]; then
  systemctl stop broadcast-broker.service || true
fi
log=$(mktemp)
/usr/bin/broadcast-broker --config /etc/broadcast/broker.toml 2>"$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
ready=""
for _ in $(seq 1 200); do
  if curl -fs http://127.0.0.1:7402/readyz; then ready=yes; echo; break; fi
  if ! kill -0 "$pid" 2>/dev/null; then break; fi
  sleep 0.05
done
if [ -z "$ready" ]; then
  echo "the installed broker did not become ready:" >&2
  cat "$log" >&2
  exit 1
fi
/usr/bin/broadcast stats --admin http://127.0.0.1:7402
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
trap 'rm -f "$log"' EXIT
if [ "$status" -ne 0 ]; then
  echo "the installed broker exited with status $status" >&2
  cat "$log" >&2
  exit 1
fi
echo "installed broker: ready, then stopped with status 0"
