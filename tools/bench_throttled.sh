#!/usr/bin/env bash
# The update after a mass rebuild over a slow link, end to end, stock Nix doing the copying:
#   plain:  nix copy --from <throttled plain zstd cache of NEW>                         vs
#   serve:  nix copy --from <refstrip serve --local-store ROOT --cache DIR
#                             --from <throttled normalized store of OLD+NEW>>
# at each link rate (Mbit/s, with LATENCY_MS added per request), and without a link:
#   substitute:         refstrip substitute --from <normalized store dir> (index made ahead)
#   substitute+index:   the same, indexing the local store in the same run
#   nix copy (local):   nix copy --from file://<plain zstd cache of NEW>
# Every method starts from a fresh Nix store holding OLD, installed by plain `nix copy` (untimed),
# in a tmpfs (WORK) so that no run waits on the disk; serve is started (and has indexed OLD)
# before its timed copy, as a running daemon would have. Bytes are counted at the throttle.
# Runs are interleaved (methods alternate order each run); medians with min-max.
# Usage: tools/bench_throttled.sh NORMALIZED_STORE OLD_CACHE_DIR NEW_CACHE_DIR [RUNS] [RATES]
# (cache dirs as `nix copy` wrote them, with a `roots` file; the store holds both generations.)
# Env: REFSTRIP, THROTTLE (binaries; default target/release), LATENCY_MS (20), WORK (/dev/shm).
set -euo pipefail
store=$(realpath "$1") old=$(realpath "$2") new=$(realpath "$3") runs=${4:-3} rates=${5:-"20 100 1000"}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${REFSTRIP:-$here/target/release/refstrip}
throttle=${THROTTLE:-$here/target/release/refstrip-throttle}
latency=${LATENCY_MS:-20}
work=$(mktemp -d "${WORK:-/dev/shm}/bench-throttled.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
old_root=$(cat "$old/roots") new_root=$(cat "$new/roots")
results=$work/results   # method rate seconds bytes
: > "$results"
log=${LOG:-/dev/stderr}

fresh_root() { # dir: a Nix store holding OLD, as plain nix copy installs it
  rm -rf "$1"
  nix copy --no-check-sigs --from "file://$old" --to "$1" $old_root 2> "$work/copy.err" ||
    { cat "$work/copy.err"; exit 1; }
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_throttle() { # dir, mbit -> sets url, pid
  "$throttle" --dir "$1" --mbit "$2" --latency-ms "$latency" > "$work/throttle.url" &
  pids+=($!); tpid=$!
  for _ in $(seq 100); do [ -s "$work/throttle.url" ] && break; sleep 0.05; done
  url=$(cat "$work/throttle.url"); rm -f "$work/throttle.url"
}

sent() { curl -s "$url/.throttle/stats" | awk '/^bytes/ {print $2}'; }

timed() { # label rate command... : seconds and throttle bytes appended to results
  local label=$1 rate=$2; shift 2
  local before=0; [ -n "${url:-}" ] && before=$(sent)
  local t0 t1
  t0=$(date +%s.%N)
  XDG_CACHE_HOME=$work/xdg "$@" > "$work/out" 2>&1 || { cat "$work/out"; exit 1; }
  t1=$(date +%s.%N)
  rm -rf "$work/xdg"
  local after=0; [ -n "${url:-}" ] && after=$(sent)
  local secs; secs=$(echo "$t1 - $t0" | bc)
  echo "$label $rate $secs $((after - before))" >> "$results"
  echo "run $run: $label at $rate: $secs s, $((after - before)) bytes" >> "$log"
}

# Nix's narinfo cache starts empty (XDG_CACHE_HOME per run) with Nix's default TTLs, whatever
# nix.conf says (the test machine sets them to 0, which makes nix copy ask each narinfo ~4 times).
nix_copy() { # from root
  nix copy --no-check-sigs --option narinfo-cache-positive-ttl 2592000 \
    --option narinfo-cache-negative-ttl 3600 --from "$1" --to "$2" $new_root
}

plain() { # rate
  fresh_root "$work/root"
  start_throttle "$new" "$1"
  timed plain "$1" nix_copy "$url" "$work/root"
  kill "$tpid"; wait "$tpid" 2>/dev/null || true; url=
}

through_serve() { # rate
  fresh_root "$work/root"
  start_throttle "$store" "$1"
  local port; port=$(free_port)
  local t0; t0=$(date +%s.%N)
  "$bin" serve --from "$url" --local-store "$work/root" --cache "$work/cache" --cache-size 8G \
    --store-dir /nix/store --listen "127.0.0.1:$port" 2> "$work/serve.log" &
  local spid=$!; pids+=($spid)
  until curl -s -o /dev/null "http://127.0.0.1:$port/nix-cache-info"; do
    kill -0 "$spid" || { cat "$work/serve.log"; exit 1; }
    sleep 0.1
  done
  echo "serve indexed the local store and listened in $(echo "$(date +%s.%N) - $t0" | bc) s" >> "$log"
  timed serve "$1" nix_copy "http://127.0.0.1:$port" "$work/root"
  [ "$run" = 1 ] && verify "$work/root"
  kill -TERM "$spid"; wait "$spid" 2>/dev/null || true
  kill "$tpid"; wait "$tpid" 2>/dev/null || true; url=
  rm -rf "$work/cache"
}

verify() { # root: nix-store --verify --check-contents must pass without complaint
  if nix-store --store "$1" --verify --check-contents 2>&1 | grep -E "error|modified|disappeared"; then
    echo "verify failed for $1" >&2; exit 1
  fi
}

substitute() { # label, index ahead (yes/no)
  fresh_root "$work/root"
  [ "$2" = yes ] && "$bin" index --store "$work/root" > /dev/null
  timed "$1" - "$bin" substitute --no-check-sigs --no-cache --from "$store" --store "$work/root" $new_root
  [ "$run" = 1 ] && verify "$work/root"
  true
}

local_copy() {
  fresh_root "$work/root"
  timed "nix-copy-local" - nix_copy "file://$new" "$work/root"
}

url=
for run in $(seq "$runs"); do
  for rate in $rates; do
    if [ $((run % 2)) = 1 ]; then plain "$rate"; through_serve "$rate"
    else through_serve "$rate"; plain "$rate"; fi
  done
  if [ $((run % 2)) = 1 ]; then substitute substitute yes; substitute substitute+index no; local_copy
  else local_copy; substitute substitute+index no; substitute substitute yes; fi
done
rm -rf "$work/root"

# Median and range per (method, rate), then the tables.
summary() { # method rate -> "median min max bytes-median"
  awk -v m="$1" -v r="$2" '$1 == m && $2 == r {print $3, $4}' "$results" | sort -n | awk '
    {t[NR] = $1; b[NR] = $2} END {
      n = NR; if (n == 0) exit
      med = (n % 2) ? t[(n + 1) / 2] : (t[n / 2] + t[n / 2 + 1]) / 2
      printf "%.2f %.2f %.2f %d\n", med, t[1], t[n], b[int((n + 1) / 2)]
    }'
}
echo "| link | method | wall s, median (min–max) | bytes from the upstream | speed-up |"
echo "|---|---|---:|---:|---:|"
for rate in $rates; do
  read -r pm pmin pmax pb <<< "$(summary plain "$rate")"
  read -r sm smin smax sb <<< "$(summary serve "$rate")"
  printf '| %s Mbit/s | `nix copy` from the throttled zstd cache | %s (%s–%s) | %s | 1 |\n' "$rate" "$pm" "$pmin" "$pmax" "$pb"
  printf '| %s Mbit/s | `nix copy` through `refstrip serve --local-store` | %s (%s–%s) | %s | %.1f× |\n' "$rate" "$sm" "$smin" "$smax" "$sb" "$(echo "$pm / $sm" | bc -l)"
done
echo
echo "| method (no link) | wall s, median (min–max) | speed-up |"
echo "|---|---:|---:|"
read -r lm lmin lmax _ <<< "$(summary nix-copy-local -)"
printf '| `nix copy` from the local zstd cache | %s (%s–%s) | 1 |\n' "$lm" "$lmin" "$lmax"
for m in substitute substitute+index; do
  read -r m1 m2 m3 _ <<< "$(summary "$m" -)"
  printf '| `refstrip %s` | %s (%s–%s) | %.2f× |\n' "$m" "$m1" "$m2" "$m3" "$(echo "$lm / $m1" | bc -l)"
done
echo
echo "$runs interleaved runs, latency ${latency} ms per request; load average $(cut -d' ' -f1-3 /proc/loadavg); \`bash tools/bench_throttled.sh $*\`"
