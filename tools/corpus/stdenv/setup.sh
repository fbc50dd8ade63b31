# refstrip corpus stdenv, revision @stdenvRevision@.
# A deliberately small imitation of nixpkgs' stdenv/generic/setup.sh: phases, build-input
# environment, multiple outputs, strip, patchelf --shrink-rpath, patchShebangs, man page compression.
set -eu -o pipefail
shopt -s nullglob

export PATH="@out@/bin:/usr/bin:/bin"
export HOME=/homeless-shelter TZ=UTC LC_ALL=C SOURCE_DATE_EPOCH=315532800
export CC=cc CXX=c++ CONFIG_SHELL=/bin/bash
export NIX_BUILD_CORES="${NIX_BUILD_CORES:-2}"
[ "$NIX_BUILD_CORES" -gt 0 ] 2>/dev/null || NIX_BUILD_CORES=2
stdenvRevision="@stdenvRevision@"

outputs="${outputs:-out}"
outHash="$(basename "$out")"; outHash="${outHash%%-*}"
NIX_CFLAGS_COMPILE="-frandom-seed=${outHash:0:10}"
NIX_LDFLAGS="-Wl,-rpath,$out/lib"
PKG_CONFIG_PATH=""
for i in ${buildInputs:-}; do
  [ -d "$i/include" ] && NIX_CFLAGS_COMPILE+=" -isystem $i/include"
  [ -d "$i/lib" ] && NIX_LDFLAGS+=" -L$i/lib -Wl,-rpath,$i/lib"
  [ -d "$i/lib/pkgconfig" ] && PKG_CONFIG_PATH+="${PKG_CONFIG_PATH:+:}$i/lib/pkgconfig"
  [ -d "$i/bin" ] && PATH="$i/bin:$PATH"
done
export NIX_CFLAGS_COMPILE NIX_LDFLAGS PKG_CONFIG_PATH PATH

runHook() { local h="${!1:-}"; if [ -n "$h" ]; then eval "$h"; fi; }

unpackPhase() {
  mkdir -p "$NIX_BUILD_TOP/src"; cd "$NIX_BUILD_TOP/src"
  tar xf "$src"
  local dirs=(*/)
  cd "${dirs[0]}"
  if [ -n "${sourceRoot:-}" ]; then cd "$sourceRoot"; fi
}

configurePhase() {
  if [ -n "${cmakeFlags+x}" ] || [ -n "${useCmake:-}" ]; then
    mkdir -p build; cd build
    cmake .. -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$out" \
      -DCMAKE_INSTALL_LIBDIR=lib -DCMAKE_INSTALL_INCLUDEDIR="${dev:-$out}/include" \
      -DCMAKE_SKIP_BUILD_RPATH=ON -DCMAKE_C_COMPILER=cc ${cmakeFlags:-}
    return
  fi
  [ -x ./configure ] || return 0
  local flags=(--prefix="$out")
  if [ -n "${dev:-}" ]; then flags+=(--includedir="$dev/include"); fi
  if [ -z "${dontDisableStatic:-}" ] && grep -q enable-static ./configure; then flags+=(--disable-static); fi
  ./configure "${flags[@]}" ${configureFlags:-}
}

buildPhase() { make -j"$NIX_BUILD_CORES" ${makeFlags:-}; }
installPhase() { make install ${makeFlags:-} ${installFlags:-}; }

isELF() { [ "$(head -c4 "$1" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ]; }

# Move a path (glob relative to $out) into another output, like nixpkgs' moveToOutput.
moveToOutput() {
  local pat="$1" dst="$2" f rel
  [ -n "$dst" ] && [ "$dst" != "$out" ] || return 0
  for f in $out/$pat; do
    [ -e "$f" ] || [ -L "$f" ] || continue
    rel="${f#$out/}"
    mkdir -p "$(dirname "$dst/$rel")"
    if [ -d "$f" ] && [ -d "$dst/$rel" ]; then cp -a "$f/." "$dst/$rel/"; rm -rf "$f"
    else mv "$f" "$dst/$rel"; fi
    rmdir -p --ignore-fail-on-non-empty "$(dirname "$f")" 2>/dev/null || true
  done
}

patchShebangs() {
  local f first interp args new base
  for f in $(find "$@" -type f -perm -0100 2>/dev/null | sort); do
    read -r first < "$f" || true
    [ "${first:0:2}" = '#!' ] || continue
    interp="${first#\#!}"; interp="${interp# }"; args=""
    if [ "${interp%% *}" != "$interp" ]; then args=" ${interp#* }"; interp="${interp%% *}"; fi
    [ "${interp#$NIX_STORE/}" = "$interp" ] || continue
    if [ "$(basename "$interp")" = env ]; then base="${args# }"; base="${base%% *}"; args="${args# $base}"
    else base="$(basename "$interp")"; fi
    new=""
    if [ "$base" = sh ] && [ -n "${shell:-}" ]; then new="$shell"
    else for i in $out ${buildInputs:-}; do [ -x "$i/bin/$base" ] && { new="$i/bin/$base"; break; }; done; fi
    [ -n "$new" ] || continue
    echo "patchShebangs: $f: $first -> #!$new$args"
    sed -i -e "1s|^.*\$|#!$new$args|" "$f"
  done
}

fixupPhase() {
  local o d f
  # multiple outputs: headers, pkg-config, cmake, libtool archives, aclocal and *-config to dev
  if [ -n "${dev:-}" ]; then
    moveToOutput include "$dev"
    moveToOutput "lib/pkgconfig" "$dev"
    moveToOutput "share/pkgconfig" "$dev"
    moveToOutput "lib/cmake" "$dev"
    moveToOutput "lib/*.la" "$dev"
    moveToOutput "share/aclocal" "$dev"
    moveToOutput "bin/*-config" "$dev"
    for f in $dev/lib/pkgconfig/*.pc; do
      sed -i -e "s|^includedir=.*|includedir=$dev/include|" "$f"
    done
    mkdir -p "$dev/nix-support"
    echo "$out ${propagatedBuildInputs:-}" | tr ' ' '\n' | sed '/^$/d' | tr '\n' ' ' > "$dev/nix-support/propagated-build-inputs"
  fi
  for o in $outputs; do
    d="${!o}"
    [ -d "$d" ] || continue
    rm -f "$d/share/info/dir"
    find "$d" -name '*.a' -path '*/lib/*' -delete
    # strip -S (debug only) like nixpkgs' default stripDebugList, then shrink the rpath
    for f in $(find "$d" -type f \( -path "$d/bin/*" -o -path "$d/lib/*" -o -path "$d/libexec/*" \) | sort); do
      isELF "$f" || continue
      strip -S -p "$f" || true
      if patchelf --print-rpath "$f" >/dev/null 2>&1; then patchelf --shrink-rpath "$f"; fi
    done
    # compress man pages without timestamps (gzip -n), fix up symlinks to them
    if [ -d "$d/share/man" ]; then
      find "$d/share/man" -type f ! -name '*.gz' -exec gzip -9n {} +
      for f in $(find "$d/share/man" -type l ! -name '*.gz'); do
        ln -sf "$(readlink "$f").gz" "$f.gz"; rm "$f"
      done
    fi
    patchShebangs "$d/bin" "$d/libexec"
  done
}

patchPhase() {
  local p
  for p in ${patches:-}; do echo "applying $p"; patch -p1 < "$p"; done
}

genericBuild() {
  local p n
  NIX_BUILD_TOP="${NIX_BUILD_TOP:-$PWD}"
  for p in ${phases:-unpackPhase patchPhase configurePhase buildPhase installPhase fixupPhase}; do
    echo "=== $p ($name, stdenv @stdenvRevision@)"
    n="${p%Phase}"
    runHook "pre${n^}"
    if [ -n "${!p:-}" ]; then eval "${!p}"; else "$p"; fi
    runHook "post${n^}"
  done
  for o in $outputs; do mkdir -p "${!o}"; done
  workaroundNix2176
}

# Nix decides a builder is done when its log pipe reaches EOF and then SIGKILLs the process group;
# the kernel closes the pipe before the exiting builder is a zombie, so a quick builder is sometimes
# reported "failed due to signal 9" (NixOS/nix#2176). A short-lived background child holding the
# pipe makes the EOF come after the builder has really exited.
workaroundNix2176() { sleep 0.3 & }
