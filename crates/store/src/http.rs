//! A read-only backend over HTTP(S): a normalized store's directory served by any static web
//! server. Whole files are plain GETs; pack blocks are ranged GETs (`Range: bytes=a-b`), so a client
//! reads exactly the blocks its path records name. A server that ignores `Range` still works (the
//! answer is cut to the range), only slower.

use std::io::{self, Read};
use std::path::PathBuf;

use crate::backend::Backend;

/// Largest single response read (a pack's index or one block is far smaller).
const MAX_RESPONSE: u64 = 1 << 30;

pub struct Http {
    base: String,
    agent: ureq::Agent,
}

impl Http {
    /// `base` is the store's URL, e.g. `https://cache.example/refstrip`.
    pub fn new(base: &str) -> Http {
        Http {
            base: base.trim_end_matches('/').to_string(),
            agent: ureq::Agent::new_with_defaults(),
        }
    }

    fn url(&self, key: &str) -> io::Result<String> {
        crate::backend::check_key(key)?;
        Ok(format!("{}/{key}", self.base))
    }

    fn read_only(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{} is read-only (HTTP)", self.base),
        )
    }
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

    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        let url = self.url(key)?;
        match self.agent.get(&url).call() {
            Ok(resp) => {
                let mut out = Vec::new();
                resp.into_body()
                    .into_reader()
                    .take(MAX_RESPONSE)
                    .read_to_end(&mut out)?;
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
        if len > MAX_RESPONSE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{url}: range of {len} bytes is too large"),
            ));
        }
        let range = format!("bytes={}-{}", offset, offset + len - 1);
        let resp = self
            .agent
            .get(&url)
            .header("Range", &range)
            .call()
            .map_err(|e| http_err(&url, e))?;
        let partial = resp.status().as_u16() == 206;
        let mut reader = resp.into_body().into_reader();
        if !partial {
            // The server ignored Range and sends the whole file: skip to the range.
            io::copy(&mut (&mut reader).take(offset), &mut io::sink())?;
        }
        let mut out = Vec::with_capacity(len as usize);
        reader.take(len).read_to_end(&mut out)?;
        if out.len() as u64 != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{url}: {range} returned {} bytes", out.len()),
            ));
        }
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
