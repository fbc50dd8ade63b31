#!/usr/bin/env bash
# Run every fuzz target for RUNS executions (default 10^7) at idle priority, one after the other,
# each on a corpus directory under CORPUS (seeded from tools/fuzz/seeds). Prints libFuzzer's final
# line per target; exits non-zero on the first crash. Needs cargo-fuzz (RUSTC_BOOTSTRAP for stable).
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${RUNS:-10000000}
corpus=${CORPUS:-/tmp/fuzz-corpus}
for t in store_formats narinfo nar_reader pack restore; do
  mkdir -p "$corpus/$t"
  if [ -d "tools/fuzz/seeds/$t" ]; then cp -n tools/fuzz/seeds/$t/* "$corpus/$t/"; fi
  echo "=== $t $(date +%T)"
  RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/target-fuzz} nice -n 19 \
    cargo fuzz run -O --fuzz-dir tools/fuzz "$t" "$corpus/$t" -- -runs="$runs" 2>&1 \
    | grep -E "^#[0-9]+\s+DONE|^Done|ERROR|panicked|deadly signal"
done
