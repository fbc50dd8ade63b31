#!/usr/bin/env bash
# Print a markdown table of a corpus profile's generations, from the narinfos Nix itself wrote.
#
#   tools/corpus/stats.sh DIR [XZDIR]
#
# DIR holds one zstd binary cache per generation (DIR/gen1, DIR/mass, ...), XZDIR (optional) the xz
# caches of the same closures. Columns:
#   paths      narinfos in the cache          NarSize   sum of NarSize
#   zstd, xz   sum of FileSize of the compressed NARs as the narinfos report them
#   new        store paths not in gen1        new NarSize / new zstd: what a plain cache must add
#   same-NAR   of the new paths, how many have a NarHash equal to some gen1 NAR (byte-identical NAR)
set -euo pipefail
dir="${1:?usage: stats.sh DIR [XZDIR]}"; xzdir="${2:-}"
field() { awk -v k="$1:" '$1 == k { print $2 }' "$2"; }
sum() { awk -v k="$1:" '$1 == k { s += $2 } END { printf "%d", s }' "$2"/*.narinfo; }
gens=""
for g in gen1 mass single bump channel; do [ -d "$dir/$g" ] && gens="$gens $g"; done
ref="$dir/gen1"
declare -A refpath refhash
for ni in "$ref"/*.narinfo; do
  refpath[$(field StorePath "$ni")]=1; refhash[$(field NarHash "$ni")]=1
done
echo "| generation | paths | NarSize | zstd FileSize | xz FileSize | new vs gen1 | new NarSize | new zstd | new NARs byte-identical to a gen1 NAR |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for g in $gens; do
  d="$dir/$g"; n=0 new=0 same=0 newnar=0 newzst=0
  for ni in "$d"/*.narinfo; do
    n=$((n+1))
    if [ -z "${refpath[$(field StorePath "$ni")]:-}" ]; then
      new=$((new+1)); newnar=$((newnar + $(field NarSize "$ni"))); newzst=$((newzst + $(field FileSize "$ni")))
      [ -n "${refhash[$(field NarHash "$ni")]:-}" ] && same=$((same+1))
    fi
  done
  xz="-"; [ -n "$xzdir" ] && [ -d "$xzdir/$g" ] && xz="$(sum FileSize "$xzdir/$g")"
  echo "| $g | $n | $(sum NarSize "$d") | $(sum FileSize "$d") | $xz | $new | $newnar | $newzst | $same |"
done
