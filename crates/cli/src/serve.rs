//! `refstrip serve`: a normalized store as a standard Nix binary cache over HTTP.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use refstrip_serve::{Compression, Config, Limits, RequestLog, Server};

#[derive(Clone, Copy, ValueEnum)]
enum CompressionArg {
    None,
    Zstd,
    /// `zstd` to clients whose narinfo request accepts it (`Accept-Encoding: zstd`), `none` to the
    /// others (Nix 2.8 sends no Accept-Encoding).
    Auto,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// One line per event for people (requests: client, "method path", status, bytes, duration).
    Text,
    /// One JSON object per line, every field separate.
    Json,
}

#[derive(Args)]
pub struct ServeArgs {
    /// The normalized store: a directory, `file:///dir`, `s3://bucket/prefix…`, or `http(s)://`
    /// serving such a directory. A remote store that does not answer (at start or later) makes
    /// every path it would serve a 404, so that Nix asks its next substituter; it is retried after
    /// 1 s, then waits doubling up to a minute. HTTP timeouts: `?connect-timeout=SECS` (10) and
    /// `&stalled-download-timeout=SECS` (60).
    #[arg(long, value_name = "STORE")]
    from: String,
    /// Address to listen on (`127.0.0.1:0` picks a free port; the address is logged). `:PORT`
    /// listens on all interfaces (IPv6 and IPv4, or IPv4 only where IPv6 is unavailable).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:5000")]
    listen: String,
    /// StoreDir announced in nix-cache-info [default: the store directory of the store's paths].
    #[arg(long, value_name = "DIR")]
    store_dir: Option<String>,
    /// Priority announced in nix-cache-info (Nix prefers lower; cache.nixos.org is 40).
    #[arg(long, default_value_t = 40)]
    priority: u64,
    /// How narinfos advertise NARs: `none` (exact Content-Length, FileSize and FileHash, ranges),
    /// `zstd` (compressed on the fly), or `auto` (by the client's Accept-Encoding). Both URLs
    /// answer whatever is advertised.
    #[arg(long, value_enum, default_value = "none")]
    compression: CompressionArg,
    /// zstd level for `--compression zstd`.
    #[arg(long, default_value_t = 3)]
    zstd_level: i32,
    /// NARs restored at the same time; more NAR requests wait for a slot.
    #[arg(long, default_value_t = 64)]
    max_streams: usize,
    /// Memory for decoded path records, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    record_cache_mib: usize,
    /// Memory for verified file objects shared by all downloads, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    object_cache_mib: usize,
    /// Memory for decoded pack blocks shared by all downloads, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    block_cache_mib: u64,
    /// Keep pack blocks fetched from the store in this directory (for a store behind HTTP or S3,
    /// e.g. serve as a machine's local substituter); shared with `refstrip substitute` and `mount`,
    /// safe for several processes [default: no disk cache].
    #[arg(long, value_name = "DIR")]
    cache: Option<std::path::PathBuf>,
    /// Largest size of the disk cache: least recently used blocks are evicted beyond it (bytes, or
    /// with a suffix K, M, G, T).
    #[arg(long, value_name = "SIZE", default_value = "8G", requires = "cache",
          value_parser = crate::substitute::parse_size)]
    cache_size: u64,
    /// Client connections open at once; at the cap, new clients wait in the listen queue (keep it
    /// well under the process's file-descriptor limit, often 1,024).
    #[arg(long, value_name = "N", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Connections open at once from one client IP; more are closed on arrival.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections_per_ip: u64,
    /// Seconds a client has to send a complete request head, counted from when the server waits
    /// for it (connection opened, or previous response sent); then the connection is closed.
    #[arg(long, value_name = "SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout: u64,
    /// Seconds a connection with no request in progress may stay silent before it is closed.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout: u64,
    /// Seconds a client may accept no bytes of a response before it is disconnected (its NAR
    /// stream slot is freed).
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    send_timeout: u64,
    /// After SIGINT/SIGTERM, how long requests in flight may take to finish, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    grace: u64,
    /// A Nix store whose valid paths are the nearest source of objects (`/`, or a chroot root):
    /// files whose normalized contents are there are read from it, re-normalized and checked,
    /// instead of fetched. Its index is brought up to date at start (see `refstrip index`).
    #[arg(long, value_name = "ROOT")]
    local_store: Option<std::path::PathBuf>,
    /// Where the local store's index lives [default: ROOT/nix/var/refstrip].
    #[arg(long, value_name = "DIR", requires = "local_store")]
    local_state: Option<std::path::PathBuf>,
    /// How often the local store's index picks up paths Nix registered since, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10, requires = "local_store",
          value_parser = clap::value_parser!(u64).range(1..))]
    local_refresh: u64,
    /// Worker threads for connections [default: one per core].
    #[arg(long)]
    threads: Option<usize>,
    /// Sign every narinfo served with this secret key file (as `nix-store
    /// --generate-binary-cache-key NAME SECRET-FILE PUBLIC-FILE` writes it), next to the stored
    /// signatures: for stores ingested without `--sign-key`, e.g. from a local Nix store. Clients
    /// then need only the public key in `trusted-public-keys`.
    #[arg(long, value_name = "FILE")]
    sign_key: Option<std::path::PathBuf>,
    /// Note in this directory which paths were served and when (`served.sqlite`, written every
    /// 30 s and at exit), for `refstrip gc --keep-within` (give gc the same directory). Never in
    /// the store, which may be read-only; several servers may share one directory.
    #[arg(long, value_name = "DIR")]
    served_state: Option<std::path::PathBuf>,
    /// Format of the log on stderr (the request log and everything else).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log no line per request (problems are still logged).
    #[arg(long)]
    no_request_log: bool,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    // RUST_LOG-style filtering is not needed: info is the request log, warn/error the problems.
    use std::io::IsTerminal;
    let log = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false);
    match args.log_format {
        LogFormat::Text => log.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => log.json().with_ansi(false).init(),
    }
    let sign_key = args
        .sign_key
        .as_deref()
        .map(refstrip_nix::SecretKey::read_file)
        .transpose()?;
    // A remote store that does not answer now is served all the same: every path a miss (which
    // Nix takes from its next substituter) until it answers.
    let (store, upstream) = refstrip_serve::upstream::open(&args.from)?;
    let config = Config {
        store_dir: args.store_dir,
        priority: args.priority,
        compression: match args.compression {
            CompressionArg::None | CompressionArg::Auto => Compression::None,
            CompressionArg::Zstd => Compression::Zstd,
        },
        negotiate_compression: matches!(args.compression, CompressionArg::Auto),
        zstd_level: args.zstd_level,
        max_streams: args.max_streams,
        record_cache_bytes: args.record_cache_mib << 20,
        objects: refstrip_read::objects::ObjectOptions {
            object_memory: (args.object_cache_mib as u64) << 20,
            block_memory: args.block_cache_mib << 20,
            cache_dir: args.cache,
            cache_bytes: args.cache_size,
        },
        limits: Limits {
            max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
            max_connections_per_ip: usize::try_from(args.max_connections_per_ip)
                .unwrap_or(usize::MAX),
            header_timeout: Duration::from_secs(args.header_timeout),
            idle_timeout: Duration::from_secs(args.idle_timeout),
            send_timeout: Duration::from_secs(args.send_timeout),
        },
        sign_key,
        served: args
            .served_state
            .as_deref()
            .map(|dir| {
                refstrip_serve::ServedLog::open(dir)
                    .with_context(|| format!("opening --served-state {}", dir.display()))
            })
            .transpose()?,
        request_log: match (args.no_request_log, args.log_format) {
            (true, _) => RequestLog::Off,
            (false, LogFormat::Text) => RequestLog::Text,
            (false, LogFormat::Json) => RequestLog::Fields,
        },
    };
    let local = match &args.local_store {
        None => None,
        Some(root) => {
            let store_dir = config.store_dir.as_deref().unwrap_or("/nix/store");
            let (local, r) = crate::local_store::open_updated(
                root,
                store_dir,
                args.local_state.as_deref(),
                !std::io::stderr().is_terminal(),
            )?;
            tracing::info!(
                root = %root.display(),
                new_paths = r.paths,
                nar_bytes = r.nar_bytes,
                "local store indexed"
            );
            local.keep_updated(
                Duration::from_secs(args.local_refresh),
                |e| tracing::warn!(error = %e, "updating the local store's index"),
            );
            Some(local)
        }
    };
    // The local store's paths also give the shapes of their rebuilt successors (spec §8).
    let store = match &local {
        Some(local) => store.with_near_shapes(local.clone()),
        None => store,
    };
    let near = local
        .clone()
        .map(|l| l as std::sync::Arc<dyn refstrip_read::objects::NearSource>);
    let server =
        Server::with_near(store, Some(upstream), config, near).context("reading the store")?;
    let flushing = server.clone();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(async {
        let listener = bind(&args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(from = %args.from, "serving http://{addr}");
        refstrip_serve::serve(
            server,
            listener,
            refstrip_serve::shutdown_signal(),
            Duration::from_secs(args.grace),
        )
        .await
        .context("serving")
    });
    flushing.flush_served();
    if let Some(local) = &local {
        let (objects, bytes, stale) = local.counters.get();
        tracing::info!(objects, bytes, stale, "served from the local store");
    }
    // Restore threads of aborted responses stop at their next write; do not wait long for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Bind `listen`: `ADDR:PORT` as given, or `:PORT` on all interfaces: `[::]` (which takes IPv4
/// too where the system allows it), falling back to `0.0.0.0` where IPv6 is unavailable.
async fn bind(listen: &str) -> std::io::Result<tokio::net::TcpListener> {
    match all_interfaces_port(listen) {
        Some(port) => match tokio::net::TcpListener::bind(("::", port)).await {
            Ok(listener) => Ok(listener),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::Unsupported
                ) || e.raw_os_error() == Some(97) =>
            {
                // 97: EAFNOSUPPORT, IPv6 disabled.
                tokio::net::TcpListener::bind(("0.0.0.0", port)).await
            }
            Err(e) => Err(e),
        },
        None => tokio::net::TcpListener::bind(listen).await,
    }
}

/// The port of `:PORT`.
fn all_interfaces_port(listen: &str) -> Option<u16> {
    listen.strip_prefix(':')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_port_only_means_all_interfaces() {
        assert_eq!(all_interfaces_port(":5000"), Some(5000));
        assert_eq!(all_interfaces_port(":0"), Some(0));
        assert_eq!(all_interfaces_port("127.0.0.1:5000"), None);
        assert_eq!(all_interfaces_port("[::1]:5000"), None);
        assert_eq!(all_interfaces_port(":http"), None);
    }
}
