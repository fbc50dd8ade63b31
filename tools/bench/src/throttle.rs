//! `refstrip-throttle`: a static HTTP file server standing in for a remote cache behind a slow
//! link, for benchmarks (docs/benchmarks.md §8). It serves one directory — a plain binary cache
//! (`nix-cache-info`, narinfos, `nar/`) or a normalized store (`refstrip-store`, `paths/`,
//! `packs/`) — with
//!
//! - a **byte rate** shared by all connections, as one link is: every chunk of a body takes its
//!   turn on one timeline at `--mbit`; time lost to a late wake-up is made up for, up to
//!   [`CATCH_UP`] (so a loaded machine still gets the rate), and no more (no larger bursts);
//! - an **added latency** per request before the response head (`--latency-ms`, the round trip
//!   the loopback lacks);
//! - `Range: bytes=a-b | a- | -n` (one range: 206, or 416 when unsatisfiable; several: the whole
//!   file), `HEAD`, keep-alive, 404 for anything missing or outside the directory;
//! - counters: `GET /.throttle/stats` answers `requests N` and `bytes N` (body bytes sent so far,
//!   itself excluded and unthrottled), so that a script counts what a client fetched.
//!
//! One thread per connection; memory is one chunk per connection.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

/// Bytes written to a socket per turn on the link.
const CHUNK: usize = 64 * 1024;
/// Longest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// How far behind its timeline the link may fall before the lost time is forfeited: sleeps end
/// late on a busy machine, and without this a 1000 Mbit/s link delivered 83-90 MB/s, not 125.
const CATCH_UP: Duration = Duration::from_millis(5);

#[derive(Parser)]
#[command(about = "Serve a directory over HTTP at a given byte rate and added latency per request")]
struct Args {
    /// The directory to serve.
    #[arg(long)]
    dir: PathBuf,
    /// Address to listen on (`127.0.0.1:0` picks a port; the URL is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Link rate in megabits per second shared by all connections (0: unlimited).
    #[arg(long, default_value_t = 100.0)]
    mbit: f64,
    /// Added latency per request, in milliseconds, before the response head.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

/// One link: each chunk reserves the next free slot on a shared timeline.
struct Link {
    /// Bytes per second (`None`: unlimited).
    rate: Option<f64>,
    /// When the link is free again.
    free_at: Mutex<Instant>,
}

impl Link {
    fn new(mbit: f64) -> Link {
        Link {
            rate: (mbit > 0.0).then(|| mbit * 1e6 / 8.0),
            free_at: Mutex::new(Instant::now()),
        }
    }

    /// Wait for `n` bytes' turn: returns once they would have crossed the link.
    fn pass(&self, n: usize) {
        let Some(rate) = self.rate else { return };
        let done = {
            let mut free_at = self.free_at.lock().expect("link lock");
            let now = Instant::now();
            let start = (*free_at).max(now.checked_sub(CATCH_UP).unwrap_or(now));
            *free_at = start + Duration::from_secs_f64(n as f64 / rate);
            *free_at
        };
        if let Some(wait) = done.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

struct Server {
    dir: PathBuf,
    link: Link,
    latency: Duration,
    requests: AtomicU64,
    bytes: AtomicU64,
}

/// A parsed request head.
struct Request {
    method: String,
    path: String,
    range: Option<String>,
    close: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.dir.is_dir(),
        "{} is not a directory",
        args.dir.display()
    );
    let listener = TcpListener::bind(&args.listen)?;
    println!("http://{}", listener.local_addr()?);
    io::stdout().flush()?;
    let server = Arc::new(Server {
        dir: args.dir,
        link: Link::new(args.mbit),
        latency: Duration::from_millis(args.latency_ms),
        requests: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    });
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let server = server.clone();
        std::thread::spawn(move || {
            let _ = server.connection(stream);
        });
    }
    Ok(())
}

impl Server {
    fn connection(&self, stream: TcpStream) -> io::Result<()> {
        stream.set_nodelay(true)?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut out = stream;
        while let Some(request) = read_request(&mut reader)? {
            self.answer(&request, &mut out)?;
            if request.close {
                break;
            }
        }
        Ok(())
    }

    fn answer(&self, req: &Request, out: &mut TcpStream) -> io::Result<()> {
        if req.path == "/.throttle/stats" {
            let body = format!(
                "requests {}\nbytes {}\n",
                self.requests.load(Ordering::SeqCst),
                self.bytes.load(Ordering::SeqCst)
            );
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )?;
            return Ok(());
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.latency);
        let head_only = req.method == "HEAD";
        let file = match (req.method.as_str(), self.file(&req.path)) {
            ("GET" | "HEAD", Some(path)) => File::open(path).ok(),
            _ => None,
        };
        let Some(mut file) = file.filter(|f| f.metadata().is_ok_and(|m| m.is_file())) else {
            return write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        };
        let size = file.metadata()?.len();
        let (status, start, len) = match req.range.as_deref().map(|r| parse_range(r, size)) {
            None | Some(Range::Ignored) => ("200 OK", 0, size),
            Some(Range::Unsatisfiable) => {
                return write!(
                    out,
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{size}\r\nContent-Length: 0\r\n\r\n"
                );
            }
            Some(Range::Part(start, len)) => ("206 Partial Content", start, len),
        };
        let mut head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\n"
        );
        if status.starts_with("206") {
            head += &format!(
                "Content-Range: bytes {start}-{}/{size}\r\n",
                start + len - 1
            );
        }
        head += "\r\n";
        out.write_all(head.as_bytes())?;
        if head_only {
            return Ok(());
        }
        file.seek(SeekFrom::Start(start))?;
        let mut file = file.take(len);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.link.pass(n);
            out.write_all(&buf[..n])?;
            self.bytes.fetch_add(n as u64, Ordering::SeqCst);
        }
        Ok(())
    }

    /// The file a request path names, if it stays inside the directory.
    fn file(&self, path: &str) -> Option<PathBuf> {
        let path = path.split('?').next()?.trim_start_matches('/');
        let inside = !path.is_empty()
            && !path.contains('%')
            && Path::new(path)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        inside.then(|| self.dir.join(path))
    }
}

/// The next request head on the connection, or `None` when the client closed it.
fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut words = line.split_whitespace();
    let (Some(method), Some(path), version) = (words.next(), words.next(), words.next()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad request line",
        ));
    };
    let mut request = Request {
        method: method.to_string(),
        path: path.to_string(),
        range: None,
        close: version != Some("HTTP/1.1"),
    };
    let mut read = line.len();
    loop {
        let mut header = String::new();
        let n = reader.read_line(&mut header)?;
        read += n;
        if n == 0 || read > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad request head",
            ));
        }
        let header = header.trim_end();
        if header.is_empty() {
            return Ok(Some(request));
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "range" => request.range = Some(value.to_string()),
            "connection" => request.close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// Offset and length.
    Part(u64, u64),
    Unsatisfiable,
    /// Not a single byte range: answered with the whole file, as HTTP allows.
    Ignored,
}

fn parse_range(value: &str, size: u64) -> Range {
    let Some(spec) = value.strip_prefix("bytes=") else {
        return Range::Ignored;
    };
    if spec.contains(',') {
        return Range::Ignored;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Range::Ignored;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        // The last n bytes.
        (true, false) => b.parse::<u64>().ok().map(|n| match n.min(size) {
            0 => None,
            n => Some((size - n, size - 1)),
        }),
        (false, true) => a
            .parse::<u64>()
            .ok()
            .map(|a| Some((a, size.saturating_sub(1)))),
        (false, false) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(a), Ok(b)) if a <= b => Some(Some((a, b.min(size.saturating_sub(1))))),
            _ => None,
        },
        (true, true) => None,
    };
    match parsed {
        None => Range::Ignored,
        Some(Some((a, b))) if a < size && a <= b => Range::Part(a, b - a + 1),
        Some(_) => Range::Unsatisfiable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Range::Part(0, 10));
        assert_eq!(parse_range("bytes=90-200", 100), Range::Part(90, 10));
        assert_eq!(parse_range("bytes=95-", 100), Range::Part(95, 5));
        assert_eq!(parse_range("bytes=-10", 100), Range::Part(90, 10));
        assert_eq!(parse_range("bytes=-500", 100), Range::Part(0, 100));
        assert_eq!(parse_range("bytes=100-", 100), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), Range::Ignored);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Range::Ignored);
        assert_eq!(parse_range("items=0-1", 100), Range::Ignored);
    }

    #[test]
    fn the_link_passes_bytes_at_its_rate_whoever_sends_them() {
        // 8 Mbit/s = 1 MB/s: four threads of 64 KiB x 4 take about a second together.
        let link = Arc::new(Link::new(8.0));
        let start = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let link = link.clone();
                std::thread::spawn(move || {
                    for _ in 0..4 {
                        link.pass(CHUNK);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let took = start.elapsed().as_secs_f64();
        let expected = 16.0 * CHUNK as f64 / 1e6;
        assert!(
            took >= expected * 0.99 && took < expected * 1.5,
            "{took} s for {expected} s of bytes"
        );
        // Unlimited: no wait.
        let start = Instant::now();
        Link::new(0.0).pass(1 << 30);
        assert!(start.elapsed() < Duration::from_millis(50));
    }

    #[test]
    fn paths_stay_inside_the_directory() {
        let server = Server {
            dir: PathBuf::from("/srv/cache"),
            link: Link::new(0.0),
            latency: Duration::ZERO,
            requests: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        };
        assert_eq!(
            server.file("/nar/x.nar.zst"),
            Some(PathBuf::from("/srv/cache/nar/x.nar.zst"))
        );
        assert_eq!(
            server.file("/paths/abc?x=1"),
            Some(PathBuf::from("/srv/cache/paths/abc"))
        );
        for bad in ["/../etc/passwd", "/a/../../b", "/", "/%2e%2e/x"] {
            assert_eq!(server.file(bad), None, "{bad}");
        }
    }
}
