//! NAR codec against real Nix (filled in below).
