#!/usr/bin/env bash
# The whole test story: install the test servers if missing, then check formatting and
# lints and run every test (real PostgreSQL, tansu and garage are started by the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The crate layout's promises: a checks crate compiles no backend or test server, the
# runner does not depend on ingestion, and an embedded-only build exists.
if cargo tree -p overseer-checks -e normal | grep -E "rdkafka|aws-sdk-s3|pgwire-replication|redb|axum"; then
  echo "overseer-checks depends on a backend or test server (above)" >&2; exit 1
fi
if cargo tree -p overseer-prs -e normal | grep -E "overseer-ingestion"; then
  echo "overseer-prs depends on overseer-ingestion" >&2; exit 1
fi
cargo check --quiet -p overseer --no-default-features --features embedded
cargo test --workspace --no-fail-fast
