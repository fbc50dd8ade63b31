//! Single-range requests on `.nar` (RFC 9110 §14): `Range: bytes=a-b`, `a-` and `-n`.
//!
//! Nix's curl asks for `bytes=N-` when it retries a download that broke after N bytes
//! (`CURLOPT_RESUME_FROM_LARGE`), and only if the first answer said `Accept-Ranges: bytes`. A range
//! is restored like the whole NAR — to the end, so that the NAR's SHA-256 is checked before the
//! range's last chunk goes out — and only the bytes inside the range are sent: a range of a wrong
//! restore is never delivered complete either.

use std::io::{self, Write};

/// What a request's `Range` header asks of a representation of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No range (or one to ignore: several ranges, another unit, bad syntax): the whole body.
    Whole,
    /// Bytes `start..=end`.
    Bytes { start: u64, end: u64 },
    /// No byte of the representation is in the range: `416`.
    Unsatisfiable,
}

impl RangeRequest {
    /// Parse a `Range` header value against a body of `len` bytes. Several ranges are answered
    /// with the whole body, which RFC 9110 allows.
    pub fn parse(value: &str, len: u64) -> RangeRequest {
        let Some(spec) = value.trim().strip_prefix("bytes=") else {
            return RangeRequest::Whole;
        };
        if spec.contains(',') {
            return RangeRequest::Whole;
        }
        let Some((first, last)) = spec.trim().split_once('-') else {
            return RangeRequest::Whole;
        };
        let number = |s: &str| -> Option<u64> {
            let s = s.trim();
            (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        match (first.trim().is_empty(), number(first), number(last)) {
            // `-n`: the last n bytes.
            (true, _, Some(n)) => match n {
                0 => RangeRequest::Unsatisfiable,
                _ if len == 0 => RangeRequest::Unsatisfiable,
                _ => RangeRequest::Bytes {
                    start: len.saturating_sub(n),
                    end: len - 1,
                },
            },
            (false, Some(start), end) if last.trim().is_empty() || end.is_some() => {
                if end.is_some_and(|end| end < start) {
                    return RangeRequest::Whole;
                }
                if start >= len {
                    return RangeRequest::Unsatisfiable;
                }
                RangeRequest::Bytes {
                    start,
                    end: end.map_or(len - 1, |e| e.min(len - 1)),
                }
            }
            _ => RangeRequest::Whole,
        }
    }
}

/// Passes on only the bytes at positions `start..=end` of what is written to it, and fails any
/// write past `total` bytes (NarSize: a restore may not produce more).
pub struct RangeWriter<W> {
    inner: W,
    start: u64,
    end: u64,
    total: u64,
    position: u64,
}

impl<W: Write> RangeWriter<W> {
    pub fn new(inner: W, start: u64, end: u64, total: u64) -> Self {
        RangeWriter {
            inner,
            start,
            end,
            total,
            position: 0,
        }
    }
}

impl<W: Write> Write for RangeWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let after = self.position + data.len() as u64;
        if after > self.total {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the restore produced more than NarSize",
            ));
        }
        // The part of `data` inside the range, if any.
        let from = self.start.max(self.position);
        let to = (self.end + 1).min(after);
        if from < to {
            let a = (from - self.position) as usize;
            let b = (to - self.position) as usize;
            self.inner.write_all(&data[a..b])?;
        }
        self.position = after;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_parsed_as_rfc_9110_says() {
        use RangeRequest::*;
        let len = 1000;
        for (value, want) in [
            ("bytes=0-99", Bytes { start: 0, end: 99 }),
            (
                "bytes=100-",
                Bytes {
                    start: 100,
                    end: 999,
                },
            ),
            (
                "bytes=-10",
                Bytes {
                    start: 990,
                    end: 999,
                },
            ),
            ("bytes=-5000", Bytes { start: 0, end: 999 }),
            (
                "bytes=900-5000",
                Bytes {
                    start: 900,
                    end: 999,
                },
            ),
            (
                "bytes=999-999",
                Bytes {
                    start: 999,
                    end: 999,
                },
            ),
            (" bytes=5-6 ", Bytes { start: 5, end: 6 }),
            ("bytes=1000-", Unsatisfiable),
            ("bytes=2000-3000", Unsatisfiable),
            ("bytes=-0", Unsatisfiable),
            ("bytes=0-1,5-6", Whole),
            ("bytes=9-5", Whole),
            ("items=0-5", Whole),
            ("bytes=a-5", Whole),
            ("bytes=5", Whole),
            ("bytes=-", Whole),
            ("bytes=+5-6", Whole),
            ("bytes=99999999999999999999999-", Whole),
        ] {
            assert_eq!(RangeRequest::parse(value, len), want, "{value:?}");
        }
        assert_eq!(RangeRequest::parse("bytes=-3", 0), Unsatisfiable);
    }

    #[test]
    fn only_the_range_is_passed_on() {
        let data: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        for (start, end) in [(0, 4999), (0, 0), (4999, 4999), (100, 2100), (1234, 1300)] {
            for piece in [1, 7, 256, 5000] {
                let mut out = Vec::new();
                let mut w = RangeWriter::new(&mut out, start, end, 5000);
                for chunk in data.chunks(piece) {
                    w.write_all(chunk).unwrap();
                }
                assert_eq!(
                    out,
                    &data[start as usize..=end as usize],
                    "{start}-{end} by {piece}"
                );
            }
        }
    }

    #[test]
    fn writing_past_the_total_fails() {
        let mut w = RangeWriter::new(Vec::new(), 0, 9, 10);
        w.write_all(&[1; 10]).unwrap();
        assert!(w.write_all(&[1]).is_err());
    }
}
