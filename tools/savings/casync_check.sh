#!/usr/bin/env bash
# Cross-check the cdc-nar-zstd row of `refstrip savings` with real casync (Debian's `casync`): chunk
# the same NARs of two generations with `casync make` at the same sizes (16/64/256 KiB, zstd) and
# compare the chunks the new generation adds with what refstrip counts.
#
#   bash tools/savings/casync_check.sh OLD_CACHE NEW_CACHE [REFSTRIP]
#
# OLD_CACHE/NEW_CACHE: binary-cache directories (NARs compressed with zstd, xz or none).
# casync chunks with a buzhash rolling hash, refstrip (like attic) with FastCDC 2020; both cut at
# the same min/avg/max, so chunk counts and byte totals should be close, not equal.
set -euo pipefail

old=${1:?usage: casync_check.sh OLD_CACHE NEW_CACHE [REFSTRIP]}
new=${2:?usage: casync_check.sh OLD_CACHE NEW_CACHE [REFSTRIP]}
refstrip=${3:-refstrip}
command -v casync >/dev/null || { echo "casync is not installed (apt-get install casync)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Decompress every NAR of a cache and chunk it into the side's casync store.
chunk_cache() {
    local cache=$1 side=$2
    mkdir -p "$work/$side/nar" "$work/$side/idx"
    for narinfo in "$cache"/*.narinfo; do
        local url comp base
        url=$(sed -n 's/^URL: //p' "$narinfo")
        comp=$(sed -n 's/^Compression: //p' "$narinfo")
        base=$(basename "$narinfo" .narinfo)
        case "$comp" in
            zstd) zstd -q -d -c "$cache/$url" ;;
            xz) xz -d -c "$cache/$url" ;;
            none|"") cat "$cache/$url" ;;
            *) echo "$narinfo: unsupported compression $comp" >&2; exit 1 ;;
        esac > "$work/$side/nar/$base.nar"
        casync make --compression=zstd --chunk-size=16384:65536:262144 \
            --store="$work/$side/store" "$work/$side/idx/$base.caibx" "$work/$side/nar/$base.nar" >/dev/null
    done
}

chunk_cache "$old" old
chunk_cache "$new" new

# Chunk files are named by the digest of their uncompressed contents: a chunk the new store holds
# and the old one does not is one a client with the old closure downloads.
( cd "$work/old/store" && find . -name '*.cacnk' -printf '%f\n' | sort ) > "$work/old.ids"
( cd "$work/new/store" && find . -name '*.cacnk' -printf '%f %s\n' | sort ) > "$work/new.sizes"
closure_units=$(wc -l < "$work/new.sizes")
closure_bytes=$(awk '{s+=$2} END {print s+0}' "$work/new.sizes")
join -v 1 "$work/new.sizes" "$work/old.ids" > "$work/added"
added_units=$(wc -l < "$work/added")
added_bytes=$(awk '{s+=$2} END {print s+0}' "$work/added")

ours=$("$refstrip" savings --old "$old" --new "$new" --methods cdc-nar-zstd --json 2>/dev/null)
read -r our_cu our_cb our_du our_db < <(python3 -c '
import json, sys
r = json.load(sys.stdin)["rows"][0]
print(r["closure_units"], r["closure"], r["downloaded_units"], r["downloaded"])' <<<"$ours")

printf '%-26s %14s %16s %14s %16s\n' "" "closure chunks" "closure bytes" "new chunks" "new bytes"
printf '%-26s %14s %16s %14s %16s\n' "casync (buzhash, zstd)" "$closure_units" "$closure_bytes" "$added_units" "$added_bytes"
printf '%-26s %14s %16s %14s %16s\n' "refstrip cdc-nar-zstd" "$our_cu" "$our_cb" "$our_du" "$our_db"
