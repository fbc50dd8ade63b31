//! A read-only backend over HTTP(S): a normalized store's directory served by any static web
//! server. Whole files are plain GETs; pack blocks are ranged GETs (`Range: bytes=a-b`), so a client
//! reads exactly the blocks its path records name. A server that ignores `Range` (answers `200` with
//! the whole file) still works: the first such answer is reported once, naming the origin, and the
//! whole file it sent is kept in a temporary file for the rest of the run, so each pack crosses
//! the network once rather than once per block.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::dir::too_large;
use crate::Backend;

/// Largest ranged read (one block of a pack is far smaller).
const MAX_RANGE: u64 = 1 << 30;
/// Largest whole file kept from an origin that ignores `Range` (a pack is about 64 MiB).
const MAX_WHOLE_FILE: u64 = 4 << 30;

/// How long an HTTP fetch may wait, so that a silent or stalled server costs an error, not a hang.
/// Set per store URL with Nix's setting names as parameters:
/// `https://host/store?connect-timeout=5&stalled-download-timeout=30`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// Connecting (DNS, TCP and TLS).
    pub connect: Duration,
    /// From the request to the first byte of the response, and between any two reads after it.
    pub stalled: Duration,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        HttpTimeouts {
            connect: Duration::from_secs(10),
            stalled: Duration::from_secs(60),
        }
    }
}

pub struct Http {
    base: String,
    agent: ureq::Agent,
    /// Whether the origin honours `Range`, once its first answer to a ranged GET told: held while
    /// that first request runs, so that parallel block fetches wait for it instead of each
    /// downloading a whole pack from an origin that ignores ranges.
    range_support: Mutex<Option<bool>>,
    /// The origin answered a ranged GET with the whole file (reported once).
    ignores_range: AtomicBool,
    /// Whole files such an origin sent, by key, kept (unlinked) for the rest of the run. One slot
    /// per key, locked while its file downloads, so that blocks wanted at the same moment wait for
    /// that one download instead of starting their own.
    whole: Mutex<HashMap<String, Arc<Mutex<Option<File>>>>>,
}

impl Http {
    /// `base` is the store's URL without parameters, e.g. `https://cache.example/refstrip`.
    pub fn new(base: &str, timeouts: HttpTimeouts) -> Http {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(timeouts.connect))
            .timeout_send_request(Some(timeouts.stalled))
            .timeout_recv_response(Some(timeouts.stalled))
            .timeout_per_read(Some(timeouts.stalled))
            .build();
        Http {
            base: base.trim_end_matches('/').to_string(),
            agent: config.into(),
            range_support: Mutex::new(None),
            ignores_range: AtomicBool::new(false),
            whole: Mutex::new(HashMap::new()),
        }
    }

    /// `len` bytes at `offset` of `key` from the origin (a ranged GET); `whole` is filled instead
    /// when the origin answers with the whole file.
    fn fetch_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        whole: &mut Option<File>,
    ) -> io::Result<Vec<u8>> {
        let url = self.url(key)?;
        let end = offset
            .checked_add(len - 1)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "range overflows"))?;
        let range = format!("bytes={offset}-{end}");
        let resp = self
            .agent
            .get(&url)
            .header("Range", &range)
            .call()
            .map_err(|e| http_err(&url, e))?;
        let with_url = |e: io::Error| io::Error::new(e.kind(), format!("{url}: {e}"));
        if resp.status().as_u16() != 206 {
            if !self.ignores_range.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "refstrip: warning: {} ignores HTTP Range requests (answered {range} of {key} with the whole file); each file is downloaded whole once and kept for the rest of this run. Serve the store with a server that supports Range (nginx, caddy, S3) to fetch only the blocks needed.",
                    self.base
                );
            }
            let declared = resp
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if let Some(n) = declared.filter(|n| *n > MAX_WHOLE_FILE) {
                return Err(too_large(&url, n, MAX_WHOLE_FILE));
            }
            // Unlinked at once: the file lives as long as this backend holds it.
            let mut file = tempfile::tempfile()?;
            let copied = io::copy(
                &mut resp.into_body().into_reader().take(MAX_WHOLE_FILE + 1),
                &mut file,
            )
            .map_err(with_url)?;
            if copied > MAX_WHOLE_FILE {
                return Err(too_large(&url, copied, MAX_WHOLE_FILE));
            }
            if declared.is_some_and(|n| n != copied) {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{url}: {copied} bytes of the {} announced",
                        declared.unwrap_or(0)
                    ),
                ));
            }
            file.flush()?;
            let out = read_at(&file, &url, offset, len)?;
            *whole = Some(file);
            return Ok(out);
        }
        let mut out = Vec::with_capacity(len as usize);
        resp.into_body()
            .into_reader()
            .take(len)
            .read_to_end(&mut out)
            .map_err(with_url)?;
        if out.len() as u64 != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{url}: {range} returned {} bytes", out.len()),
            ));
        }
        Ok(out)
    }

    /// The slot of the whole file of `key` (empty until it was downloaded).
    fn slot(&self, key: &str) -> Arc<Mutex<Option<File>>> {
        self.whole
            .lock()
            .expect("whole-file map")
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    fn url(&self, key: &str) -> io::Result<String> {
        crate::check_key(key)?;
        Ok(format!("{}/{key}", self.base))
    }

    /// The file at `key` as a stream read as it arrives (a NAR of a binary cache can be large),
    /// or `None` on 404. The timeouts apply to every read.
    pub fn open_read(&self, key: &str) -> io::Result<Option<Box<dyn Read + Send>>> {
        let url = self.url(key)?;
        match self.agent.get(&url).call() {
            Ok(resp) => Ok(Some(Box::new(resp.into_body().into_reader()))),
            Err(ureq::Error::StatusCode(404)) => Ok(None),
            Err(e) => Err(http_err(&url, e)),
        }
    }

    fn read_only(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{} is read-only (HTTP)", self.base),
        )
    }
}

/// `len` bytes at `offset` of a whole file kept locally; an error if it is shorter.
fn read_at(file: &File, url: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let size = file.metadata()?.len();
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{url}: range of {len} bytes at {offset} lies outside the file ({size} bytes)"),
        ));
    }
    let mut out = vec![0u8; len as usize];
    file.read_exact_at(&mut out, offset)?;
    Ok(out)
}

fn http_err(url: &str, e: ureq::Error) -> io::Error {
    match e {
        ureq::Error::StatusCode(404) => {
            io::Error::new(io::ErrorKind::NotFound, format!("{url}: 404 Not Found"))
        }
        e => io::Error::other(format!("{url}: {e}")),
    }
}

impl Backend for Http {
    fn describe(&self) -> String {
        self.base.clone()
    }

    fn put(&self, _: &str, _: &[u8]) -> io::Result<()> {
        Err(self.read_only())
    }

    fn put_file(&self, _: &str, _: &std::path::Path) -> io::Result<()> {
        Err(self.read_only())
    }

    fn get(&self, key: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let url = self.url(key)?;
        match self.agent.get(&url).call() {
            Ok(resp) => {
                let declared = resp
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                if let Some(n) = declared.filter(|n| *n > limit) {
                    return Err(too_large(&url, n, limit));
                }
                let mut out = Vec::new();
                resp.into_body()
                    .into_reader()
                    .take(limit + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| io::Error::new(e.kind(), format!("{url}: {e}")))?;
                if out.len() as u64 > limit {
                    return Err(too_large(&url, out.len() as u64, limit));
                }
                Ok(Some(out))
            }
            Err(ureq::Error::StatusCode(404)) => Ok(None),
            Err(e) => Err(http_err(&url, e)),
        }
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let url = self.url(key)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        if len > MAX_RANGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{url}: range of {len} bytes is too large"),
            ));
        }
        let mut support = self.range_support.lock().expect("range support");
        if support.is_none() {
            // The first ranged GET: find out, while the others wait.
            let mut whole = None;
            let out = self.fetch_range(key, offset, len, &mut whole)?;
            *support = Some(whole.is_none());
            if let Some(file) = whole {
                *self.slot(key).lock().expect("whole-file slot") = Some(file);
            }
            return Ok(out);
        }
        let honours = *support == Some(true);
        drop(support);
        if honours {
            return self.fetch_range(key, offset, len, &mut None);
        }
        // The origin sends whole files: read this one from the copy kept, downloading it once.
        let slot = self.slot(key);
        let mut slot = slot.lock().expect("whole-file slot");
        if let Some(file) = slot.as_ref() {
            return read_at(file, &url, offset, len);
        }
        let mut whole = None;
        let out = self.fetch_range(key, offset, len, &mut whole)?;
        *slot = whole;
        Ok(out)
    }

    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        let url = self.url(key)?;
        match self.agent.head(&url).call() {
            Ok(resp) => Ok(resp
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            Err(ureq::Error::StatusCode(404)) => Ok(None),
            Err(e) => Err(http_err(&url, e)),
        }
    }

    fn list(&self, _: &str) -> io::Result<Vec<String>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{}: an HTTP store cannot be listed; name the paths",
                self.base
            ),
        ))
    }

    fn delete(&self, _: &str) -> io::Result<()> {
        Err(self.read_only())
    }

    fn scratch_dir(&self) -> PathBuf {
        std::env::temp_dir()
    }

    fn catalog_path(&self) -> PathBuf {
        // A read-only remote store has no local catalog worth keeping; keep one per process.
        std::env::temp_dir().join(format!(
            "refstrip-http-catalog-{}.sqlite",
            std::process::id()
        ))
    }
}
