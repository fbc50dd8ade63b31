#!/usr/bin/env bash
# The project's whole test suite: set-up, then every test (unit, property, doc, and the end-to-end
# tests that use real Nix as the oracle).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cargo nextest run --workspace --no-fail-fast --cargo-profile test
cargo test --workspace --doc --quiet
