#!/usr/bin/env bash
# Profile "large" of the refstrip corpus (not committed; for performance work): the Debian 12 binary
# packages of a package set and all their dependencies (apt-get download), each laid out as a Nix
# store path by tools/corpus/large/deb2store.py (ELF interpreter + rpaths + #! + symlinks pointed at
# dependency store paths), generations gen1 and mass (only corpusRevision changes), and on request
# (GENERATIONS="old") old: the same set a channel update earlier, every package the archive also
# serves in an older bookworm version (bookworm vs -updates/-security) at its oldest one and
# corpusRevision "0", so that old -> gen1 is a channel update (version bumps and every hash changes).
#
#   tools/corpus/large.sh [OUTDIR]     (also: tools/corpus/build.sh large [OUTDIR])
#
# OUTDIR (default /var/cache/refstrip-corpus/out/large)/GEN is a zstd binary cache with roots, paths,
# packages index files as for the other profiles; with LARGE_XZ=1 also xz caches in
# /var/cache/refstrip-corpus/xz/large/GEN. The .deb versions are whatever bookworm (+ -updates,
# -security) serves at the time: store paths are reproducible only for the same .deb files
# (index.json records their sha256).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
CORPUS_CACHE="${CORPUS_CACHE:-/var/cache/refstrip-corpus}"
PKGSET="${PKGSET:-bash dash coreutils git python3 perl gcc-12 cmake vim-nox ffmpeg imagemagick}"
GENERATIONS="${GENERATIONS:-gen1 mass}"
debdir="$CORPUS_CACHE/debs"
outdir="${1:-$CORPUS_CACHE/out/large}"
key="$repo/corpus/keys/refstrip-corpus-1.sec"
log() { echo "corpus/large: $*" >&2; }
for c in patchelf dpkg-deb python3 zstd; do command -v $c >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq patchelf zstd python3 >/dev/null; break; }; done

mkdir -p "$debdir" "$outdir" "$CORPUS_CACHE/gcroots"
# shellcheck disable=SC2086
mapfile -t set < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
  --no-replaces --no-enhances $PKGSET | grep -v '^ ' | grep -v '^<' | sort -u)
log "${#set[@]} packages in the closure of: $PKGSET"
# file names of the candidate versions, in one apt call (in an empty dir: it lists only files it
# would download)
# shellcheck disable=SC2068
mapfile -t files < <(cd /tmp && mkdir -p refstrip-corpus-uris && cd refstrip-corpus-uris && apt-get download --print-uris ${set[@]} | awk '{ print $2 }')
missing=()
for f in "${files[@]}"; do [ -f "$debdir/$f" ] || missing+=("${f%%_*}"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get download ${#missing[@]} packages"
  (cd "$debdir" && apt-get download -qq "${missing[@]}")
fi
# only the .debs of the current set (the cache may hold older versions)
idxdir="$CORPUS_CACHE/large-set"; rm -rf "$idxdir"; mkdir -p "$idxdir"
for f in "${files[@]}"; do ln -s "$debdir/$f" "$idxdir/$f"; done
python3 "$here/large/mkindex.py" "$idxdir" > "$CORPUS_CACHE/large-index.json"
du -shL "$idxdir" >&2
if [[ " $GENERATIONS " == *" old "* ]]; then
  # shellcheck disable=SC2068
  mapfile -t olds < <(printf '%s\n' ${files[@]%%_*} | xargs apt-cache madison | python3 "$here/large/oldest.py")
  mapfile -t oldfiles < <(cd /tmp/refstrip-corpus-uris && apt-get download --print-uris "${olds[@]}" | awk '{ print $2 }')
  log "old: ${#olds[@]} packages at an older version"
  declare -A older  # name -> name=version
  for o in "${olds[@]}"; do older[${o%%=*}]="$o"; done
  missing=()
  for f in "${oldfiles[@]}"; do [ -f "$debdir/$f" ] || missing+=("${older[${f%%_*}]}"); done
  if [ ${#missing[@]} -gt 0 ]; then (cd "$debdir" && apt-get download -qq "${missing[@]}"); fi
  oldset="$CORPUS_CACHE/large-set-old"; rm -rf "$oldset"; mkdir -p "$oldset"
  for f in "${files[@]}"; do [ -n "${older[${f%%_*}]:-}" ] || ln -s "$debdir/$f" "$oldset/$f"; done
  for f in "${oldfiles[@]}"; do ln -s "$debdir/$f" "$oldset/$f"; done
  python3 "$here/large/mkindex.py" "$oldset" > "$CORPUS_CACHE/large-index-old.json"
fi

for gen in $GENERATIONS; do
  log "building $gen"
  set_dir="$idxdir" index="$CORPUS_CACHE/large-index.json"
  if [ "$gen" = old ]; then set_dir="$oldset" index="$CORPUS_CACHE/large-index-old.json"; fi
  root="$(nix-build "$here/large/default.nix" -A root --argstr debDir "$set_dir" \
    --argstr indexFile "$index" --argstr generation "$gen" \
    --max-jobs 2 --cores 1 -o "$CORPUS_CACHE/gcroots/large-$gen")"
  nix store sign --key-file "$key" -r "$root"
  d="$outdir/$gen"; rm -rf "$d"; mkdir -p "$d"
  nix copy --to "file://$d?compression=zstd" "$root"
  echo "$root" > "$d/roots"
  nix-store -qR "$root" | sort > "$d/paths"
  nix eval --raw -f "$here/large/default.nix" indexText --argstr debDir "$set_dir" \
    --argstr indexFile "$index" --argstr generation "$gen" | sort > "$d/packages"
  if [ "${LARGE_XZ:-0}" = 1 ]; then
    x="$CORPUS_CACHE/xz/large/$gen"; rm -rf "$x"; mkdir -p "$x"
    nix copy --to "file://$x?compression=xz" "$root"
  fi
done
log "done: $outdir"
