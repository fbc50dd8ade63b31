#!/usr/bin/env bash
# Wall time and peak RSS of putting one closure into a fresh Nix store, in one run:
#   refstrip substitute from a local normalized store   vs
#   nix copy --no-check-sigs from a file:// binary cache (the same paths)   vs
#   cp -a of the same unpacked paths (the floor: creating the files).
# Usage: tools/bench_substitute.sh NORMALIZED_STORE CACHE_DIR ROOT_PATH [XZ_CACHE_DIR]
# (CACHE_DIR holds the generation as `nix copy` wrote it, with a `paths` index of the closure.)
set -euo pipefail
store=$1 cache=$2 root=$3 xz=${4:-}
bin=$(dirname "$0")/../target/release/refstrip
work=$(mktemp -d /tmp/bench-subst.XXXXXX)
trap 'rm -rf "$work"' EXIT
measure() { # label, command...
  local label=$1; shift
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" > /dev/null 2> "$work/err" || { cat "$work/err"; exit 1; }
  read -r secs kib < "$work/time"
  printf '| %s | %s | %d MiB |\n' "$label" "$secs" $((kib / 1024))
}
echo "| method | wall s | peak RSS |"
echo "|---|---:|---:|"
measure "refstrip substitute (local normalized store)" "$bin" substitute --from "$store" --store "$work/r1" --no-check-sigs --no-cache "$root"
measure "refstrip substitute --links" "$bin" substitute --from "$store" --store "$work/r5" --no-check-sigs --no-cache --links "$root"
measure "nix copy --no-check-sigs from file:// zstd cache" nix copy --no-check-sigs --from "file://$cache" --to "$work/r2" "$root"
if [ -n "$xz" ]; then
  measure "nix copy --no-check-sigs from file:// xz cache" nix copy --no-check-sigs --from "file://$xz" --to "$work/r4" "$root"
fi
mkdir -p "$work/r3/nix/store"
measure "cp -a of the unpacked paths" cp -a $(cat "$cache/paths") "$work/r3/nix/store/"
echo
echo "$(wc -l < "$cache/paths") paths; load average $(cut -d' ' -f1-3 /proc/loadavg); \`bash tools/bench_substitute.sh $*\`"
