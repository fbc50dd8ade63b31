//! An S3-compatible object store as a [`Backend`]: `s3://bucket/prefix?endpoint=…&region=…`.
//!
//! Settings come from the usual AWS environment variables (`AWS_ENDPOINT_URL`, `AWS_REGION`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP`), overridden
//! by URL parameters as in Nix's own s3 store URLs. The trait is synchronous and called from plain
//! threads (ingest workers, the substituter) as well as from tokio's blocking pool (serve), so each
//! backend drives `object_store` on a small private runtime and waits on a channel: that works
//! from any thread, inside a runtime or not.
//!
//! Every request is counted by kind, with bytes moved, so operators can price a job
//! ([`Backend::requests`]).

use std::fs::File;
use std::future::Future;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::SystemTime;

use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};

use crate::dir::too_large;
use crate::{Backend, RequestCounts};

/// Files up to this size go up in one PUT; larger ones (big packs) as a multipart upload of parts
/// this size, one in memory at a time.
const PART_SIZE: usize = 16 << 20;
/// S3 returns at most this many keys per LIST request.
const LIST_PAGE: u64 = 1000;

/// A parsed `s3://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Key prefix inside the bucket, empty or ending in `/`.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

fn invalid(url: &str, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("bad S3 URL {url:?}: {why}"),
    )
}

impl S3Url {
    /// Parse `s3://bucket[/prefix][?endpoint=URL&region=NAME]`.
    pub fn parse(url: &str) -> io::Result<S3Url> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| invalid(url, "expected s3://bucket[/prefix]"))?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        // S3's bucket naming rules, loosely: enough to catch typos and stray characters.
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            return Err(invalid(
                url,
                "the bucket name must be 3-63 characters of a-z, 0-9, '-' and '.'",
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix
            .split('/')
            .any(|c| c == "." || c == ".." || (c.is_empty() && !prefix.is_empty()))
        {
            return Err(invalid(
                url,
                "the prefix has an empty, '.' or '..' component",
            ));
        }
        let mut parsed = S3Url {
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            endpoint: None,
            region: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| invalid(url, &format!("parameter {pair:?} has no value")))?;
            if value.is_empty() {
                return Err(invalid(url, &format!("parameter {key:?} is empty")));
            }
            match key {
                "endpoint" => {
                    if !value.starts_with("http://") && !value.starts_with("https://") {
                        return Err(invalid(url, "endpoint must be an http:// or https:// URL"));
                    }
                    parsed.endpoint = Some(value.trim_end_matches('/').to_string());
                }
                "region" => parsed.region = Some(value.to_string()),
                _ => {
                    return Err(invalid(
                        url,
                        &format!("unknown parameter {key:?} (known: endpoint, region)"),
                    ))
                }
            }
        }
        Ok(parsed)
    }

    /// The URL without parameters that could differ between machines (none identify the data
    /// apart from the endpoint), used to key the local catalog.
    fn identity(&self) -> String {
        format!(
            "{}|s3://{}/{}",
            self.endpoint.as_deref().unwrap_or(""),
            self.bucket,
            self.prefix
        )
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "s3://{}/{}",
            self.bucket,
            self.prefix.trim_end_matches('/')
        )?;
        let params: Vec<String> = [("endpoint", &self.endpoint), ("region", &self.region)]
            .iter()
            .filter_map(|(k, v)| Some(format!("{k}={}", v.as_ref()?)))
            .collect();
        if !params.is_empty() {
            write!(f, "?{}", params.join("&"))?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Counters {
    get: AtomicU64,
    get_range: AtomicU64,
    put: AtomicU64,
    list: AtomicU64,
    head: AtomicU64,
    delete: AtomicU64,
    bytes_down: AtomicU64,
    bytes_up: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub struct S3 {
    url: String,
    parsed: S3Url,
    store: Arc<AmazonS3>,
    runtime: Option<tokio::runtime::Runtime>,
    counters: Arc<Counters>,
    cache_dir: PathBuf,
}

fn os_err(e: object_store::Error) -> io::Error {
    // object_store maps NotFound, AlreadyExists… to the matching io::ErrorKind.
    io::Error::from(e)
}

impl S3 {
    /// Connect to the bucket of `parsed` (no request is made until the first operation, and
    /// nothing is written locally until the catalog or scratch space is used).
    pub fn open(parsed: &S3Url) -> io::Result<S3> {
        let parsed = parsed.clone();
        let url = parsed.to_string();
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&parsed.bucket);
        if let Some(endpoint) = &parsed.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(region) = &parsed.region {
            builder = builder.with_region(region);
        }
        let store = builder
            .build()
            .map_err(|e| io::Error::other(format!("configuring {url}: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("refstrip-s3")
            .enable_all()
            .build()?;
        let key = blake3::hash(parsed.identity().as_bytes()).to_hex();
        let cache_dir = cache_root().join("s3").join(&key[..32]);
        Ok(S3 {
            url: format!("s3://{}/{}", parsed.bucket, parsed.prefix),
            parsed,
            store: Arc::new(store),
            runtime: Some(runtime),
            counters: Arc::default(),
            cache_dir,
        })
    }

    /// Run `fut` on the private runtime and wait for it.
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = io::Result<T>> + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.runtime
            .as_ref()
            .expect("runtime lives until drop")
            .spawn(async move {
                let _ = tx.send(fut.await);
            });
        rx.recv()
            .map_err(|_| io::Error::other(format!("{}: request task died", self.url)))?
    }

    fn path(&self, key: &str) -> io::Result<ObjectPath> {
        crate::check_key(key)?;
        ObjectPath::parse(format!("{}{key}", self.parsed.prefix)).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("bad key {key:?}: {e}"))
        })
    }

    /// The object at `key` as a stream (one GET, read as it arrives, a few MiB buffered at most),
    /// or `None` if there is none. For NARs of a binary cache in a bucket, which can be large.
    pub fn open_read(&self, key: &str) -> io::Result<Option<Box<dyn Read + Send>>> {
        let path = self.path(key)?;
        let store = self.store.clone();
        let counters = self.counters.clone();
        bump(&counters.get, 1);
        let result = self.run(async move {
            match store.get(&path).await {
                Ok(r) => Ok(Some(r)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(os_err(e)),
            }
        })?;
        let Some(result) = result else {
            return Ok(None);
        };
        let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
        self.runtime
            .as_ref()
            .expect("runtime lives until drop")
            .spawn(async move {
                let mut stream = result.into_stream();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map(|b| b.to_vec()).map_err(os_err);
                    if let Ok(c) = &chunk {
                        bump(&counters.bytes_down, c.len() as u64);
                    }
                    // A dropped reader stops the download.
                    if tx.send(chunk).is_err() {
                        break;
                    }
                }
            });
        Ok(Some(Box::new(ChannelReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        })))
    }
}

/// Where object-store stores keep their local catalogs and scratch files:
/// `$REFSTRIP_CACHE_DIR`, else `$XDG_CACHE_HOME/refstrip`, else `~/.cache/refstrip`.
fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("REFSTRIP_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("refstrip");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache/refstrip"),
        None => std::env::temp_dir().join("refstrip-cache"),
    }
}

struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.chunk = chunk?;
                    self.pos = 0;
                }
                // The sender is gone after the last chunk: end of object.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside async code (serve drops its store there).
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Backend for S3 {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(key)?;
        let store = self.store.clone();
        bump(&self.counters.put, 1);
        bump(&self.counters.bytes_up, bytes.len() as u64);
        let payload = PutPayload::from(bytes.to_vec());
        self.run(async move { store.put(&path, payload).await.map(drop).map_err(os_err) })
    }

    fn put_file(&self, key: &str, path: &Path) -> io::Result<()> {
        let dest = self.path(key)?;
        let mut file = File::open(path)?;
        let size = file.metadata()?.len();
        let store = self.store.clone();
        bump(&self.counters.bytes_up, size);
        if size <= PART_SIZE as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes)?;
            bump(&self.counters.put, 1);
            self.run(async move {
                store
                    .put(&dest, PutPayload::from(bytes))
                    .await
                    .map(drop)
                    .map_err(os_err)
            })?;
        } else {
            // Create + one PUT per part + complete; S3 bills all of them as PUT-class requests.
            bump(&self.counters.put, 2 + size.div_ceil(PART_SIZE as u64));
            let mut upload =
                self.run(async move { store.put_multipart(&dest).await.map_err(os_err) })?;
            // One part in memory at a time, uploaded before the next is read.
            let sent = (|| loop {
                let mut part = Vec::with_capacity(PART_SIZE);
                (&mut file).take(PART_SIZE as u64).read_to_end(&mut part)?;
                if part.is_empty() {
                    return Ok(());
                }
                let put = upload.put_part(PutPayload::from(part));
                self.run(async move { put.await.map_err(os_err) })?;
            })();
            self.run(async move {
                match sent {
                    Ok(()) => upload.complete().await.map(drop).map_err(os_err),
                    Err(e) => {
                        // Leave no half upload behind (S3 bills stored parts until aborted).
                        let _ = upload.abort().await;
                        Err(e)
                    }
                }
            })?;
        }
        std::fs::remove_file(path)
    }

    fn get(&self, key: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let path = self.path(key)?;
        let store = self.store.clone();
        bump(&self.counters.get, 1);
        let what = format!("{}/{key}", self.url);
        let bytes = self.run(async move {
            match store.get(&path).await {
                Ok(r) if r.meta.size > limit => Err(too_large(&what, r.meta.size, limit)),
                Ok(r) => r.bytes().await.map(|b| Some(b.to_vec())).map_err(os_err),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(os_err(e)),
            }
        })?;
        if let Some(b) = &bytes {
            bump(&self.counters.bytes_down, b.len() as u64);
        }
        Ok(bytes)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let path = self.path(key)?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "range overflows"))?;
        let store = self.store.clone();
        bump(&self.counters.get_range, 1);
        let bytes = self.run(async move {
            store
                .get_range(&path, offset..end)
                .await
                .map(|b| b.to_vec())
                .map_err(os_err)
        })?;
        bump(&self.counters.bytes_down, bytes.len() as u64);
        if bytes.len() as u64 != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}/{key}: range returned {} bytes", self.url, bytes.len()),
            ));
        }
        Ok(bytes)
    }

    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        let path = self.path(key)?;
        let store = self.store.clone();
        bump(&self.counters.head, 1);
        self.run(async move {
            match store.head(&path).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(os_err(e)),
            }
        })
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        Ok(self
            .list_modified(prefix)?
            .into_iter()
            .map(|(key, _)| key)
            .collect())
    }

    fn list_modified(&self, prefix: &str) -> io::Result<Vec<(String, SystemTime)>> {
        // Like a directory listing: the keys in `prefix`'s "directory" whose names start with the
        // rest of it (a delimited LIST, so a binary cache's nar/ is not walked for its narinfos).
        let (dir, name_prefix) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let full_dir = format!("{}{dir}", self.parsed.prefix);
        let full_dir = full_dir.trim_end_matches('/').to_string();
        let store = self.store.clone();
        let listed = self.run(async move {
            let dir = (!full_dir.is_empty()).then(|| ObjectPath::from(full_dir.as_str()));
            store
                .list_with_delimiter(dir.as_ref())
                .await
                .map_err(os_err)
        })?;
        // object_store pages internally; S3 answers up to LIST_PAGE keys per request.
        let pages = ((listed.objects.len() + listed.common_prefixes.len()) as u64)
            .div_ceil(LIST_PAGE)
            .max(1);
        bump(&self.counters.list, pages);
        let mut out = Vec::new();
        for meta in listed.objects {
            let full = meta.location.as_ref();
            let Some(key) = full.strip_prefix(self.parsed.prefix.as_str()) else {
                continue;
            };
            let name = key.rsplit('/').next().unwrap_or(key);
            if name.starts_with(name_prefix) {
                out.push((key.to_string(), SystemTime::from(meta.last_modified)));
            }
        }
        Ok(out)
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        let path = self.path(key)?;
        let store = self.store.clone();
        bump(&self.counters.delete, 1);
        self.run(async move {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(os_err(e)),
            }
        })
    }

    fn scratch_dir(&self) -> PathBuf {
        self.cache_dir.join("tmp")
    }

    fn catalog_path(&self) -> PathBuf {
        self.cache_dir.join("catalog.sqlite")
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn requests(&self) -> Option<RequestCounts> {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Some(RequestCounts {
            get: get(&c.get),
            get_range: get(&c.get_range),
            put: get(&c.put),
            list: get(&c.list),
            head: get(&c.head),
            delete: get(&c.delete),
            bytes_down: get(&c.bytes_down),
            bytes_up: get(&c.bytes_up),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_prefix_and_parameters() {
        let u = S3Url::parse("s3://my-cache/a/b/?endpoint=http://127.0.0.1:9000/&region=eu-west-1")
            .unwrap();
        assert_eq!(u.bucket, "my-cache");
        assert_eq!(u.prefix, "a/b/");
        assert_eq!(u.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(u.region.as_deref(), Some("eu-west-1"));
        let u = S3Url::parse("s3://cache").unwrap();
        assert_eq!((u.prefix.as_str(), u.endpoint, u.region), ("", None, None));
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, why) in [
            ("http://x/y", "expected s3://"),
            ("s3://", "bucket name"),
            ("s3://Bad_Bucket/x", "bucket name"),
            ("s3://ok-bucket/a//b", "prefix"),
            ("s3://ok-bucket/../b", "prefix"),
            ("s3://ok-bucket?endpoint", "has no value"),
            ("s3://ok-bucket?region=", "is empty"),
            (
                "s3://ok-bucket?endpoint=127.0.0.1:9000",
                "http:// or https://",
            ),
            ("s3://ok-bucket?scheme=http", "unknown parameter"),
        ] {
            let e = S3Url::parse(url).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
            assert!(e.contains(url), "{url}: {e}");
        }
    }

    #[test]
    fn catalog_key_ignores_region_but_not_endpoint() {
        let a = S3Url::parse("s3://b-1/p?region=x").unwrap();
        let b = S3Url::parse("s3://b-1/p/?region=y").unwrap();
        let c = S3Url::parse("s3://b-1/p?endpoint=http://h:1").unwrap();
        assert_eq!(a.identity(), b.identity());
        assert_ne!(a.identity(), c.identity());
    }
}
