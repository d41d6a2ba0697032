//! `broadcast send`: send one message and print what the broker reports about it.

use std::io::{self, Read as _};
use std::time::Duration;

use anyhow::Context as _;
use broadcast_client::{
    Client, ConnectOptions, ErrorCode, Event, Events, OutgoingMessage, SendError,
};
use bytes::Bytes;
use clap::{ArgAction, Args};
use futures::{FutureExt as _, StreamExt as _};
use tokio::time::Instant;

use crate::{Exit, json, parse_channel, parse_client_name, parse_secs, print_line};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the broker may take to confirm that it processed the message.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing the connection may take before the command exits anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `send` waits for a persistent message to be accepted when `--wait` is not given.
const DEFAULT_ACCEPT_WAIT: Duration = Duration::from_secs(10);

/// Arguments of `broadcast send`.
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// Credential, namespace and TLS, from the global options.
    #[arg(skip)]
    pub(crate) access: crate::Access,
    /// Name to connect under (the broker makes one up when absent). A running client with the
    /// same name is disconnected by the broker.
    #[arg(long, value_name = "NAME", value_parser = parse_client_name)]
    pub(crate) name: Option<String>,

    /// Where the message goes: exactly one of the target options.
    #[command(flatten)]
    pub(crate) target: TargetArgs,

    /// Event name for the receiver to dispatch on (printed as "name" by `listen`).
    #[arg(long, value_name = "NAME")]
    pub(crate) event: Option<String>,

    /// Whether the broker keeps the message for recipients it cannot reach now.
    #[arg(
        long,
        value_name = "BOOL",
        action = ArgAction::Set,
        default_value_t = true,
        value_parser = clap::value_parser!(bool)
    )]
    pub(crate) persistent: bool,

    /// How long the message may wait for a recipient, in seconds (fractions allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub(crate) ttl: Option<Duration>,

    /// Message id to use instead of a generated one; notices name it.
    #[arg(long, value_name = "ID", value_parser = parse_id)]
    pub(crate) id: Option<String>,

    /// Seconds to keep listening for notices about the message (a delivery failure, an expiry
    /// of its time to live). Without it, `send` returns as soon as the outcome is known: at
    /// once for a non-persistent message, when the broker accepts a persistent one (at most
    /// 10 s).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub(crate) wait: Option<Duration>,

    /// The payload; `-` reads it from stdin as raw bytes.
    #[arg(value_name = "DATA", allow_hyphen_values = true)]
    pub(crate) data: String,
}

/// The target options, of which exactly one must be given.
#[derive(Debug, Args)]
#[group(id = "target", required = true, multiple = false)]
pub(crate) struct TargetArgs {
    /// Send to one client, by name.
    #[arg(long, value_name = "CLIENT", value_parser = parse_client_name)]
    pub(crate) to: Option<String>,

    /// Send to each of several clients, by name, separated by commas.
    #[arg(
        long,
        value_name = "CLIENTS",
        value_delimiter = ',',
        value_parser = parse_client_name
    )]
    pub(crate) group: Option<Vec<String>>,

    /// Send to every subscriber of a channel (except this sender).
    #[arg(long, value_name = "CHANNEL", value_parser = parse_channel)]
    pub(crate) channel: Option<String>,

    /// Send to every subscriber of any of several channels, separated by commas; each
    /// subscriber gets the message once.
    #[arg(
        long,
        value_name = "CHANNELS",
        value_delimiter = ',',
        value_parser = parse_channel
    )]
    pub(crate) channels: Option<Vec<String>>,

    /// Send to one client as a subscriber of a channel, given as CLIENT:CHANNEL (split at the
    /// first colon); fails when the client is not subscribed to it.
    #[arg(long, value_name = "CLIENT:CHANNEL", value_parser = parse_client_in_channel)]
    pub(crate) client_in_channel: Option<ClientInChannel>,

    /// Send to every connected client (except this sender).
    #[arg(long)]
    pub(crate) all: bool,
}

/// The value of `--client-in-channel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientInChannel {
    /// The client.
    pub(crate) client: String,
    /// The channel it must be subscribed to.
    pub(crate) channel: String,
}

/// Parses `CLIENT:CHANNEL`, splitting at the first colon.
fn parse_client_in_channel(text: &str) -> Result<ClientInChannel, String> {
    let Some((client, channel)) = text.split_once(':') else {
        return Err(format!(
            "expected CLIENT:CHANNEL, for example bob:jobs, but {text:?} has no colon"
        ));
    };
    Ok(ClientInChannel {
        client: parse_client_name(client)?,
        channel: parse_channel(channel)?,
    })
}

/// Checks a message id given on the command line.
fn parse_id(text: &str) -> Result<String, String> {
    broadcast_protocol::validate_id(text).map_err(|e| e.to_string())?;
    Ok(text.to_owned())
}

impl TargetArgs {
    /// Makes the message for the chosen target.
    fn message(&self, data: Bytes) -> OutgoingMessage {
        if let Some(client) = &self.to {
            OutgoingMessage::to_client(client.clone(), data)
        } else if let Some(clients) = &self.group {
            OutgoingMessage::to_group(clients.iter().cloned(), data)
        } else if let Some(channel) = &self.channel {
            OutgoingMessage::to_channel(channel.clone(), data)
        } else if let Some(channels) = &self.channels {
            OutgoingMessage::to_channels(channels.iter().cloned(), data)
        } else if let Some(target) = &self.client_in_channel {
            OutgoingMessage::to_client_in_channel(
                target.client.clone(),
                target.channel.clone(),
                data,
            )
        } else {
            // The argument group requires exactly one target, so this is `--all`.
            debug_assert!(self.all);
            OutgoingMessage::to_all(data)
        }
    }
}

/// What has been printed about the message so far.
#[derive(Debug)]
struct Report {
    /// The message id.
    id: String,
    /// At least one line was printed.
    printed: bool,
    /// At least one `delivery_failed` or `error` line was printed.
    failed: bool,
    /// The broker refused the message outright: nothing more will come about it.
    refused: bool,
    /// The broker accepted the message.
    accepted: bool,
    /// The connection closed or was lost.
    disconnected: bool,
    /// The broker refused the message as forbidden to this identity.
    forbidden: bool,
}

impl Report {
    /// A report about the message with this id.
    fn new(id: String) -> Self {
        Report {
            id,
            printed: false,
            failed: false,
            refused: false,
            accepted: false,
            disconnected: false,
            forbidden: false,
        }
    }

    /// Handles one client event: prints notices about this message on stdout and connection
    /// events on stderr.
    fn handle(&mut self, event: &Event) -> io::Result<()> {
        let about_this = match event {
            Event::DeliveryFailed { id, .. } | Event::Accepted { id } => *id == self.id,
            Event::ServerError { id, .. } => id.as_deref() == Some(&self.id),
            Event::Disconnected { reason } => {
                eprintln!("disconnected: {reason}");
                self.disconnected = true;
                false
            }
            Event::Closed => {
                self.disconnected = true;
                false
            }
            Event::Lagged { missed } => {
                eprintln!("warning: missed {missed} event(s) about the message");
                false
            }
            Event::Connected { .. } | Event::Reconnecting { .. } | Event::Unconfirmed { .. } => {
                false
            }
        };
        if !about_this {
            if let Event::ServerError { code, message, .. } = event {
                eprintln!("broker error ({}): {message}", json::code_name(*code));
            }
            return Ok(());
        }
        match event {
            Event::Accepted { .. } => self.accepted = true,
            Event::ServerError { code, .. } => {
                self.failed = true;
                self.refused = true;
                self.forbidden |= *code == ErrorCode::Forbidden;
            }
            _ => self.failed = true,
        }
        if let Some(line) = json::notice_line(event) {
            print_line(&line)?;
            self.printed = true;
        }
        Ok(())
    }

    /// Handles every event already waiting, without waiting for more.
    fn drain(&mut self, events: &mut Events) -> io::Result<()> {
        while let Some(Some(event)) = events.next().now_or_never() {
            self.handle(&event)?;
        }
        Ok(())
    }

    /// Whether the command is done waiting for a persistent message's acceptance.
    fn settled(&self) -> bool {
        self.accepted || self.refused || self.disconnected
    }
}

/// Reads the payload: DATA itself, or stdin when DATA is `-`.
fn read_data(data: String) -> anyhow::Result<Bytes> {
    if data == "-" {
        let mut buffer = Vec::new();
        io::stdin()
            .lock()
            .read_to_end(&mut buffer)
            .context("cannot read the payload from stdin")?;
        Ok(Bytes::from(buffer))
    } else {
        Ok(Bytes::from(data))
    }
}

/// Runs `broadcast send` against the broker at `server`; returns the exit status.
pub(crate) async fn run(server: &str, args: SendArgs) -> anyhow::Result<u8> {
    let data = read_data(args.data)?;
    let mut message = args.target.message(data).persistent(args.persistent);
    if let Some(event) = args.event {
        message = message.event(event);
    }
    if let Some(ttl) = args.ttl {
        message = message.ttl(ttl);
    }
    if let Some(id) = args.id {
        message = message.id(id);
    }

    // One attempt to connect, so that a missing broker fails fast; one more should the
    // connection drop while the message is in flight.
    let mut options = ConnectOptions::new()
        .max_reconnect_attempts(Some(1))
        .reconnect_delay(Duration::from_millis(100), Duration::from_millis(500))
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(name) = args.name {
        options = options.name(name);
    }
    options = args.access.options(options);
    let client = options
        .connect(server)
        .await
        .map_err(|err| crate::connect_failed(server, &err))?;
    // Subscribe to events before sending so that no notice about the message is missed.
    let mut events = client.events();

    let result = exchange(
        &client,
        &mut events,
        message,
        args.persistent,
        args.wait,
        server,
    )
    .await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, client.close()).await;
    let report = match result {
        Ok(report) => report,
        // Stdout was closed: nobody reads the result any more.
        Err(err) if is_broken_pipe(&err) => return Ok(0),
        Err(err) => return Err(err),
    };

    if !report.printed && print_line(&json::sent_line(&report.id)).is_err() {
        return Ok(0);
    }
    Ok(if report.forbidden {
        crate::EXIT_FORBIDDEN
    } else if report.failed {
        crate::EXIT_FAILURE
    } else {
        0
    })
}

/// Whether an error is a write to a closed stdout.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// Sends the message, waits until the broker has processed it and, for a persistent message,
/// until it is accepted, then (with `wait`) until `wait` has passed, printing every notice
/// about it on the way.
async fn exchange(
    client: &Client,
    events: &mut Events,
    message: OutgoingMessage,
    persistent: bool,
    wait: Option<Duration>,
    server: &str,
) -> anyhow::Result<Report> {
    let mut report = Report::new(message.message_id().to_owned());
    let code = match client.send(message).await {
        Ok(id) => {
            report.id = id;
            None
        }
        Err(SendError::Closed) => {
            return Err(Exit::unreachable(format!(
                "the connection to the broker at {server} closed before the message was sent"
            ))
            .into());
        }
        // The client checks the message as the broker would; report its refusal as the
        // broker's would be.
        Err(err @ SendError::TooLarge { .. }) => Some((ErrorCode::PayloadTooLarge, err)),
        Err(err @ SendError::InvalidName(_)) => Some((ErrorCode::InvalidName, err)),
        Err(err @ SendError::InvalidTarget(_)) => Some((ErrorCode::InvalidTarget, err)),
        Err(err @ SendError::BufferFull) => Some((ErrorCode::LimitReached, err)),
        Err(err @ SendError::Forbidden(_)) => Some((ErrorCode::Forbidden, err)),
    };
    if let Some((code, err)) = code {
        print_line(&json::error_line(code, &err.to_string(), Some(&report.id)))?;
        report.printed = true;
        report.failed = true;
        report.forbidden = code == ErrorCode::Forbidden;
        return Ok(report);
    }

    // Flush, handling events meanwhile so that none is dropped for lack of room.
    let flush = tokio::time::timeout(FLUSH_TIMEOUT, client.flush());
    tokio::pin!(flush);
    let mut events_open = true;
    let flushed = loop {
        tokio::select! {
            biased;
            event = events.next(), if events_open => match event {
                Some(event) => report.handle(&event)?,
                None => {
                    events_open = false;
                    report.disconnected = true;
                }
            },
            result = &mut flush => break result,
        }
    };
    match flushed {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            return Err(Exit::unreachable(format!(
                "the connection to the broker at {server} failed before it confirmed the \
                 message: {err}"
            ))
            .into());
        }
        Err(_) => {
            return Err(Exit::unreachable(format!(
                "the broker at {server} did not confirm the message within {}s",
                FLUSH_TIMEOUT.as_secs()
            ))
            .into());
        }
    }
    // Notices caused by the message arrive before the flush completes.
    report.drain(events)?;

    let deadline = Instant::now() + wait.unwrap_or(DEFAULT_ACCEPT_WAIT);
    if persistent && !report.settled() {
        while !report.settled() {
            tokio::select! {
                event = events.next() => match event {
                    Some(event) => report.handle(&event)?,
                    None => report.disconnected = true,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        if report.disconnected && !report.accepted {
            eprintln!("warning: the connection closed before the broker accepted the message");
        }
    }
    // With --wait, every notice that arrives within it is printed, also after acceptance.
    if wait.is_some() {
        while !report.disconnected {
            tokio::select! {
                event = events.next() => match event {
                    Some(event) => report.handle(&event)?,
                    None => report.disconnected = true,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser as _;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<SendArgs, clap::Error> {
        let cli = Cli::try_parse_from(
            ["broadcast", "send"]
                .into_iter()
                .chain(args.iter().copied()),
        )?;
        match cli.command {
            Command::Send(args) => Ok(*args),
            _ => panic!("not send"),
        }
    }

    #[test]
    fn client_in_channel_splits_at_the_first_colon() {
        let args = parse(&["--client-in-channel", "bob:jobs", "hi"]).unwrap();
        assert_eq!(
            args.target.client_in_channel,
            Some(ClientInChannel {
                client: "bob".to_owned(),
                channel: "jobs".to_owned()
            })
        );
        assert_eq!(
            parse_client_in_channel("bob:jobs:high"),
            Ok(ClientInChannel {
                client: "bob".to_owned(),
                channel: "jobs:high".to_owned()
            })
        );
    }

    #[test]
    fn client_in_channel_without_colon_is_refused() {
        let err = parse_client_in_channel("bobjobs").unwrap_err();
        assert!(err.contains("CLIENT:CHANNEL"), "{err}");
        assert!(err.contains("no colon"), "{err}");
        let err = parse(&["--client-in-channel", "bobjobs", "hi"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert!(err.to_string().contains("no colon"), "{err}");
        assert!(parse_client_in_channel(":jobs").is_err());
        assert!(parse_client_in_channel("bob:").is_err());
    }

    #[test]
    fn exactly_one_target_is_required() {
        let err = parse(&["hi"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        let err = parse(&["--to", "bob", "--all", "hi"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        let err = parse(&["--channel", "a", "--channels", "b,c", "hi"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
    }

    #[test]
    fn targets() {
        let args = parse(&["--to", "bob", "hi"]).unwrap();
        assert_eq!(args.target.to.as_deref(), Some("bob"));
        assert_eq!(args.data, "hi");

        let args = parse(&["--group", "alice,bob", "hi"]).unwrap();
        assert_eq!(args.target.group, Some(vec!["alice".into(), "bob".into()]));

        let args = parse(&["--channels", "a,b", "hi"]).unwrap();
        assert_eq!(args.target.channels, Some(vec!["a".into(), "b".into()]));

        let args = parse(&["--all", "hi"]).unwrap();
        assert!(args.target.all);

        assert!(parse(&["--to", "bad name", "hi"]).is_err());
        assert!(parse(&["--group", "alice,,bob", "hi"]).is_err());
    }

    #[test]
    fn defaults_and_options() {
        let args = parse(&["--to", "bob", "hi"]).unwrap();
        assert!(args.persistent);
        assert_eq!(args.wait, None);
        assert_eq!(args.ttl, None);
        assert_eq!(args.name, None);

        let args = parse(&[
            "--to",
            "bob",
            "--persistent",
            "false",
            "--ttl",
            "30",
            "--id",
            "m-1",
            "--event",
            "greet",
            "--wait",
            "0.5",
            "--name",
            "alice",
            "hi",
        ])
        .unwrap();
        assert!(!args.persistent);
        assert_eq!(args.ttl, Some(Duration::from_secs(30)));
        assert_eq!(args.id.as_deref(), Some("m-1"));
        assert_eq!(args.event.as_deref(), Some("greet"));
        assert_eq!(args.wait, Some(Duration::from_millis(500)));
        assert_eq!(args.name.as_deref(), Some("alice"));

        assert!(parse(&["--to", "bob", "--persistent", "maybe", "hi"]).is_err());
        assert!(parse(&["--to", "bob", "--id", "has space", "hi"]).is_err());
    }

    #[test]
    fn data_may_be_stdin_or_start_with_a_hyphen() {
        assert_eq!(parse(&["--all", "-"]).unwrap().data, "-");
        assert_eq!(parse(&["--all", "-5"]).unwrap().data, "-5");
        assert!(parse(&["--all"]).is_err(), "DATA is required");
    }
}
