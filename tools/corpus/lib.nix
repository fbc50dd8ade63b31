{
  # sources.lock -> { key = { deb = "..."; file = "..."; sha256 = "..."; }; }
  readLock = file:
    let
      lines = builtins.filter (l: builtins.isString l && l != "" && builtins.substring 0 1 l != "#")
        (builtins.split "\n" (builtins.readFile file));
      fields = l: builtins.filter (f: builtins.isString f && f != "") (builtins.split "[ \t]+" l);
      entry = l: let f = fields l; in {
        name = builtins.elemAt f 0;
        value = { deb = builtins.elemAt f 1; file = builtins.elemAt f 2; sha256 = builtins.elemAt f 3; };
      };
    in builtins.listToAttrs (map entry lines);
}
