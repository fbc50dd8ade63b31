# The packages of the refstrip corpus, written like (much simplified) nixpkgs expressions.
{ mkDerivation, source, generation, lib, dash }:
let
  # generation "channel": a channel update, several real version bumps at once (with the stdenv
  # change that default.nix makes): lua as in "bump", zlib 1.2.13 -> 1.3.1 and libpng 1.6.39 ->
  # 1.6.48 (Debian 12 -> Debian 13)
  channel = generation == "channel";
in
rec {
  # the stdenv's shell: every package's patched shebangs point at it (like bash in nixpkgs)
  dash = mkDerivation {
    pname = "dash"; version = "0.5.12";
    src = source "dash-0.5.12";
    outputs = [ "out" ];
    withShell = false;
  };

  zlib = let version = if channel then "1.3.1" else "1.2.13"; in mkDerivation {
    pname = "zlib"; inherit version;
    src = source "zlib-${version}";
    # generation "single": the one changed library. zlib's configure defaults to -O3; building it
    # with -O2 changes the code of libz.so and so, via the hashes, every reverse dependency.
    configurePhase = (if generation == "single" then "export CFLAGS=-O2\n" else "") + ''
      ./configure --prefix=$out --includedir=$dev/include
    '';
  };

  bzip2 = mkDerivation {
    pname = "bzip2"; version = "1.0.8";
    src = source "bzip2-1.0.8";
    buildPhase = ''
      make -j$NIX_BUILD_CORES -f Makefile-libbz2_so CC=cc
      make -j$NIX_BUILD_CORES CC=cc bzip2 bzip2recover
    '';
    installPhase = ''
      make install PREFIX=$out CC=cc
      cp libbz2.so.1.0.8 $out/lib/
      ln -s libbz2.so.1.0.8 $out/lib/libbz2.so.1.0
      ln -s libbz2.so.1.0 $out/lib/libbz2.so.1
      ln -s libbz2.so.1 $out/lib/libbz2.so
      cp bzip2-shared $out/bin/bzip2
      ln -sf bzip2 $out/bin/bunzip2
      ln -sf bzip2 $out/bin/bzcat
      mkdir -p $out/share && mv $out/man $out/share/man
      mkdir -p $out/lib/pkgconfig
      cat > $out/lib/pkgconfig/bzip2.pc <<EOF
      prefix=$out
      exec_prefix=\''${prefix}
      libdir=\''${exec_prefix}/lib
      includedir=$dev/include

      Name: bzip2
      Description: A file compression library
      Version: 1.0.8
      Libs: -L\''${libdir} -lbz2
      Cflags: -I\''${includedir}
      EOF
      sed -i 's/^      //' $out/lib/pkgconfig/bzip2.pc
    '';
  };

  expat = mkDerivation {
    pname = "expat"; version = "2.5.0";
    src = source "expat-2.5.0";
    sourceRoot = "expat";
    cmakeFlags = "-DEXPAT_BUILD_DOCS=OFF -DEXPAT_BUILD_TESTS=OFF -DEXPAT_BUILD_EXAMPLES=OFF";
  };

  # generations "bump" and "channel": lua 5.4.4 (Debian 12) -> 5.4.7 (Debian 13)
  lua = let version = if generation == "bump" || channel then "5.4.7" else "5.4.4"; in mkDerivation {
    pname = "lua"; inherit version;
    src = source "lua-${version}";
    configurePhase = ''
      # compiled-in prefix, as nixpkgs does: the default package.path/cpath point into $out
      sed -i "s|^#define LUA_ROOT.*|#define LUA_ROOT \"$out/\"|" src/luaconf.h
    '';
    buildPhase = ''
      make -j$NIX_BUILD_CORES linux CC=cc MYCFLAGS=-fPIC
      cd src
      cc -shared -Wl,-soname,liblua.so.5.4 -o liblua.so.${version} $(ar t liblua.a) -lm -ldl
      ln -sf liblua.so.${version} liblua.so
      rm lua && cc -Wl,-E -o lua lua.o -L. -llua -lm -ldl
      cd ..
    '';
    installPhase = ''
      make install INSTALL_TOP=$out INSTALL_INC=$dev/include INSTALL_MAN=$out/share/man/man1
      cp src/liblua.so.${version} $out/lib/
      ln -s liblua.so.${version} $out/lib/liblua.so.5.4
      ln -s liblua.so.5.4 $out/lib/liblua.so
      mkdir -p $out/lib/pkgconfig
      cat > $out/lib/pkgconfig/lua.pc <<EOF
      V=5.4
      R=${version}
      prefix=$out
      INSTALL_BIN=\''${prefix}/bin
      INSTALL_INC=$dev/include
      INSTALL_LIB=\''${prefix}/lib
      INSTALL_LMOD=\''${prefix}/share/lua/\''${V}
      INSTALL_CMOD=\''${prefix}/lib/lua/\''${V}
      exec_prefix=\''${prefix}
      libdir=\''${exec_prefix}/lib
      includedir=$dev/include

      Name: Lua
      Description: An Extensible Extension Language
      Version: \''${R}
      Libs: -L\''${libdir} -llua -lm -ldl
      Cflags: -I\''${includedir}
      EOF
      sed -i 's/^      //' $out/lib/pkgconfig/lua.pc
    '';
  };

  lua-zlib = mkDerivation {
    pname = "lua-zlib"; version = "1.3";
    src = source "lua-zlib-1.3";
    outputs = [ "out" ];
    deps = [ lua zlib ];
    buildPhase = ''
      cc -O2 -fPIC -shared -o zlib.so lua_zlib.c -lz
    '';
    installPhase = ''
      mkdir -p $out/lib/lua/5.4
      cp zlib.so $out/lib/lua/5.4/
    '';
  };

  # like nixpkgs' lua.withPackages (p: [ p.lua-zlib ]): wrappers with a store-path shebang
  luaEnv = mkDerivation {
    pname = "lua-env"; version = lua.version;
    outputs = [ "out" ];
    deps = [ lua lua-zlib ];
    phases = "installPhase fixupPhase";
    installPhase = ''
      mkdir -p $out/bin $out/lib/lua/5.4
      ln -s ${lua-zlib}/lib/lua/5.4/zlib.so $out/lib/lua/5.4/zlib.so
      for b in lua luac; do
        printf '%s\n' "#! $shell -e" \
          "export LUA_CPATH='$out/lib/lua/5.4/?.so;'\"\''${LUA_CPATH:-;}\"" \
          "exec \"${lua}/bin/$b\" \"\$@\"" > $out/bin/$b
        chmod +x $out/bin/$b
      done
      $out/bin/lua -e 'local z = require "zlib"; print("lua-zlib", z.version())'
    '';
  };

  libpng = let version = if channel then "1.6.48" else "1.6.39"; in mkDerivation {
    pname = "libpng"; inherit version;
    src = source "libpng-${version}";
    deps = [ zlib ];
    propagated = [ zlib ];
  };

  # ---- full profile only ----
  xz = mkDerivation {
    pname = "xz"; version = "5.4.1";
    src = source "xz-5.4.1";
    configureFlags = "--disable-doc";
    # xz's configure picks $CONFIG_SHELL (the host's /bin/bash) for xzgrep & co; make it /bin/sh so
    # patchShebangs points them at the store dash
    preConfigure = "export CONFIG_SHELL=/bin/sh";
  };

  libffi = mkDerivation {
    pname = "libffi"; version = "3.4.4";
    src = source "libffi-3.4.4";
    configureFlags = "--disable-docs --disable-multi-os-directory";
  };

  pcre2 = mkDerivation {
    pname = "pcre2"; version = "10.42";
    src = source "pcre2-10.42";
    deps = [ zlib bzip2 ];
    configureFlags = "--enable-pcre2-16 --enable-pcre2-32 --enable-jit --enable-pcre2grep-libz --enable-pcre2grep-libbz2";
  };

  sqlite = mkDerivation {
    pname = "sqlite"; version = "3.40.1";
    src = source "sqlite-3.40.1";
    deps = [ zlib ];
    configureFlags = "--disable-tcl --disable-readline --enable-fts5 --enable-json1";
  };

  curl = mkDerivation {
    pname = "curl"; version = "7.88.1";
    src = source "curl-7.88.1";
    deps = [ zlib ];
    propagated = [ zlib ];
    configureFlags = "--without-ssl --with-zlib --without-libpsl --without-brotli --without-zstd --without-nghttp2 --without-libidn2 --disable-ldap --without-librtmp --without-libssh2 --disable-manual";
  };
}
