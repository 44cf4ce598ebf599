#!/usr/bin/env bash
# tansu (a Kafka-protocol broker) for tests: `tansu.sh start DIR` runs a single broker on
# 127.0.0.1 and a free port with in-memory storage, pid and log in DIR; prints
# KAFKA_BROKERS. `tansu.sh stop DIR` stops it. Everything but that line goes to stderr or
# DIR/*.log.
source "$(dirname "$0")/lib.sh"

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 start|stop DIR"

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

case "$cmd" in
start)
  T=$(find_tansu) || die "tansu is not installed (not on PATH nor in ~/.cargo/bin): run scripts/install-test-deps.sh"
  mkdir -p "$dir"
  fail() { echo "$*" >&2; echo "--- $dir/broker.log" >&2; tail -n 30 "$dir/broker.log" >&2; exit 1; }
  # The kernel hands out the port, but another process may take it before tansu binds it:
  # try a few ports before giving up.
  for attempt in 1 2 3; do
    port=$(free_port)
    # memory:// needs the `dynostore` feature (without it tansu exits at once with
    # FeatureNotEnabled): install it with `cargo install tansu --locked --features dynostore`.
    setsid "$T" broker \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine "memory://tansu/" \
      >"$dir/broker.log" 2>&1 </dev/null &
    echo $! >"$dir/tansu.pid"
    if wait_alive "$port" "$(cat "$dir/tansu.pid")" 30; then
      echo "KAFKA_BROKERS=127.0.0.1:$port"
      exit 0
    fi
    if kill -0 "$(cat "$dir/tansu.pid")" 2>/dev/null; then
      kill_pidfile "$dir/tansu.pid"
      fail "tansu did not open port $port within 30 s"
    fi
    # It died (port taken, bad flag, missing feature): the log says why; retry only a
    # port clash.
    grep -qi "address.*in use" "$dir/broker.log" || fail "tansu exited (attempt $attempt)"
    rm -f "$dir/tansu.pid"
  done
  fail "tansu could not bind a free port in 3 attempts"
  ;;
stop)
  kill_pidfile "$dir/tansu.pid"
  ;;
*) die "usage: $0 start|stop DIR" ;;
esac
