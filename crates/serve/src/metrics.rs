//! `/metrics`: what the server did, in the OpenMetrics text format Prometheus scrapes (written by
//! the `prometheus-client` crate).
//!
//! ```text
//! refstrip_serve_requests_total{kind,status}   responses by kind (narinfo, nar, cache-info, other) and status
//! refstrip_serve_response_bytes_total{kind}    body bytes sent
//! refstrip_serve_errors_total{kind}            5xx responses and bodies aborted by a failed restore
//! refstrip_serve_nar_restore_seconds           histogram: restore time of each NAR served completely
//! refstrip_serve_object_cache_hits_total       objects answered by the shared in-memory object cache
//! refstrip_serve_object_cache_misses_total     objects it had to read from pack blocks
//! refstrip_serve_store_blocks_fetched_total    pack blocks read from the store (or the disk cache's far end)
//! refstrip_serve_store_bytes_fetched_total     their compressed bytes
//! refstrip_serve_delta_files_total             files rebuilt from a local base and a delta
//! refstrip_serve_delta_bytes_total             the deltas' bytes
//! refstrip_serve_deltas_rejected_total         deltas tried and not used (the full object was read)
//! refstrip_serve_nar_streams_active            NARs being restored now
//! ```
//! A request is counted when its response body ends (completed, aborted or abandoned), so counts
//! and bytes always agree. Scrapes of `/metrics` itself are not counted.

use std::fmt;
use std::sync::atomic::Ordering;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use refstrip_read::objects::FetchCounters;

/// What a request asked for.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Kind {
    Narinfo,
    Nar,
    CacheInfo,
    Other,
}

impl Kind {
    /// The kind of a request path; `None` for `/metrics` (not counted).
    pub fn of_path(path: &str) -> Option<Kind> {
        Some(if path == "/metrics" {
            return None;
        } else if path == "/nix-cache-info" {
            Kind::CacheInfo
        } else if path.starts_with("/nar/") {
            Kind::Nar
        } else if path.ends_with(".narinfo") && !path[1..].contains('/') {
            Kind::Narinfo
        } else {
            Kind::Other
        })
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Narinfo => "narinfo",
            Kind::Nar => "nar",
            Kind::CacheInfo => "cache-info",
            Kind::Other => "other",
        }
    }
}

impl EncodeLabelValue for Kind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        fmt::Write::write_str(encoder, self.name())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: Kind,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: Kind,
}

/// The server's counters and histogram, and the registry that writes them out.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    bytes: Family<KindLabels, Counter>,
    errors: Family<KindLabels, Counter>,
    restore_seconds: Histogram,
    object_hits: Counter,
    object_misses: Counter,
    blocks_fetched: Counter,
    bytes_fetched: Counter,
    delta_files: Counter,
    delta_bytes: Counter,
    deltas_rejected: Counter,
    streams: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("refstrip_serve");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP responses by kind (narinfo, nar, cache-info, other) and status, counted when the body ends",
            requests.clone(),
        );
        let bytes = Family::<KindLabels, Counter>::default();
        registry.register(
            "response_bytes",
            "Response body bytes sent, by kind",
            bytes.clone(),
        );
        let errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "errors",
            "5xx responses and response bodies aborted by a failed restore, by kind",
            errors.clone(),
        );
        // 1 ms to 65 s.
        let restore_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "nar_restore_seconds",
            "Time to restore a NAR completely (from the first object read to the verified end)",
            restore_seconds.clone(),
        );
        let object_hits = Counter::default();
        registry.register(
            "object_cache_hits",
            "Objects answered by the shared in-memory object cache",
            object_hits.clone(),
        );
        let object_misses = Counter::default();
        registry.register(
            "object_cache_misses",
            "Objects the in-memory object cache did not hold (read from pack blocks)",
            object_misses.clone(),
        );
        let blocks_fetched = Counter::default();
        registry.register(
            "store_blocks_fetched",
            "Pack blocks read from the store (or from the disk cache's far end)",
            blocks_fetched.clone(),
        );
        let bytes_fetched = Counter::default();
        registry.register(
            "store_bytes_fetched",
            "Compressed bytes of the pack blocks read from the store",
            bytes_fetched.clone(),
        );
        let delta_files = Counter::default();
        registry.register(
            "delta_files",
            "Files rebuilt from a base in the local store and a delta",
            delta_files.clone(),
        );
        let delta_bytes = Counter::default();
        registry.register(
            "delta_bytes",
            "Bytes of the deltas files were rebuilt from",
            delta_bytes.clone(),
        );
        let deltas_rejected = Counter::default();
        registry.register(
            "deltas_rejected",
            "Deltas tried and not used (base changed or gone, wrong output): the full object was read",
            deltas_rejected.clone(),
        );
        let streams = Gauge::default();
        registry.register(
            "nar_streams_active",
            "NARs being restored now",
            streams.clone(),
        );
        Metrics {
            registry,
            requests,
            bytes,
            errors,
            restore_seconds,
            object_hits,
            object_misses,
            blocks_fetched,
            bytes_fetched,
            delta_files,
            delta_bytes,
            deltas_rejected,
            streams,
        }
    }

    /// A response body ended: `bytes` sent, `aborted` if a failed restore cut it short.
    pub fn response_done(&self, kind: Kind, status: u16, bytes: u64, aborted: bool) {
        self.requests
            .get_or_create(&RequestLabels { kind, status })
            .inc();
        self.bytes.get_or_create(&KindLabels { kind }).inc_by(bytes);
        if status >= 500 || aborted {
            self.errors.get_or_create(&KindLabels { kind }).inc();
        }
    }

    /// A NAR restore finished and verified in `seconds`.
    pub fn restored(&self, seconds: f64) {
        self.restore_seconds.observe(seconds);
    }

    /// A NAR restore starts (`+1`) or ends (`-1`).
    pub fn stream(&self, delta: i64) {
        self.streams.inc_by(delta);
    }

    /// The text exposition, with the object layers' counters as of now.
    pub fn encode(&self, counters: &FetchCounters) -> String {
        for (metric, counter) in [
            (&self.object_hits, &counters.object_memory_hits),
            (&self.object_misses, &counters.object_memory_misses),
            (&self.blocks_fetched, &counters.fetched_blocks),
            (&self.bytes_fetched, &counters.fetched_bytes),
            (&self.delta_files, &counters.deltas_applied),
            (&self.delta_bytes, &counters.delta_bytes),
            (&self.deltas_rejected, &counters.deltas_rejected),
        ] {
            metric
                .inner()
                .store(counter.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String");
        text
    }
}

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_of_paths() {
        assert_eq!(Kind::of_path("/metrics"), None);
        assert_eq!(Kind::of_path("/nix-cache-info"), Some(Kind::CacheInfo));
        assert_eq!(
            Kind::of_path("/1avrvw4574jhm9g7j8y0y9a6qzakr6nj.narinfo"),
            Some(Kind::Narinfo)
        );
        assert_eq!(Kind::of_path("/nar/x.nar.zst"), Some(Kind::Nar));
        assert_eq!(Kind::of_path("/a/b.narinfo"), Some(Kind::Other));
        assert_eq!(Kind::of_path("/"), Some(Kind::Other));
    }

    #[test]
    fn encodes_what_was_counted() {
        let m = Metrics::new();
        m.response_done(Kind::Nar, 200, 1000, false);
        m.response_done(Kind::Nar, 200, 24, true);
        m.response_done(Kind::Narinfo, 404, 10, false);
        m.restored(0.003);
        let counters = FetchCounters::default();
        counters.object_memory_hits.store(7, Ordering::Relaxed);
        counters.deltas_applied.store(3, Ordering::Relaxed);
        let text = m.encode(&counters);
        for line in [
            "refstrip_serve_requests_total{kind=\"nar\",status=\"200\"} 2",
            "refstrip_serve_requests_total{kind=\"narinfo\",status=\"404\"} 1",
            "refstrip_serve_response_bytes_total{kind=\"nar\"} 1024",
            "refstrip_serve_errors_total{kind=\"nar\"} 1",
            "refstrip_serve_nar_restore_seconds_count 1",
            "refstrip_serve_object_cache_hits_total 7",
            "refstrip_serve_delta_files_total 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
