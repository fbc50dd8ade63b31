#!/usr/bin/env bash
# Deltas for a version bump (spec §8 offers): corpus/small's lua 5.4.4 -> 5.4.7. A store gets gen1
# then bump, with deltas and without (`--no-deltas`), interleaved, RUNS times; then a Nix store
# holding gen1 (plain `nix copy`) gets bump by `refstrip substitute` from that store, its own Nix
# store as the near source. Prints what bump added to the store, what the client fetched (records
# and blocks, refstrip's report; the HTTP origin counts the same plus the 41-byte store marker,
# see tests/deltas.rs), its share of the new paths' NAR.xz, and the files rebuilt from deltas.
# Usage: tools/bench_deltas.sh [RUNS]   (BIN=path/to/refstrip to use another build)
set -euo pipefail
runs=${1:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${BIN:-$here/target/release/refstrip}
work=$(mktemp -d /var/tmp/bench-deltas.XXXXXX)
trap 'rm -rf "$work"' EXIT
gen1=$here/corpus/small/gen1 bump=$here/corpus/small/bump
xz=162876 # NAR.xz of bump's 5 new paths (docs/store.md, "Nix cache, xz")
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(' '.join(str(d[k]) for k in sys.argv[1:]))" "$@"; }
for run in $(seq "$runs"); do
  for mode in deltas no-deltas; do
    store=$work/$mode-$run root=$work/root-$mode-$run
    flag=(); [ $mode = no-deltas ] && flag=(--no-deltas)
    "$bin" ingest "$gen1" --all --to "$store" "${flag[@]}" > /dev/null
    read -r stored secs ndeltas dbytes < <("$bin" ingest "$bump" --all --to "$store" --json "${flag[@]}" | json stored_bytes seconds deltas delta_bytes)
    nix copy --no-check-sigs --from "file://$gen1" --to "$root" "$(cat "$gen1/roots")" 2>/dev/null
    read -r fetched files < <("$bin" substitute --json --no-cache --no-check-sigs --from "$store" --store "$root" "$(cat "$bump/roots")" | json fetched_bytes delta_files)
    printf '| %s | %d | %s | %d | %d (%d B) | %d | %.1f %% | %d |\n' "$mode" "$run" "$secs" "$stored" "$ndeltas" "$dbytes" "$fetched" "$(echo "100 * $fetched / $xz" | bc -l)" "$files"
    rm -rf "$store" "$root"
  done
done | { echo "| store | run | bump ingest s | bump stored B | deltas stored | fetched B | of NAR.xz | files from deltas |"; echo "|---|---:|---:|---:|---:|---:|---:|---:|"; cat; }
echo
echo "load average $(cut -d' ' -f1-3 /proc/loadavg); \`bash tools/bench_deltas.sh $*\`"
