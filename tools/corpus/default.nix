# refstrip test corpus: real upstream sources built by a tiny nixpkgs-like stdenv.
#
#   nix-build tools/corpus -A root --argstr srcDir DIR --argstr profile small --argstr generation gen1
#
# generation:
#   gen1    the closure
#   mass    mass rebuild: only the stdenv revision changes (every hash changes, no source does)
#   single  one library changed (zlib built with -O2 instead of its default -O3), reverse deps rebuilt
#   bump    a real version bump of one package (lua 5.4.4 from Debian 12 -> 5.4.7 from Debian 13)
#   channel a channel update: a stdenv change (mass rebuild) and several real version bumps together
#           (lua as in bump, zlib 1.2.13 -> 1.3.1, libpng 1.6.39 -> 1.6.48)
{ srcDir ? "/var/cache/refstrip-corpus/src"
, profile ? "small"
, generation ? "gen1"
# channel's own revision "3", so that it shares no store path with mass: gen1 -> channel is one
# update, whatever else a store holds
, stdenvRevision ? ({ mass = "2"; channel = "3"; }.${generation} or "1")
}:
let
  system = "x86_64-linux";
  lib = import ./lib.nix;

  # Upstream orig tarballs enter the store by content under a fixed name, so the store path does not
  # depend on where the source cache lives.
  lock = lib.readLock ./sources.lock;
  source = key: builtins.path {
    path = /. + "${srcDir}/${lock.${key}.file}";
    name = lock.${key}.file;
    recursive = false; # flat, so the store path is fixed by the file's sha256, like fetchurl's
    sha256 = lock.${key}.sha256;
  };

  stdenv = derivation {
    name = "refstrip-stdenv-${stdenvRevision}";
    inherit system stdenvRevision;
    builder = "/bin/bash";
    setupIn = ./stdenv/setup.sh;
    wrapperIn = ./stdenv/cc-wrapper.sh;
    args = [ "-euc" ''
      PATH=/usr/bin:/bin
      mkdir -p $out/bin
      sed -e "s|@stdenvRevision@|$stdenvRevision|g" -e "s|@out@|$out|g" $setupIn > $out/setup
      for cc in cc gcc c++ g++; do
        real=/usr/bin/gcc; case $cc in c++|g++) real=/usr/bin/g++ ;; esac
        sed -e "s|@stdenvRevision@|$stdenvRevision|g" -e "s|@realCC@|$real|g" $wrapperIn > $out/bin/$cc
        chmod +x $out/bin/$cc
      done
      sleep 0.3 &  # NixOS/nix#2176, see setup.sh
    '' ];
  };

  # All outputs of a package, like nixpkgs' buildInputs handling of multi-output deps.
  allOutputs = d: map (o: d.${o}) (d.outputs or [ "out" ]);
  inputsOf = deps: builtins.concatLists (map allOutputs deps);

  mkDerivation = { pname, version, deps ? [ ], propagated ? [ ], outputs ? [ "out" "dev" ], withShell ? true, ... }@args:
    let
      clean = builtins.removeAttrs args [ "pname" "version" "deps" "propagated" "withShell" ];
      drv = derivation ({
        name = "${pname}-${version}";
        inherit system outputs stdenv;
        builder = "/bin/bash";
        args = [ "-c" "source $stdenv/setup; genericBuild" ];
        buildInputs = inputsOf deps;
        propagatedBuildInputs = inputsOf propagated;
      } // (if withShell then { shell = "${dash}/bin/dash"; } else { }) // clean);
    in drv // { inherit pname version; meta = { inherit deps; }; };

  pkgs = import ./packages.nix { inherit mkDerivation source generation lib dash; };
  dash = pkgs.dash;

  profiles = {
    small = with pkgs; [ dash zlib bzip2 expat luaEnv libpng ];
    full = with pkgs; [ dash zlib bzip2 expat luaEnv libpng xz libffi pcre2 sqlite curl ];
  };
  members = profiles.${profile};
  # what goes into the profile: all outputs of the members (lua and lua-zlib come through luaEnv, as
  # with lua.withPackages), plus lua.dev
  profileOutputs = builtins.concatLists (map allOutputs members) ++ [ pkgs.lua.dev ];

  # A symlink farm like nixpkgs' buildEnv / a nix-env profile; its manifest lists every member.
  root = derivation {
    name = "refstrip-corpus-${profile}-env";
    inherit system stdenvRevision;
    builder = "/bin/bash";
    paths = profileOutputs;
    manifest = builtins.concatStringsSep "\n" (map (d: "${d.name} ${d.outputName or "out"} ${d}") profileOutputs);
    passAsFile = [ "manifest" ];
    args = [ "-euc" ''
      PATH=/usr/bin:/bin
      mkdir -p $out
      # merge the members' trees as symlinks to their files (first one wins on a collision)
      for p in $paths; do
        for d in $p/*; do [ "$d" = $p/nix-support ] || cp -rsn $d $out/; done
      done
      cp $manifestPath $out/manifest
      sleep 0.3 &  # NixOS/nix#2176, see stdenv/setup.sh
    '' ];
  };

  # every output of every package in the closure, plus the profile itself
  indexed = members ++ [ pkgs.lua pkgs.lua-zlib ];
  index = builtins.concatLists (map (d: map (o: { name = d.pname; version = d.version; output = o; path = "${d.${o}}"; }) d.outputs) indexed)
    ++ [ { name = "profile"; version = profile; output = "out"; path = "${root}"; } ];
in {
  inherit root stdenv;
  packages = pkgs;
  # name/version/output/path of every package output of this generation (for corpus/*/packages)
  indexText = builtins.concatStringsSep "" (map (e: "${e.name}\t${e.version}\t${e.output}\t${e.path}\n") index);
}
