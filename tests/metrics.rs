//! `/metrics` of `refstrip serve` (issue #16): parsed with the Prometheus project's own parser
//! (Python `prometheus_client`, OpenMetrics), and every counter must have moved by exactly the
//! requests the test made.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use refstrip_tests::operator::{corpus_root, http_get, Serving};
use refstrip_tests::{corpus_dir, read_record, refstrip_bin, run, run_with_stdin, write_record_v1};

/// `(name, sorted labels) -> value` of every sample of a text exposition, as the reference parser
/// reads it (it refuses malformed text).
type Samples = BTreeMap<(String, String), f64>;

const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())), s.value])
print(json.dumps(out))
"#;

/// True when the parser is installed; otherwise a loud skip (a failure under CI, where
/// tools/setup.sh installs it).
fn parser_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "prometheus_client not installed but CI is set: tools/setup.sh should have installed it"
        );
        eprintln!("\n*** SKIPPED: python3 prometheus_client is missing; run tools/setup.sh ***\n");
    }
    ok
}

fn scrape(port: u16) -> Samples {
    let (status, body) = http_get(port, "/metrics");
    assert_eq!(status, 200);
    let parsed = run_with_stdin(Command::new("python3").args(["-c", PARSER]), &body);
    let rows: Vec<(String, String, f64)> = serde_json::from_slice(&parsed).unwrap();
    rows.into_iter().map(|(n, l, v)| ((n, l), v)).collect()
}

fn get(samples: &Samples, name: &str, labels: &str) -> f64 {
    samples
        .get(&(name.to_string(), labels.to_string()))
        .copied()
        .unwrap_or(0.0)
}

/// Scrape until `requests_total` sums to `expected` (responses are counted when their body ends,
/// a moment after the client has read it), then once more to see it stays there.
fn settled(port: u16, expected: f64) -> Samples {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = scrape(port);
        let total: f64 = samples
            .iter()
            .filter(|((n, _), _)| n == "refstrip_serve_requests_total")
            .map(|(_, v)| v)
            .sum();
        if total == expected {
            std::thread::sleep(Duration::from_millis(200));
            let again = scrape(port);
            assert_eq!(
                again, samples,
                "metrics moved without requests (scrapes counted?)"
            );
            return samples;
        }
        assert!(
            total < expected,
            "{total} requests counted, only {expected} made: {samples:?}"
        );
        assert!(
            Instant::now() < deadline,
            "requests never reached {expected}: {samples:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_count_exactly_the_requests_made() {
    if !parser_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    run(Command::new(refstrip_bin())
        .arg("ingest")
        .arg(corpus_dir().join("small/gen1"))
        .args(["--all", "--to"])
        .arg(&store));
    let server = Serving::start(&store, &[]);
    let port = server.port;

    let before = settled(port, 0.0);
    assert_eq!(
        get(&before, "refstrip_serve_nar_restore_seconds_count", ""),
        0.0
    );

    let root = corpus_root("gen1");
    let hash = &root.rsplit('/').next().unwrap()[..32];
    let dep = std::fs::read_to_string(corpus_dir().join("small/gen1/packages"))
        .unwrap()
        .lines()
        .map(|l| l.split('\t').nth(3).unwrap().to_string())
        .find(|p| !p.contains(hash))
        .unwrap();
    let dep_hash = &dep.rsplit('/').next().unwrap()[..32];

    let (status, cache_info) = http_get(port, "/nix-cache-info");
    assert_eq!(status, 200);
    let mut narinfo_bytes = 0;
    for h in [hash, dep_hash] {
        let (status, body) = http_get(port, &format!("/{h}.narinfo"));
        assert_eq!(status, 200);
        narinfo_bytes += body.len();
    }
    let (status, missing) = http_get(port, "/00000000000000000000000000000000.narinfo");
    assert_eq!(status, 404);
    let (status, other) = http_get(port, "/no-such-thing");
    assert_eq!(status, 404);

    let (status, nar) = http_get(port, &format!("/nar/{dep_hash}.nar"));
    assert_eq!(status, 200);
    let first = settled(port, 6.0);
    let (hits1, misses1) = (
        get(&first, "refstrip_serve_object_cache_hits_total", ""),
        get(&first, "refstrip_serve_object_cache_misses_total", ""),
    );
    assert!(misses1 >= 1.0, "{first:?}");
    assert!(get(&first, "refstrip_serve_store_blocks_fetched_total", "") >= 1.0);
    // The same NAR again: every object from the shared object cache, no block read.
    let (status, again) = http_get(port, &format!("/nar/{dep_hash}.nar"));
    assert_eq!((status, &again), (200, &nar));
    let after = settled(port, 7.0);

    let expect = [
        (
            "refstrip_serve_requests_total",
            "kind=cache-info,status=200",
            1.0,
        ),
        (
            "refstrip_serve_requests_total",
            "kind=narinfo,status=200",
            2.0,
        ),
        (
            "refstrip_serve_requests_total",
            "kind=narinfo,status=404",
            1.0,
        ),
        (
            "refstrip_serve_requests_total",
            "kind=other,status=404",
            1.0,
        ),
        ("refstrip_serve_requests_total", "kind=nar,status=200", 2.0),
        (
            "refstrip_serve_response_bytes_total",
            "kind=cache-info",
            cache_info.len() as f64,
        ),
        (
            "refstrip_serve_response_bytes_total",
            "kind=narinfo",
            (narinfo_bytes + missing.len()) as f64,
        ),
        (
            "refstrip_serve_response_bytes_total",
            "kind=other",
            other.len() as f64,
        ),
        (
            "refstrip_serve_response_bytes_total",
            "kind=nar",
            (2 * nar.len()) as f64,
        ),
        ("refstrip_serve_nar_restore_seconds_count", "", 2.0),
        ("refstrip_serve_object_cache_misses_total", "", misses1),
        (
            "refstrip_serve_object_cache_hits_total",
            "",
            2.0 * hits1 + misses1,
        ),
        ("refstrip_serve_nar_streams_active", "", 0.0),
    ];
    for (name, labels, value) in expect {
        assert_eq!(
            get(&after, name, labels),
            value,
            "{name}{{{labels}}} in {after:?}"
        );
    }
    assert_eq!(
        get(&after, "refstrip_serve_store_blocks_fetched_total", ""),
        get(&first, "refstrip_serve_store_blocks_fetched_total", "")
    );
    for kind in ["nar", "narinfo", "cache-info", "other"] {
        assert_eq!(
            get(
                &after,
                "refstrip_serve_errors_total",
                &format!("kind={kind}")
            ),
            0.0
        );
    }
    // The histogram's buckets are cumulative and end with +Inf = count.
    assert_eq!(
        get(
            &after,
            "refstrip_serve_nar_restore_seconds_bucket",
            "le=+Inf"
        ),
        2.0
    );

    // A path whose record lies about its NarHash: the restore fails its final check, the download
    // fails (a 500, or an aborted body for a large NAR), and that is one error.
    let third = std::fs::read_to_string(corpus_dir().join("small/gen1/packages"))
        .unwrap()
        .lines()
        .map(|l| l.split('\t').nth(3).unwrap().rsplit('/').next().unwrap()[..32].to_string())
        .find(|h| h != hash && h != dep_hash)
        .unwrap();
    let mut record = read_record(&store, &third);
    record.manifest.nar_hash[0] ^= 1;
    write_record_v1(&store, &record);
    let (status, _) = http_get(port, &format!("/nar/{third}.nar"));
    let failed = settled(port, 8.0);
    let nar_requests: f64 = failed
        .iter()
        .filter(|((n, l), _)| n == "refstrip_serve_requests_total" && l.starts_with("kind=nar,"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(nar_requests, 3.0, "{failed:?}");
    assert_eq!(
        get(&failed, "refstrip_serve_errors_total", "kind=nar"),
        1.0,
        "status {status}: {failed:?}"
    );
    assert_eq!(
        get(&failed, "refstrip_serve_nar_restore_seconds_count", ""),
        2.0
    );
    server.stop();
}
