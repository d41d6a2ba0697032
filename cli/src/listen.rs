//! `broadcast listen`: print every message a client receives.

use std::io::{self, IsTerminal as _};
use std::time::Duration;

use broadcast_client::{Client, ConnectOptions, ErrorCode, Event, Message, SubscribeError};
use clap::Args;
use futures::StreamExt as _;
use futures::stream::{self, LocalBoxStream};
use tokio::time::Instant;

use crate::{
    EXIT_INCOMPLETE, EXIT_INTERRUPTED, Exit, json, parse_channel, parse_client_name, parse_secs,
    print_line,
};

/// How many times in a row `listen` tries to reconnect before it gives up.
const RECONNECT_ATTEMPTS: u32 = 10;
/// How long connecting may take before `listen` says that it is waiting.
const PATIENCE: Duration = Duration::from_secs(1);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long closing the connection may take before the command exits anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Arguments of `broadcast listen`.
#[derive(Debug, Args)]
pub(crate) struct ListenArgs {
    /// Credential, namespace and TLS, from the global options.
    #[arg(skip)]
    pub(crate) access: crate::Access,
    /// Name to connect under; messages sent to this name are printed. A running client with
    /// the same name is disconnected by the broker.
    #[arg(long, value_name = "NAME", value_parser = parse_client_name)]
    pub(crate) name: String,

    /// Subscribe to CHANNEL and print its messages too (repeat for several channels).
    #[arg(long = "channel", value_name = "CHANNEL", value_parser = parse_channel)]
    pub(crate) channels: Vec<String>,

    /// Exit (status 0) after printing N messages; delivery-failure notices do not count.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,

    /// Exit after SECS seconds (fractions allowed). Status 0 without --count; status 2 when
    /// --count messages have not all arrived by then.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub(crate) timeout: Option<Duration>,
}

/// Why the listening loop stopped.
enum Stop {
    /// `--count` messages were printed.
    CountReached,
    /// `--timeout` elapsed.
    TimedOut,
    /// Stdout was closed (for example `| head -n 1` exited).
    StdoutClosed,
    /// Ctrl-C.
    Interrupted,
    /// The client gave up on the connection.
    ConnectionLost,
}

/// Runs `broadcast listen` against the broker at `server`; returns the exit status.
pub(crate) async fn run(server: &str, args: ListenArgs) -> anyhow::Result<u8> {
    let deadline = args.timeout.map(|t| Instant::now() + t);
    let setup = setup(server, &args);
    let (client, mut messages, mut events) = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, setup)
            .await
            .map_err(|_| {
                Exit::unreachable(format!(
                    "could not connect to the broker at {server} and subscribe within the \
                     --timeout"
                ))
            })??,
        None => setup.await?,
    };

    tracing::info!(name = %client.name(), channels = ?args.channels, "listening");
    if io::stderr().is_terminal() {
        let channels = if args.channels.is_empty() {
            String::new()
        } else {
            format!(" and channel(s) {}", args.channels.join(", "))
        };
        eprintln!(
            "listening as {:?} on {server}{channels}; press Ctrl-C to stop",
            client.name()
        );
    }

    let mut received: u64 = 0;
    let mut connection_lost = false;
    // The broker's last refusal of the credential, which then ends the connection for good.
    let mut refused: Option<ErrorCode> = None;
    let sleep = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let stop = loop {
        tokio::select! {
            biased;
            message = messages.next() => {
                let Some(message) = message else { break Stop::ConnectionLost };
                if print_line(&json::message_line(&message)).is_err() {
                    break Stop::StdoutClosed;
                }
                received += 1;
                if args.count.is_some_and(|count| received >= count) {
                    break Stop::CountReached;
                }
            }
            event = events.next() => {
                let Some(event) = event else { break Stop::ConnectionLost };
                if let Event::ServerError { code, message, id: None } = &event
                    && matches!(code, ErrorCode::Unauthorized | ErrorCode::AuthExpired)
                {
                    refused = Some(*code);
                    if print_line(&json::error_line(*code, message, None)).is_err() {
                        break Stop::StdoutClosed;
                    }
                }
                match report(&event, &mut connection_lost) {
                    Ok(true) => {}
                    Ok(false) => break Stop::ConnectionLost,
                    Err(_) => break Stop::StdoutClosed,
                }
            }
            () = &mut sleep => break Stop::TimedOut,
            _ = &mut ctrl_c => break Stop::Interrupted,
        }
    };

    let _ = tokio::time::timeout(CLOSE_TIMEOUT, client.close()).await;

    match stop {
        Stop::CountReached | Stop::StdoutClosed => Ok(0),
        Stop::TimedOut => match args.count {
            Some(count) => {
                eprintln!("error: received {received} of {count} message(s) before the timeout");
                Ok(EXIT_INCOMPLETE)
            }
            None => Ok(0),
        },
        Stop::Interrupted => Ok(EXIT_INTERRUPTED),
        Stop::ConnectionLost => match refused {
            Some(code) => Err(Exit {
                status: crate::EXIT_UNAUTHORIZED,
                message: format!(
                    "the broker at {server} no longer takes the credential ({})",
                    json::code_name(code)
                ),
            }
            .into()),
            None => Err(Exit::unreachable(format!(
                "the connection to the broker at {server} is closed for good"
            ))
            .into()),
        },
    }
}

/// Connects, subscribes to every channel (waiting for each subscription to be confirmed) and
/// returns the client with one stream of every message it receives and its event stream.
async fn setup(
    server: &str,
    args: &ListenArgs,
) -> anyhow::Result<(
    Client,
    LocalBoxStream<'static, Message>,
    broadcast_client::Events,
)> {
    let connect = args
        .access
        .options(ConnectOptions::new())
        .name(args.name.clone())
        .reconnect_delay(Duration::from_millis(200), Duration::from_secs(3))
        .max_reconnect_attempts(Some(RECONNECT_ATTEMPTS))
        .connect_timeout(CONNECT_TIMEOUT)
        .connect(server);
    tokio::pin!(connect);
    // The first connection is retried too; say so rather than wait in silence.
    let connected = tokio::select! {
        result = &mut connect => result,
        () = tokio::time::sleep(PATIENCE) => {
            eprintln!("waiting for the broker at {server}...");
            connect.await
        }
    };
    let client = connected.map_err(|err| crate::connect_failed(server, &err))?;
    let events = client.events();

    let mut streams: Vec<LocalBoxStream<'static, Message>> = Vec::new();
    if let Some(direct) = client.direct_messages() {
        streams.push(direct.boxed_local());
    }
    for channel in &args.channels {
        let subscription = match client.subscribe(channel.clone()).await {
            Ok(subscription) => subscription,
            Err(SubscribeError::Closed) => {
                return Err(Exit::unreachable(format!(
                    "the connection to the broker at {server} closed while subscribing to \
                     channel {channel:?}"
                ))
                .into());
            }
            Err(SubscribeError::Refused {
                code: code @ ErrorCode::Forbidden,
                message,
            }) => {
                let _ = print_line(&json::error_line(code, &message, Some(channel)));
                return Err(Exit {
                    status: crate::EXIT_FORBIDDEN,
                    message: format!("cannot subscribe to {channel:?}: {message}"),
                }
                .into());
            }
            Err(err) => {
                return Err(
                    anyhow::Error::new(err).context(format!("cannot subscribe to {channel:?}"))
                );
            }
        };
        streams.push(subscription.boxed_local());
    }
    Ok((client, stream::select_all(streams).boxed_local(), events))
}

/// Handles one client event: prints delivery failures on stdout, connection events on stderr.
/// Returns `Ok(false)` when the client has given up on the connection, and an error when
/// stdout is closed.
fn report(event: &Event, connection_lost: &mut bool) -> io::Result<bool> {
    match event {
        Event::DeliveryFailed { .. } => {
            if let Some(line) = json::notice_line(event) {
                print_line(&line)?;
            }
        }
        Event::Connected { name } => {
            // The first connection is reported by `run` itself (when stderr is a terminal).
            if std::mem::take(connection_lost) {
                eprintln!("reconnected as {name:?}");
            }
        }
        Event::Disconnected { reason } => {
            *connection_lost = true;
            eprintln!("disconnected: {reason}");
        }
        Event::Reconnecting { attempt, delay } => eprintln!(
            "reconnecting in {:.1}s (attempt {attempt} of {RECONNECT_ATTEMPTS})",
            delay.as_secs_f64()
        ),
        Event::ServerError { code, message, id } => match id {
            Some(id) => eprintln!(
                "broker error ({}) about message {id}: {message}",
                json::code_name(*code)
            ),
            None => eprintln!("broker error ({}): {message}", json::code_name(*code)),
        },
        Event::Lagged { missed } => {
            eprintln!("warning: reading too slowly, missed {missed} event(s)");
        }
        Event::Closed => return Ok(false),
        Event::Accepted { .. } | Event::Unconfirmed { .. } => {}
    }
    Ok(true)
}
