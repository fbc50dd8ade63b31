//! Serve a normalized store as a standard Nix binary cache over HTTP, so an unmodified Nix
//! (`substituters = http://host:port`) gets the exact original NARs and narinfos, with their
//! original signatures, restored on the fly. This crate's one job is that HTTP façade; restoring
//! is `refstrip-strip`'s and reading the store (records, checks, objects) is `refstrip-read`'s.
//!
//! Routes:
//! ```text
//! GET      /nix-cache-info               StoreDir, WantMassQuery: 1, Priority
//! GET|HEAD /<hash part>.narinfo          the original path fields and Sig lines, URL and
//!                                        Compression as served (by Accept-Encoding with
//!                                        `negotiate_compression`), FileSize and FileHash when
//!                                        uncompressed
//! GET|HEAD /nar/<hash part>.nar          the NAR restored on the fly; single ranges (206)
//! GET|HEAD /nar/<hash part>.nar.zst      the same, zstd-compressed on the fly
//! ```
//! A NAR is streamed with bounded memory (a restore thread writes into a small bounded channel)
//! and is never delivered complete unless its SHA-256 matched: see [`ChannelWriter`]. A path the
//! store cannot be read for (it is not answering: see [`upstream`]) is a 404, so that Nix takes it
//! from its next substituter.

mod access_log;
mod body;
mod conn;
mod encoding;
pub mod metrics;
mod range;
pub mod served;
pub mod upstream;

pub use access_log::{Client, RequestLog};
pub use body::{BodyError, NarBody};
pub use conn::{serve, Limits};
pub use metrics::Metrics;
pub use range::RangeRequest;
pub use served::ServedLog;
pub use upstream::Upstream;

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use refstrip_cas::FileSource;
use refstrip_nix::is_hash_part;
use refstrip_read::objects::{NearSource, ObjectOptions, Objects, SizedLru};
use refstrip_read::{PathRecord, ReadError, StoreReader};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Size of one body chunk handed from the restore thread to the connection.
pub const CHUNK: usize = 256 * 1024;
/// Path records fetched and decoded at the same time (each may take up to a manifest's decode
/// limit of memory, 128 MiB, if the store is hostile).
pub const RECORD_DECODES: usize = 2;
/// Chunks in flight per NAR stream (besides the one being filled and the one held back).
pub const CHANNEL_CHUNKS: usize = 8;

/// How NARs are advertised in narinfos.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// `nar/<hash>.nar`, `Compression: none`, exact Content-Length.
    None,
    /// `nar/<hash>.nar.zst`, `Compression: zstd`, compressed while streaming.
    Zstd,
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Compression::None => ".nar",
            Compression::Zstd => ".nar.zst",
        }
    }
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// `StoreDir` of nix-cache-info; `None`: from the store's records (`/nix/store` if empty).
    pub store_dir: Option<String>,
    /// `Priority` of nix-cache-info (lower is preferred by Nix; cache.nixos.org uses 40).
    pub priority: u64,
    /// What narinfos advertise.
    pub compression: Compression,
    /// Advertise `.nar.zst` to clients whose narinfo request accepts zstd (`Accept-Encoding`) and
    /// `.nar` to the others, instead of `compression` to all (narinfos then say `Vary:
    /// Accept-Encoding`). Nix 2.8 sends no Accept-Encoding, so it gets `.nar`.
    pub negotiate_compression: bool,
    /// zstd level for `.nar.zst`.
    pub zstd_level: i32,
    /// NARs restored at the same time; further NAR requests wait for a slot.
    pub max_streams: usize,
    /// Budget for decoded path records kept in memory (approximate bytes).
    pub record_cache_bytes: usize,
    /// How objects are read: verified objects kept in memory and shared by all requests (so that
    /// popular files are not decompressed from their pack block for every download), decoded
    /// blocks in memory, and an optional disk block cache (for a store behind HTTP or S3).
    pub objects: ObjectOptions,
    /// Connection bounds and timeouts (see [`Limits`]).
    pub limits: Limits,
    /// The operator's key: every narinfo served gets its signature (computed per request, next to
    /// the stored `Sig` lines), for stores ingested without `--sign-key`.
    pub sign_key: Option<refstrip_nix::SecretKey>,
    /// Where to note the paths served (for `refstrip gc --keep-within`); `None`: nowhere.
    pub served: Option<Arc<ServedLog>>,
    /// How requests are logged.
    pub request_log: RequestLog,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            store_dir: None,
            priority: 40,
            compression: Compression::None,
            negotiate_compression: false,
            zstd_level: 3,
            max_streams: 64,
            record_cache_bytes: 64 << 20,
            objects: ObjectOptions {
                object_memory: 256 << 20,
                ..ObjectOptions::default()
            },
            limits: Limits::default(),
            sign_key: None,
            served: None,
            request_log: RequestLog::Text,
        }
    }
}

/// Everything the handlers share.
pub struct Server {
    store: StoreReader,
    config: Config,
    cache_info: String,
    /// Decoded path records, least recently used evicted first, bounded by approximate size.
    records: Mutex<SizedLru<String, Arc<PathRecord>>>,
    /// Records being fetched and decoded at once.
    record_decodes: Semaphore,
    objects: Objects,
    streams: Arc<Semaphore>,
    metrics: Metrics,
    /// The gate in front of a store opened by [`upstream::open`].
    upstream: Option<Arc<Upstream>>,
}

impl Server {
    /// Wrap a store opened for reading. Takes the store directory from a record unless configured,
    /// and refuses records of any other.
    pub fn new(store: StoreReader, config: Config) -> Result<Arc<Server>, ReadError> {
        Server::with_near(store, None, config, None)
    }

    /// As [`Server::new`], for a store opened by [`upstream::open`] (its `upstream` gate), and with
    /// `near` (the local Nix store) tried before the store for every object.
    pub fn with_near(
        store: StoreReader,
        upstream: Option<Arc<Upstream>>,
        config: Config,
        near: Option<Arc<dyn NearSource>>,
    ) -> Result<Arc<Server>, ReadError> {
        let store_dir = match &config.store_dir {
            Some(dir) => dir.clone(),
            None => store_dir_of(&store)?,
        };
        let store = store.expect_store_dir(store_dir.clone());
        let cache_info = format!(
            "StoreDir: {store_dir}\nWantMassQuery: 1\nPriority: {}\n",
            config.priority
        );
        let records = Mutex::new(SizedLru::new(config.record_cache_bytes as u64));
        let objects = store
            .objects(&config.objects)
            .map_err(|source| ReadError::Io {
                what: "the object cache".into(),
                store: store.describe(),
                error: source,
            })?;
        let objects = match near {
            Some(near) => objects.with_near(near),
            None => objects,
        };
        let streams = Arc::new(Semaphore::new(config.max_streams.max(1)));
        Ok(Arc::new(Server {
            store,
            config,
            cache_info,
            records,
            record_decodes: Semaphore::new(RECORD_DECODES),
            objects,
            streams,
            metrics: Metrics::new(),
            upstream,
        }))
    }

    /// The `nix-cache-info` this server answers with.
    pub fn cache_info(&self) -> &str {
        &self.cache_info
    }

    /// Write the paths noted as served since the last write (at shutdown).
    pub fn flush_served(&self) {
        if let Some(served) = &self.config.served {
            if let Err(e) = served.flush() {
                tracing::warn!(error = %e, "writing the served-paths state");
            }
        }
    }

    fn note_served(&self, hash_part: &str) {
        if let Some(served) = &self.config.served {
            served.note(hash_part);
        }
    }

    /// Drop a cached record after a restore with it failed: the store may have changed under it
    /// (a repack moved its objects, and the pack it names was deleted), so the next request reads
    /// the record again.
    fn forget_record(&self, hash_part: &str) {
        self.records
            .lock()
            .expect("record cache lock")
            .remove(&hash_part.to_string());
    }

    /// The HTTP routes, with the request log and metrics.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/metrics", get(metrics_text))
            .route("/nix-cache-info", get(cache_info))
            .route("/{file}", get(narinfo))
            .route("/nar/{file}", get(nar))
            .fallback(|| async { not_found() })
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                access_log::log_request,
            ))
            .with_state(self.clone())
    }

    /// The record of `hash_part`, from memory or the store; `None` when the store lacks it.
    /// A missing path costs one failed lookup in the backend (no decoding).
    async fn record(
        self: &Arc<Self>,
        hash_part: &str,
    ) -> Result<Option<Arc<PathRecord>>, Response> {
        if let Some(record) = self
            .records
            .lock()
            .expect("record cache lock")
            .get(&hash_part.to_string())
        {
            return Ok(Some(record));
        }
        // Decoding a record may take up to a manifest's limit of memory: a few at a time, so that
        // concurrent requests for hostile records cannot add up.
        let Ok(_decoding) = self.record_decodes.acquire().await else {
            return Err(server_error());
        };
        let server = self.clone();
        let key = hash_part.to_string();
        let read = tokio::task::spawn_blocking(move || {
            if let Some(upstream) = &server.upstream {
                upstream.ensure_checked().map_err(|error| ReadError::Io {
                    what: "the store's marker".into(),
                    store: server.store.describe(),
                    error,
                })?;
            }
            server.store.try_record(&key)
        })
        .await;
        match read {
            Ok(Ok(Some((record, _)))) => {
                let record = Arc::new(record);
                let mut records = self.records.lock().expect("record cache lock");
                records.put(
                    hash_part.to_string(),
                    record.clone(),
                    record_weight(&record),
                );
                // Nix asks for the references' narinfos next, one at a time.
                if let Some(upstream) = &self.upstream {
                    let wanted: Vec<String> = record
                        .reference_hash_parts()
                        .filter(|h| records.get(&h.to_string()).is_none())
                        .map(refstrip_backend::record_key)
                        .collect();
                    drop(records);
                    upstream.prefetch(wanted);
                }
                Ok(Some(record))
            }
            Ok(Ok(None)) => Ok(None),
            // The store is not answering: a miss, so that Nix asks its next substituter.
            Ok(Err(e @ ReadError::Io { .. })) => {
                tracing::debug!(hash_part, error = %e, "the store is unavailable");
                Err(unavailable())
            }
            Ok(Err(e)) => {
                tracing::error!(hash_part, error = %e, "reading path record");
                Err(server_error())
            }
            Err(e) => {
                tracing::error!(hash_part, error = %e, "record reader task failed");
                Err(server_error())
            }
        }
    }
}

/// The store directory of the store's paths, from the first record listed (`/nix/store` for an
/// empty store, or one that cannot be listed).
fn store_dir_of(store: &StoreReader) -> Result<String, ReadError> {
    let first = match store.list_paths() {
        Ok(paths) => paths.into_iter().next(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the store's paths");
            None
        }
    };
    match first {
        Some(hash_part) => Ok(store.record(&hash_part)?.0.store_dir()),
        None => {
            tracing::warn!(
                "no record to take StoreDir from; assuming /nix/store (set --store-dir)"
            );
            Ok("/nix/store".to_string())
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn metrics_text(State(server): State<Arc<Server>>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        server.metrics.encode(&server.objects.counters),
    )
        .into_response()
}

async fn cache_info(State(server): State<Arc<Server>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/x-nix-cache-info")],
        server.cache_info.clone(),
    )
        .into_response()
}

async fn narinfo(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    Path(file): Path<String>,
) -> Response {
    let Some(hash_part) = file
        .strip_suffix(".narinfo")
        .filter(|h| is_hash_part(h.as_bytes()))
    else {
        return not_found();
    };
    let record = match server.record(hash_part).await {
        Ok(Some(record)) => record,
        Ok(None) => return not_found(),
        Err(response) => return response,
    };
    let negotiate = server.config.negotiate_compression;
    let compression = match negotiate {
        true if encoding::accepts_zstd(&headers) => Compression::Zstd,
        true => Compression::None,
        false => server.config.compression,
    };
    let url = format!("nar/{hash_part}{}", compression.extension());
    // Uncompressed, the file is the NAR: its size and hash are known without making it (Nix shows
    // the download size, and checks FileHash as well as NarHash). A zstd file is made on the fly,
    // so it has neither (both are optional for Nix).
    let (file_hash, file_size) = match compression {
        Compression::None => (
            Some(refstrip_nix::Hash::from_bytes(record.manifest.nar_hash)),
            Some(record.manifest.nar_size),
        ),
        Compression::Zstd => (None, None),
    };
    match refstrip_read::pathinfo::narinfo(
        &record.manifest,
        url,
        Some(compression.name().to_string()),
        file_hash,
        file_size,
    ) {
        Ok(mut info) => {
            if let Some(key) = &server.config.sign_key {
                refstrip_nix::signature::add_signature(&mut info, key);
            }
            server.note_served(hash_part);
            let mut response = (
                [(header::CONTENT_TYPE, "text/x-nix-narinfo")],
                info.to_string(),
            )
                .into_response();
            if negotiate {
                response
                    .headers_mut()
                    .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
            }
            response
        }
        Err(e) => {
            tracing::error!(hash_part, error = %e, "making narinfo");
            server_error()
        }
    }
}

async fn nar(
    State(server): State<Arc<Server>>,
    method: Method,
    headers: HeaderMap,
    Path(file): Path<String>,
) -> Response {
    let (hash_part, compression) = if let Some(h) = file.strip_suffix(".nar.zst") {
        (h, Compression::Zstd)
    } else if let Some(h) = file.strip_suffix(".nar") {
        (h, Compression::None)
    } else {
        return not_found();
    };
    if !is_hash_part(hash_part.as_bytes()) {
        return not_found();
    }
    let record = match server.record(hash_part).await {
        Ok(Some(record)) => record,
        Ok(None) => return not_found(),
        Err(response) => return response,
    };
    let nar_size = record.manifest.nar_size;
    let content_type = match compression {
        Compression::None => "application/x-nix-nar",
        Compression::Zstd => "application/zstd",
    };
    // Ranges of the uncompressed NAR only (its bytes are fixed; a zstd stream made on the fly is
    // not). A Range with If-Range gets the whole NAR: there is no validator to compare with.
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(value)
            if compression == Compression::None
                && method == Method::GET
                && !headers.contains_key(header::IF_RANGE) =>
        {
            RangeRequest::parse(value, nar_size)
        }
        _ => RangeRequest::Whole,
    };
    if range == RangeRequest::Unsatisfiable {
        return (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [
                (header::CONTENT_RANGE, format!("bytes */{nar_size}")),
                (header::CONTENT_TYPE, "text/plain".to_string()),
            ],
            "range not satisfiable\n",
        )
            .into_response();
    }
    if method == Method::HEAD {
        // The headers of the GET: Content-Length = NarSize, or (zstd, chunked) none at all, since
        // the compressed length is only known once compressed.
        let mut response = match compression {
            Compression::None => Body::empty().into_response(),
            Compression::Zstd => Body::new(body::UnknownLength).into_response(),
        };
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if compression == Compression::None {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(nar_size));
            headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        }
        return response;
    }

    let permit = match server.streams.clone().acquire_owned().await {
        Ok(permit) => permit,
        Err(_) => return server_error(),
    };
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let level = server.config.zstd_level;
    let name = hash_part.to_string();
    let bytes = match range {
        RangeRequest::Bytes { start, end } => Some((start, end)),
        _ => None,
    };
    let restoring = server.clone();
    let upstream = server.upstream.clone();
    tokio::task::spawn_blocking(move || {
        let failed = !restore_to_channel(
            &restoring.objects,
            &restoring.metrics,
            &record,
            compression,
            bytes,
            level,
            tx,
            permit,
            &name,
        );
        if failed {
            restoring.forget_record(&name);
            restoring.store.forget_shape(&record);
        }
    });

    // Wait for the first chunk before sending headers: a NAR smaller than two chunks is then
    // restored and checked completely before the status line, so its failure is a clean 500; and
    // a first chunk that disagrees with NarSize never gets a 200 (see `body`). A range is held to
    // its own length the same way.
    let exact = match (compression, bytes) {
        (Compression::None, Some((start, end))) => Some(end - start + 1),
        (Compression::None, None) => Some(nar_size),
        (Compression::Zstd, _) => None,
    };
    match body::start(rx, exact).await {
        Ok(body) => {
            server.note_served(hash_part);
            let mut response =
                ([(header::CONTENT_TYPE, content_type)], Body::new(body)).into_response();
            if compression == Compression::None {
                let headers = response.headers_mut();
                headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
                if let Some((start, end)) = bytes {
                    *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                    response.headers_mut().insert(
                        header::CONTENT_RANGE,
                        HeaderValue::from_str(&format!("bytes {start}-{end}/{nar_size}"))
                            .expect("digits and ASCII"),
                    );
                }
            }
            response
        }
        Err(why) => {
            tracing::error!(hash_part, error = %why, "not starting the response");
            // Failed for want of the store's blocks: Nix retries a 5xx several times before it
            // asks its next substituter, and takes a 404 at once.
            match upstream.is_some_and(|u| u.is_down()) {
                true => unavailable(),
                false => server_error(),
            }
        }
    }
}

/// Run `restore` on a blocking thread, writing the (possibly compressed) NAR, or the bytes
/// `range` of it, into `tx`. Returns false if the restore failed (not if the client went away).
#[allow(clippy::too_many_arguments)]
fn restore_to_channel(
    objects: &Objects,
    metrics: &Metrics,
    record: &PathRecord,
    compression: Compression,
    range: Option<(u64, u64)>,
    level: i32,
    tx: mpsc::Sender<io::Result<Bytes>>,
    _permit: OwnedSemaphorePermit,
    hash_part: &str,
) -> bool {
    let nar_size = record.manifest.nar_size;
    // An uncompressed NAR may not pass NarSize (its Content-Length), nor a range its length: stop
    // at the first byte over.
    let limit = match (compression, range) {
        (Compression::None, Some((start, end))) => Some(end - start + 1),
        (Compression::None, None) => Some(nar_size),
        (Compression::Zstd, _) => None,
    };
    let mut out = ChannelWriter::with_limit(tx, limit);
    let started = Instant::now();
    metrics.stream(1);
    let result = (|| -> Result<(), String> {
        let mut objects = objects.of(record);
        let mut source = FileSource::new(&mut objects);
        let manifest = &record.manifest;
        let failed = |e: refstrip_strip::StripError| e.to_string();
        match (compression, range) {
            (Compression::None, None) => {
                refstrip_strip::restore(manifest, &mut source, &mut out, &mut ())
                    .map_err(failed)?;
            }
            // The whole NAR is restored (and checked), only the range is passed on.
            (Compression::None, Some((start, end))) => {
                let mut part = range::RangeWriter::new(&mut out, start, end, nar_size);
                refstrip_strip::restore(manifest, &mut source, &mut part, &mut ())
                    .map_err(failed)?;
            }
            (Compression::Zstd, _) => {
                let mut encoder = zstd::stream::write::Encoder::new(&mut out, level)
                    .map_err(|e| e.to_string())?;
                refstrip_strip::restore(manifest, &mut source, &mut encoder, &mut ())
                    .map_err(failed)?;
                encoder.finish().map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    })();
    // Before the rest of the body goes out, so that a client that has it all sees the gauge back.
    metrics.stream(-1);
    match result {
        Ok(()) => {
            metrics.restored(started.elapsed().as_secs_f64());
            out.finish();
            // After the client has its last bytes: noting the objects is an SQLite write.
            objects.remember(record);
            true
        }
        Err(why) => {
            let client_gone = out.receiver_gone;
            if client_gone {
                tracing::debug!(hash_part, "client went away during restore");
            } else {
                tracing::error!(hash_part, error = %why, "restore failed; aborting the response");
            }
            out.fail(io::Error::other(why));
            client_gone
        }
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain")],
        "not found\n",
    )
        .into_response()
}

/// A path that cannot be served while the store is not answering: as a miss (404), since stock
/// Nix 2.8 fails the build on a 5xx for a narinfo (and aborts with `fallback = true`).
fn unavailable() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain")],
        "not found (the store is not answering)\n",
    )
        .into_response()
}

fn server_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, "text/plain")],
        "internal error\n",
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Streaming

/// The blocking restore's output: fills [`CHUNK`]-sized buffers and sends them to the response
/// body over a bounded channel, always holding the most recent full chunk back.
///
/// Why this never delivers wrong bytes as a complete download: `restore` checks the NAR's SHA-256
/// and size only after writing the last byte, so everything written before it returns is
/// provisional. Holding back the last chunk means the client has not received the whole body
/// until `restore` returned `Ok` ([`finish`](Self::finish) sends the rest and ends the stream
/// cleanly). On any error [`fail`](Self::fail) sends an error instead, which makes the server
/// abort the connection without finishing the body: with a Content-Length (uncompressed NARs)
/// the body is short, and with chunked encoding (zstd) the terminating chunk is missing and the
/// zstd frame is unfinished. Either way HTTP clients, Nix's curl included, see a failed download
/// ("transferred a partial file"), never a complete response with wrong bytes; Nix additionally
/// checks NarHash itself. At least one byte is always held back, since a NAR is never empty.
pub struct ChannelWriter {
    tx: Option<mpsc::Sender<io::Result<Bytes>>>,
    buf: Vec<u8>,
    held: Option<Bytes>,
    /// At most this many bytes may be written (NarSize for uncompressed NARs).
    limit: Option<u64>,
    written: u64,
    /// The response body was dropped (client disconnected): writing fails fast.
    pub receiver_gone: bool,
}

impl ChannelWriter {
    pub fn new(tx: mpsc::Sender<io::Result<Bytes>>) -> Self {
        Self::with_limit(tx, None)
    }

    /// A writer that fails any write past `limit` bytes in total.
    pub fn with_limit(tx: mpsc::Sender<io::Result<Bytes>>, limit: Option<u64>) -> Self {
        ChannelWriter {
            tx: Some(tx),
            buf: Vec::with_capacity(CHUNK),
            held: None,
            limit,
            written: 0,
            receiver_gone: false,
        }
    }

    fn send(&mut self, item: io::Result<Bytes>) -> io::Result<()> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "stream closed"))?;
        if tx.blocking_send(item).is_err() {
            self.receiver_gone = true;
            self.tx = None;
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "client went away",
            ));
        }
        Ok(())
    }

    /// The output is complete and verified: send what was held back and end the body cleanly.
    pub fn finish(mut self) {
        let held = self.held.take();
        let rest = std::mem::take(&mut self.buf);
        if let Some(held) = held {
            if self.send(Ok(held)).is_err() {
                return;
            }
        }
        if !rest.is_empty() {
            let _ = self.send(Ok(Bytes::from(rest)));
        }
        // Dropping the sender ends the body.
    }

    /// The output is wrong or incomplete: discard what was held back and abort the body.
    pub fn fail(mut self, error: io::Error) {
        self.held = None;
        self.buf = Vec::new();
        if self.tx.is_some() {
            let _ = self.send(Err(error));
        }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.tx.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "client went away",
            ));
        }
        let n = data.len().min(CHUNK - self.buf.len());
        if self
            .limit
            .is_some_and(|limit| self.written + n as u64 > limit)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the restore produced more than NarSize",
            ));
        }
        self.written += n as u64;
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            let full = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
            if let Some(previous) = self.held.replace(full) {
                self.send(Ok(previous))?;
            }
        }
        Ok(n)
    }

    /// Nothing to do: chunks go out when full, and the last only on [`finish`](Self::finish).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Roughly the memory a decoded record takes (manifest and object map), for the record cache.
fn record_weight(record: &PathRecord) -> u64 {
    let objects = record.manifest.objects().len() + record.objects.loaded().map_or(0, |m| m.len());
    (512 + objects * 160) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects what a ChannelWriter sends, as the response body would.
    fn drive(write: impl FnOnce(&mut ChannelWriter) -> bool + Send + 'static) -> (Vec<u8>, bool) {
        let (tx, mut rx) = mpsc::channel(CHANNEL_CHUNKS);
        let producer = std::thread::spawn(move || {
            let mut w = ChannelWriter::new(tx);
            if write(&mut w) {
                w.finish();
            } else {
                w.fail(io::Error::other("bad"));
            }
        });
        let mut got = Vec::new();
        let mut errored = false;
        while let Some(item) = rx.blocking_recv() {
            match item {
                Ok(b) => got.extend_from_slice(&b),
                Err(_) => errored = true,
            }
        }
        producer.join().unwrap();
        (got, errored)
    }

    #[test]
    fn success_delivers_everything() {
        let data: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| i as u8).collect();
        let expected = data.clone();
        let (got, errored) = drive(move |w| {
            w.write_all(&data).unwrap();
            true
        });
        assert!(!errored);
        assert_eq!(got, expected);
    }

    #[test]
    fn success_with_exact_multiple_of_chunk() {
        let data = vec![7u8; 2 * CHUNK];
        let (got, errored) = drive(move |w| {
            w.write_all(&data).unwrap();
            true
        });
        assert!(!errored);
        assert_eq!(got.len(), 2 * CHUNK);
    }

    #[test]
    fn failure_after_all_bytes_withholds_the_last_chunk() {
        for len in [1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 5 * CHUNK + 3] {
            let data = vec![1u8; len];
            let (got, errored) = drive(move |w| {
                w.write_all(&data).unwrap();
                false
            });
            assert!(errored, "len {len}");
            assert!(got.len() < len, "len {len}: {} bytes delivered", got.len());
            assert!(len - got.len() >= 1);
        }
    }

    #[test]
    fn writing_past_the_limit_fails_and_never_delivers_the_excess() {
        for (limit, len) in [
            (400, 1000),
            (CHUNK, 3 * CHUNK),
            (2 * CHUNK + 5, 2 * CHUNK + 6),
        ] {
            let (tx, mut rx) = mpsc::channel(CHANNEL_CHUNKS);
            let producer = std::thread::spawn(move || {
                let mut w = ChannelWriter::with_limit(tx, Some(limit as u64));
                let data = vec![3u8; len];
                let result = w.write_all(&data);
                assert!(result.is_err(), "limit {limit}, len {len}");
                w.fail(result.unwrap_err());
            });
            let (mut got, mut errored) = (0, false);
            while let Some(item) = rx.blocking_recv() {
                match item {
                    Ok(b) => got += b.len(),
                    Err(_) => errored = true,
                }
            }
            producer.join().unwrap();
            assert!(errored);
            assert!(got < limit, "limit {limit}: {got} bytes delivered");
        }
        // Exactly the limit is fine.
        let (got, errored) = drive(|w| {
            w.limit = Some(CHUNK as u64 + 1);
            w.write_all(&vec![1u8; CHUNK + 1]).is_ok()
        });
        assert!(!errored);
        assert_eq!(got.len(), CHUNK + 1);
    }

    #[test]
    fn writes_fail_once_the_body_is_gone() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let mut w = ChannelWriter::new(tx);
        let data = vec![0u8; 4 * CHUNK];
        assert!(w.write_all(&data).is_err());
        assert!(w.receiver_gone);
    }

    #[test]
    fn hash_parts() {
        assert!(is_hash_part(b"1avrvw4574jhm9g7j8y0y9a6qzakr6nj"));
        assert!(!is_hash_part(b"1avrvw4574jhm9g7j8y0y9a6qzakr6n"));
        assert!(!is_hash_part(b"1avrvw4574jhm9g7j8y0y9a6qzakr6ne"));
        assert!(!is_hash_part(b"../../../../../../../etc/passwd0"));
    }
}
