#!/usr/bin/env python3
"""Read `apt-cache madison PKG...` on stdin; print `name=version` of the oldest binary version the
archive serves of every package that has more than one (bookworm vs bookworm-updates/-security):
the large profile's `old` generation takes those, a channel update before gen1.
"""
import functools, subprocess, sys

def cmp(a, b):
    if a == b:
        return 0
    lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0
    return -1 if lt else 1

versions = {}
for line in sys.stdin:
    fields = [f.strip() for f in line.split("|")]
    if len(fields) == 3 and fields[2].endswith(" Packages"):
        versions.setdefault(fields[0], set()).add(fields[1])
for name, vs in sorted(versions.items()):
    if len(vs) > 1:
        print(f"{name}={min(vs, key=functools.cmp_to_key(cmp))}")
