# refstrip corpus, profile "large": Debian binary packages laid out as Nix store paths (see deb2store.py).
#   nix-build tools/corpus/large -A root --argstr debDir DIR --argstr indexFile DIR/index.json --argstr generation gen1
# generation "mass" changes only corpusRevision, which every derivation carries: every hash changes.
# generation "old" (built from older .debs by large.sh) has its own corpusRevision "0": old -> gen1
# is a channel update, version bumps and every hash changing together.
{ debDir, indexFile, generation ? "gen1", corpusRevision ? ({ mass = "2"; old = "0"; }.${generation} or "1") }:
let
  system = "x86_64-linux";
  index = builtins.fromJSON (builtins.readFile indexFile);
  clean = s: builtins.replaceStrings [ ":" "~" "%" ] [ "_" "_" "_" ] s;
  pkgs = builtins.listToAttrs (map (p: { name = p.name; value = mk p; }) index.packages);
  mk = p: derivation {
    name = clean "${p.name}-${p.version}";
    inherit system corpusRevision;
    builder = "/usr/bin/python3";
    args = [ ./deb2store.py ];
    PATH = "/usr/bin:/bin";
    deb = builtins.path { path = /. + "${debDir}/${p.file}"; name = clean p.file; recursive = false; sha256 = p.sha256; };
    closure = map (d: pkgs.${d}) p.closure;
    libc = if builtins.elem "libc6" p.closure then pkgs.libc6 else "";
  };
  all = builtins.attrValues pkgs;
  root = derivation {
    name = "refstrip-corpus-large-env";
    inherit system corpusRevision;
    builder = "/bin/bash";
    paths = all;
    names = map (p: p.name) index.packages;
    args = [ "-euc" ''
      PATH=/usr/bin:/bin
      mkdir -p $out/pkgs
      set -- $names
      for p in $paths; do ln -s $p $out/pkgs/$1; echo "$1 $p" >> $out/manifest; shift; done
      sleep 0.3 &  # NixOS/nix#2176
    '' ];
  };
in {
  inherit root;
  packages = pkgs;
  indexText = builtins.concatStringsSep "" (map (p: "${p.name}\t${p.version}\tout\t${pkgs.${p.name}}\n") index.packages)
    + "profile\tlarge\tout\t${root}\n";
}
