//! Nix store formats: nix-base32, store paths, narinfo, `nix-cache-info` and binary-cache signatures.
