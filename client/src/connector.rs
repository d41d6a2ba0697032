//! Getting a connection: connect and handshake within the connect timeout ([`establish`]),
//! retry the first connection ([`connect_first`]), and reconnect with backoff once the client
//! runs ([`Connector`]).

use crate::backoff::Backoff;
use crate::client::Shared;
use crate::connection::{Connection, ReadHalf, WriteHalf, frame_kind};
use crate::inbound::{InboundCodec, Incoming};
use crate::{ConnectError, ConnectOptions, ErrorCode, Event};
use broadcast_protocol::{
    ClientFrame, CodecError, FrameCodec, Hello, MAX_FRAME_CAP, PROTOCOL_VERSION, ServerFrame,
};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{Instrument, Span, field};

/// Connects to `addr` and performs the handshake, all within the connect timeout.
pub(crate) async fn establish(
    addr: &str,
    options: &ConnectOptions,
    name: Option<&str>,
    token: Option<&str>,
) -> Result<Connection, ConnectError> {
    let span = tracing::info_span!("client_conn", name = field::Empty, addr = %addr);
    if let Some(name) = name {
        span.record("name", name);
    }
    let attempt = handshake(addr, options, name, token, span.clone()).instrument(span);
    match tokio::time::timeout(options.connect_timeout, attempt).await {
        Ok(res) => res,
        Err(_) => Err(ConnectError::Timeout),
    }
}

async fn handshake(
    addr: &str,
    options: &ConnectOptions,
    name: Option<&str>,
    token: Option<&str>,
    span: Span,
) -> Result<Connection, ConnectError> {
    let stream = TcpStream::connect(addr).await?;
    // Small frames (acks, pings, short messages) must not wait for Nagle's algorithm.
    stream.set_nodelay(true)?;
    let (read, write): (ReadHalf, WriteHalf) = match &options.tls {
        None => {
            let (read, write) = stream.into_split();
            (Box::new(read), Box::new(write))
        }
        Some(tls) => {
            let name = crate::tls::server_name(options.server_name.as_deref(), addr)?;
            let connector = tokio_rustls::TlsConnector::from(tls.clone());
            let stream = connector
                .connect(name, stream)
                .await
                .map_err(|e| ConnectError::Tls(format!("TLS handshake with {addr} failed: {e}")))?;
            let (read, write) = tokio::io::split(stream);
            (Box::new(read), Box::new(write))
        }
    };
    let mut reader = FramedRead::new(read, InboundCodec::new(options.max_frame));
    let mut writer = FramedWrite::new(write, FrameCodec::new(options.max_frame, options.max_frame));
    let hello = ClientFrame::Hello(Hello {
        version: PROTOCOL_VERSION,
        name: name.map(str::to_owned),
        token: token.map(str::to_owned),
        namespace: options.namespace.clone(),
        max_frame: options.max_frame,
        heartbeat_ms: options.heartbeat_ms(),
    });
    writer.send(&hello).await.map_err(codec_error)?;
    let welcome = match reader.next().await {
        None => {
            return Err(ConnectError::Protocol(
                "the broker closed the connection during the handshake".into(),
            ));
        }
        Some(Err(e)) | Some(Ok(Err(e))) => return Err(codec_error(e)),
        Some(Ok(Ok(Incoming::Frame(ServerFrame::Welcome(welcome))))) => welcome,
        Some(Ok(Ok(Incoming::Frame(ServerFrame::Error(e))))) => {
            return Err(ConnectError::Refused {
                code: e.code,
                message: e.message,
            });
        }
        Some(Ok(Ok(Incoming::Frame(other)))) => {
            return Err(ConnectError::Protocol(format!(
                "expected Welcome, got {}",
                frame_kind(&other)
            )));
        }
        Some(Ok(Ok(Incoming::Message(_)))) => {
            return Err(ConnectError::Protocol(
                "expected Welcome, got Deliver".into(),
            ));
        }
    };
    if welcome.version != PROTOCOL_VERSION {
        return Err(ConnectError::Protocol(format!(
            "the broker speaks protocol version {}, this client {PROTOCOL_VERSION}",
            welcome.version
        )));
    }
    writer
        .encoder_mut()
        .set_max_encode(welcome.max_frame.min(MAX_FRAME_CAP));
    span.record("name", welcome.name.as_str());
    tracing::debug!(server = %welcome.server, "handshake done");
    Ok(Connection {
        reader,
        writer,
        welcome,
        span,
    })
}

fn codec_error(e: CodecError) -> ConnectError {
    match e {
        CodecError::Io(e) => ConnectError::Io(e),
        // A TLS record (alert 0x15 or handshake 0x16, version 0x03 0x0N) read as a frame
        // header: the address is a TLS listener.
        CodecError::FrameTooLarge { len, .. }
            if matches!(len >> 24, 0x15 | 0x16) && (len >> 16) & 0xff == 0x03 =>
        {
            ConnectError::Protocol(
                "the broker speaks TLS on this address: connect with TLS (a tls:// address, \
                 ConnectOptions::tls)"
                    .into(),
            )
        }
        other => ConnectError::Protocol(other.to_string()),
    }
}

/// Makes the first connection: retries i/o failures and timeouts with backoff, honouring the
/// attempt limit; a refusal or protocol error is returned at once, as retrying cannot help.
pub(crate) async fn connect_first(
    addr: &str,
    options: &ConnectOptions,
) -> Result<Connection, ConnectError> {
    let mut backoff = Backoff::new(options.reconnect_initial, options.reconnect_max);
    let max = options.max_reconnect_attempts.map(|n| n.max(1));
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        let token = options.token.as_deref();
        match establish(addr, options, options.name.as_deref(), token).await {
            Ok(conn) => return Ok(conn),
            Err(e @ (ConnectError::Io(_) | ConnectError::Timeout)) => {
                if max.is_some_and(|max| attempt >= max) {
                    tracing::warn!(%addr, attempt, error = %e, "connection attempt failed; giving up");
                    return Err(if attempt == 1 {
                        e
                    } else {
                        ConnectError::AttemptsExhausted { attempts: attempt }
                    });
                }
                let delay = backoff.delay(attempt);
                tracing::warn!(%addr, attempt, error = %e, ?delay, "connection attempt failed");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reconnects a running client to its broker after a lost connection.
#[derive(Debug)]
pub(crate) struct Connector {
    addr: String,
    options: ConnectOptions,
    /// Kept from one lost connection to the next, so that its random delays keep varying.
    backoff: Backoff,
}

impl Connector {
    pub(crate) fn new(addr: String, options: ConnectOptions) -> Self {
        let backoff = Backoff::new(options.reconnect_initial, options.reconnect_max);
        Self {
            addr,
            options,
            backoff,
        }
    }

    /// The broker's address.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// Waits and tries again, under the client's `name`, until a connection succeeds or the
    /// attempts run out (`None`). Attempts are counted from one after each lost connection;
    /// [`Event::Reconnecting`] is raised before each.
    ///
    /// Cancel-safe: dropped between attempts or during one, it leaves nothing behind.
    ///
    /// With a token source ([`ConnectOptions::token_refresh`]), a credential that has expired
    /// (or was refused) is renewed before the next attempt; without one, a refused credential
    /// ends the attempts, as trying it again cannot help.
    pub(crate) async fn reconnect(&mut self, name: &str, shared: &Shared) -> Option<Connection> {
        let events = &shared.events;
        let mut refused = false;
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            if let Some(max) = self.options.max_reconnect_attempts {
                if attempt > max {
                    tracing::warn!(addr = %self.addr, attempts = max, "giving up reconnecting");
                    return None;
                }
            }
            let delay = self.backoff.delay(attempt);
            // No receiver is not an error: nobody is watching events.
            let _ = events.send(Event::Reconnecting { attempt, delay });
            tokio::time::sleep(delay).await;
            if let Some(refresh) = &self.options.token_refresh
                && (refused || shared.credential_expired())
            {
                match refresh().await {
                    Ok(token) => shared.set_token(token),
                    Err(error) => tracing::warn!(%error, "cannot renew the credential"),
                }
            }
            let token = shared.token();
            match establish(&self.addr, &self.options, Some(name), token.as_deref()).await {
                Ok(conn) => return Some(conn),
                Err(ConnectError::Refused {
                    code: code @ (ErrorCode::Unauthorized | ErrorCode::AuthExpired),
                    message,
                }) if self.options.token_refresh.is_none() => {
                    tracing::error!(?code, %message, "the broker refuses the credential; not reconnecting");
                    return None;
                }
                Err(e) => {
                    refused = matches!(e, ConnectError::Refused { .. });
                    tracing::warn!(addr = %self.addr, attempt, error = %e, "reconnect failed");
                }
            }
        }
    }
}
