#!/usr/bin/env bash
# Start or stop the broker for one target, bound to 127.0.0.1 on a non-default
# port, with its config, data and log under $BENCH_TMP/<target>.
#
#   ./servers.sh start <target>   # starts it, waits for the port
#   ./servers.sh stop <target>    # prints a JSON line with its peak RSS, stops it by PID
#
# Targets and ports (the defaults of `peers bench --target`):
#   nats 14222, nats-tls 14224, nats-js 14223, redis 16379, redis-stream 16380,
#   mqtt0 11883, mqtt1 11884
#
# nats-tls: at each start, ../tls-certs.sh makes a new CA and a certificate for
# 127.0.0.1 in $BENCH_TMP/nats-tls/certs; clients pass that CA with
#   peers bench --target nats-tls --tls-ca $BENCH_TMP/nats-tls/certs/ca.pem
set -euo pipefail

BENCH_TMP=${BENCH_TMP:-/tmp/peerbench}
cmd=${1:?start|stop}
target=${2:?target}
dir="$BENCH_TMP/$target"
pidfile="$dir/server.pid"

port_of() {
  case $1 in
    nats) echo 14222 ;; nats-tls) echo 14224 ;; nats-js) echo 14223 ;;
    redis) echo 16379 ;; redis-stream) echo 16380 ;;
    mqtt0) echo 11883 ;; mqtt1) echo 11884 ;;
    *) echo "unknown target $1" >&2; exit 2 ;;
  esac
}

start() {
  local port; port=$(port_of "$target")
  rm -rf "$dir"; mkdir -p "$dir/data"
  case $target in
    nats)
      # Core NATS only; otherwise the built-in defaults.
      printf 'listen: "127.0.0.1:%s"\n' "$port" >"$dir/server.conf"
      nats-server -c "$dir/server.conf" >"$dir/server.log" 2>&1 &
      ;;
    nats-tls)
      # Core NATS, TLS required on every client connection (the server sends INFO,
      # then the client upgrades); the tls block's other settings at their defaults.
      # server.log shows one "TLS handshake error": the port probe below, which
      # connects and closes without a handshake.
      "$(dirname "$0")/../tls-certs.sh" "$dir/certs" >/dev/null
      printf 'listen: "127.0.0.1:%s"\ntls {\n  cert_file: "%s"\n  key_file: "%s"\n}\n' \
        "$port" "$dir/certs/cert.pem" "$dir/certs/key.pem" >"$dir/server.conf"
      nats-server -c "$dir/server.conf" >"$dir/server.log" 2>&1 &
      ;;
    nats-js)
      # JetStream with file storage; sync_interval and limits left at their defaults.
      printf 'listen: "127.0.0.1:%s"\njetstream {\n  store_dir: "%s"\n}\n' \
        "$port" "$dir/data" >"$dir/server.conf"
      nats-server -c "$dir/server.conf" >"$dir/server.log" 2>&1 &
      ;;
    redis)
      # Pub/sub needs no persistence: RDB snapshots and AOF off.
      redis-server --bind 127.0.0.1 --port "$port" --dir "$dir/data" \
        --save "" --appendonly no --daemonize no >"$dir/server.log" 2>&1 &
      ;;
    redis-stream)
      # The usual durable setup: AOF on, fsync once a second (the default policy).
      redis-server --bind 127.0.0.1 --port "$port" --dir "$dir/data" \
        --save "" --appendonly yes --appendfsync everysec --daemonize no \
        >"$dir/server.log" 2>&1 &
      ;;
    mqtt0|mqtt1)
      # mqtt1 keeps offline QoS 1 messages for persistent sessions: the default
      # cap of 1000 queued messages per client would drop most of the
      # offline-consumer workload, so it is lifted (0 = no cap). persistence
      # writes mosquitto.db at exit and every autosave_interval (default 1800 s).
      {
        printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port"
        printf 'log_dest stderr\n'
        if [ "$target" = mqtt1 ]; then
          printf 'persistence true\npersistence_location %s/\nmax_queued_messages 0\n' "$dir/data"
        fi
      } >"$dir/server.conf"
      # Started as root, mosquitto switches to the mosquitto user: let it write its data.
      if id mosquitto >/dev/null 2>&1; then chown -R mosquitto "$dir/data"; fi
      mosquitto -c "$dir/server.conf" >>"$dir/server.log" 2>&1 &
      ;;
  esac
  echo $! >"$pidfile"
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$target did not open port $port; see $dir/server.log" >&2
  exit 1
}

stop() {
  local pid; pid=$(cat "$pidfile")
  local hwm; hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
  local name; name=$(cat "/proc/$pid/comm")
  local ticks; ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat") # user + system
  printf '{"target":"%s","workload":"server","run":"end","server":"%s","pid":%s,"vmhwm_kb":%s,"cpu_secs":%s}\n' \
    "$target" "$name" "$pid" "$hwm" "$(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN {print t / hz}')"
  kill "$pid"
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "$target (pid $pid) still running after 10 s" >&2
  exit 1
}

case $cmd in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop <target>" >&2; exit 2 ;;
esac
