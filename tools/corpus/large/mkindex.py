#!/usr/bin/env python3
"""Index a directory of Debian .debs for large.nix: name, version, file, sha256, direct deps (within
the set, alternatives and Provides resolved, cycles broken) and the transitive closure of deps.

    mkindex.py DEBDIR > index.json
"""
import glob, hashlib, json, os, re, subprocess, sys

debdir = sys.argv[1]
pkgs = {}
for f in sorted(glob.glob(os.path.join(debdir, "*.deb"))):
    fields = {}
    out = subprocess.run(["dpkg-deb", "-f", f, "Package", "Version", "Depends", "Pre-Depends", "Provides", "Essential"],
                         check=True, capture_output=True, text=True).stdout
    key = None
    for line in out.splitlines():
        if line[:1] in (" ", "\t") and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, val = line.partition(":")
            fields[key] = val.strip()
    name = fields["Package"]
    h = hashlib.sha256(open(f, "rb").read()).hexdigest()
    pkgs[name] = {"name": name, "version": fields["Version"], "file": os.path.basename(f), "sha256": h,
                  "rawdeps": ", ".join(x for x in (fields.get("Pre-Depends"), fields.get("Depends")) if x),
                  "provides": fields.get("Provides", ""), "essential": fields.get("Essential") == "yes"}

def bare(s):
    return re.sub(r"\(.*?\)|\[.*?\]|<.*?>", "", s).strip().split(":")[0].strip()

provides = {}
for p in pkgs.values():
    for v in filter(None, (bare(x) for x in p["provides"].split(","))):
        provides.setdefault(v, p["name"])

essential = sorted(n for n, p in pkgs.items() if p["essential"])
for p in pkgs.values():
    deps = []
    for group in filter(None, (g.strip() for g in p["rawdeps"].split(","))):
        for alt in (bare(a) for a in group.split("|")):
            target = alt if alt in pkgs else provides.get(alt)
            if target and target != p["name"]:
                if target not in deps:
                    deps.append(target)
                break
    p["alldeps"] = deps

# break cycles: depth-first in name order, dropping edges back into the current path
state, dropped = {}, []
def visit(n):
    state[n] = 1
    keep = []
    for d in pkgs[n]["alldeps"]:
        if state.get(d) == 1:
            dropped.append((n, d)); continue
        if d not in state:
            visit(d)
        keep.append(d)
    pkgs[n]["deps"] = keep
    state[n] = 2
sys.setrecursionlimit(10000)
for n in sorted(pkgs):
    if n not in state:
        visit(n)

# Essential packages (perl-base, dpkg, tar, ...) are never declared as dependencies in Debian but are
# always present: make them implicit dependencies of every other package unless that would close a
# cycle, so that e.g. debconf's "#!/usr/bin/perl" can point at the store perl-base.
def reach(n, seen=None):
    seen = set() if seen is None else seen
    for d in pkgs[n]["deps"]:
        if d not in seen:
            seen.add(d); reach(d, seen)
    return seen
for n in sorted(pkgs):
    if pkgs[n]["essential"]:
        continue
    for e in essential:
        if e not in pkgs[n]["deps"] and n not in reach(e):
            pkgs[n]["deps"].append(e)

closure = {}
def clos(n):
    if n not in closure:
        s = set()
        for d in pkgs[n]["deps"]:
            s.add(d); s |= clos(d)
        closure[n] = s
    return closure[n]
for n in pkgs:
    pkgs[n]["closure"] = sorted(clos(n))

print(json.dumps({"packages": [{k: p[k] for k in ("name", "version", "file", "sha256", "deps", "closure")}
                               for p in sorted(pkgs.values(), key=lambda p: p["name"])],
                  "essential": essential, "droppedCycleEdges": dropped}, indent=1))
