#!/usr/bin/env python3
"""Load test of `refstrip serve` on loopback.

Starts `refstrip serve --from STORE` on a free 127.0.0.1 port, walks the closure of the given roots
through the server's narinfos (References), then runs CLIENTS threads for SECONDS, each one
downloading every narinfo and NAR of the closure in its own random order over a keep-alive
connection, again and again. Every NAR's SHA-256 and size are checked against its narinfo's NarHash
and NarSize. At the end it reads the server's peak RSS (VmHWM in /proc/PID/status), stops it with
SIGTERM (which must shut it down cleanly) and prints the figures.

Exit status 0 only if there were no errors (HTTP, hash, size, connection) and the server exited 0.
Traffic goes to 127.0.0.1 only; the run is bounded by SECONDS.

    python3 tools/serve_load.py --refstrip target/release/refstrip --store STORE \
        --root /nix/store/…-env [--root …] [--clients 32] [--seconds 10] [--compression zstd] [--json]
"""

import argparse
import hashlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"


def nix32(digest: bytes) -> str:
    """Nix's base-32 encoding of a hash (as in `sha256:<nix32>`)."""
    n = (len(digest) * 8 - 1) // 5 + 1
    out = []
    for i in range(n - 1, -1, -1):
        b = i * 5
        j, k = divmod(b, 8)
        c = digest[j] >> k
        if j + 1 < len(digest):
            c |= digest[j + 1] << (8 - k)
        out.append(NIX32[c & 0x1F])
    return "".join(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not start listening")


def parse_narinfo(text: str) -> dict:
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        fields.setdefault(key, value)
    return fields


def get(conn: http.client.HTTPConnection, path: str):
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read()


def closure(port: int, roots: list) -> dict:
    """hash part -> (narinfo path, NAR url, NarHash, NarSize), walking References."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    todo = [os.path.basename(r)[:32] for r in roots]
    seen = {}
    while todo:
        h = todo.pop()
        if h in seen:
            continue
        status, body = get(conn, f"/{h}.narinfo")
        if status != 200:
            raise SystemExit(f"/{h}.narinfo: HTTP {status}")
        info = parse_narinfo(body.decode())
        seen[h] = (f"/{h}.narinfo", "/" + info["URL"], info["NarHash"], int(info["NarSize"]))
        todo.extend(r[:32] for r in info.get("References", "").split())
    return seen


class Totals:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.nars = 0
        self.bytes = 0
        self.errors = []
        self.narinfo_ms = []
        self.nar_ms = []


def client(port, paths, deadline, compression, totals, seed):
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    requests = nars = nbytes = 0
    errors = []
    narinfo_ms, nar_ms = [], []
    items = list(paths.items())
    while time.monotonic() < deadline and len(errors) < 10:
        rng.shuffle(items)
        for h, (narinfo, _url, nar_hash, nar_size) in items:
            if time.monotonic() >= deadline:
                break
            try:
                t0 = time.monotonic()
                status, body = get(conn, narinfo)
                narinfo_ms.append((time.monotonic() - t0) * 1000)
                requests += 1
                nbytes += len(body)
                if status != 200:
                    errors.append(f"{narinfo}: HTTP {status}")
                    continue
                info = parse_narinfo(body.decode())
                if info.get("NarHash") != nar_hash:
                    errors.append(f"{narinfo}: NarHash changed")
                t0 = time.monotonic()
                status, nar = get(conn, "/" + info["URL"])
                nar_ms.append((time.monotonic() - t0) * 1000)
                requests += 1
                nars += 1
                nbytes += len(nar)
                if status != 200:
                    errors.append(f"/{info['URL']}: HTTP {status}")
                    continue
                if compression == "zstd":
                    nar = subprocess.run(["zstd", "-dc"], input=nar, capture_output=True, check=True).stdout
                if len(nar) != nar_size:
                    errors.append(f"{h}: {len(nar)} bytes, NarSize {nar_size}")
                elif "sha256:" + nix32(hashlib.sha256(nar).digest()) != nar_hash:
                    errors.append(f"{h}: SHA-256 does not match NarHash")
            except (OSError, http.client.HTTPException, subprocess.CalledProcessError) as e:
                errors.append(f"{h}: {type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    with totals.lock:
        totals.requests += requests
        totals.nars += nars
        totals.bytes += nbytes
        totals.errors.extend(errors)
        totals.narinfo_ms.extend(narinfo_ms)
        totals.nar_ms.extend(nar_ms)


def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(len(values) * p / 100))], 1)


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--refstrip", required=True, help="the refstrip binary")
    ap.add_argument("--store", required=True, help="normalized store to serve")
    ap.add_argument("--root", action="append", required=True, help="store path whose closure to download")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--compression", choices=["none", "zstd"], default="none")
    ap.add_argument("--server-threads", type=int, default=None, help="--threads for the server")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    if not 1 <= args.clients <= 256 or not 0 < args.seconds <= 600:
        raise SystemExit("--clients must be 1..256 and --seconds 0..600")

    port = free_port()
    cmd = [args.refstrip, "serve", "--from", args.store, "--listen", f"127.0.0.1:{port}",
           "--compression", args.compression,
           # Every load client connects from 127.0.0.1: let them all in.
           "--max-connections-per-ip", str(args.clients + 8)]
    if args.server_threads:
        cmd += ["--threads", str(args.server_threads)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # Drain the request log so the server never blocks on a full pipe; keep the warnings.
    problems = []

    def drain():
        for line in server.stderr:
            if " INFO " not in line:
                problems.append(line.rstrip())

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    try:
        wait_listening(port, server)
        paths = closure(port, args.root)
        rss_before = status_kib(server.pid, "VmRSS")
        totals = Totals()
        start = time.monotonic()
        deadline = start + args.seconds
        threads = [threading.Thread(target=client, args=(port, paths, deadline, args.compression, totals, i))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        peak_kib = status_kib(server.pid, "VmHWM")
        with open(f"/proc/{server.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        server_cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            server.kill()
            code = "killed after 40 s"
        drainer.join(timeout=5)

    nar_bytes = sum(v[3] for v in paths.values())
    result = {
        "clients": args.clients,
        "seconds": round(elapsed, 2),
        "compression": args.compression,
        "closure_paths": len(paths),
        "closure_nar_bytes": nar_bytes,
        "requests": totals.requests,
        "nars": totals.nars,
        "requests_per_s": round(totals.requests / elapsed, 1),
        "nars_per_s": round(totals.nars / elapsed, 1),
        "mb_per_s": round(totals.bytes / elapsed / 1e6, 1),
        "narinfo_ms_p50_p99": [percentile(totals.narinfo_ms, 50), percentile(totals.narinfo_ms, 99)],
        "nar_ms_p50_p99": [percentile(totals.nar_ms, 50), percentile(totals.nar_ms, 99)],
        "server_cpu_s": round(server_cpu, 2),
        "server_rss_start_mib": round(rss_before / 1024, 1),
        "server_peak_rss_mib": round(peak_kib / 1024, 1),
        "server_exit": code,
        "errors": len(totals.errors),
        "first_errors": totals.errors[:5],
        "server_warnings": problems[:5],
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0 if not totals.errors and code == 0 and totals.nars > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
