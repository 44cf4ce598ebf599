#!/usr/bin/env bash
# garage (S3-compatible object store) for tests: `garage.sh start DIR` runs a single-node
# server on 127.0.0.1 and free ports, state in DIR, with one bucket and one key allowed on
# it; prints S3_ENDPOINT, S3_REGION, S3_BUCKET, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
# `garage.sh stop DIR` stops it. Everything but those lines goes to stderr or DIR/*.log.
source "$(dirname "$0")/lib.sh"

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 start|stop DIR"

find_garage() {
  if [ -n "${GARAGE_BIN:-}" ]; then echo "$GARAGE_BIN"
  elif command -v garage >/dev/null; then command -v garage
  elif [ -x "$HOME/.cargo/bin/garage" ]; then echo "$HOME/.cargo/bin/garage"
  else return 1
  fi
}

# retry SECONDS CMD...: runs CMD until it succeeds; a fresh node needs a moment before its
# RPC answers and before a new layout is active, and the CLI fails rather than waits.
retry() {
  local secs=$1 i; shift
  for ((i = 0; i < secs * 5; i++)); do
    if "$@" >>"$dir/cli.log" 2>&1; then return 0; fi
    sleep 0.2
  done
  "$@" >>"$dir/cli.log" 2>&1 || { tail -n 30 "$dir/cli.log" >&2; return 1; }
}

case "$cmd" in
start)
  G=$(find_garage) || die "garage is not installed (not on PATH nor in ~/.cargo/bin): run scripts/install-test-deps.sh"
  mkdir -p "$dir/meta" "$dir/data"
  rpc_port=$(free_port); s3_port=$(free_port); admin_port=$(free_port)
  conf="$dir/garage.toml"
  # A fresh secret per run: nothing but this run's CLI can talk to this node.
  secret=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
  cat >"$conf" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
EOF
  chmod 600 "$conf"
  gc() { "$G" -c "$conf" "$@"; }

  setsid "$G" -c "$conf" server >"$dir/server.log" 2>&1 </dev/null &
  echo $! >"$dir/garage.pid"
  fail() { echo "$*" >&2; echo "--- $dir/server.log" >&2; tail -n 30 "$dir/server.log" >&2; exit 1; }
  wait_port "$s3_port" 30 || fail "garage did not open its S3 port"
  retry 30 gc status || fail "garage did not answer on its RPC port"

  node=$(gc node id -q 2>>"$dir/cli.log") || fail "garage node id failed"
  node=${node%%@*}
  retry 10 gc layout assign -z dc1 -c 1G "$node" || fail "garage layout assign failed"
  retry 10 gc layout apply --version 1 || fail "garage layout apply failed"

  bucket=overseer-test
  key=overseer-test
  retry 30 gc bucket create "$bucket" || fail "garage bucket create failed"
  gc key create "$key" >"$dir/key.txt" 2>>"$dir/cli.log" || fail "garage key create failed"
  key_id=$(awk -F': *' '/Key ID/ {print $2; exit}' "$dir/key.txt")
  key_secret=$(awk -F': *' '/Secret key/ {print $2; exit}' "$dir/key.txt")
  [ -n "$key_id" ] && [ -n "$key_secret" ] || fail "cannot read the key from: $(cat "$dir/key.txt")"
  retry 10 gc bucket allow --read --write --owner "$bucket" --key "$key" \
    || fail "garage bucket allow failed"

  echo "S3_ENDPOINT=http://127.0.0.1:$s3_port"
  echo "S3_REGION=garage"
  echo "S3_BUCKET=$bucket"
  echo "AWS_ACCESS_KEY_ID=$key_id"
  echo "AWS_SECRET_ACCESS_KEY=$key_secret"
  ;;
stop)
  kill_pidfile "$dir/garage.pid"
  ;;
*) die "usage: $0 start|stop DIR" ;;
esac
