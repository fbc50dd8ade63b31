//! `refstrip serve`: a normalized store as a standard Nix binary cache over HTTP.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use refstrip_serve::{Compression, Config, Server};

#[derive(Clone, Copy, ValueEnum)]
enum CompressionArg {
    None,
    Zstd,
}

#[derive(Args)]
pub struct ServeArgs {
    /// The normalized store: a directory, `file:///dir`, `s3://bucket/prefix…`, or `http(s)://`
    /// serving such a directory.
    #[arg(long, value_name = "STORE")]
    from: String,
    /// Address to listen on (`127.0.0.1:0` picks a free port; the address is logged).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:5000")]
    listen: String,
    /// StoreDir announced in nix-cache-info [default: the store directory of the store's paths].
    #[arg(long, value_name = "DIR")]
    store_dir: Option<String>,
    /// Priority announced in nix-cache-info (Nix prefers lower; cache.nixos.org is 40).
    #[arg(long, default_value_t = 40)]
    priority: u64,
    /// How NARs are served: `none` (exact Content-Length) or `zstd` (compressed on the fly).
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
    /// After SIGINT/SIGTERM, how long requests in flight may take to finish, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    grace: u64,
    /// Worker threads for connections [default: one per core].
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    // RUST_LOG-style filtering is not needed: info is the request log, warn/error the problems.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    let store = refstrip_read::StoreReader::open(&args.from)?;
    let config = Config {
        store_dir: args.store_dir,
        priority: args.priority,
        compression: match args.compression {
            CompressionArg::None => Compression::None,
            CompressionArg::Zstd => Compression::Zstd,
        },
        zstd_level: args.zstd_level,
        max_streams: args.max_streams,
        record_cache_bytes: args.record_cache_mib << 20,
        objects: refstrip_read::objects::ObjectOptions {
            object_memory: (args.object_cache_mib as u64) << 20,
            ..Default::default()
        },
    };
    let server = Server::new(store, config).context("reading the store")?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
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
    // Restore threads of aborted responses stop at their next write; do not wait long for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}
