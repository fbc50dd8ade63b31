//! The one parser of store URLs, for every command that names a normalized store.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::{HttpTimeouts, S3Url};

/// Where a normalized store lives, as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A local directory: a plain path or `file:///dir`.
    Dir(PathBuf),
    /// A static HTTP(S) server publishing a store's directory (read-only).
    Http {
        base: String,
        timeouts: HttpTimeouts,
    },
    /// An S3-compatible bucket: `s3://bucket/prefix?endpoint=…&region=…`.
    S3(S3Url),
}

/// A store URL that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad store URL {url:?}: {why}")]
pub struct UrlError {
    pub url: String,
    pub why: String,
}

/// Parameters Nix accepts on binary-cache URLs that say nothing about a normalized store (how a
/// binary cache compresses or signs what it writes); accepted and ignored, so that a URL copied
/// from nix.conf works.
const NIX_WRITE_PARAMETERS: &[&str] = &[
    "compression",
    "compression-level",
    "parallel-compression",
    "secret-key",
    "write-nar-listing",
    "index-debug-info",
    "want-mass-query",
    "priority",
    "trusted",
];

impl StoreUrl {
    /// Parse a store location: a path (`/srv/store`, `./store`), `file:///dir`, `http(s)://…`
    /// (with optional `connect-timeout=SECS` and `stalled-download-timeout=SECS`, Nix's names) or
    /// `s3://bucket[/prefix][?endpoint=URL&region=NAME]`.
    pub fn parse(url: &str) -> Result<StoreUrl, UrlError> {
        let bad = |why: &str| UrlError {
            url: url.to_string(),
            why: why.to_string(),
        };
        if url.is_empty() {
            return Err(bad("empty"));
        }
        if url.starts_with("s3://") {
            return S3Url::parse(url)
                .map(StoreUrl::S3)
                .map_err(|e| bad(&e.to_string()));
        }
        let (location, query) = url.split_once('?').unwrap_or((url, ""));
        let params = parse_query(query).map_err(|why| bad(&why))?;
        if location.starts_with("http://") || location.starts_with("https://") {
            let host = location.split_once("://").map_or("", |(_, r)| r);
            if host.is_empty() || host.starts_with('/') {
                return Err(bad("no host"));
            }
            let mut timeouts = HttpTimeouts::default();
            for (key, value) in params {
                let secs = || -> Result<Duration, UrlError> {
                    match value.parse::<u64>() {
                        Ok(n) if n > 0 => Ok(Duration::from_secs(n)),
                        _ => Err(bad(&format!("{key} must be a whole number of seconds > 0"))),
                    }
                };
                match key {
                    "connect-timeout" => timeouts.connect = secs()?,
                    "stalled-download-timeout" => timeouts.stalled = secs()?,
                    k if NIX_WRITE_PARAMETERS.contains(&k) => {}
                    k => return Err(bad(&format!("unknown parameter {k:?} (known: connect-timeout, stalled-download-timeout)"))),
                }
            }
            return Ok(StoreUrl::Http {
                base: location.trim_end_matches('/').to_string(),
                timeouts,
            });
        }
        if let Some(rest) = location.strip_prefix("file:") {
            let Some(path) = rest.strip_prefix("//") else {
                return Err(bad(&format!(
                    "a file URL needs three slashes before an absolute path: file://{rest}"
                )));
            };
            if !path.starts_with('/') {
                return Err(bad(
                    "a file URL names a local absolute path (file:///dir); hosts are not supported",
                ));
            }
            check_only_nix_parameters(&params).map_err(|why| bad(&why))?;
            return Ok(StoreUrl::Dir(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = location.split_once("://") {
            return Err(bad(&format!(
                "unsupported scheme {scheme:?} (supported: a directory, file:///dir, http(s)://, s3://)"
            )));
        }
        if !query.is_empty() {
            return Err(bad(
                "a directory path takes no parameters; use file:///dir?… for those",
            ));
        }
        Ok(StoreUrl::Dir(PathBuf::from(location)))
    }
}

fn parse_query(query: &str) -> Result<Vec<(&str, &str)>, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .ok_or_else(|| format!("parameter {pair:?} is not NAME=VALUE"))
        })
        .collect()
}

fn check_only_nix_parameters(params: &[(&str, &str)]) -> Result<(), String> {
    match params
        .iter()
        .find(|(k, _)| !NIX_WRITE_PARAMETERS.contains(k))
    {
        Some((k, _)) => Err(format!("unknown parameter {k:?}")),
        None => Ok(()),
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Dir(path) => write!(f, "{}", path.display()),
            StoreUrl::Http { base, .. } => f.write_str(base),
            StoreUrl::S3(s3) => write!(f, "{s3}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(p: &str) -> StoreUrl {
        StoreUrl::Dir(PathBuf::from(p))
    }

    #[test]
    fn store_urls_parse_as_a_table_says() {
        let http = |base: &str, connect: u64, stalled: u64| StoreUrl::Http {
            base: base.into(),
            timeouts: HttpTimeouts {
                connect: Duration::from_secs(connect),
                stalled: Duration::from_secs(stalled),
            },
        };
        let cases: &[(&str, Result<StoreUrl, &str>)] = &[
            ("/srv/store", Ok(dir("/srv/store"))),
            ("store", Ok(dir("store"))),
            ("./a b/c", Ok(dir("./a b/c"))),
            ("file:///srv/store", Ok(dir("/srv/store"))),
            ("file:///srv/store?compression=zstd", Ok(dir("/srv/store"))),
            ("file:/srv/store", Err("three slashes")),
            ("file://srv/store", Err("hosts are not supported")),
            (
                "file:///srv/store?colour=red",
                Err("unknown parameter \"colour\""),
            ),
            ("/srv/store?compression=zstd", Err("takes no parameters")),
            ("http://h:8080/s/", Ok(http("http://h:8080/s", 10, 60))),
            (
                "https://h/s?connect-timeout=3&stalled-download-timeout=7",
                Ok(http("https://h/s", 3, 7)),
            ),
            ("https://h/s?priority=30", Ok(http("https://h/s", 10, 60))),
            ("https://h/s?connect-timeout=0", Err("seconds > 0")),
            ("https://h/s?connect-timeout=x", Err("seconds > 0")),
            ("https://h/s?timeout", Err("not NAME=VALUE")),
            ("https://h/s?bogus=1", Err("unknown parameter \"bogus\"")),
            ("http://", Err("no host")),
            ("http:///x", Err("no host")),
            ("ssh://host", Err("unsupported scheme \"ssh\"")),
            ("daemon://", Err("unsupported scheme")),
            ("", Err("empty")),
            ("s3://Bad_Bucket", Err("bucket name")),
        ];
        for (url, want) in cases {
            let got = StoreUrl::parse(url);
            match (want, got) {
                (Ok(want), Ok(got)) => assert_eq!(&got, want, "{url}"),
                (Err(why), Err(e)) => {
                    let e = e.to_string();
                    assert!(e.contains(why), "{url}: {e}");
                    assert!(e.contains(&format!("{url:?}")), "{url}: names the URL: {e}");
                }
                (want, got) => panic!("{url}: wanted {want:?}, got {got:?}"),
            }
        }
        let StoreUrl::S3(s3) =
            StoreUrl::parse("s3://b-1/p/q?region=eu&endpoint=http://h:9/").unwrap()
        else {
            panic!("not s3")
        };
        assert_eq!((s3.bucket.as_str(), s3.prefix.as_str()), ("b-1", "p/q/"));
        assert_eq!(s3.to_string(), "s3://b-1/p/q?endpoint=http://h:9&region=eu");
    }
}
