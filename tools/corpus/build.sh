#!/usr/bin/env bash
# Build the refstrip test corpus: real Debian upstream sources, built with Nix by a tiny nixpkgs-like
# stdenv (tools/corpus/*.nix), signed with the corpus key, written as Nix binary caches.
#
#   tools/corpus/build.sh PROFILE [OUTDIR]        build every generation of PROFILE into OUTDIR/GEN/
#   tools/corpus/build.sh --check PROFILE         rebuild and diff store paths against corpus/PROFILE
#   tools/corpus/build.sh --check --fresh PROFILE first delete the corpus' paths from the local store
#                                                 (if nothing else uses them) so everything really rebuilds
#
# PROFILE: small (committed as corpus/small), full, large (Debian binary packages, see large.sh).
# OUTDIR defaults to corpus/PROFILE for small and /var/cache/refstrip-corpus/out/PROFILE otherwise.
# Every OUTDIR/GEN/ is a zstd binary cache plus three index files:
#   roots     the closure root (a buildEnv-like profile)
#   paths     every store path of the closure, sorted
#   packages  name<TAB>version<TAB>output<TAB>store path of every package output (pairs "same package")
# xz caches of the same closures (for size measurements only) go to $CORPUS_CACHE/xz/PROFILE/GEN.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
CORPUS_CACHE="${CORPUS_CACHE:-/var/cache/refstrip-corpus}"
SRC_DIR="$CORPUS_CACHE/src"
GCROOTS="$CORPUS_CACHE/gcroots"
KEY_DIR="$repo/corpus/keys"
KEY_NAME=refstrip-corpus-1
GENERATIONS="${GENERATIONS:-gen1 mass single bump channel}"
CORES="${CORES:-2}"

check=0 fresh=0
while [ $# -gt 0 ]; do
  case "$1" in
    --check) check=1 ;;
    --fresh) fresh=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
profile="${1:?usage: build.sh [--check [--fresh]] PROFILE [OUTDIR]}"
if [ "$profile" = large ]; then shift; exec bash "$here/large.sh" "$@"; fi
case "$profile" in small|full) ;; *) echo "unknown profile $profile" >&2; exit 2 ;; esac
if [ "$check" = 1 ]; then
  outdir="$(mktemp -d /tmp/refstrip-corpus-check.XXXXXX)"
  refdir="${2:-$repo/corpus/$profile}"
else
  if [ "$profile" = small ]; then outdir="${2:-$repo/corpus/small}"; else outdir="${2:-$CORPUS_CACHE/out/$profile}"; fi
fi
mkdir -p "$outdir"; outdir="$(cd "$outdir" && pwd)"
log() { echo "corpus: $*" >&2; }

# ---- 1. tools -------------------------------------------------------------------------------------
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v nix-store >/dev/null 2>&1 || ! grep -q '^sandbox = false' /etc/nix/nix.conf 2>/dev/null; then
  log "installing/configuring Nix via tools/setup.sh"; bash "$repo/tools/setup.sh"
fi
need=()
for c in patchelf:patchelf zstd:zstd xz:xz-utils cmake:cmake tclsh:tcl gcc:gcc make:make ar:binutils gzip:gzip; do
  command -v "${c%%:*}" >/dev/null 2>&1 || need+=("${c#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >/dev/null
fi

# ---- 2. sources: upstream orig tarballs of Debian source packages, checked against sources.lock ------
srcfile=/etc/apt/sources.list.d/refstrip-corpus-src.sources
ensure_deb_src() {
  if [ ! -e "$srcfile" ]; then
    log "adding deb-src entries ($srcfile)"
    printf '%s\n' '# Added by refstrip tools/corpus/build.sh: source packages for the test corpus.' \
      'Types: deb-src' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm bullseye trixie' \
      'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' | as_root tee "$srcfile" >/dev/null
    as_root apt-get update -qq
  fi
}
mkdir -p "$SRC_DIR" "$GCROOTS"
while read -r key deb file sha; do
  case "$key" in ''|'#'*) continue ;; esac
  if [ -f "$SRC_DIR/$file" ] && echo "$sha  $SRC_DIR/$file" | sha256sum -c --status; then continue; fi
  ensure_deb_src
  log "apt-get source --download-only $deb"
  # the .debian.tar may be missing from a partial mirror; only the .orig tarball is used
  (cd "$SRC_DIR" && apt-get source --download-only -qq "$deb" >/dev/null 2>&1) || true
  if ! { [ -f "$SRC_DIR/$file" ] && echo "$sha  $SRC_DIR/$file" | sha256sum -c --status; }; then
    echo "corpus: could not get $file (sha256 $sha) for $deb" >&2; exit 1
  fi
done < "$here/sources.lock"

# ---- 3. signing key (made once, committed with the corpus) --------------------------------------
if [ ! -f "$KEY_DIR/$KEY_NAME.sec" ]; then
  mkdir -p "$KEY_DIR"
  nix-store --generate-binary-cache-key "$KEY_NAME" "$KEY_DIR/$KEY_NAME.sec" "$KEY_DIR/$KEY_NAME.pub"
fi

# ---- 4. build, sign, publish every generation ------------------------------------------------------
if [ "$check" = 1 ] && [ "$fresh" = 1 ]; then
  # force real rebuilds: drop our GC roots and delete the corpus' paths from the local store
  for gen in $GENERATIONS; do rm -f "$GCROOTS/$profile-$gen"; done
  # (with every unrooted path that refers to them, or Nix refuses; rooted ones make this fail)
  mapfile -t present < <(cat "$refdir"/*/paths | sort -u | while read -r p; do [ -e "$p" ] && echo "$p"; done)
  if [ ${#present[@]} -gt 0 ]; then
    nix-store --delete $(nix-store -q --referrers-closure "${present[@]}") >/dev/null \
      || log "warning: some paths are still in use and were not deleted (they will not be rebuilt)"
  fi
fi
nixargs=(--argstr srcDir "$SRC_DIR" --argstr profile "$profile")
for gen in $GENERATIONS; do
  log "building $profile/$gen"
  # retried: on this shared machine a builder has been seen killed by a stray SIGKILL
  for try in 1 2 3; do
    if root="$(nix-build "$here/default.nix" -A root "${nixargs[@]}" --argstr generation "$gen" \
                 --cores "$CORES" --max-jobs 1 -o "$GCROOTS/$profile-$gen")"; then break; fi
    [ "$try" -lt 3 ] || exit 1
    log "nix-build failed, retrying"
  done
  log "$profile/$gen root: $root"
  nix store sign --key-file "$KEY_DIR/$KEY_NAME.sec" -r "$root"
  d="$outdir/$gen"
  rm -rf "$d"; mkdir -p "$d"
  nix copy --to "file://$d?compression=zstd" "$root"
  echo "$root" > "$d/roots"
  nix-store -qR "$root" | sort > "$d/paths"
  nix eval --raw -f "$here/default.nix" indexText "${nixargs[@]}" --argstr generation "$gen" | sort > "$d/packages"
  if [ "$check" = 0 ]; then
    x="$CORPUS_CACHE/xz/$profile/$gen"
    rm -rf "$x"; mkdir -p "$x"
    nix copy --to "file://$x?compression=xz" "$root"
  fi
done

# ---- 5. check: same store paths as the committed corpus? ----------------------------------------
if [ "$check" = 1 ]; then
  status=0
  for gen in $GENERATIONS; do
    for f in roots paths packages; do
      if diff -u "$refdir/$gen/$f" "$outdir/$gen/$f"; then :; else status=1; fi
    done
    same=0 diff=0
    for ni in "$refdir/$gen"/*.narinfo; do
      a="$(grep '^NarHash:' "$ni")"; b="$(grep '^NarHash:' "$outdir/$gen/$(basename "$ni")" 2>/dev/null || true)"
      if [ "$a" = "$b" ]; then same=$((same+1)); else diff=$((diff+1)); fi
    done
    log "$gen: store paths $( [ $status = 0 ] && echo identical || echo DIFFER ); NAR content: $same identical, $diff differ (informational)"
  done
  if [ "$status" = 0 ]; then log "check OK: store paths match $refdir"; rm -rf "$outdir"; else log "check FAILED (output kept in $outdir)"; fi
  exit "$status"
fi
log "done: $outdir"
