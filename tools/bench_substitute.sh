#!/usr/bin/env bash
# Cold substitute of one closure into a fresh Nix store, the peers interleaved in one run:
#   refstrip substitute --no-cache from a local normalized store     vs
#   nix copy --no-check-sigs from a file:// zstd binary cache (and an xz one, if given)   vs
#   cp -a of the same unpacked paths (the floor: creating the files).
# Every command gets a fresh file system (ext4 on a loop device with direct I/O, so that no other
# process's dirty pages, recently deleted inodes or fragmentation are in its way; or a tmpfs) and
# a dropped page cache. Reports per method the median wall time with min-max, CPU seconds (user +
# sys) and CPU seconds per GB of NAR, and the largest peak RSS. Needs root (mkfs, mount, losetup).
#
# Usage: tools/bench_substitute.sh NORMALIZED_STORE CACHE_DIR ROOT_PATH [XZ_CACHE_DIR]
#   RUNS=5 (runs of each method), FS="ext4 tmpfs" (file systems to measure on)
# (CACHE_DIR holds the closure as `nix copy` wrote it, with a `paths` index of it.)
set -euo pipefail
store=$1 cache=$2 root=$3 xz=${4:-}
runs=${RUNS:-5}
bin=$(cd "$(dirname "$0")/.." && pwd)/target/release/refstrip
work=$(mktemp -d /var/tmp/bench-subst.XXXXXX)
mnt=$work/mnt dev=
mkdir -p "$mnt"
cleanup() { mountpoint -q "$mnt" && umount "$mnt"; [ -n "$dev" ] && losetup -d "$dev" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
nar_bytes=0
for p in $(cat "$cache/paths"); do
  h=$(basename "$p" | cut -c1-32)
  nar_bytes=$((nar_bytes + $(sed -n 's/^NarSize: //p' "$cache/$h.narinfo")))
done
fresh() { # fs
  if [ "$1" = tmpfs ]; then
    mount -t tmpfs -o size=$((nar_bytes * 3 / 2 + (1 << 30))) tmpfs "$mnt"
  else
    truncate -s $(((nar_bytes * 3 + (2 << 30)) >> 20 << 20)) "$work/img"
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$work/img"
    dev=$(losetup --direct-io=on -f --show "$work/img")
    mount "$dev" "$mnt"
  fi
}
gone() { umount "$mnt"; if [ -n "$dev" ]; then losetup -d "$dev"; dev=; rm -f "$work/img"; fi; }
methods=(refstrip nix-zstd)
[ -n "$xz" ] && methods+=(nix-xz)
methods+=(cp)
command_of() { # method
  case $1 in
    refstrip) echo "$bin substitute --from $store --store $mnt/r --no-check-sigs --no-cache $root" ;;
    nix-zstd) echo "nix copy --no-check-sigs --from file://$cache --to $mnt/r $root" ;;
    nix-xz) echo "nix copy --no-check-sigs --from file://$xz --to $mnt/r $root" ;;
    cp) echo "cp -a $(tr '\n' ' ' < "$cache/paths") $mnt/r/nix/store/" ;;
  esac
}
label_of() {
  case $1 in
    refstrip) echo "\`refstrip substitute --no-cache\` (local normalized store)" ;;
    nix-zstd) echo "\`nix copy --no-check-sigs\` from the \`file://\` zstd cache" ;;
    nix-xz) echo "\`nix copy --no-check-sigs\` from the \`file://\` xz cache" ;;
    cp) echo "\`cp -a\` of the unpacked paths" ;;
  esac
}
for fs in ${FS:-ext4 tmpfs}; do
  for run in $(seq "$runs"); do
    for m in "${methods[@]}"; do
      fresh "$fs"
      [ "$m" = cp ] && mkdir -p "$mnt/r/nix/store"
      sync; echo 3 > /proc/sys/vm/drop_caches
      # shellcheck disable=SC2046
      /usr/bin/time -f "%e %U %S %M" -o "$work/time" $(command_of "$m") > "$work/out" 2>&1 \
        || { cat "$work/out"; exit 1; }
      gone
      echo "$fs $m $(cat "$work/time") $(cut -d' ' -f1 /proc/loadavg)" >> "$work/results"
      echo "$fs run $run $m: $(cat "$work/time") (wall user sys KiB)" >&2
    done
  done
done
echo "$(wc -l < "$cache/paths") paths, $nar_bytes NAR bytes; $runs runs of each, interleaved; load average during the runs $(awk '{print $7}' "$work/results" | sort -n | sed -n '1p;$p' | paste -sd-)"
echo
for fs in ${FS:-ext4 tmpfs}; do
  echo "On $fs:"
  echo
  echo "| method | wall s, median (min-max) | CPU s, median | CPU s per GB of NAR | peak RSS |"
  echo "|---|---:|---:|---:|---:|"
  for m in "${methods[@]}"; do
    awk -v fs="$fs" -v m="$m" -v label="$(label_of "$m")" -v gb="$nar_bytes" '
      $1 == fs && $2 == m { n++; wall[n] = $3; cpu[n] = $4 + $5; if ($6 > rss) rss = $6 }
      function median(a, n,   i, j, t) {
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
      }
      END {
        lo = wall[1]; hi = wall[1]; for (i = 1; i <= n; i++) { if (wall[i] < lo) lo = wall[i]; if (wall[i] > hi) hi = wall[i] }
        c = median(cpu, n)
        printf "| %s | %.2f (%.2f-%.2f) | %.2f | %.2f | %d MiB |\n", label, median(wall, n), lo, hi, c, c / (gb / 1e9), rss / 1024
      }' "$work/results"
  done
  echo
done
echo "\`RUNS=$runs FS=\"${FS:-ext4 tmpfs}\" bash tools/bench_substitute.sh $*\`"
