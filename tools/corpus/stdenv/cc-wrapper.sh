#!/bin/bash
# refstrip corpus cc-wrapper, stdenv revision @stdenvRevision@.
# Like nixpkgs' cc-wrapper + ld-wrapper: every build input contributes -isystem <dep>/include,
# -L<dep>/lib and -rpath <dep>/lib (the fixup phase shrinks the rpath to what is needed later),
# the package's own $out/lib is always on the rpath, and -frandom-seed is derived from $out.
set -eu
linking=1
for a in "$@"; do
  case "$a" in -c|-S|-E|-M|-MM) linking=0 ;; esac
done
extra=()
for f in ${NIX_CFLAGS_COMPILE:-}; do extra+=("$f"); done
if [ "$linking" = 1 ]; then
  for f in ${NIX_LDFLAGS:-}; do extra+=("$f"); done
fi
exec @realCC@ "$@" "${extra[@]}"
