# Two tiny real packages built by the host gcc, shaped like nixpkgs output: a shared library with
# a .pc file, an ELF app with a RUNPATH into it, a script with a store-path shebang, symlinks into
# the dependency and to itself, and a symlink farm whose entry names contain store hashes.
# `rev` plays the stdenv: changing it changes every hash and no source.
{ rev ? "1" }:
let
  mk = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
    STDENV_REV = rev;
  };
  lib = mk "libfoo-1.0" ''
    set -e
    mkdir -p $out/lib/pkgconfig $out/include
    echo 'int foo(void){return 42;}' > foo.c
    gcc -O2 -shared -fPIC -Wl,--build-id=sha1 -o $out/lib/libfoo.so foo.c
    printf 'prefix=%s\nlibdir=${"$"}{prefix}/lib\nName: foo\nLibs: -L${"$"}{libdir} -lfoo\n' $out > $out/lib/pkgconfig/foo.pc
    echo 'int foo(void);' > $out/include/foo.h
  '';
  app = mk "app-2.1" ''
    set -e
    mkdir -p $out/bin $out/share/farm
    printf '#include <stdio.h>\nint foo(void);\nint main(void){printf("%%s %%d\\n", "${lib}", foo());return 0;}\n' > m.c
    gcc -O2 -o $out/bin/app m.c -L${lib}/lib -lfoo -Wl,-rpath,${lib}/lib -Wl,--build-id=sha1
    printf '#!/bin/sh\nexec %s/bin/app "$@"\n' $out > $out/bin/wrapper
    chmod +x $out/bin/wrapper
    ln -s ${lib}/lib/libfoo.so $out/bin/libfoo-link
    ln -s $out/bin/app $out/share/self-link
    ln -s ${lib} $out/share/farm/$(basename ${lib})
    ln -s $out $out/share/farm/$(basename $out)
    touch $out/share/farm/zzz-plain
  '';
in { inherit lib app; }
