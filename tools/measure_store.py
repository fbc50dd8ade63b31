#!/usr/bin/env python3
"""Measure what a normalized store costs per corpus generation, against the Nix caches' own sizes.

Usage: tools/measure_store.py [--generations G1,G2,...] PROFILE_DIR [XZ_PROFILE_DIR]
  PROFILE_DIR     directory of zstd binary caches, one per generation (e.g. corpus/small)
  XZ_PROFILE_DIR  the same generations as xz caches (tools/corpus/build.sh writes them to
                  /var/cache/refstrip-corpus/xz/PROFILE); without it the xz column is omitted.
  --generations   which generations to ingest, in this order (default: gen1, mass, single, bump,
                  channel). `--generations gen1,channel` measures the channel update alone: in
                  the default order, bump has already stored the lua 5.4.7 that channel brings.

Ingests the generations in order (those present) into a fresh store with the release binary (or
$REFSTRIP_BIN, e.g. an older build to compare with), under /usr/bin/time for peak RSS and CPU time,
and prints a Markdown table. "MB/s/core" is NAR bytes per CPU second (user + system) of the ingest
process, which other load on the machine distorts less than wall time. Both sides pay only for paths
they do not have yet: the caches their new paths' FileSize, refstrip its new packs and path records.
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

GENERATIONS = ["gen1", "mass", "single", "bump", "channel"]


def file_sizes(cache_dir):
    """hash part -> FileSize of every narinfo in a cache directory."""
    sizes = {}
    for f in glob.glob(os.path.join(cache_dir, "*.narinfo")):
        m = re.search(r"^FileSize: (\d+)$", open(f).read(), re.M)
        sizes[os.path.basename(f)[:32]] = int(m.group(1))
    return sizes


def main():
    args = sys.argv[1:]
    generations = GENERATIONS
    if args[:1] == ["--generations"]:
        generations = args[1].split(",")
        args = args[2:]
    profile = args[0]
    xz_profile = args[1] if len(args) > 1 else None
    binary = os.environ.get("REFSTRIP_BIN")
    if not binary:
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "refstrip"], check=True)
        binary = os.path.abspath("target/release/refstrip")
    store = os.path.join(tempfile.mkdtemp(), "store")
    seen = set()
    rows = []
    for gen in generations:
        cache = os.path.join(profile, gen)
        if not os.path.isdir(cache):
            continue
        zstd = file_sizes(cache)
        xz = file_sizes(os.path.join(xz_profile, gen)) if xz_profile else {}
        new = [h for h in zstd if h not in seen]
        seen.update(zstd)
        out = subprocess.run(
            ["/usr/bin/time", "-f", "RSS %M CPU %U %S", binary, "ingest", cache, "--all", "--to", store, "--json"],
            check=True, capture_output=True, text=True)
        report = json.loads(out.stdout)
        m = re.search(r"RSS (\d+) CPU ([\d.]+) ([\d.]+)", out.stderr)
        rss_kib, cpu = int(m.group(1)), float(m.group(2)) + float(m.group(3))
        assert report["ingested"] == len(new), (gen, report["ingested"], len(new))
        # Compare with xz only where the xz cache holds every new path of the generation.
        xz_total = sum(xz[h] for h in new) if new and all(h in xz for h in new) else None
        rows.append((gen, report, sum(zstd[h] for h in new), xz_total, rss_kib, cpu))
    stats = json.loads(subprocess.run([binary, "stats", store, "--json"], check=True, capture_output=True, text=True).stdout)
    shutil.rmtree(os.path.dirname(store))

    env = f"REFSTRIP_BIN={os.environ['REFSTRIP_BIN']} " if os.environ.get("REFSTRIP_BIN") else ""
    print(f"Profile `{profile}`; command: `{env}python3 tools/measure_store.py {' '.join(sys.argv[1:])}`\n")
    print("| generation | new paths | NAR bytes | Nix cache, xz | Nix cache, zstd | refstrip store | vs xz | vs zstd | new objects | packs | ingest MB/s | CPU s | MB/s/core | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for gen, r, zstd, xz, rss, cpu in rows:
        ours = r["stored_bytes"]
        xz_cells = (f"{xz:,}", f"{100 * ours / xz:.1f} %") if xz else ("-", "-")
        mbps = r["nar_bytes"] / 1e6 / max(r["seconds"], 1e-9)
        # Below ~0.1 s the CPU clock (10 ms ticks) says nothing.
        per_core = f"{r['nar_bytes'] / 1e6 / cpu:.1f}" if cpu >= 0.1 else "-"
        print(f"| {gen} | {r['ingested']} | {r['nar_bytes']:,} | {xz_cells[0]} | {zstd:,} | {ours:,} | {xz_cells[1]} | "
              f"{100 * ours / zstd:.1f} % | {r['new_objects']} | {r['packs']} | {mbps:.1f} | {cpu:.2f} | "
              f"{per_core} | {rss / 1024:.0f} MiB |")
    print(f"\nWhole store after all generations: {stats['paths']} paths, {stats['nar_bytes']:,} NAR bytes in "
          f"{stats['pack_bytes'] + stats['record_bytes']:,} bytes ({stats['packs']} packs, {stats['objects']} objects, "
          f"{stats['record_bytes']:,} bytes of path records).")


if __name__ == "__main__":
    main()
