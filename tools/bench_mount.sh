#!/usr/bin/env bash
# Time to first byte and bytes fetched for one file of a closure, three ways:
#   refstrip mount (lazy): mount, `ls -R` the whole closure, read FILE    vs
#   refstrip substitute of the closure into a fresh chroot store, then read FILE    vs
#   nix copy --no-check-sigs of the closure from the binary cache, then read FILE.
# Usage: tools/bench_mount.sh CACHE_DIR ROOT_PATH FILE [NORMALIZED_STORE]
#   CACHE_DIR         a binary cache as `nix copy` wrote it (e.g. corpus/small/gen1)
#   ROOT_PATH         the closure's root store path
#   FILE              the file to read, relative to the store directory (<hash>-<name>/…)
#   NORMALIZED_STORE  CACHE_DIR ingested by `refstrip ingest`; made in a temp dir if not given
# Needs root and /dev/fuse. Runs $REFSTRIP, default target/release/refstrip. Every store is local
# and the page cache warm, so the times are CPU and file system costs, not network latency.
set -euo pipefail
cache=$(realpath "$1") root=$2 file=$3 store=${4:-}
bin=${REFSTRIP:-$(dirname "$0")/../target/release/refstrip}
work=$(mktemp -d /tmp/bench-mount.XXXXXX)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
if [ -z "$store" ]; then
  store=$work/store
  "$bin" ingest "$cache" --all --to "$store" > /dev/null
fi
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$@"; }
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, d))" "$@"; }

# 1. Lazy: everything is visible once the records are read; FILE costs the blocks it lies in.
mkdir -p "$work/mnt"
t0=$(now)
"$bin" mount --from "$store" --cache "$work/mount-cache" --stats "$work/stats.json" \
  "$work/mnt" "$root" > "$work/mount.out" 2> "$work/mount.err" &
pid=$!
until grep -q '^mounted' "$work/mount.out" 2> /dev/null; do
  kill -0 "$pid" 2> /dev/null || { cat "$work/mount.err"; exit 1; }
  sleep 0.005
done
t_mounted=$(now)
entries=$(ls -R "$work/mnt" | wc -l)
t_listed=$(now)
head -c 1 "$work/mnt/$file" > /dev/null
t_first=$(now)
size=$(wc -c < "$work/mnt/$file")
kill -TERM "$pid"; wait "$pid"; pid=
mount_bytes=$(json "$work/stats.json" 'record_bytes + fetched_bytes')
records=$(json "$work/stats.json" 'record_bytes')
paths=$(json "$work/stats.json" 'paths')

# 2. Substitute the closure, then read the file.
t1=$(now)
"$bin" substitute --json --from "$store" --store "$work/sub" --no-check-sigs \
  --cache "$work/sub-cache" "$root" > "$work/sub.json"
head -c 1 "$work/sub/nix/store/$file" > /dev/null
t_sub=$(now)
sub_bytes=$(json "$work/sub.json" 'fetched_bytes')

# 3. nix copy the closure from the binary cache (its compressed NARs), then read the file.
t2=$(now)
nix copy --no-check-sigs --from "file://$cache" --to "$work/copy" "$root" 2> "$work/copy.err" || { cat "$work/copy.err"; exit 1; }
head -c 1 "$work/copy/nix/store/$file" > /dev/null
t_copy=$(now)
nix path-info --json -r --store "file://$cache" "$root" > "$work/infos.json"
copy_bytes=$(python3 -c "import json,sys; print(sum(i['downloadSize'] for i in json.load(open(sys.argv[1]))))" "$work/infos.json")

echo "| method | first byte of the file (s) | bytes fetched |"
echo "|---|---:|---:|"
echo "| refstrip mount + \`ls -R\` ($entries lines) + read | $(since "$t0" "$t_first") (mounted $(since "$t0" "$t_mounted"), listed $(since "$t0" "$t_listed")) | $mount_bytes ($records of path records) |"
echo "| refstrip substitute, then read | $(since "$t1" "$t_sub") | $sub_bytes |"
echo "| nix copy from the binary cache, then read | $(since "$t2" "$t_copy") | $copy_bytes |"
echo
echo "$paths paths; FILE $file ($size bytes); load average $(cut -d' ' -f1-3 /proc/loadavg); \`bash tools/bench_mount.sh $*\`"
