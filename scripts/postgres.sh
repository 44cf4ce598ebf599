#!/usr/bin/env bash
# PostgreSQL 15 for tests: `postgres.sh start DIR` runs a throwaway cluster with logical WAL
# on 127.0.0.1 and a free port, state in DIR; prints PG_PORT, PG_HOST and PG_URL.
# `postgres.sh stop DIR` stops it; `postgres.sh restart DIR` stops it at once (as a crash
# would: no shutdown checkpoint, clients cut) and starts it again on the same port. Runs as root by delegating to the postgres user
# (initdb and the server refuse root).
# With PG_FAKETIME set (a libfaketime spec such as "-1h"), the server runs on a clock that
# far from ours, as a database host with a skewed clock would: tests use it to show that
# freshness follows the server's clock, not ours.
source "$(dirname "$0")/lib.sh"

BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 start|stop|restart DIR"

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
start)
  [ -x "$BIN/initdb" ] || die "PostgreSQL 15 is not installed ($BIN/initdb missing): run scripts/install-test-deps.sh"
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; chmod 700 "$dir"; fi
  as_pg "$BIN/initdb" -D "$dir/data" -A trust -U postgres --no-sync >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  port=$(free_port)
  preload=()
  if [ -n "${PG_FAKETIME:-}" ]; then
    lib=$(ls /usr/lib/*/faketime/libfaketime.so.1 2>/dev/null | head -1)
    [ -n "$lib" ] || die "PG_FAKETIME is set but libfaketime is not installed: run scripts/install-test-deps.sh"
    preload=(env "LD_PRELOAD=$lib" "FAKETIME=$PG_FAKETIME" FAKETIME_DONT_FAKE_MONOTONIC=1)
  fi
  as_pg "${preload[@]}" "$BIN/pg_ctl" -D "$dir/data" -w -t 60 -l "$dir/server.log" \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $dir -c wal_level=logical \
        -c max_replication_slots=20 -c max_wal_senders=20 -c fsync=off \
        -c wal_sender_timeout=10s -c max_connections=200" start >"$dir/pg_ctl.log" 2>&1 \
    || { cat "$dir/pg_ctl.log" "$dir/server.log" >&2; die "postgres did not start"; }
  echo "PG_PORT=$port"
  echo "PG_HOST=127.0.0.1"
  echo "PG_URL=host=127.0.0.1 port=$port user=postgres dbname=postgres"
  ;;
restart)
  # pg_ctl restart keeps the options of the first start (postmaster.opts).
  as_pg "$BIN/pg_ctl" -D "$dir/data" -m immediate -w -t 60 -l "$dir/server.log" restart \
    >"$dir/pg_ctl.log" 2>&1 || { cat "$dir/pg_ctl.log" "$dir/server.log" >&2; die "postgres did not restart"; }
  ;;
stop)
  [ -d "$dir/data" ] || exit 0
  as_pg "$BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  ;;
*) die "usage: $0 start|stop|restart DIR" ;;
esac
