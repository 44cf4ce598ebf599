#!/usr/bin/env bash
# Installs what the tests need and is not already there: PostgreSQL 15 and libfaketime
# (Debian packages; libfaketime runs a test server on a skewed clock),
# the tansu Kafka-protocol broker and the garage S3 server (both from crates.io, into
# ~/.cargo/bin, so later runs on the same machine skip them). Safe to run repeatedly.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
here=$(cd "$(dirname "$0")" && pwd)

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

# cargo install builds from source: ~15 min for tansu, ~11 min for garage on 2 cores.
# tansu is built from its crates.io sources with the storage features the tests use
# (`dynostore` for memory://, `libsql` for sqlite://, which outlives a broker restart) and
# one fix of ours, scripts/tansu/group-expiry.patch: a group member whose session expires
# makes the group rebalance, as Kafka does (tansu 0.6 kept the dead member's partitions
# assigned until another member joined). A marker beside the binary names the build (with
# the patch's digest), so a machine with another tansu rebuilds it once.
cargo_home=${CARGO_HOME:-$HOME/.cargo}
TANSU_BUILD="tansu 0.6.0 +dynostore +libsql +$(sha256sum "$here/tansu/group-expiry.patch" | cut -c1-16)"
install_tansu() {
  local work reg
  work=$(mktemp -d)
  # shellcheck disable=SC2064 # $work is expanded now: it is local to this function.
  trap "rm -rf '$work'" EXIT
  # The crates' sources as cargo unpacks them from the registry (both pinned: tansu asks
  # for tansu-broker ^0.6.0, which a later 0.6.x would satisfy).
  mkdir -p "$work/fetch/src"
  echo 'fn main() {}' >"$work/fetch/src/main.rs"
  printf '[package]\nname = "fetch-tansu"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\ntansu = "=0.6.0"\ntansu-broker = "=0.6.0"\n' \
    >"$work/fetch/Cargo.toml"
  cargo fetch --quiet --manifest-path "$work/fetch/Cargo.toml"
  reg=$(ls -d "$cargo_home"/registry/src/*/tansu-broker-0.6.0 2>/dev/null | head -1)
  [ -n "$reg" ] || { echo "cargo fetch did not unpack tansu-broker 0.6.0 under $cargo_home/registry/src" >&2; exit 1; }
  reg=$(dirname "$reg")
  cp -r "$reg/tansu-0.6.0" "$work/tansu"
  cp -r "$reg/tansu-broker-0.6.0" "$work/tansu-broker"
  (cd "$work/tansu-broker" && git apply "$here/tansu/group-expiry.patch")
  printf '\n[patch.crates-io]\ntansu-broker = { path = "../tansu-broker" }\n' >>"$work/tansu/Cargo.toml"
  # The patched crate is a path dependency now: its lock entry loses the registry's
  # source and checksum (every other version stays as tansu 0.6.0 locked it).
  python3 - "$work/tansu/Cargo.lock" <<'PY'
import sys
path = sys.argv[1]
blocks = open(path).read().split("\n\n")
hits = 0
for i, b in enumerate(blocks):
    if b.startswith('[[package]]\nname = "tansu-broker"\n'):
        blocks[i] = "\n".join(l for l in b.split("\n") if not l.startswith(("source = ", "checksum = ")))
        hits += 1
assert hits == 1, f"tansu-broker is locked {hits} times in {path}"
open(path, "w").write("\n\n".join(blocks))
PY
  cargo install --quiet --force --locked --path "$work/tansu" --features dynostore,libsql \
    --root "$cargo_home"
  echo "$TANSU_BUILD" >"$cargo_home/bin/.tansu-build"
}
if [ ! -x "$cargo_home/bin/tansu" ] \
  || [ "$(cat "$cargo_home/bin/.tansu-build" 2>/dev/null)" != "$TANSU_BUILD" ]; then
  echo "installing tansu (Kafka-protocol broker; $TANSU_BUILD) ..." >&2
  install_tansu
fi
if ! command -v garage >/dev/null 2>&1; then
  echo "installing garage (S3-compatible object store) ..." >&2
  cargo install garage --locked --quiet
fi
echo "test dependencies present: $(/usr/lib/postgresql/15/bin/postgres --version), $(tansu --version 2>/dev/null | head -1), $(garage --version 2>/dev/null | head -1)" >&2
