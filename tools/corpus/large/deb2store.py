#!/usr/bin/env python3
"""Nix builder: lay a Debian binary package out as a store path, like nixpkgs' autoPatchelfHook does
for binary packages: /usr merged into $out, ELF interpreters set to the store libc6's dynamic linker,
rpaths set to the store paths of the libraries each ELF file needs, #! lines and absolute symlinks
pointed at the store paths of the dependencies that provide them.

Environment: out, deb, closure (store paths of all dependencies), libc (store path of libc6).
"""
import os, shutil, struct, subprocess, sys

out = os.environ["out"]
deb = os.environ["deb"]
deps = os.environ.get("closure", "").split()
libc = os.environ.get("libc") or out
tmp = os.path.join(os.environ.get("NIX_BUILD_TOP", "/tmp"), "x")
# dpkg-deb -x would also try to restore setuid/setgid modes, which this machine refuses (and a store
# path cannot keep anyway): extract the data tarball ourselves, without the special mode bits
import tarfile
fsys = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE)
with tarfile.open(fileobj=fsys.stdout, mode="r|*") as tf:
    for m in tf:
        m.mode &= 0o777
        m.uid = m.gid = 0
        tf.extract(m, tmp, set_attrs=not m.isdir())
if fsys.wait() != 0:
    sys.exit("dpkg-deb --fsys-tarfile failed")
for root, dirs, files in os.walk(tmp):  # directories must be writable and searchable for the moves
    for d in dirs:
        os.chmod(os.path.join(root, d), 0o755)

def logical(rel):  # usr-merge: usr/lib/foo -> lib/foo
    return rel[4:] if rel.startswith("usr/") else ("" if rel == "usr" else rel)

def own_exists(L):
    return os.path.lexists(os.path.join(tmp, L)) or os.path.lexists(os.path.join(tmp, "usr", L))

def resolve(L):
    """store path of logical path L (no leading /) in this package or a dependency"""
    if own_exists(L):
        return os.path.join(out, L)
    for d in deps:
        if os.path.lexists(os.path.join(d, L)):
            return os.path.join(d, L)
    return None

os.makedirs(out, exist_ok=True)
elves, scripts = [], []
for root, dirs, files in os.walk(tmp):
    relroot = os.path.relpath(root, tmp)
    relroot = "" if relroot == "." else relroot
    for name in sorted(dirs) + sorted(files):
        src = os.path.join(root, name)
        rel = os.path.join(relroot, name)
        L = logical(rel)
        if not L:
            continue
        dst = os.path.join(out, L)
        if os.path.islink(src):
            t = os.readlink(src)
            if t.startswith("/"):
                tl = logical(t.lstrip("/"))
            else:
                tl = logical(os.path.normpath(os.path.join(os.path.dirname(rel), t)))
                if os.path.normpath(os.path.join(os.path.dirname(L), t)) == tl:
                    tl = None  # the relative link still works after the /usr merge
            if tl is not None:
                r = resolve(tl)
                if r is not None:
                    t = os.path.relpath(r, os.path.dirname(dst)) if r.startswith(out + "/") else r
            if not os.path.lexists(dst):
                os.symlink(t, dst)
            if name in dirs:
                dirs.remove(name)
        elif os.path.isdir(src):
            os.makedirs(dst, exist_ok=True)
        elif os.path.isfile(src):
            if os.path.lexists(dst):
                continue
            os.rename(src, dst)
            with open(dst, "rb") as f:
                head = f.read(64)
            if head[:4] == b"\x7fELF":
                elves.append(dst)
            elif head[:2] == b"#!":
                scripts.append(dst)

libdirs_cache = {}
def libdirs(p):
    if p not in libdirs_cache:
        libdirs_cache[p] = [os.path.join(p, d) for d in ("lib/x86_64-linux-gnu", "lib", "lib64")
                            if os.path.isdir(os.path.join(p, d))]
    return libdirs_cache[p]
search = [d for p in [out] + deps for d in libdirs(p)]
ldso = os.path.join(libc, "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")

def has_interp(path):
    with open(path, "rb") as f:
        h = f.read(64)
        if h[4] != 2 or h[5] != 1:
            return False  # 64-bit little endian only
        e_type = struct.unpack_from("<H", h, 16)[0]
        if e_type not in (2, 3):
            return False
        phoff = struct.unpack_from("<Q", h, 32)[0]
        phentsize, phnum = struct.unpack_from("<HH", h, 54)
        f.seek(phoff)
        ph = f.read(phentsize * phnum)
    return any(struct.unpack_from("<I", ph, i * phentsize)[0] == 3 for i in range(phnum))

patched = 0
for e in elves:
    try:
        interp = has_interp(e)
    except Exception:
        continue
    r = subprocess.run(["patchelf", "--print-needed", e], capture_output=True, text=True)
    if r.returncode != 0:
        continue
    rpath = []
    for so in r.stdout.split():
        for d in search:
            if os.path.exists(os.path.join(d, so)):
                if d not in rpath:
                    rpath.append(d)
                break
    args = []
    if interp:
        args += ["--set-interpreter", ldso]
    if rpath:
        args += ["--set-rpath", ":".join(rpath)]
    if args:
        mode = os.stat(e).st_mode
        os.chmod(e, mode | 0o200)
        if subprocess.run(["patchelf"] + args + [e], capture_output=True).returncode == 0:
            patched += 1

rewritten = 0
for s in scripts:
    with open(s, "rb") as f:
        data = f.read()
    nl = data.find(b"\n")
    first = data[2:nl if nl >= 0 else len(data)].decode("utf-8", "replace").strip()
    parts = first.split()
    if not parts or not parts[0].startswith(("/usr/", "/bin/", "/sbin/")):
        continue
    interp, rest = parts[0], parts[1:]
    if os.path.basename(interp) == "env" and rest:
        interp, rest = rest[0], rest[1:]
    base = os.path.basename(interp)
    new = None
    for cand in ("bin/" + base, "sbin/" + base):
        new = resolve(cand)
        if new:
            break
    if not new:
        continue
    line = ("#!" + " ".join([new] + rest)).encode()
    os.chmod(s, os.stat(s).st_mode | 0o200)
    with open(s, "wb") as f:
        f.write(line + (data[nl:] if nl >= 0 else b""))
    rewritten += 1

print(f"deb2store: {os.path.basename(deb)}: {len(elves)} ELF files ({patched} patched), "
      f"{rewritten} of {len(scripts)} scripts' #! rewritten")

# NixOS/nix#2176: let a short-lived child hold the log pipe so Nix sees EOF only after we have exited
subprocess.Popen(["sleep", "0.3"])
