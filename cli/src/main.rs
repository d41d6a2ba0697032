//! `broadcast`: send messages to and listen for messages on a Broadcast broker.
//!
//! Output meant for scripts (messages and notices) goes to stdout, one JSON object per line;
//! diagnostics and connection events go to stderr.

use std::fmt;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use broadcast_client::{ConnectError, ConnectOptions, ErrorCode};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

mod admin;
mod json;
mod listen;
mod send;

/// Address used when neither `--server` nor `BROADCAST_SERVER` is given.
const DEFAULT_SERVER: &str = "127.0.0.1:7400";

/// Exit status: something went wrong that has no more specific status (including a failed
/// delivery or an error reported by the broker for `send`).
const EXIT_FAILURE: u8 = 1;
/// Exit status of `listen` when `--count` messages did not arrive before `--timeout`.
const EXIT_INCOMPLETE: u8 = 2;
/// Exit status when the broker cannot be reached or the connection is lost for good.
const EXIT_UNREACHABLE: u8 = 3;
/// Exit status when the broker refuses the credential (or its absence), or it expired.
const EXIT_UNAUTHORIZED: u8 = 4;
/// Exit status when the broker refuses a message as forbidden to this identity.
const EXIT_FORBIDDEN: u8 = 5;
/// Exit status after an interrupt (Ctrl-C), as shells report a process killed by SIGINT.
const EXIT_INTERRUPTED: u8 = 130;

/// Send messages to and listen for messages on a Broadcast broker.
#[derive(Debug, Parser)]
#[command(
    name = "broadcast",
    version,
    about = "Send messages to and listen for messages on a Broadcast broker",
    long_about = "Send messages to and listen for messages on a Broadcast broker.\n\n\
        Messages and notices are printed on stdout as one JSON object per line; diagnostics \
        and connection events go to stderr (set RUST_LOG, e.g. RUST_LOG=debug, for more).",
    after_help = "Examples:\n  \
        broadcast listen --name alice --channel news\n  \
        broadcast send --channel news 'hello, subscribers'\n  \
        broadcast send --to alice --event greet 'hi alice'\n  \
        echo -n 'raw bytes' | broadcast send --to alice -"
)]
struct Cli {
    /// Address of the broker, as HOST:PORT, or tls://HOST:PORT for TLS (with --tls-ca).
    #[arg(
        long,
        global = true,
        value_name = "ADDR",
        env = "BROADCAST_SERVER",
        hide_env_values = true,
        default_value = DEFAULT_SERVER
    )]
    server: String,

    /// The credential to present (a service token or a JWT), for a broker that requires one.
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        env = "BROADCAST_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,

    /// The namespace to live in (a broker with credentials puts each identity in its own).
    #[arg(
        long,
        global = true,
        value_name = "NAMESPACE",
        env = "BROADCAST_NAMESPACE"
    )]
    namespace: Option<String>,

    /// TLS: the CA certificates (PEM) the broker's certificate must chain to.
    #[arg(long, global = true, value_name = "FILE", env = "BROADCAST_TLS_CA")]
    tls_ca: Option<PathBuf>,

    /// TLS: a client certificate chain (PEM) to present, with --tls-key.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "BROADCAST_TLS_CERT",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,

    /// TLS: the client certificate's private key (PEM).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "BROADCAST_TLS_KEY",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Connect under a name and print every message received, one JSON object per line.
    #[command(
        long_about = "Connect under a name, subscribe to the given channels and print every \
            message received (sent to this client directly or through a channel), one JSON \
            object per line on stdout:\n\n  \
            {\"id\":...,\"sender\":...,\"channel\":...|null,\"name\":...|null,\"data\":...,\
            \"persistent\":...,\"redelivered\":...}\n\n\
            \"data\" holds the payload when it is valid UTF-8; otherwise \"data\" is absent and \
            \"data_base64\" holds the payload in standard base64. Notices that a message this \
            client sent could not be delivered are printed as \
            {\"event\":\"delivery_failed\",...}.\n\n\
            Exit status: 0 after --count messages or when --timeout elapses without --count; \
            2 when --timeout elapses before --count messages arrived; 3 when the broker cannot \
            be reached or the connection is lost for good; 1 on other errors.",
        after_help = "Examples:\n  \
            broadcast listen --name alice\n  \
            broadcast listen --name worker-1 --channel jobs --channel alerts\n  \
            broadcast listen --name probe --channel jobs --count 1 --timeout 10"
    )]
    Listen(listen::ListenArgs),

    /// Send one message and print what the broker reports about it.
    #[command(
        long_about = "Send one message to exactly one target and print what the broker reports \
            about it, one JSON object per line on stdout:\n\n  \
            {\"event\":\"delivery_failed\",\"id\":...,\"recipient\":...,\"reason\":...,\"detail\":...}\n  \
            {\"event\":\"accepted\",\"id\":...}   (a persistent message is safe)\n  \
            {\"event\":\"error\",\"code\":...,\"message\":...,\"id\":...}\n\n\
            When there is nothing to report, {\"event\":\"sent\",\"id\":...} is printed instead. \
            A persistent message is waited on until the broker accepts it (at most 10 s). With \
            --wait SECS, every notice that arrives within SECS is printed, also after \
            acceptance (for example the expiry of a message sent with --ttl).\n\n\
            Exit status: 0 when no failure or error was printed; 1 when at least one was \
            (or on other errors); 3 when the broker cannot be reached.",
        after_help = "Examples:\n  \
            broadcast send --to alice 'hello'\n  \
            broadcast send --group alice,bob --event greet 'hello both'\n  \
            broadcast send --channel jobs --persistent false --ttl 30 '{\"job\":42}'\n  \
            broadcast send --client-in-channel worker-1:jobs 'only for worker-1'\n  \
            broadcast send --all 'maintenance in 5 minutes'\n  \
            broadcast send --to alice - < payload.bin"
    )]
    Send(Box<send::SendArgs>),

    /// Print the broker's state from its admin API: connections, queues, totals.
    #[command(after_help = "Examples:\n  \
            broadcast stats --admin http://127.0.0.1:7402\n  \
            BROADCAST_ADMIN=http://10.0.0.5:7402 broadcast stats --json")]
    Stats(admin::AdminArgs),

    /// List the recipients' queues from the broker's admin API.
    #[command(after_help = "Examples:\n  \
            broadcast queues\n  \
            broadcast queues --limit 1000 --json")]
    Queues(admin::QueuesArgs),
}

/// An error that ends the command with a given exit status; its message goes to stderr.
#[derive(Debug)]
struct Exit {
    /// The exit status.
    status: u8,
    /// What went wrong.
    message: String,
}

impl Exit {
    /// The broker cannot be reached, or the connection was lost for good.
    fn unreachable(message: impl Into<String>) -> Self {
        Exit {
            status: EXIT_UNREACHABLE,
            message: message.into(),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// The error for a failed first connection, with a hint when the broker seems not to run.
fn connect_failed(server: &str, err: &ConnectError) -> Exit {
    if let ConnectError::Refused { code, message } = err
        && matches!(code, ErrorCode::Unauthorized | ErrorCode::AuthExpired)
    {
        // As a JSON line too, as other refusals are reported, for scripts to read.
        let _ = print_line(&json::error_line(*code, message, None));
        return Exit {
            status: EXIT_UNAUTHORIZED,
            message: format!("the broker at {server} refused the credential: {message}"),
        };
    }
    let hint = match err {
        ConnectError::Io(_) | ConnectError::Timeout | ConnectError::AttemptsExhausted { .. } => {
            " (is the broker running there? Set the address with --server or BROADCAST_SERVER)"
        }
        _ => "",
    };
    Exit::unreachable(format!(
        "cannot connect to the broker at {server}: {err}{hint}"
    ))
}

/// What a command connects with beyond the address: the global `--token`, `--namespace`
/// and TLS options.
#[derive(Debug, Default, Clone)]
pub(crate) struct Access {
    token: Option<String>,
    namespace: Option<String>,
    tls: Option<std::sync::Arc<broadcast_client::rustls::ClientConfig>>,
}

impl Access {
    /// `options` with these.
    pub(crate) fn options(&self, mut options: ConnectOptions) -> ConnectOptions {
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(namespace) = &self.namespace {
            options = options.namespace(namespace.clone());
        }
        if let Some(tls) = &self.tls {
            options = options.tls(tls.clone());
        }
        options
    }
}

/// The broker's `HOST:PORT` and, for a `tls://` address, the TLS configuration.
fn broker_address(
    cli: &Cli,
) -> anyhow::Result<(
    String,
    Option<std::sync::Arc<broadcast_client::rustls::ClientConfig>>,
)> {
    let Some(addr) = cli.server.strip_prefix("tls://") else {
        if cli.tls_ca.is_some() {
            anyhow::bail!("--tls-ca needs a tls:// server address");
        }
        return Ok((cli.server.clone(), None));
    };
    let Some(ca) = &cli.tls_ca else {
        anyhow::bail!("a tls:// server needs --tls-ca (the CA its certificate chains to)");
    };
    let identity = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        _ => None,
    };
    let config = broadcast_client::tls::client_config(ca, identity)?;
    Ok((addr.to_owned(), Some(config)))
}

/// Writes one line to stdout and flushes it, so that a script reading a pipe sees every line
/// as soon as it is printed.
fn print_line(line: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Parses a number of seconds, whole or fractional (`2`, `0.5`), into a duration.
fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if secs.is_nan() || secs < 0.0 {
        return Err(format!("{text:?} is not a number of seconds"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{text:?} seconds is too long"))
}

/// Checks a client name given on the command line.
fn parse_client_name(text: &str) -> Result<String, String> {
    broadcast_protocol::validate_client_name(text).map_err(|e| e.to_string())?;
    Ok(text.to_owned())
}

/// Checks a channel name given on the command line.
fn parse_channel(text: &str) -> Result<String, String> {
    broadcast_protocol::validate_channel(text).map_err(|e| e.to_string())?;
    Ok(text.to_owned())
}

/// Sends logs to stderr, at level `warn` unless `RUST_LOG` says otherwise. Without
/// `RUST_LOG`, the client library's warnings about each failed connection attempt are left
/// out: the commands report connection trouble themselves, in plain words.
fn init_tracing() {
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::builder()
            .with_default_directive(LevelFilter::WARN.into())
            .parse_lossy(directives),
        _ => EnvFilter::new("warn,broadcast_client=error"),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async {
        let connect = || broker_address(&cli);
        match &cli.command {
            Command::Listen(_) | Command::Send(_) => {}
            Command::Stats(args) => return admin::stats(args),
            Command::Queues(args) => return admin::queues(args),
        }
        let (server, tls) = connect()?;
        match cli.command {
            Command::Listen(mut args) => {
                args.access = Access {
                    token: cli.token,
                    namespace: cli.namespace,
                    tls,
                };
                listen::run(&server, args).await
            }
            Command::Send(mut args) => {
                args.access = Access {
                    token: cli.token,
                    namespace: cli.namespace,
                    tls,
                };
                send::run(&server, *args).await
            }
            Command::Stats(args) => admin::stats(&args),
            Command::Queues(args) => admin::queues(&args),
        }
    });
    // Do not wait for background tasks of the client that may still be running.
    runtime.shutdown_timeout(Duration::from_millis(100));

    match result {
        Ok(status) => ExitCode::from(status),
        Err(err) => {
            let status = err
                .downcast_ref::<Exit>()
                .map_or(EXIT_FAILURE, |e| e.status);
            eprintln!("error: {err:#}");
            ExitCode::from(status)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    /// Parses a command line, starting after the program name.
    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("broadcast").chain(args.iter().copied()))
    }

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_secs("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_secs("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_secs("0"), Ok(Duration::ZERO));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("soon").is_err());
        assert!(parse_secs("NaN").is_err());
        assert!(parse_secs("inf").is_err());
    }

    #[test]
    fn server_option() {
        let cli = parse(&["--server", "10.0.0.1:9000", "listen", "--name", "a"]).unwrap();
        assert_eq!(cli.server, "10.0.0.1:9000");
        // Global: accepted after the subcommand too.
        let cli = parse(&["send", "--all", "x", "--server", "h:1"]).unwrap();
        assert_eq!(cli.server, "h:1");
    }

    #[test]
    fn listen_arguments() {
        let cli = parse(&[
            "listen",
            "--name",
            "alice",
            "--channel",
            "a",
            "--channel",
            "b",
            "--count",
            "3",
            "--timeout",
            "1.5",
        ])
        .unwrap();
        let Command::Listen(args) = cli.command else {
            panic!("not listen")
        };
        assert_eq!(args.name, "alice");
        assert_eq!(args.channels, ["a", "b"]);
        assert_eq!(args.count, Some(3));
        assert_eq!(args.timeout, Some(Duration::from_millis(1500)));

        assert!(parse(&["listen"]).is_err(), "--name is required");
        assert!(parse(&["listen", "--name", "bad name"]).is_err());
        assert!(parse(&["listen", "--name", "$broker"]).is_err());
        assert!(parse(&["listen", "--name", "a", "--count", "0"]).is_err());
        assert!(parse(&["listen", "--name", "a", "--channel", ""]).is_err());
    }
}
