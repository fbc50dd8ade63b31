# A larger, realistic binary-cache input for `refstrip-bench strip`, made from the host's own files
# (Debian 12 x86_64; needs `sandbox = false`, as on the refstrip dev machine). See make-cache.sh.
#
# Four store paths with real contents and real references (Nix scans outputs for input hashes):
#   bench-libs   ~250 MB of real ELF shared libraries (libLLVM, ICU, z3, …); each ELF's RUNPATH is
#                set to $out/lib plus 8 dependency paths (as nixpkgs' rpaths are)
#   bench-bin    /usr/bin executables under 8 MB with RUNPATHs, and shell wrappers naming store paths
#   bench-python the host's Python standard library (many small text files), each .py file
#                carrying one store path line (as nixpkgs' wrapped/patched scripts do)
#   bench-env    a buildEnv-like profile with `nrefs` references: symlinks into every dependency,
#                plus ~60 MB of ELF libraries whose RUNPATH names all of them (a path with hundreds
#                of references, like a NixOS system-path or a Python/Haskell environment)
{ nrefs ? 300 }:
let
  system = builtins.currentSystem;
  mk = name: script: derivation {
    inherit name system;
    builder = "/bin/sh";
    args = [ "-c" ("set -e\n" + script) ];
    PATH = "/usr/bin:/bin";
  };
  # Small dependency paths (made at evaluation time, no build needed).
  deps = builtins.genList (i: mk "bench-dep-${toString i}" ''
    mkdir -p $out/lib $out/bin
    echo "dependency ${toString i}" > $out/lib/README
    printf '#!/bin/sh\necho dep ${toString i}\n' > $out/bin/dep-${toString i}
  '') nrefs;
  first = builtins.genList (i: builtins.elemAt deps i) 8;
  rpath = out: builtins.concatStringsSep ":" ([ "${out}/lib" ] ++ map (d: "${d}/lib") first);
  setRpath = dir: rp: ''
    for f in ${dir}/*; do
      if [ -f "$f" ] && [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ]; then
        chmod u+w "$f"; patchelf --set-rpath "${rp}" "$f" 2>/dev/null || true
      fi
    done
  '';
in rec {
  libs = mk "bench-libs" (''
    mkdir -p $out/lib
    for f in libLLVM-15.so.1 libicudata.so.72.1 libz3.so.4 libx265.so.199 librsvg-2.so.2.48.0 \
             libasan.so.8.0.0 libtsan.so.2.0.0 libpython3.11.so.1.0 libSvtAv1Enc.so.1.4.1 libaom.so.3.6.0; do
      cp /usr/lib/x86_64-linux-gnu/$f $out/lib/
    done
    for f in /usr/lib/x86_64-linux-gnu/lib*.so.*; do
      [ -f "$f" ] && [ ! -L "$f" ] && [ $(stat -c %s "$f") -lt 4000000 ] && cp -n "$f" $out/lib/ || true
    done
    cd $out/lib && for f in *.so.*; do n=''${f%%.so.*}.so; [ -e "$n" ] || ln -s "$f" "$n"; done
  '' + setRpath "$out/lib" (rpath "$out"));
  bin = mk "bench-bin" (''
    mkdir -p $out/bin $out/libexec
    for f in /usr/bin/*; do
      [ -f "$f" ] && [ ! -L "$f" ] && [ $(stat -c %s "$f") -lt 8000000 ] && cp "$f" $out/libexec/ || true
    done
    for f in $out/libexec/*; do
      b=$(basename "$f")
      printf '#!${builtins.elemAt deps 0}/bin/sh\nexport PATH="%s/bin:${libs}/bin:$PATH"\nexec "%s" "$@"\n' "$out" "$f" > "$out/bin/$b"
      chmod +x "$out/bin/$b"
    done
  '' + setRpath "$out/libexec" "${libs}/lib:${rpath "$out"}");
  python = mk "bench-python" ''
    mkdir -p $out/lib $out/bin
    cp -r /usr/lib/python3.11 $out/lib/python3.11
    find $out/lib -name '__pycache__' -prune -exec rm -rf {} +
    i=0
    find $out/lib -name '*.py' | sort | while read -r f; do
      chmod u+w "$f"
      case $((i % 3)) in
        0) echo "# site: $out/lib/python3.11/site-packages" >> "$f" ;;
        1) echo "# lib: ${libs}/lib/libpython3.11.so.1.0" >> "$f" ;;
        2) echo "# bin: ${bin}/bin/python3" >> "$f" ;;
      esac
      i=$((i + 1))
    done
    ln -s ${bin}/bin/python3.11 $out/bin/python3
  '';
  env = mk "bench-env" (''
    mkdir -p $out/bin $out/lib $out/share/deps
    ${builtins.concatStringsSep "\n" (map (d: "ln -s ${d}/bin/* $out/bin/; echo ${d} >> $out/share/deps/list") deps)}
    ln -s ${python}/lib/python3.11 $out/lib/python3.11
    for f in ${libs}/lib/libz3.so.4 ${libs}/lib/libx265.so.199 ${libs}/lib/librsvg-2.so.2.48.0 \
             ${libs}/lib/libasan.so.8.0.0 ${libs}/lib/libtsan.so.2.0.0 ${libs}/lib/libpython3.11.so.1.0; do
      cp "$f" $out/lib/
    done
  '' + setRpath "$out/lib" (builtins.concatStringsSep ":" ([ "$out/lib" "${libs}/lib" ] ++ map (d: "${d}/lib") deps)));
  all = [ libs bin python env ];
}
