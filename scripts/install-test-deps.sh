#!/usr/bin/env bash
# Installs what the tests need and is not already there: PostgreSQL 15 and libfaketime
# (Debian packages; libfaketime runs a test server on a skewed clock),
# the tansu Kafka-protocol broker and the garage S3 server (both from crates.io, into
# ~/.cargo/bin, so later runs on the same machine skip them). Safe to run repeatedly.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"

need_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  echo "installing PostgreSQL 15 ..." >&2
  need_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive need_root apt-get install -y -qq postgresql-15 >/dev/null
fi
if ! ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1; then
  echo "installing libfaketime ..." >&2
  need_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive need_root apt-get install -y -qq libfaketime >/dev/null
fi

# cargo install builds from source: ~12 min for tansu, ~11 min for garage on 2 cores.
if ! command -v tansu >/dev/null 2>&1; then
  echo "installing tansu (Kafka-protocol broker) ..." >&2
  cargo install tansu --locked --features dynostore --quiet
fi
if ! command -v garage >/dev/null 2>&1; then
  echo "installing garage (S3-compatible object store) ..." >&2
  cargo install garage --locked --quiet
fi
echo "test dependencies present: $(/usr/lib/postgresql/15/bin/postgres --version), $(tansu --version 2>/dev/null | head -1), $(garage --version 2>/dev/null | head -1)" >&2
