#!/usr/bin/env bash
# refstrip demo on the embedded default (a local directory store with a SQLite catalog) over the
# committed corpus (corpus/small: real packages built by real Nix, five generations).
# Needs only Rust; nothing is installed and nothing outside a temporary directory is written.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet -p refstrip
bin=target/release/refstrip
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
store=$work/store

echo "== ingest the corpus generations into a normalized store ($store)"
# Both sides only pay for store paths they do not have yet: a Nix cache adds each new path's
# compressed NAR (its FileSize); refstrip adds new objects and one small record per new path.
printf '%-8s %9s %12s %16s %16s %7s\n' generation "new paths" "NAR bytes" "Nix cache (zstd)" "refstrip store" "saved"
for gen in gen1 mass single bump channel; do
  json=$("$bin" ingest corpus/small/$gen --all --to "$store" --json)
  python3 - "$gen" "$json" <<'PY'
import json, sys
gen, r = sys.argv[1], json.loads(sys.argv[2])
cache, ours = r["source_file_bytes"], r["stored_bytes"]
print(f"{gen:<8} {r['ingested']:>9} {r['nar_bytes']:>12,} {cache:>16,} {ours:>16,} {100 * (1 - ours / cache):>6.1f}%")
PY
done
echo
"$bin" stats "$store"

echo
echo "== what a client holding gen1 downloads for each update (xz NARs vs refstrip, with deltas)"
for gen in mass bump channel; do
  "$bin" savings --old corpus/small/gen1 --new corpus/small/$gen \
    --methods nar-xz,stripped-cdc-zstd,stripped-cdc-zstd-delta | sed -n '/^method/,/^stripped-cdc-zstd-delta/p' | sed "s/^/gen1 -> $gen  /"
done

echo
echo "== strip and restore one path, proving the result byte-exact"
lua=$(awk -F'\t' '$1 == "lua" && $3 == "out" {print $4}' corpus/small/gen1/packages)
narinfo=corpus/small/gen1/$(basename "$lua" | cut -c1-32).narinfo
nar=corpus/small/gen1/$(sed -n 's/^URL: //p' "$narinfo")
"$bin" strip --narinfo "$narinfo" --nar "$nar" -o "$work/lua.rsb"
"$bin" restore "$work/lua.rsb" -o "$work/lua.nar"
"$bin" narinfo verify "$narinfo" --trusted-public-keys "$(cat corpus/keys/refstrip-corpus-1.pub)"
echo
echo "Try: $bin --help"
