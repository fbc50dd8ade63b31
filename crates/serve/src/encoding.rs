//! `Accept-Encoding` (RFC 9110 §12.5.3): whether a client takes zstd.
//!
//! Nix 2.8 sets no `CURLOPT_ACCEPT_ENCODING`, so its requests carry no Accept-Encoding at all (it
//! decodes a `Content-Encoding` it is sent anyway); `curl --compressed` and browsers list what they
//! decode. Only an explicit `zstd` or `*` with a non-zero quality counts: a client that names no
//! encoding gets the identity, as the RFC advises.

use axum::http::{header, HeaderMap};

/// Whether the request's `Accept-Encoding` admits zstd.
pub fn accepts_zstd(headers: &HeaderMap) -> bool {
    let mut zstd = None;
    let mut any = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match coding.as_str() {
                "zstd" => zstd = Some(q > 0.0),
                "*" => any = Some(q > 0.0),
                _ => {}
            }
        }
    }
    zstd.or(any).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn zstd_is_accepted_only_when_named_or_starred() {
        for (values, want) in [
            (vec![], false),
            (vec!["gzip, deflate"], false),
            (vec!["gzip, deflate, br, zstd"], true),
            (vec!["ZSTD"], true),
            (vec!["zstd;q=0"], false),
            (vec!["zstd; q=0.5, gzip"], true),
            (vec!["*"], true),
            (vec!["*;q=0"], false),
            (vec!["*, zstd;q=0"], false),
            (vec!["identity"], false),
            (vec!["gzip", "zstd"], true),
        ] {
            let mut headers = HeaderMap::new();
            for v in &values {
                headers.append(header::ACCEPT_ENCODING, HeaderValue::from_static(v));
            }
            assert_eq!(accepts_zstd(&headers), want, "{values:?}");
        }
    }
}
