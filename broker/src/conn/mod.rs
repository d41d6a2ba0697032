//! The connection side of the shell: one task per connection reads the handshake, then every
//! frame the client sends, and gives each to the engine; its writer, drainer and outbound
//! queue carry out what the core decides for it.
//!
//! - `listener`: the accept loop and the connection limit.
//! - `outbound`: each connection's bounded outbound queue (the core's `Outlet`).
//! - `writer`: frames out, in batches; at close, what is left, then a farewell.
//! - `drain`: each connection's drainer of its queue in the store, and its late deliveries.

mod access;
mod addresses;
mod drain;
mod failures;
pub(crate) mod listener;
pub(crate) mod oneshot;
mod outbound;
mod reader;
mod tally;
mod throttle;
mod writer;

pub(crate) use outbound::Outbound;

use crate::auth::Credentials;
use crate::core::Refusal;
use crate::namespace::{self, shown};
use access::Access;
use tally::{Held, Tally};

use crate::config::Config;
use crate::core::{Liveness, NewConfirm, Silence};
use crate::encode;
use crate::engine::Engine;
use crate::metrics;
use crate::tls::TlsConfig;
use broadcast_protocol::{
    ClientFrame, CodecError, ErrorCode, FailureReason, Hello, MIN_FRAME, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION, Publish, ServerFrame, Welcome,
};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use outbound::{OutFrame, PushError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use writer::Writer;

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) engine: Arc<Engine>,
    pub(crate) config: Config,
    pub(crate) shutdown: CancellationToken,
    /// Bytes of incomplete frames, across connections.
    pub(crate) partial: Arc<PartialFrames>,
    /// The credentials connections must present (`None`: none), replaced on reload.
    pub(crate) credentials: Arc<tokio::sync::watch::Sender<Option<Arc<Credentials>>>>,
    /// The bounds on connections, shared by every listener.
    pub(crate) admission: Admission,
}

/// The bounds on connections: in all, and per source address.
#[derive(Debug)]
pub(crate) struct Admission {
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) addresses: Arc<addresses::Addresses>,
    pub(crate) failures: failures::Failures,
    /// Connections that have not finished their handshake.
    handshakes: Arc<Semaphore>,
    /// The same, per source address (as the per-address limits count addresses).
    handshakes_by_address: Tally<std::net::IpAddr>,
    /// Connections open per identity (in its namespace), when they are limited.
    identities: Tally<String>,
}

impl Admission {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(config.max_connections)),
            addresses: Arc::new(addresses::Addresses::new(
                config.max_connections_per_address,
                config.connections_per_address_per_sec,
            )),
            failures: failures::Failures::new(
                config.max_auth_failures_per_address,
                config.auth_failure_block,
            ),
            handshakes: Arc::new(Semaphore::new(config.max_pending_handshakes)),
            handshakes_by_address: Tally::default(),
            identities: Tally::default(),
        }
    }

    /// Counts a connection from `ip` in its handshake, unless its address or the broker
    /// has its limit of those (`max_per_address`); the reason when refused.
    pub(crate) fn handshake(
        &self,
        ip: std::net::IpAddr,
        max_per_address: usize,
    ) -> Result<Handshaking, &'static str> {
        let held = self
            .handshakes_by_address
            .take(addresses::key(ip), max_per_address)
            .ok_or("this address has its limit of connections in their handshake")?;
        let permit = self
            .handshakes
            .clone()
            .try_acquire_owned()
            .map_err(|_| "the broker has its limit of connections in their handshake")?;
        Ok(Handshaking(permit, held))
    }
}

/// A connection's place under the limits of connections open (in all and per address), given
/// back when dropped.
pub(crate) struct Slot(
    #[allow(dead_code)] tokio::sync::OwnedSemaphorePermit,
    #[allow(dead_code)] addresses::Permit,
);

/// A connection in its handshake, counted (in all and for its address) until dropped.
pub(crate) struct Handshaking(
    #[allow(dead_code)] tokio::sync::OwnedSemaphorePermit,
    #[allow(dead_code)] Held<std::net::IpAddr>,
);

/// Counts a connection of the access's identity, or refuses it over the limit.
fn identity_slot(
    access: &Access,
    ctx: &Context,
) -> Result<Option<Held<String>>, (ErrorCode, String)> {
    let max = ctx.config.max_connections_per_identity;
    let Some(identity) = access.identity().filter(|_| max > 0) else {
        return Ok(None);
    };
    let key = namespace::scoped(access.namespace(), identity);
    match ctx.admission.identities.take(key, max) {
        Some(held) => Ok(Some(held)),
        None => Err((
            ErrorCode::LimitReached,
            format!("{identity} has its limit of {max} connections open"),
        )),
    }
}

/// The reading half of a connection, plaintext or TLS.
pub(crate) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a connection, plaintext or TLS.
pub(crate) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Opens an accepted connection: splits a plaintext one; performs the TLS handshake of one
/// accepted on the TLS listener, within the handshake timeout (`None`: it failed, and why
/// is logged).
async fn open(
    stream: TcpStream,
    tls: Option<Arc<TlsConfig>>,
    ctx: &Context,
) -> Option<(ReadHalf, WriteHalf, Vec<String>)> {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let Some(tls) = tls else {
        let (rd, wr) = stream.into_split();
        return Some((Box::new(rd), Box::new(wr), Vec::new()));
    };
    let accept = tls.acceptor().accept(stream);
    match tokio::time::timeout(ctx.config.handshake_timeout, accept).await {
        Ok(Ok(stream)) => {
            let names = crate::tls::peer_names(stream.get_ref().1);
            let (rd, wr) = tokio::io::split(stream);
            Some((Box::new(rd), Box::new(wr), names))
        }
        Ok(Err(e)) => {
            tracing::info!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!("no TLS handshake within the handshake timeout");
            None
        }
    }
}

pub(crate) use reader::PartialFrames;
use reader::{FrameReader as Reader, ReadError, ReadItem};
use throttle::Throttle;

/// Serves one accepted connection until it closes.
pub(crate) async fn serve(
    stream: TcpStream,
    tls: Option<Arc<TlsConfig>>,
    peer: SocketAddr,
    ctx: Arc<Context>,
    handshaking: Handshaking,
) {
    let conn_id = ctx.engine.next_conn_id();
    let span = conn_span(peer, conn_id);
    async move {
        let Some((rd, wr, peer_names)) = open(stream, tls, &ctx).await else {
            tls_failed(peer, &ctx);
            return;
        };
        session(rd, wr, peer_names, peer, conn_id, ctx, handshaking).await;
    }
    .instrument(span)
    .await
}

/// The span of a connection's logs.
pub(crate) fn conn_span(peer: SocketAddr, conn_id: u64) -> tracing::Span {
    tracing::info_span!("conn", %peer, conn_id, client = tracing::field::Empty, namespace = tracing::field::Empty, identity = tracing::field::Empty)
}

/// Counts a failed TLS handshake, against its address too, as a failed authentication.
pub(crate) fn tls_failed(peer: SocketAddr, ctx: &Context) {
    metrics::add(&ctx.engine.metrics.refused[metrics::REFUSED_TLS], 1);
    let failures = &ctx.admission.failures;
    failures.failed(peer.ip(), std::time::Instant::now());
}

/// Serves a connection whose transport is open (a TCP stream, a TLS session, a WebSocket):
/// the handshake, then its frames until it closes. `peer_names` are the names of a verified
/// client certificate.
pub(crate) async fn session(
    rd: ReadHalf,
    mut wr: WriteHalf,
    peer_names: Vec<String>,
    peer: SocketAddr,
    conn_id: u64,
    ctx: Arc<Context>,
    handshaking: Handshaking,
) {
    let metrics = ctx.engine.metrics.clone();
    let max_frame = ctx.config.max_frame();
    // Declared before the reader, so dropped after it: the reader's last counts are in.
    let open = Open::new(&metrics, conn_id);
    let mut reader = Reader::new(rd, max_frame, ctx.partial.clone(), open.traffic.clone());
    // Each refusal with the label it is counted under.
    let admitted = handshake(&mut reader, &ctx)
        .await
        .and_then(|hello| {
            Access::admit(&hello, ctx.credentials.subscribe(), peer_names).map(|a| (hello, a))
        })
        .map_err(|refusal| (metrics::refusal(refusal.0), refusal))
        .and_then(|(hello, (name, access))| {
            let slot = identity_slot(&access, &ctx)
                .map_err(|refusal| (metrics::REFUSED_PER_IDENTITY, refusal))?;
            Ok((hello, (name, access), slot))
        });
    // Handshake over, whatever its outcome.
    drop(handshaking);
    let (hello, (name, access), _slot) = match admitted {
        Ok(admitted) => admitted,
        Err((label, refusal)) => {
            metrics::add(&metrics.refused[label], 1);
            tracing::info!(reason = %refusal.1, "handshake refused");
            if matches!(
                refusal.0,
                ErrorCode::Unauthorized | ErrorCode::BadHandshake | ErrorCode::Timeout
            ) {
                // A failed handshake counts against its address; each is answered later
                // than the one before.
                let wait = ctx
                    .admission
                    .failures
                    .failed(peer.ip(), std::time::Instant::now());
                tokio::time::sleep(wait).await;
            }
            let refused = encode::error(refusal.0, refusal.1, None);
            if wr.write_all(&refused).await.is_ok() {
                open.traffic.written.add(1, refused.len() as u64);
            }
            let _ = wr.shutdown().await;
            return;
        }
    };
    let traffic = open.traffic.clone();
    run(hello, name, access, reader, wr, conn_id, peer, traffic, ctx).await;
}

/// Counts a connection as open while it lives, with its traffic; adds the traffic to the
/// totals when it closes.
struct Open<'a> {
    metrics: &'a metrics::Metrics,
    conn_id: u64,
    traffic: Arc<metrics::Traffic>,
}

impl<'a> Open<'a> {
    fn new(metrics: &'a metrics::Metrics, conn_id: u64) -> Self {
        metrics::add(&metrics.connections, 1);
        metrics::add(&metrics.connections_open, 1);
        let traffic = metrics.open_traffic(conn_id);
        Self {
            metrics,
            conn_id,
            traffic,
        }
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.metrics
            .connections_open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.metrics.close_traffic(self.conn_id);
    }
}

/// Refuses a connection that is over a connection limit, with an error frame, or on the HTTP
/// listener a `429 Too Many Requests` (after the TLS handshake on a TLS listener).
pub(crate) async fn refuse(
    stream: TcpStream,
    tls: Option<Arc<TlsConfig>>,
    kind: listener::Kind,
    ctx: &Context,
    message: &str,
) {
    let Some((_rd, mut wr, _)) = open(stream, tls, ctx).await else {
        return;
    };
    let answer = match kind {
        listener::Kind::Broadcast => encode::error(ErrorCode::LimitReached, message, None),
        listener::Kind::Http => Bytes::from(format!(
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{message}\n",
            message.len() + 1
        )),
    };
    let _ = wr.write_all(&answer).await;
    let _ = wr.shutdown().await;
}

async fn handshake(reader: &mut Reader, ctx: &Context) -> Result<Hello, (ErrorCode, String)> {
    let first = match tokio::time::timeout(ctx.config.handshake_timeout, reader.next()).await {
        Err(_) => {
            return Err((
                ErrorCode::Timeout,
                "no Hello within the handshake timeout".into(),
            ));
        }
        Ok(None) => return Err((ErrorCode::BadHandshake, "closed before Hello".into())),
        Ok(Some(r)) => r,
    };
    let frame = match first {
        Ok(Ok(frame)) => frame,
        Ok(Err(CodecError::UnsupportedVersion { got, supported }))
        | Err(ReadError::Codec(CodecError::UnsupportedVersion { got, supported })) => {
            return Err((
                ErrorCode::UnsupportedVersion,
                format!("protocol version {got} is not supported; this broker speaks {supported}"),
            ));
        }
        Ok(Err(e)) | Err(ReadError::Codec(e @ CodecError::Decode(_))) => {
            return Err((
                ErrorCode::BadHandshake,
                format!("first frame is not a Hello: {e}"),
            ));
        }
        Err(ReadError::Codec(e @ CodecError::FrameTooLarge { .. })) => {
            return Err((ErrorCode::FrameTooLarge, e.to_string()));
        }
        Err(ReadError::Codec(e)) => return Err((ErrorCode::BadHandshake, e.to_string())),
        Err(ReadError::Starved(wait)) => return Err((ErrorCode::LimitReached, starved(wait))),
    };
    let ClientFrame::Hello(hello) = frame else {
        return Err((
            ErrorCode::BadHandshake,
            "the first frame must be a Hello".into(),
        ));
    };
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&hello.version) {
        return Err((
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {} is not supported; this broker speaks \
                 {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}",
                hello.version
            ),
        ));
    }
    if hello.version < 2 && (hello.token.is_some() || hello.namespace.is_some()) {
        return Err((
            ErrorCode::BadHandshake,
            "a token or a namespace needs protocol version 2".into(),
        ));
    }
    if hello.max_frame < MIN_FRAME {
        return Err((
            ErrorCode::BadHandshake,
            format!("max_frame must be at least {MIN_FRAME} bytes"),
        ));
    }
    Ok(hello)
}

#[allow(clippy::too_many_arguments)]
async fn run(
    hello: Hello,
    name: Arc<str>,
    mut access: Access,
    mut reader: Reader,
    wr: WriteHalf,
    conn_id: u64,
    peer: SocketAddr,
    traffic: Arc<metrics::Traffic>,
    ctx: Arc<Context>,
) {
    tracing::Span::current().record("client", shown(&name));
    if let Some(ns) = access.namespace() {
        tracing::Span::current().record("namespace", ns);
    }
    if let Some(identity) = access.identity() {
        tracing::Span::current().record("identity", identity);
    }
    let cfg = &ctx.config;
    let close = ctx.shutdown.child_token();
    let (out, rx) = Outbound::new(
        conn_id,
        cfg.outbound_frames,
        cfg.outbound_bytes,
        hello.max_frame as usize,
        close.clone(),
    );
    let welcome = encode::frame(&ServerFrame::Welcome(Welcome {
        version: access.version(),
        name: shown(&name).to_owned(),
        server: format!("broadcast-broker {}", env!("CARGO_PKG_VERSION")),
        max_frame: cfg.max_frame(),
        max_payload: cfg.max_payload,
        heartbeat_ms: u32::try_from(cfg.heartbeat.as_millis()).unwrap_or(u32::MAX),
        identity: access.identity().map(str::to_owned),
        namespace: access.namespace().map(str::to_owned),
        expires_ms: access.expires_ms(),
    }));
    // The welcome is queued before the connection is registered, so it precedes every
    // delivery.
    if out.try_push(OutFrame::control(welcome)).is_err() {
        return;
    }
    // Subscriptions the name kept that this identity may not have are dropped first.
    let keep = |channel: &str| access.may_subscribe(shown(channel));
    let registered = ctx
        .engine
        .register(name.clone(), out.clone(), &keep, access.channel_filter())
        .await;
    let Ok((old, dropped)) = registered else {
        return;
    };

    if let Some(old) = old {
        tracing::info!("name taken over from an older connection");
        old.close_with(Some(encode::error(
            ErrorCode::Replaced,
            format!("another connection registered as {}", shown(&name)),
            None,
        )));
    }
    tracing::info!("connected");
    ctx.engine.conn_opened(conn_id, peer, out.clone());
    let writer = Writer {
        rx,
        io: wr,
        out: out.clone(),
        engine: ctx.engine.clone(),
        name: name.clone(),
        heartbeat: cfg.heartbeat,
        drain_timeout: cfg.drain_timeout,
        shutdown: ctx.shutdown.clone(),
        traffic,
    };
    let writer = tokio::spawn(writer.run().instrument(tracing::Span::current()));
    let drainer = tokio::spawn(
        drain::run(
            ctx.engine.clone(),
            name.clone(),
            conn_id,
            out.shared.wake.clone(),
            close.clone(),
        )
        .instrument(tracing::Span::current()),
    );
    // Told once the writer runs: there may be more than the outbound queue holds.
    let told = unsubscribed(&out, dropped).await;
    let liveness = Liveness::new(
        cfg.heartbeat,
        Duration::from_millis(u64::from(hello.heartbeat_ms)),
    );
    let farewell = if told {
        read_loop(&mut reader, &out, &name, &ctx, liveness, &mut access).await
    } else {
        None
    };
    ctx.engine.conn_closed(conn_id);
    ctx.engine.unregister(&name, conn_id).await;
    out.close_with(farewell);
    let _ = drainer.await;
    let _ = writer.await;
    tracing::info!("disconnected");
}

/// Handles frames until the connection ends; returns the frame to close with, if any.
async fn read_loop(
    reader: &mut Reader,
    out: &Outbound,
    name: &Arc<str>,
    ctx: &Context,
    mut liveness: Liveness,
    access: &mut Access,
) -> Option<Bytes> {
    let close = out.shared.close.clone();
    let unconfirmed = Arc::new(Semaphore::new(ctx.config.max_unconfirmed));
    // Frames read ahead (while gathering persistent messages, or while held back by the
    // publish rate), to be handled next.
    let mut ahead = Ahead::default();
    let mut throttle = Throttle::new(
        ctx.config.publish_messages_per_sec,
        ctx.config.publish_bytes_per_sec,
    );
    let mut nonce = 0u64;
    loop {
        if close.is_cancelled() {
            return None;
        }
        if access.reloaded() {
            if let Err(refused) = recheck(access, out, name, ctx).await {
                return refused;
            }
        }
        if access.expired() {
            tracing::info!("credential expired");
            return Some(encode::error(
                ErrorCode::AuthExpired,
                "the credential expired and no Reauth came",
                None,
            ));
        }
        // A frame already read needs no timer and no wait for the close signal: those are
        // set up only when the connection has nothing to hand.
        let ready = if ahead.is_empty() {
            reader.next().now_or_never()
        } else {
            ahead.pop().map(|(item, _)| item)
        };
        let next = match ready {
            Some(r) => r,
            None => {
                let wait = liveness.wait();
                let expiry = access.time_left().unwrap_or(Duration::MAX);
                let r = tokio::select! {
                    biased;
                    _ = close.cancelled() => return None,
                    _ = access.wait_reload() => continue,
                    _ = tokio::time::sleep(expiry), if expiry < wait => continue,
                    r = tokio::time::timeout(wait, reader.next()) => r,
                };
                match r {
                    Ok(r) => r,
                    Err(_) => match liveness.waited(wait) {
                        Silence::Close => {
                            tracing::info!("client silent for {:?}, closing", liveness.idle());
                            return Some(encode::error(
                                ErrorCode::Timeout,
                                "no frame received in time",
                                None,
                            ));
                        }
                        Silence::Probe => {
                            // Ask for a sign of life with the writer's next write, ahead of
                            // whatever is queued: a client that reads gets it.
                            nonce += 1;
                            out.probe(PROBE_NONCE | nonce);
                            continue;
                        }
                    },
                }
            }
        };
        liveness.heard();
        let frame = match next {
            None => return None,
            Some(Err(ReadError::Codec(e @ CodecError::FrameTooLarge { .. }))) => {
                tracing::warn!(error = %e, "oversized frame");
                return Some(encode::error(ErrorCode::FrameTooLarge, e.to_string(), None));
            }
            Some(Err(ReadError::Codec(e))) => {
                tracing::debug!(error = %e, "read failed");
                return None;
            }
            Some(Err(ReadError::Starved(wait))) => {
                tracing::warn!(
                    held = ctx.partial.held(),
                    "closing a connection whose frame waited {wait:?} for room"
                );
                return Some(encode::error(ErrorCode::LimitReached, starved(wait), None));
            }
            Some(Ok(Err(e))) => {
                tracing::warn!(error = %e, "malformed frame");
                let f = encode::error(ErrorCode::Malformed, e.to_string(), None);
                if out.push(OutFrame::control(f)).await.is_err() {
                    return None;
                }
                continue;
            }
            Some(Ok(Ok(frame))) => frame,
        };
        // What the connection published, counted against its rate.
        let mut published = (0, 0);
        let handled = match frame {
            ClientFrame::Publish(msg) if msg.persistent => {
                // Persistent messages already read are routed together: one hold of the
                // core's lock and one store command for the run.
                let mut run = Vec::with_capacity(PERSISTENT_RUN);
                run.push(msg);
                while run.len() < PERSISTENT_RUN {
                    let next = ahead.pop().or_else(|| {
                        let item = reader.next().now_or_never()?;
                        Some((item, reader.last_len()))
                    });
                    match next {
                        Some((Some(Ok(Ok(ClientFrame::Publish(m)))), _)) if m.persistent => {
                            run.push(m);
                        }
                        Some((other, len)) => {
                            ahead.push_front(other, len);
                            break;
                        }
                        None => break,
                    }
                }
                published = (run.len(), run.iter().map(|m| m.data.len()).sum());
                publish_persistent(run, out, name, ctx, &unconfirmed, access).await
            }
            frame => {
                if let ClientFrame::Publish(msg) = &frame {
                    published = (1, msg.data.len());
                }
                handle(frame, out, name, ctx, &unconfirmed, access).await
            }
        };
        let handled = match (handled, throttle.as_mut()) {
            (Handled::Continue, Some(throttle)) if published.0 > 0 => {
                match throttle.charge(published.0, published.1) {
                    None => Handled::Continue,
                    Some(until) => {
                        let started = tokio::time::Instant::now();
                        let held = HeldBack {
                            reader: &mut *reader,
                            ahead: &mut ahead,
                            liveness: &mut liveness,
                        };
                        // Boxed: the wait is rare, and its state would otherwise widen
                        // every connection's read loop.
                        let handled =
                            Box::pin(hold_back(until, held, out, name, ctx, &unconfirmed, access))
                                .await;
                        ctx.engine.metrics.held_back(started.elapsed());
                        handled
                    }
                }
            }
            (handled, _) => handled,
        };
        match handled {
            Handled::Continue => {}
            Handled::Close => return None,
            Handled::CloseWith(frame) => return Some(frame),
        }
    }
}

/// Bytes of frames read ahead while a connection is held back by its publish rate, after
/// which it is not read until it may go on.
const READ_AHEAD_BYTES: usize = 64 * 1024;

/// Frames read ahead of the one being handled, to be handled next, in order (`None`: the
/// end of the stream), each with its length on the wire.
#[derive(Default)]
struct Ahead {
    frames: std::collections::VecDeque<(Option<ReadItem>, usize)>,
    bytes: usize,
}

impl Ahead {
    fn pop(&mut self) -> Option<(Option<ReadItem>, usize)> {
        let (item, len) = self.frames.pop_front()?;
        self.bytes -= len;
        Some((item, len))
    }

    fn push_front(&mut self, item: Option<ReadItem>, len: usize) {
        self.bytes += len;
        self.frames.push_front((item, len));
    }

    fn push_back(&mut self, item: Option<ReadItem>, len: usize) {
        self.bytes += len;
        self.frames.push_back((item, len));
    }

    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Whether nothing more is to be read ahead: the bound is reached, or the stream ended
    /// or failed.
    fn full(&self) -> bool {
        self.bytes >= READ_AHEAD_BYTES
            || matches!(self.frames.back(), Some((None | Some(Err(_)), _)))
    }
}

/// What a connection held back reads from and keeps.
struct HeldBack<'a> {
    reader: &'a mut Reader,
    ahead: &'a mut Ahead,
    liveness: &'a mut Liveness,
}

/// Waits until `until`, when a connection over its publish rate may go on, reading on
/// meanwhile: acknowledgements and pongs are handled at once (they never wait behind
/// publishes), a ping too when nothing waits before it (its pong says every frame before it
/// was handled); other frames are kept in order to be handled after the wait, up to
/// [`READ_AHEAD_BYTES`] on the wire; beyond that the connection is not read, and TCP holds its
/// sender back. Nothing is dropped.
async fn hold_back(
    until: tokio::time::Instant,
    held: HeldBack<'_>,
    out: &Outbound,
    name: &Arc<str>,
    ctx: &Context,
    unconfirmed: &Arc<Semaphore>,
    access: &mut Access,
) -> Handled {
    let close = out.shared.close.clone();
    let wait = tokio::time::sleep_until(until);
    tokio::pin!(wait);
    loop {
        let next = tokio::select! {
            biased;
            _ = close.cancelled() => return Handled::Close,
            _ = &mut wait => return Handled::Continue,
            next = held.reader.next(), if !held.ahead.full() => next,
        };
        if next.is_some() {
            held.liveness.heard();
        }
        let at_once = match &next {
            Some(Ok(Ok(ClientFrame::Ack { .. } | ClientFrame::Pong { .. }))) => true,
            Some(Ok(Ok(ClientFrame::Ping { .. }))) => held.ahead.is_empty(),
            _ => false,
        };
        match next {
            Some(Ok(Ok(frame))) if at_once => {
                match handle(frame, out, name, ctx, unconfirmed, access).await {
                    Handled::Continue => {}
                    closing => return closing,
                }
            }
            other => {
                // Only a frame holds bytes; the end of the stream or an error holds none.
                let len = if matches!(other, Some(Ok(_))) {
                    held.reader.last_len()
                } else {
                    0
                };
                held.ahead.push_back(other, len);
            }
        }
    }
}

/// Tells the client of subscriptions dropped because its rights no longer cover them; false
/// when the connection is closing.
async fn unsubscribed(out: &Outbound, dropped: Vec<Arc<str>>) -> bool {
    for channel in dropped {
        tracing::info!(%channel, "subscription dropped: the identity may no longer subscribe");
        let f = encode::frame(&ServerFrame::Unsubscribed {
            channel: shown(&channel).to_owned(),
        });
        if out.push(OutFrame::control(f)).await.is_err() {
            return false;
        }
    }
    true
}

/// Applies rights that changed (a reload or a `Reauth`) to the name's subscriptions.
async fn rights_changed(access: &Access, out: &Outbound, name: &Arc<str>, ctx: &Context) -> bool {
    let keep = |channel: &str| access.may_subscribe(shown(channel));
    match ctx
        .engine
        .retain_subscriptions(name, out.conn_id, &keep, access.channel_filter())
        .await
    {
        Ok(dropped) => unsubscribed(out, dropped).await,
        Err(_stopped) => false,
    }
}

/// Checks the connection against reloaded credentials; `Err` holds what to close with.
async fn recheck(
    access: &mut Access,
    out: &Outbound,
    name: &Arc<str>,
    ctx: &Context,
) -> Result<(), Option<Bytes>> {
    if let Err((code, message)) = access.recheck(name) {
        tracing::info!(reason = %message, "closed after the credentials were reloaded");
        return Err(Some(encode::error(code, message, None)));
    }
    if rights_changed(access, out, name, ctx).await {
        Ok(())
    } else {
        Err(None)
    }
}

/// The message id or channel an error is about, repeated as the client sent it when it is no
/// longer than a valid name: an error about a longer one (refused for its length) leaves it
/// out, so that every error fits the smallest frame a client may accept.
fn echoed(id: &str) -> Option<&str> {
    (id.len() <= broadcast_protocol::names::MAX_NAME_LEN).then_some(id)
}

/// The error of a connection closed because its incomplete frame waited too long for room.
fn starved(wait: Duration) -> String {
    format!(
        "closed: the broker holds its limit of bytes of incomplete frames, and this \
         connection's frame waited {wait:?} for room"
    )
}

/// The reading half's pings carry the top bit in their nonce, the writer's idle pings not, so
/// the two counters never give the same nonce.
const PROBE_NONCE: u64 = 1 << 63;

/// Most persistent messages routed together.
const PERSISTENT_RUN: usize = 64;

/// Routes persistent messages that arrived one after the other, in order: runs of valid
/// ones together, an invalid one answered with its error where it stands.
async fn publish_persistent(
    msgs: Vec<Publish>,
    out: &Outbound,
    name: &Arc<str>,
    ctx: &Context,
    unconfirmed: &Arc<Semaphore>,
    access: &Access,
) -> Handled {
    // The messages stay where they are; the valid ones from `start` on, each with its
    // confirmation in `confirms`, are routed together.
    let mut confirms: Vec<NewConfirm<Outbound>> = Vec::with_capacity(msgs.len());
    let mut start = 0;
    for (i, msg) in msgs.iter().enumerate() {
        if let Err(r) = check(msg, ctx, access) {
            if let Handled::Close = route_run(
                &msgs[start..i],
                &mut confirms,
                out,
                name,
                ctx,
                access.namespace(),
            )
            .await
            {
                return Handled::Close;
            }
            start = i + 1;
            let f = encode::error(r.code, r.message, echoed(&msg.id));
            if out.push(OutFrame::control(f)).await.is_err() {
                return Handled::Close;
            }
            continue;
        }
        // At most `max_unconfirmed` messages of one connection wait for their confirmation:
        // beyond that, this connection is not read until some are.
        let permit = match unconfirmed.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Route what is gathered first: its confirmations are what frees permits.
                if let Handled::Close = route_run(
                    &msgs[start..i],
                    &mut confirms,
                    out,
                    name,
                    ctx,
                    access.namespace(),
                )
                .await
                {
                    return Handled::Close;
                }
                start = i;
                let Ok(permit) = unconfirmed.clone().acquire_owned().await else {
                    return Handled::Close;
                };
                permit
            }
        };
        confirms.push(NewConfirm {
            accepted: encode::accepted(&msg.id),
            permit,
        });
    }
    route_run(
        &msgs[start..],
        &mut confirms,
        out,
        name,
        ctx,
        access.namespace(),
    )
    .await
}

/// Routes a run of persistent messages, each with its confirmation in `confirms`, sends their
/// notices and releases routing's hold on their confirmations; empties `confirms`.
async fn route_run(
    msgs: &[Publish],
    confirms: &mut Vec<NewConfirm<Outbound>>,
    out: &Outbound,
    name: &Arc<str>,
    ctx: &Context,
    ns: Option<&str>,
) -> Handled {
    debug_assert_eq!(msgs.len(), confirms.len());
    if msgs.is_empty() {
        return Handled::Continue;
    }
    // Checked as the client sent them, routed in the connection's namespace.
    let scoped: Vec<Publish>;
    let msgs = match ns {
        None => msgs,
        Some(_) => {
            scoped = msgs
                .iter()
                .map(|m| namespace::scope(ns, m).into_owned())
                .collect();
            &scoped
        }
    };
    let confirms = std::mem::take(confirms);
    let routed = ctx.engine.route_persistent(name, out, msgs, confirms).await;
    let mut closed = false;
    for routed in routed {
        debug_assert!(routed.blocked.is_empty(), "persistent messages never wait");
        for notice in routed.failed {
            closed = closed
                || out
                    .push(OutFrame::control(encode::failed(notice)))
                    .await
                    .is_err();
        }
        // Its notices are on their way (or the connection is closing, and every hold is
        // released all the same): `Accepted` may follow them.
        ctx.engine.release(routed.hold);
    }
    if closed {
        Handled::Close
    } else {
        Handled::Continue
    }
}

enum Handled {
    Continue,
    Close,
    /// Close with this frame last.
    CloseWith(Bytes),
}

/// Checks a message before routing: valid, and allowed to every recipient.
fn check(msg: &Publish, ctx: &Context, access: &Access) -> Result<(), Refusal> {
    ctx.engine.validate(msg)?;
    access.check_send(&msg.target).map_err(|message| Refusal {
        code: ErrorCode::Forbidden,
        message,
    })
}

async fn handle(
    frame: ClientFrame,
    out: &Outbound,
    name: &Arc<str>,
    ctx: &Context,
    unconfirmed: &Arc<Semaphore>,
    access: &mut Access,
) -> Handled {
    let engine = &ctx.engine;
    let mut replies: Vec<Bytes> = Vec::new();
    match frame {
        ClientFrame::Publish(msg) if msg.persistent => {
            return publish_persistent(vec![msg], out, name, ctx, unconfirmed, access).await;
        }
        ClientFrame::Publish(msg) => {
            if let Err(r) = check(&msg, ctx, access) {
                replies.push(encode::error(r.code, r.message, echoed(&msg.id)));
            } else {
                let msg = namespace::scope(access.namespace(), &msg);
                let routed = engine.route(name, &msg);
                replies.extend(routed.failed.into_iter().map(encode::failed));
                for blocked in routed.blocked {
                    let wait = ctx.config.slow_consumer_wait;
                    let mut notice = blocked.notice;
                    match blocked.out.push_within(blocked.frame, wait).await {
                        Ok(()) => {
                            metrics::add(&engine.metrics.delivered_after_wait, 1);
                            continue;
                        }
                        Err(PushError::Full) => {}
                        Err(PushError::Closed) => {
                            notice.reason = FailureReason::NotConnected;
                            notice.detail = "the recipient disconnected".into();
                        }
                    }
                    engine.metrics.failed(notice.reason);
                    replies.push(encode::failed(notice));
                }
            }
        }
        ClientFrame::Subscribe { channel } if !access.may_subscribe(&channel) => {
            let message = format!("not allowed to subscribe to {channel}");
            replies.push(encode::error(
                ErrorCode::Forbidden,
                message,
                echoed(&channel),
            ));
        }
        ClientFrame::Subscribe { channel } => {
            let scoped = namespace::scoped(access.namespace(), &channel);
            match engine.subscribe(name, out.conn_id, &scoped).await {
                Ok(Ok((sub, remembered))) => {
                    // The next frame is handled once the subscription is on disk.
                    let _ = remembered.await;
                    if !sub.answered {
                        replies.push(encode::frame(&ServerFrame::Subscribed { channel }));
                    }
                }
                // The refused channel goes where a message id would, so the client can match it.
                Ok(Err(r)) => replies.push(encode::error(r.code, r.message, echoed(&channel))),
                Err(_stopped) => return Handled::Close,
            }
        }
        ClientFrame::Unsubscribe { channel } => {
            let scoped = namespace::scoped(access.namespace(), &channel);
            if engine
                .unsubscribe(name, out.conn_id, &scoped)
                .await
                .is_err()
            {
                return Handled::Close;
            }
            replies.push(encode::frame(&ServerFrame::Unsubscribed { channel }));
        }
        ClientFrame::Ping { nonce } => replies.push(encode::frame(&ServerFrame::Pong { nonce })),
        ClientFrame::Pong { .. } => {}
        ClientFrame::Ack { tags } => {
            engine.ack(name, out.conn_id, &tags).await;
        }
        ClientFrame::Hello(_) => replies.push(encode::error(
            ErrorCode::BadHandshake,
            "Hello is only valid as the first frame",
            None,
        )),
        ClientFrame::Bye => return Handled::Close,
        ClientFrame::Reauth { token } => match access.reauth(token, name) {
            Ok(expires_ms) => {
                tracing::info!(?expires_ms, "credential renewed");
                if !rights_changed(access, out, name, ctx).await {
                    return Handled::Close;
                }
                replies.push(encode::frame(&ServerFrame::Reauthed { expires_ms }));
            }
            Err((code, message)) => {
                tracing::info!(reason = %message, "Reauth refused");
                return Handled::CloseWith(encode::error(code, message, None));
            }
        },
    }
    for r in replies {
        if out.push(OutFrame::control(r)).await.is_err() {
            return Handled::Close;
        }
    }
    Handled::Continue
}
