//! The skip scanner finds exactly what a general multi-pattern matcher (aho-corasick, leftmost-
//! first, non-overlapping) finds: the semantics spec §2.1 defines.

use aho_corasick::{AhoCorasick, MatchKind};
use proptest::prelude::*;
use refstrip_strip::{RefTable, Scanner};

const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

fn hashes(n: usize) -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(
        proptest::collection::vec(proptest::sample::select(ALPHABET), 32),
        1..n,
    )
}

/// Haystacks dense in base32 runs, hash parts, near-misses and overlaps.
fn haystack(hashes: Vec<Vec<u8>>) -> impl Strategy<Value = (Vec<Vec<u8>>, Vec<u8>)> {
    let pieces = proptest::collection::vec(
        prop_oneof![
            3 => (0..hashes.len()).prop_map({ let h = hashes.clone(); move |i| h[i].clone() }),
            2 => ((0..hashes.len()), 1..32usize).prop_map({ let h = hashes.clone(); move |(i, k)| h[i][k..].to_vec() }),
            2 => ((0..hashes.len()), 1..32usize).prop_map({ let h = hashes.clone(); move |(i, k)| h[i][..k].to_vec() }),
            2 => proptest::collection::vec(proptest::sample::select(ALPHABET), 0..50),
            1 => proptest::collection::vec(any::<u8>(), 0..20),
        ],
        0..30,
    );
    (Just(hashes), pieces.prop_map(|p| p.concat()))
}

fn table(hashes: &[Vec<u8>]) -> RefTable {
    let names: Vec<Vec<u8>> = hashes
        .iter()
        .enumerate()
        .map(|(i, h)| [h.clone(), format!("-p{i}").into_bytes()].concat())
        .collect();
    RefTable::new(&names[0], &names[1..]).unwrap()
}

fn oracle(refs: &RefTable, hay: &[u8]) -> Vec<(usize, u32)> {
    let ac = AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostFirst)
        .build((0..refs.len()).map(|i| refs.hash_part(i)))
        .unwrap();
    ac.find_iter(hay)
        .map(|m| (m.start(), m.pattern().as_u32()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
    #[test]
    fn same_matches_as_aho_corasick((hashes, hay) in hashes(6).prop_flat_map(haystack)) {
        let refs = table(&hashes);
        let mut found = Vec::new();
        Scanner::new(&refs).find(&hay, |at, i| found.push((at, i)));
        prop_assert_eq!(found, oracle(&refs, &hay));
    }
}

#[test]
fn many_references() {
    // 300 references, as a closure root has: the skip scanner's cost does not depend on it.
    let hashes: Vec<Vec<u8>> = (0..300u32)
        .map(|i| {
            (0..32u32)
                .map(|k| ALPHABET[((i * 7 + k * 13 + i * k) % 32) as usize])
                .collect()
        })
        .collect();
    let mut dedup = hashes.clone();
    dedup.sort();
    dedup.dedup();
    let refs = table(&dedup);
    let hay: Vec<u8> = dedup
        .iter()
        .flat_map(|h| [b"/nix/store/".to_vec(), h.clone(), b"-x\n".to_vec()].concat())
        .collect();
    let mut found = Vec::new();
    Scanner::new(&refs).find(&hay, |at, i| found.push((at, i)));
    assert_eq!(found.len(), dedup.len());
    assert_eq!(found, oracle(&refs, &hay));
}
