//! `soak`: runs the broker binary through the soak scenarios (ghost names, expiry, queue
//! depth, ...) and prints one JSON line of figures per scenario.

use std::path::PathBuf;

use anyhow::Result;
use broadcast_bench::soak;
use clap::{Parser, Subcommand};

/// Soak scenarios against the broker binary: memory, disk and storage faults.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// The broker binary.
    #[arg(long, default_value = "target/release/broadcast-broker")]
    broker: PathBuf,
    /// Where the scenarios keep their data directories (a temporary directory by default).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Rounds of messages with a 1 s time to live to names that never connect.
    Ghosts {
        /// Names addressed per round.
        #[arg(long, default_value_t = 100_000)]
        names: u64,
        /// Rounds.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Extra broker arguments.
        #[arg(long, allow_hyphen_values = true, num_args = 0..)]
        broker_args: Vec<String>,
    },
    /// Messages that all expire: how soon after the last time to live ran out every sender
    /// knows.
    Expiry {
        /// Messages.
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        /// Recipients they are spread over.
        #[arg(long, default_value_t = 1_000)]
        names: u64,
        /// Time to live, in seconds; sending must take less.
        #[arg(long, default_value_t = 10)]
        ttl: u64,
    },
    /// Messages queued for one absent recipient: memory queued, after a restart, drained.
    Queued {
        /// Messages.
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        /// Extra broker arguments.
        #[arg(long, allow_hyphen_values = true, num_args = 0..)]
        broker_args: Vec<String>,
    },
    /// A full disk: the store on a small tmpfs (needs root) fills, drains, and heals.
    Diskfull {
        /// Size of the tmpfs, in MiB (a quarter of it is ballast, deleted to free space;
        /// the broker keeps a sixteenth free).
        #[arg(long, default_value_t = 128)]
        size_mib: u64,
    },
    /// Connections that each hold all but the last byte of a frame of the largest size.
    Partial {
        /// Connections.
        #[arg(long, default_value_t = 1_000)]
        connections: usize,
    },
    /// Connections that never finish their handshake, from another loopback address, and a
    /// normal client's round trips before and during.
    Slowloris {
        /// Connections.
        #[arg(long, default_value_t = 5_000)]
        connections: usize,
        /// Extra broker arguments.
        #[arg(long, allow_hyphen_values = true, num_args = 0..)]
        broker_args: Vec<String>,
    },
    /// One client publishing as fast as it can to a reading sink, and a normal client's
    /// round trips before and during (give the broker a publish rate to see it held back).
    Flood {
        /// Seconds of flood.
        #[arg(long, default_value_t = 6.0)]
        secs: f64,
        /// Payload bytes.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Extra broker arguments.
        #[arg(long, allow_hyphen_values = true, num_args = 0..)]
        broker_args: Vec<String>,
    },
    /// A recipient that never reads, and a sender of non-persistent messages to it.
    Stall {
        /// Messages of 64 KiB.
        #[arg(long, default_value_t = 400)]
        count: u64,
    },
    /// Power cuts under persistent load, on a file system that loses what was not synced.
    Powercut {
        /// Power cuts.
        #[arg(long, default_value_t = 20)]
        cuts: u32,
        /// The broker's `--store-sync`: `device` (the default) or `os`.
        #[arg(long, default_value = "device")]
        sync: String,
        /// The FUSE file system that loses unsynced writes.
        #[arg(long, default_value = "benches/powercut/lazyfs.py")]
        lazyfs: PathBuf,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let rt = tokio::runtime::Runtime::new()?;
    let out = rt.block_on(async {
        match &args.scenario {
            Scenario::Ghosts {
                names,
                rounds,
                broker_args,
            } => {
                let extra: Vec<&str> = broker_args.iter().map(String::as_str).collect();
                soak::ghosts(&args.broker, &dir, *names, *rounds, &extra).await
            }
            Scenario::Expiry { count, names, ttl } => {
                soak::expiry(&args.broker, &dir, *count, *names, *ttl).await
            }
            Scenario::Queued { count, broker_args } => {
                let extra: Vec<&str> = broker_args.iter().map(String::as_str).collect();
                soak::queued(&args.broker, &dir, *count, &extra).await
            }
            Scenario::Partial { connections } => {
                soak::partial(&args.broker, &dir, *connections).await
            }
            Scenario::Flood {
                secs,
                size,
                broker_args,
            } => {
                let extra: Vec<&str> = broker_args.iter().map(String::as_str).collect();
                soak::flood(&args.broker, &dir, *secs, *size, &extra).await
            }
            Scenario::Stall { count } => soak::stall(&args.broker, &dir, *count).await,
            Scenario::Slowloris {
                connections,
                broker_args,
            } => {
                let extra: Vec<&str> = broker_args.iter().map(String::as_str).collect();
                soak::slowloris(&args.broker, &dir, *connections, &extra).await
            }
            Scenario::Diskfull { size_mib } => soak::disk_full(&args.broker, &dir, *size_mib).await,
            Scenario::Powercut { cuts, sync, lazyfs } => {
                soak::power_cut(&args.broker, lazyfs, &dir, *cuts, sync).await
            }
        }
    })?;
    println!("{out}");
    Ok(())
}
