#!/usr/bin/env bash
# The update after a rebuild, as users feel it: a Nix store already holds generation OLD; time
# putting generation NEW into it, in one run, with
#   refstrip substitute --links (hard links from .links)   vs
#   refstrip substitute (every file written)                vs
#   nix copy --no-check-sigs from NEW's file:// binary cache.
# The object cache is warm for refstrip (it fetched OLD's blocks; a mass rebuild adds none), the
# page cache is dropped before each timed command.
# Usage: tools/bench_update.sh NORMALIZED_STORE OLD_CACHE_DIR NEW_CACHE_DIR
# (cache dirs as `nix copy` wrote them, with a `roots` file; the store holds both generations.)
set -euo pipefail
store=$1 old=$2 new=$3
bin=$(dirname "$0")/../target/release/refstrip
work=$(mktemp -d /var/tmp/bench-update.XXXXXX)
trap 'rm -rf "$work"' EXIT
old_root=$(cat "$old/roots") new_root=$(cat "$new/roots")
prepare() { # root, how
  case $2 in
    nix) nix copy --no-check-sigs --from "file://$old" --to "$work/$1" $old_root 2>/dev/null ;;
    links) "$bin" substitute --from "$store" --store "$work/$1" --cache "$work/cache" --no-check-sigs --links $old_root >/dev/null ;;
    *) "$bin" substitute --from "$store" --store "$work/$1" --cache "$work/cache" --no-check-sigs $old_root >/dev/null ;;
  esac
}
measure() { # label, command...
  local label=$1; shift
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %U %S %M" -o "$work/time" "$@" > /dev/null 2> "$work/err" || { cat "$work/err"; exit 1; }
  read -r secs user sys kib < "$work/time"
  printf '| %s | %s | %.2f | %d MiB |\n' "$label" "$secs" "$(echo "$user + $sys" | bc)" $((kib / 1024))
}
prepare links links; prepare plain plain; prepare nix nix
echo "| method | wall s | CPU s | peak RSS |"
echo "|---|---:|---:|---:|"
measure "refstrip substitute --links" "$bin" substitute --from "$store" --store "$work/links" --cache "$work/cache" --no-check-sigs --links $new_root
measure "refstrip substitute" "$bin" substitute --from "$store" --store "$work/plain" --cache "$work/cache" --no-check-sigs $new_root
measure "nix copy --no-check-sigs (zstd cache)" nix copy --no-check-sigs --from "file://$new" --to "$work/nix" $new_root
echo
echo "load average $(cut -d' ' -f1-3 /proc/loadavg); \`bash tools/bench_update.sh $*\`"
