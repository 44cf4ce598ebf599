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

find_tansu() {
  if [ -n "${TANSU_BIN:-}" ]; then echo "$TANSU_BIN"
  elif command -v tansu >/dev/null; then command -v tansu
  elif [ -x "$HOME/.cargo/bin/tansu" ]; then echo "$HOME/.cargo/bin/tansu"
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
  local port=$1 T
  T=$(find_tansu) || die "tansu is not installed (not on PATH nor in ~/.cargo/bin): run scripts/install-test-deps.sh"
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
  tail -n 5 "$dir/broker.log" | grep -qi "address.*in use" && return 2
  grep -q FeatureNotEnabled "$dir/broker.log" \
    && fail "this tansu lacks a storage feature: run scripts/install-test-deps.sh (it rebuilds tansu)"
  fail "tansu exited"
}

crash() {
  [ -f "$dir/tansu.pid" ] || return 0
  kill -9 "$(cat "$dir/tansu.pid")" 2>/dev/null || true
  kill_pidfile "$dir/tansu.pid"
}

case "$cmd" in
start)
  mkdir -p "$dir"
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
  # The port was ours a moment ago; another process taking it meanwhile is a failure.
  rc=0; launch "$(cat "$dir/port")" || rc=$?
  [ "$rc" = 0 ] || fail "tansu could not bind its port $(cat "$dir/port") again"
  ;;
stop)
  kill_pidfile "$dir/tansu.pid"
  ;;
*) die "usage: $0 start|stop|crash|restart DIR" ;;
esac
