//! Nix formats against real Nix (owned by the nix-formats work).
