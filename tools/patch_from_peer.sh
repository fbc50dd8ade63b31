#!/usr/bin/env bash
# The nix-sandwich peer for a version bump: per store path that changed between two generations of
# a corpus profile (paired by package name and output), `zstd -19 --long=27 --patch-from` of the
# new NAR against the old one — what a proxy serving whole-NAR deltas to a client holding the old
# path sends (narinfos not counted) — summed, against the new paths' NAR.xz.
#
#   tools/patch_from_peer.sh [PROFILE_DIR] [XZ_PROFILE_DIR] OLD NEW
#   e.g. tools/patch_from_peer.sh corpus/small /var/cache/refstrip-corpus/xz/small gen1 channel
set -euo pipefail
profile=$1 xz_profile=$2 old=$3 new=$4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
nar_of() { # CACHE_DIR STORE_PATH -> the NAR file's path in that cache
  local hash; hash=$(basename "$2" | cut -c1-32)
  echo "$1/$(sed -n 's/^URL: //p' "$1/$hash.narinfo")"
}
by_package() { awk -F'\t' '{ print $1 "/" $3 "\t" $4 }' "$1/packages" | sort; }
total_xz=0 total_delta=0 paths=0
while IFS=$'\t' read -r _ old_path new_path; do
  [ "$old_path" = "$new_path" ] && continue
  zstd -dqf "$(nar_of "$profile/$old" "$old_path")" -o "$work/old.nar"
  zstd -dqf "$(nar_of "$profile/$new" "$new_path")" -o "$work/new.nar"
  delta=$(zstd -19 --long=27 -q --patch-from="$work/old.nar" "$work/new.nar" -c 2>/dev/null | wc -c)
  xz=$(stat -c %s "$(nar_of "$xz_profile/$new" "$new_path")")
  total_xz=$((total_xz + xz)) total_delta=$((total_delta + delta)) paths=$((paths + 1))
done < <(join -t $'\t' -j1 <(by_package "$profile/$old") <(by_package "$profile/$new"))
echo "$old -> $new: $paths changed paths, NAR.xz $total_xz bytes, zstd -19 --patch-from $total_delta bytes ($((100 * total_delta / total_xz)) % of NAR.xz)"
