#!/usr/bin/env bash
# The whole test story: install the test servers if missing, then check formatting and
# lints and run every test (real PostgreSQL, tansu and garage are started by the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --no-fail-fast
