#!/usr/bin/env bash
# Build the store paths of default.nix (host files with real Nix references) and write them, with
# their closure, as a zstd binary cache for `refstrip-bench strip --cache DIR`.
#   bash tools/bench/cache/make-cache.sh [DIR]      (default /tmp/bench-cache)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest=${1:-/tmp/bench-cache}
mapfile -t outs < <(nix-build "$here/default.nix" -A all --no-out-link)
rm -rf "$dest"
nix copy --to "file://$dest?compression=zstd" "${outs[@]}"
printf '%s\n' "${outs[@]}" > "$dest/roots"
for p in "${outs[@]}"; do
  printf '%s\tNarSize %s\treferences %s\n' "$p" "$(nix path-info -s "$p" | cut -f2 | tr -d ' ')" "$(nix-store -q --references "$p" | wc -l)"
done
echo "cache: $dest ($(ls "$dest"/*.narinfo | wc -l) narinfos, $(du -sh "$dest" | cut -f1))"
