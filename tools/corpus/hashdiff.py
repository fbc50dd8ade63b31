#!/usr/bin/env python3
"""For each package output present in two generations (corpus packages files), dump both store paths
as NARs (nix-store --dump), replace every store-path hash by a placeholder and report what differs
beyond hashes: identical / differing byte count (equal-length NARs) / different length.

    tools/corpus/hashdiff.py GEN_A_DIR GEN_B_DIR
"""
import re, subprocess, sys

def index(d):
    m = {}
    for line in open(f"{d}/packages"):
        name, ver, out, path = line.rstrip("\n").split("\t")
        m[(name, out)] = (ver, path)
    return m

H = re.compile(rb"/nix/store/[0-9a-df-np-sv-z]{32}")
a, b = index(sys.argv[1]), index(sys.argv[2])
for key in sorted(set(a) & set(b)):
    (va, pa), (vb, pb) = a[key], b[key]
    if pa == pb:
        print(f"{key[0]:10} {key[1]:4} same store path"); continue
    na = subprocess.run(["nix-store", "--dump", pa], capture_output=True, check=True).stdout
    nb = subprocess.run(["nix-store", "--dump", pb], capture_output=True, check=True).stdout
    ma, mb = H.sub(b"/nix/store/" + b"#" * 32, na), H.sub(b"/nix/store/" + b"#" * 32, nb)
    refs = len(H.findall(na))
    if ma == mb:
        what = "identical once hashes are masked"
    elif len(ma) == len(mb):
        n = sum(1 for x, y in zip(ma, mb) if x != y)
        what = f"{n} bytes differ beyond hashes"
    else:
        what = f"length {len(na)} -> {len(nb)}"
    print(f"{key[0]:10} {key[1]:4} {va}->{vb}: {refs} hash occurrences; {what}")
