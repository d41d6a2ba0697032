//! `broadcast-broker`: runs the Broadcast message broker.

use anyhow::Context as _;
use broadcast_broker::tls::{TlsConfig, server_config};
use broadcast_broker::{AdminOptions, Broker, LogFormat, Overrides, Settings};
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// jemalloc keeps the store path's mix of large, short-lived segment buffers and small,
/// long-lived records from fragmenting memory (see the broker's `Cargo.toml`).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The Broadcast message broker.
///
/// Settings come from the config file (`--config`), `BROADCAST_*` environment variables and
/// flags, each overriding the one before; `print-default-config` shows every setting.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// A TOML file of settings; the environment and flags override it.
    #[arg(long, env = "BROADCAST_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Checks a config file, with the environment and the flags given before the command,
    /// and prints the settings in force.
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
    /// Prints a config file of every setting with its default and what it does.
    PrintDefaultConfig,
    /// Service tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Makes a new service token: prints the token alone on the first line (it is shown only
    /// this once), then the config-file lines that admit it.
    New {
        /// The identity the token proves.
        #[arg(long)]
        identity: String,
    },
}

/// Prints a new token and the lines of the config file that admit it.
fn new_token(identity: &str) -> anyhow::Result<()> {
    broadcast_protocol::validate_client_name(identity)
        .map_err(|e| anyhow::anyhow!("--identity: {e}"))?;
    let token = broadcast_broker::auth::token::new_token();
    let hash = broadcast_broker::auth::token::to_hex(&broadcast_broker::auth::token::hash(&token));
    println!("{token}");
    println!(
        "# The broker keeps only the token's hash. Add these lines to its config file (or the\n\
         # hash to the identity's tokens_sha256), then reload it (SIGHUP):\n\
         [[auth.identities]]\n\
         identity = {identity:?}\n\
         tokens_sha256 = [\"{hash}\"]"
    );
    Ok(())
}

/// Runs the broker; an error is reported on one line (with its causes), never as a
/// backtrace, and the process exits with status 1.
fn main() -> ExitCode {
    match run(parse_args()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("broadcast-broker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The command line, with each setting's default in its `--help` (the flags themselves have
/// none, so that a flag not given leaves the file's setting alone).
fn parse_args() -> Args {
    let mut command = Args::command();
    if let Ok(defaults) = toml::Table::try_from(Settings::default()) {
        for (key, _) in broadcast_broker::settings::KEYS {
            let Some(value) = defaults.get(*key) else {
                continue;
            };
            let shown = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            command = command.mut_arg(*key, |arg| {
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                arg.help(format!("{help} [default: {shown}]"))
            });
        }
    }
    let matches = command.get_matches();
    Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Refuses to listen for clients anywhere but on loopback unless the operator says so: the
/// broker has no credentials yet, so anyone who reaches the port can connect under any name.
async fn check_exposure(settings: &Settings) -> anyhow::Result<()> {
    let mut addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(&settings.listen)
        .await
        .with_context(|| format!("cannot resolve {}", settings.listen))?
        .collect();
    for extra in [&settings.tls_listen, &settings.http_listen] {
        if !extra.is_empty() {
            addrs.extend(
                tokio::net::lookup_host(extra)
                    .await
                    .with_context(|| format!("cannot resolve {extra}"))?,
            );
        }
    }
    let exposed: Vec<String> = addrs
        .iter()
        .filter(|a| !a.ip().is_loopback())
        .map(ToString::to_string)
        .collect();
    if exposed.is_empty() {
        return Ok(());
    }
    if settings.auth.required() {
        return Ok(());
    }
    if !settings.allow_unauthenticated {
        anyhow::bail!(
            "listening on {} would let anyone who reaches it connect under any name, without \
             credentials; configure credentials ([auth] in the config file), or set allow_unauthenticated (--allow-unauthenticated true) to do so \
             on purpose, or listen on a loopback address",
            exposed.join(", ")
        );
    }
    tracing::warn!(
        addrs = %exposed.join(", "),
        "listening beyond loopback without credentials: anyone who reaches the port can connect under any name"
    );
    Ok(())
}

/// Starts jemalloc's background thread, which gives memory that was freed back to the system
/// while the broker is idle. Without it jemalloc does so only as it allocates, so a broker that
/// went quiet after a burst kept the burst's memory (154 MB twelve seconds after 300,000
/// expired names, against 86 MB with it).
fn return_idle_memory() {
    #[cfg(not(target_env = "msvc"))]
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "cannot start the allocator's background thread");
    }
}

/// The settings in force: the file's (or the defaults), then the environment's and the flags'.
fn settings(file: Option<&Path>, overrides: Overrides) -> anyhow::Result<Settings> {
    let mut settings = match file {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    overrides.apply(&mut settings);
    Ok(settings)
}

fn init_logs(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Some(Command::PrintDefaultConfig) => {
            print!("{}", Settings::default_file()?);
            return Ok(());
        }
        Some(Command::Token(TokenCommand::New { identity })) => return new_token(&identity),
        Some(Command::CheckConfig { file }) => {
            let settings = settings(Some(&file), args.overrides)?;
            settings.config()?;
            print!("{}", settings.redacted().to_toml()?);
            eprintln!("{}: ok", file.display());
            return Ok(());
        }
        None => {}
    }
    let config_file = args.config.clone();
    let settings = settings(args.config.as_deref(), args.overrides)?;
    let config = settings.config()?;
    init_logs(&settings);
    return_idle_memory();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        check_exposure(&settings).await?;
        let listener = tokio::net::TcpListener::bind(&settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        // Bound before the broker starts: a port that is taken stops the start, not a
        // broker already serving.
        let admin_listener = if settings.admin_listen.is_empty() {
            None
        } else {
            let listener = tokio::net::TcpListener::bind(&settings.admin_listen)
                .await
                .with_context(|| format!("cannot listen on {} (admin)", settings.admin_listen))?;
            Some(listener)
        };
        let tls_config = tls_config(&settings)?;
        let tls = tls_listener(&settings, tls_config.clone()).await?;
        let http = http_listener(&settings, tls_config.clone()).await?;
        // Watched before the broker serves, so that a SIGHUP from then on reloads and never
        // ends the process.
        let hangup = watch_hangup();
        let shutdown = CancellationToken::new();
        let listeners = broadcast_broker::Listeners {
            plain: listener,
            tls,
            http,
        };
        let broker = Broker::start(config, listeners, shutdown.clone()).await?;
        eprintln!("broadcast-broker listening on {}", broker.local_addr());
        if let Some(addr) = broker.tls_addr() {
            eprintln!("broadcast-broker listening with TLS on {addr}");
        }
        if let Some(addr) = broker.http_addr() {
            let scheme = if settings.http_tls { "https" } else { "http" };
            eprintln!(
                "broadcast-broker listening for HTTP on {scheme}://{addr} (WebSocket at /v1/ws)"
            );
        }
        let stopped = CancellationToken::new();
        let admin = if let Some(listener) = admin_listener {
            if let Ok(addr) = listener.local_addr() {
                eprintln!("admin API on http://{addr}");
            }
            let options = AdminOptions {
                token: Some(settings.admin_token.clone()).filter(|t| !t.is_empty()),
                settings: Some(settings.to_json()),
            };
            let app = broadcast_broker::admin::router(&broker.handle(), options);
            let stopped = stopped.clone();
            // The admin API answers until the broker has stopped: readiness says 503 while
            // it drains.
            Some(tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped.cancelled_owned())
                    .await
            }))
        } else {
            None
        };
        let reload = Reload {
            file: config_file,
            broker: broker.handle(),
            tls: tls_config,
        };
        tokio::spawn(reload_on_hangup(hangup, reload));
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received, shutting down");
            shutdown.cancel();
        });
        let result = broker.wait().await;
        stopped.cancel();
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        result?;
        anyhow::Ok(())
    })
}

#[cfg(unix)]
type Hangup = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangup = ();

fn watch_hangup() -> Option<Hangup> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(hangup) => Some(hangup),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch for SIGHUP: credentials cannot be reloaded");
                None
            }
        }
    }
    #[cfg(not(unix))]
    None
}

/// The TLS listener and its configuration, when `tls_listen` is set.
/// The TLS configuration of the listeners that use TLS (the TLS listener, the HTTP one with
/// `http_tls`), one for both so that a reload renews both.
fn tls_config(settings: &Settings) -> anyhow::Result<Option<std::sync::Arc<TlsConfig>>> {
    if settings.tls_listen.is_empty() && !settings.http_tls {
        return Ok(None);
    }
    if settings.tls_cert.is_empty() || settings.tls_key.is_empty() {
        anyhow::bail!("tls_listen and http_tls need tls_cert and tls_key");
    }
    let config = server_config(
        Path::new(&settings.tls_cert),
        Path::new(&settings.tls_key),
        client_ca(settings),
    )?;
    Ok(Some(std::sync::Arc::new(TlsConfig::new(config))))
}

async fn tls_listener(
    settings: &Settings,
    config: Option<std::sync::Arc<TlsConfig>>,
) -> anyhow::Result<Option<(tokio::net::TcpListener, std::sync::Arc<TlsConfig>)>> {
    let Some(config) = config.filter(|_| !settings.tls_listen.is_empty()) else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(&settings.tls_listen)
        .await
        .with_context(|| format!("cannot listen on {} (TLS)", settings.tls_listen))?;
    Ok(Some((listener, config)))
}

async fn http_listener(
    settings: &Settings,
    config: Option<std::sync::Arc<TlsConfig>>,
) -> anyhow::Result<Option<(tokio::net::TcpListener, Option<std::sync::Arc<TlsConfig>>)>> {
    if settings.http_listen.is_empty() {
        if settings.http_tls {
            anyhow::bail!("http_tls needs http_listen");
        }
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(&settings.http_listen)
        .await
        .with_context(|| format!("cannot listen on {} (HTTP)", settings.http_listen))?;
    Ok(Some((listener, config.filter(|_| settings.http_tls))))
}

/// The CA certificates TLS client certificates are verified against, if set.
fn client_ca(settings: &Settings) -> Option<&Path> {
    Some(Path::new(&settings.tls_client_ca)).filter(|p| !p.as_os_str().is_empty())
}

/// What a SIGHUP reloads.
struct Reload {
    file: Option<PathBuf>,
    broker: broadcast_broker::BrokerHandle,
    tls: Option<std::sync::Arc<TlsConfig>>,
}

/// On each SIGHUP, re-reads the credentials (`[auth]`) of the config file and the TLS
/// certificate and key (for connections accepted afterwards). What cannot be read or fails
/// validation changes nothing, and says why.
async fn reload_on_hangup(hangup: Option<Hangup>, reload: Reload) {
    #[cfg(unix)]
    {
        let Some(mut hangup) = hangup else {
            return;
        };
        while hangup.recv().await.is_some() {
            let Some(file) = &reload.file else {
                tracing::warn!("SIGHUP: there is no config file to reload");
                continue;
            };
            let settings = match Settings::from_file(file) {
                Ok(settings) => settings,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "credentials NOT reloaded: the ones in force stay");
                    continue;
                }
            };
            match reload.broker.reload_auth(&settings.auth) {
                Ok(()) => tracing::info!(file = %file.display(), "credentials reloaded"),
                Err(e) => tracing::error!(
                    error = %e,
                    "credentials NOT reloaded: the ones in force stay"
                ),
            }
            if let Some(tls) = &reload.tls {
                let (cert, key) = (Path::new(&settings.tls_cert), Path::new(&settings.tls_key));
                match server_config(cert, key, client_ca(&settings)) {
                    Ok(config) => {
                        tls.replace(config);
                        tracing::info!("TLS certificate reloaded");
                    }
                    Err(e) => tracing::error!(
                        error = %e,
                        "TLS certificate NOT reloaded: the one in force stays"
                    ),
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (hangup, reload);
    }
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
