#!/usr/bin/env python3
"""Count the S3 requests of a sharded ingest, per GB of NAR, against a local moto S3 server.

Usage: tools/measure_s3.py PROFILE_DIR [SHARDS] [BINARY]
  PROFILE_DIR  directory of zstd binary caches, one per generation (e.g. corpus/small)
  SHARDS       shard processes per generation, run concurrently (default 3)
  BINARY       the refstrip binary (default target/release/refstrip)

Starts `python3 -m moto.server` on a free loopback port, uploads each generation as a binary cache
(bucket "cache", prefix GEN/), then ingests the generations in order (gen1, mass, single, bump:
those present) from the bucket into a store in the same server (bucket "store"), SHARDS processes
per generation, each with its own cache directory as if on its own machine. Prints a Markdown table
of the requests the shards report (`ingest --json`: store_requests, source_requests), summed.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import boto3

GENERATIONS = ["gen1", "mass", "single", "bump"]
KINDS = ["get", "get_range", "put", "list", "head", "delete"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    profile = sys.argv[1]
    shards = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    binary = sys.argv[3] if len(sys.argv) > 3 else "target/release/refstrip"
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.1)
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket="cache")
        s3.create_bucket(Bucket="store")
        env = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
        store = f"s3://store/refstrip?endpoint={endpoint}&region=us-east-1"
        print(f"Profile `{profile}`, {shards} shard processes per generation\n")
        print(
            "| generation | new paths | NAR bytes | store GET | ranged GET | PUT | LIST | HEAD "
            "| DELETE | store requests per GB | source GET | source LIST | source requests per GB |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        with tempfile.TemporaryDirectory() as machines:
            for gen in GENERATIONS:
                cache = os.path.join(profile, gen)
                if not os.path.isdir(cache):
                    continue
                for root, _, files in os.walk(cache):
                    for f in files:
                        full = os.path.join(root, f)
                        s3.upload_file(full, "cache", f"{gen}/{os.path.relpath(full, cache)}")
                source = f"s3://cache/{gen}?endpoint={endpoint}&region=us-east-1"
                procs = [
                    subprocess.Popen(
                        [binary, "ingest", source, "--all", "--json", "-j1",
                         "--shard", f"{i}/{shards}", "--to", store],
                        stdout=subprocess.PIPE,
                        env=dict(env, REFSTRIP_CACHE_DIR=os.path.join(machines, str(i))),
                    )
                    for i in range(shards)
                ]
                reports = []
                for p in procs:
                    out, _ = p.communicate()
                    if p.returncode != 0:
                        sys.exit(f"a shard of {gen} failed")
                    reports.append(json.loads(out))
                total = lambda key: sum(r[key] for r in reports)
                req = lambda side, kind: sum(r[side][kind] for r in reports)
                nar = total("nar_bytes")
                per_gb = lambda side: req(side, "total") * 1e9 / max(nar, 1)
                cells = [gen, f"{total('ingested')}", f"{nar:,}"]
                cells += [f"{req('store_requests', k):,}" for k in KINDS]
                cells += [f"{per_gb('store_requests'):,.0f}"]
                cells += [f"{req('source_requests', 'get'):,}", f"{req('source_requests', 'list'):,}"]
                cells += [f"{per_gb('source_requests'):,.0f}"]
                print("| " + " | ".join(cells) + " |")
    finally:
        moto.kill()
        moto.wait()


if __name__ == "__main__":
    main()
