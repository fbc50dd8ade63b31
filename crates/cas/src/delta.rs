//! Deltas between versions of a file (spec §5): one zstd frame compressed with the base file's
//! normalized bytes as its prefix (`zstd --patch-from=BASE`), so a client holding the base rebuilds
//! the target from a frame a fraction of the target's compressed size. A delta is an object of
//! kind [`Kind::Delta`](crate::Kind::Delta), named by the BLAKE3 of its bytes; the output proves
//! itself by hashing to the target's name, so neither the base nor the delta needs trusting.

use std::io;

use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter};

/// Largest base (and target) a delta is made for. A patch-from window holds base and target at
/// once, in memory on both sides; larger files (libxul is 184 MB) are stored whole or as chunks.
pub const MAX_DELTA_INPUT: u64 = 64 << 20;

/// zstd level of deltas (measured in docs/store.md: 19 makes lua's deltas 11 % smaller than 12
/// and runs at about 1 MB/s of target on them, 12 at about 5 MB/s; a delta is made once and
/// fetched by every client that updates).
pub const DELTA_LEVEL: i32 = 19;
/// Targets above this get [`DELTA_LEVEL_LARGE`]: at level 19 a 64 MiB target would hold a worker
/// for a minute.
pub const DELTA_LARGE: u64 = 8 << 20;
pub const DELTA_LEVEL_LARGE: i32 = 12;

/// The level a delta to a target of `size` bytes is made at.
pub fn level_for(size: u64) -> i32 {
    match size > DELTA_LARGE {
        true => DELTA_LEVEL_LARGE,
        false => DELTA_LEVEL,
    }
}

fn zstd_err(what: &str) -> impl Fn(usize) -> io::Error + '_ {
    move |code| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what}: {}", zstd::zstd_safe::get_error_name(code)),
        )
    }
}

/// The window log a frame needs to see all of `base` while writing `target`.
fn window_log(base: usize, target: usize) -> u32 {
    let span = (base + target).max(1 << 10) as u64;
    (64 - (span - 1).leading_zeros()).clamp(10, 27)
}

/// The delta rebuilding `target` from `base`, at zstd `level`.
pub fn encode(base: &[u8], target: &[u8], level: i32) -> io::Result<Vec<u8>> {
    if base.len() as u64 > MAX_DELTA_INPUT || target.len() as u64 > MAX_DELTA_INPUT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "file too large for a delta",
        ));
    }
    let mut cctx = CCtx::create();
    let err = zstd_err("making a delta");
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .map_err(&err)?;
    cctx.set_parameter(CParameter::WindowLog(window_log(base.len(), target.len())))
        .map_err(&err)?;
    cctx.ref_prefix(base).map_err(&err)?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(target.len()));
    cctx.compress2(&mut out, target).map_err(&err)?;
    Ok(out)
}

/// Rebuild a target of exactly `size` bytes from `base` and `delta`. The output buffer is
/// `size` bytes, allocated only if `size` is within [`MAX_DELTA_INPUT`]; a frame that writes more,
/// or fewer, is an error. The caller checks the output's BLAKE3.
pub fn apply(base: &[u8], delta: &[u8], size: u64) -> io::Result<Vec<u8>> {
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    if size > MAX_DELTA_INPUT || base.len() as u64 > MAX_DELTA_INPUT {
        return Err(invalid("delta target or base larger than the delta limit"));
    }
    let mut dctx = DCtx::create();
    let err = zstd_err("applying a delta");
    dctx.set_parameter(DParameter::WindowLogMax(27))
        .map_err(&err)?;
    dctx.ref_prefix(base).map_err(&err)?;
    let mut out = Vec::with_capacity(size as usize);
    dctx.decompress(&mut out, delta).map_err(&err)?;
    if out.len() as u64 != size {
        return Err(invalid("delta output has the wrong length"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn noise(seed: u8, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        blake3::Hasher::new()
            .update(&[seed])
            .finalize_xof()
            .fill(&mut v);
        v
    }

    #[test]
    fn a_small_edit_costs_a_small_delta_and_applies_exactly() {
        let base = noise(1, 300_000);
        let mut target = base.clone();
        target[1000..1010].copy_from_slice(b"0123456789");
        target.extend_from_slice(b"appended");
        let delta = encode(&base, &target, DELTA_LEVEL).unwrap();
        assert!(delta.len() < 200, "{} bytes", delta.len());
        assert_eq!(apply(&base, &delta, target.len() as u64).unwrap(), target);
        // The frame is plain zstd with the base as prefix: another base makes other bytes or fails.
        let other = noise(2, 300_000);
        assert!(
            apply(&other, &delta, target.len() as u64).is_ok_and(|o| o != target)
                || apply(&other, &delta, target.len() as u64).is_err()
        );
    }

    #[test]
    fn output_is_capped_at_the_declared_size() {
        let base = noise(3, 10_000);
        let target = noise(4, 10_000);
        let delta = encode(&base, &target, 3).unwrap();
        assert!(apply(&base, &delta, 9_999).is_err());
        assert!(apply(&base, &delta, 10_001).is_err());
        assert!(apply(&base, &delta, MAX_DELTA_INPUT + 1).is_err());
        assert!(apply(&base, b"not a frame", 10_000).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn deltas_round_trip(base in proptest::collection::vec(any::<u8>(), 0..4096),
                             target in proptest::collection::vec(any::<u8>(), 0..4096),
                             cut in 0usize..4096) {
            // Targets that share a piece of the base, and ones that share nothing.
            let mut t = base[..cut.min(base.len())].to_vec();
            t.extend_from_slice(&target);
            for target in [t, target] {
                let delta = encode(&base, &target, 3).unwrap();
                prop_assert_eq!(apply(&base, &delta, target.len() as u64).unwrap(), target);
            }
        }

        #[test]
        fn hostile_deltas_never_panic(base in proptest::collection::vec(any::<u8>(), 0..512),
                                      delta in proptest::collection::vec(any::<u8>(), 0..512),
                                      size in 0u64..1 << 20) {
            if let Ok(out) = apply(&base, &delta, size) {
                prop_assert_eq!(out.len() as u64, size);
            }
        }
    }
}
