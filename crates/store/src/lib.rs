//! The normalized store: one manifest per store path over content-addressed objects, and the
//! mapping between a Nix narinfo and a manifest (what is kept verbatim so the original narinfo and
//! its signatures come back unchanged).

pub mod pathinfo;
