//! `broadcast-broker`: runs the Broadcast message broker.

use anyhow::Context as _;
use broadcast_broker::{Broker, Config};
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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
    /// Seconds between pings to an idle connection.
    #[arg(long, default_value_t = 5.0)]
    heartbeat_secs: f64,
    /// Log filter (tracing-subscriber syntax); `RUST_LOG` overrides it.
    #[arg(long, default_value = "info")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let heartbeat = Duration::try_from_secs_f64(args.heartbeat_secs)
        .context("--heartbeat-secs must be a positive number")?;
    let config = Config {
        data_dir: args.data_dir,
        max_payload: args.max_payload,
        max_connections: args.max_connections,
        heartbeat,
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
