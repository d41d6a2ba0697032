//! `broadcast-broker`: runs the Broadcast message broker.

use anyhow::Context as _;
use broadcast_broker::{Broker, Config, SyncMode};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// jemalloc keeps the store path's mix of large, short-lived segment buffers and small,
/// long-lived records from fragmenting memory (see the broker's `Cargo.toml`).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The Broadcast message broker.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "BROADCAST_LISTEN", default_value = "127.0.0.1:7400")]
    listen: String,
    /// Directory of the message store; created when missing.
    #[arg(long, env = "BROADCAST_DATA_DIR", default_value = "broadcast-data")]
    data_dir: PathBuf,
    /// Largest message payload in bytes.
    #[arg(long, default_value_t = broadcast_protocol::DEFAULT_MAX_PAYLOAD)]
    max_payload: u32,
    /// Most connections at once.
    #[arg(long, default_value_t = 20_000)]
    max_connections: usize,
    /// MiB of frames not yet fully received, across every connection; above it connections
    /// holding part of a frame are not read from until there is room.
    #[arg(long, default_value_t = 256)]
    partial_frames_max_mib: usize,
    /// Seconds a connection holding part of a frame may wait for room before it is closed.
    #[arg(long, default_value = "5", value_parser = secs)]
    partial_frame_wait_secs: Duration,
    /// Seconds between pings to an idle connection.
    #[arg(long, default_value = "5", value_parser = secs)]
    heartbeat_secs: Duration,
    /// Seconds a persistent delivery may stay unacknowledged before it is sent again.
    #[arg(long, default_value = "30", value_parser = secs)]
    ack_timeout_secs: Duration,
    /// Deliveries of a persistent message to one recipient before its sender is told the
    /// attempts are exhausted.
    #[arg(long, default_value_t = 10)]
    max_attempts: u32,
    /// Seconds a persistent message without a time to live of its own is kept.
    #[arg(long, default_value = "86400", value_parser = secs)]
    default_ttl_secs: Duration,
    /// Seconds a disconnected client's subscriptions are remembered.
    #[arg(long, default_value = "86400", value_parser = secs)]
    session_expiry_secs: Duration,
    /// Most messages queued for one recipient.
    #[arg(long, default_value_t = 1_000_000)]
    queue_max_messages: u64,
    /// Most bytes queued for one recipient.
    #[arg(long, default_value_t = 1 << 30)]
    queue_max_bytes: u64,
    /// Most messages kept for a channel with no subscriber.
    #[arg(long, default_value_t = 10_000)]
    backlog_max_messages: u64,
    /// Most bytes in the whole store.
    #[arg(long, default_value_t = 8 << 30)]
    store_max_bytes: u64,
    /// How far a persistent message is made durable before it is confirmed: `device` (synced
    /// to the disk: survives a power cut) or `os` (written to the operating system: survives
    /// the broker's crash, not a power cut).
    #[arg(long, default_value = "device", value_parser = sync_mode)]
    store_sync: SyncMode,
    /// MiB of the store kept cached in memory.
    #[arg(long, default_value_t = 64)]
    store_cache_mib: u64,
    /// MiB kept free on the store's file system: below it persistent messages are refused
    /// until space returns (0: no reserve).
    #[arg(long, default_value_t = 64)]
    store_min_free_mib: u64,
    /// Seconds a sender waits for room at a slower recipient before a non-persistent message
    /// to it fails as too slow.
    #[arg(long, default_value = "1", value_parser = secs)]
    slow_consumer_wait_secs: Duration,
    /// Log filter (tracing-subscriber syntax); `RUST_LOG` overrides it.
    #[arg(long, default_value = "info")]
    log: String,
}

/// Parses a sync mode.
fn sync_mode(s: &str) -> Result<SyncMode, String> {
    match s {
        "device" => Ok(SyncMode::Device),
        "os" => Ok(SyncMode::Os),
        _ => Err(format!("{s:?} is not a sync mode (device or os)")),
    }
}

/// Parses a number of seconds, fractions allowed.
fn secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(v).map_err(|_| format!("{s:?} is not a positive number of seconds"))
}

/// Runs the broker; an error is reported on one line (with its causes), never as a
/// backtrace, and the process exits with status 1.
fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("broadcast-broker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let config = Config {
        data_dir: args.data_dir,
        max_payload: args.max_payload,
        max_connections: args.max_connections,
        partial_frames_max_bytes: args.partial_frames_max_mib.saturating_mul(1 << 20),
        partial_frame_wait: args.partial_frame_wait_secs,
        heartbeat: args.heartbeat_secs,
        ack_timeout: args.ack_timeout_secs,
        max_attempts: args.max_attempts,
        default_ttl: args.default_ttl_secs,
        session_expiry: args.session_expiry_secs,
        queue_max_messages: args.queue_max_messages,
        queue_max_bytes: args.queue_max_bytes,
        backlog_max_messages: args.backlog_max_messages,
        store_max_bytes: args.store_max_bytes,
        store_sync: args.store_sync,
        store_cache_bytes: args.store_cache_mib.saturating_mul(1 << 20),
        store_min_free_bytes: args.store_min_free_mib.saturating_mul(1 << 20),
        slow_consumer_wait: args.slow_consumer_wait_secs,
        ..Config::default()
    };
    config.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let shutdown = CancellationToken::new();
        let broker = Broker::start(config, listener, shutdown.clone()).await?;
        eprintln!("broadcast-broker listening on {}", broker.local_addr());
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received, shutting down");
            shutdown.cancel();
        });
        broker.wait().await?;
        anyhow::Ok(())
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
