#!/usr/bin/env bash
# tansu (a Kafka-protocol broker) for tests: `tansu.sh start DIR` runs a single broker on
# 127.0.0.1 and a free port, pid and log in DIR; prints KAFKA_BROKERS. `tansu.sh stop DIR`
# stops it. Everything but that line goes to stderr or DIR/*.log.
# Storage: in memory (fast; lost when the broker stops), or with TANSU_STORAGE=sqlite in
# DIR/tansu.db, which outlives the process: then `tansu.sh crash DIR` kills the broker
# with SIGKILL, as a crash would, and `tansu.sh restart DIR` starts it again on the same
# port with the same storage (crashing it first if it runs).
source "$(dirname "$0")/lib.sh"

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 start|stop|crash|restart DIR"
# The broker runs in DIR (its SQLite file is relative to it): make DIR absolute.
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

# The tansu that scripts/install-test-deps.sh built comes first.
find_tansu() {
  local built=${CARGO_HOME:-$HOME/.cargo}/bin/tansu
  if [ -n "${TANSU_BIN:-}" ]; then echo "$TANSU_BIN"
  elif [ -x "$built" ]; then echo "$built"
  elif command -v tansu >/dev/null; then command -v tansu
  else return 1
  fi
}

# wait_alive PORT PID SECONDS: like wait_port, but gives up as soon as PID has exited.
wait_alive() {
  local port=$1 pid=$2 secs=$3 i
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

fail() { echo "$*" >&2; echo "--- $dir/broker.log" >&2; tail -n 30 "$dir/broker.log" >&2; exit 1; }

# launch PORT: starts the broker on PORT with DIR/storage's engine; 0 once it accepts,
# 2 if it died of a port clash, else fails.
launch() {
  local port=$1 T from
  T=$(find_tansu) || die "tansu is not installed (not on PATH nor in ~/.cargo/bin): run scripts/install-test-deps.sh"
  # This launch's lines of the log start here (a restart appends to it).
  from=$(($(stat -c %s "$dir/broker.log" 2>/dev/null || echo 0) + 1))
  # memory:// needs the `dynostore` feature and sqlite:// the `libsql` one (without
  # them tansu exits at once with FeatureNotEnabled): scripts/install-test-deps.sh
  # builds tansu with both.
  (cd "$dir" && exec setsid "$T" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "$(cat "$dir/storage")" \
    >>"$dir/broker.log" 2>&1 </dev/null) &
  echo $! >"$dir/tansu.pid"
  if wait_alive "$port" "$(cat "$dir/tansu.pid")" 30; then return 0; fi
  if kill -0 "$(cat "$dir/tansu.pid")" 2>/dev/null; then
    kill_pidfile "$dir/tansu.pid"
    fail "tansu did not open port $port within 30 s"
  fi
  rm -f "$dir/tansu.pid"
  # It died (port taken, bad flag, missing feature): the log says why; only a port
  # clash is worth another try.
  tail -c "+$from" "$dir/broker.log" | grep -qi "address.*in use" && return 2
  tail -c "+$from" "$dir/broker.log" | grep -q FeatureNotEnabled \
    && fail "this tansu lacks a storage feature: run scripts/install-test-deps.sh (it rebuilds tansu)"
  fail "tansu exited"
}

# SIGKILL, then wait until the process is gone (or a zombie: not ours to reap).
crash() {
  local pid
  [ -f "$dir/tansu.pid" ] || return 0
  pid=$(cat "$dir/tansu.pid")
  kill -9 "$pid" 2>/dev/null || true
  for _ in $(seq 100); do
    [ -e "/proc/$pid" ] || break
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] && break
    sleep 0.05
  done
  rm -f "$dir/tansu.pid"
}

case "$cmd" in
start)
  case "${TANSU_STORAGE:-memory}" in
    memory) echo "memory://tansu/" >"$dir/storage" ;;
    sqlite) echo "sqlite://tansu.db" >"$dir/storage" ;;
    *) die "TANSU_STORAGE must be memory or sqlite, not ${TANSU_STORAGE}" ;;
  esac
  # The kernel hands out the port, but another process may take it before tansu binds it:
  # try a few ports before giving up.
  for attempt in 1 2 3; do
    port=$(free_port)
    rc=0; launch "$port" || rc=$?
    if [ "$rc" = 0 ]; then
      echo "$port" >"$dir/port"
      echo "KAFKA_BROKERS=127.0.0.1:$port"
      exit 0
    fi
  done
  fail "tansu could not bind a free port in 3 attempts"
  ;;
crash)
  crash
  ;;
restart)
  [ -f "$dir/port" ] || die "$dir holds no broker started by $0"
  grep -q '^sqlite' "$dir/storage" || die "only a broker started with TANSU_STORAGE=sqlite keeps its topics across a restart"
  crash
  # The port was ours a moment ago; another process may hold it for a moment (a
  # connection being set up from it): try again for a few seconds.
  for attempt in 1 2 3 4 5; do
    rc=0; launch "$(cat "$dir/port")" || rc=$?
    [ "$rc" = 0 ] && exit 0
    sleep 1
  done
  fail "tansu could not bind its port $(cat "$dir/port") again"
  ;;
stop)
  kill_pidfile "$dir/tansu.pid"
  ;;
*) die "usage: $0 start|stop|crash|restart DIR" ;;
esac
