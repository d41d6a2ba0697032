//! The HTTP listener: Broadcast over WebSocket at `/v1/ws`, and `POST /v1/publish` for
//! scripts and webhooks. Its connections are admitted by the same accept loop as the TCP
//! listener's (connections in all and per address, failed authentications, handshakes in
//! progress), may be TLS, and present the same credentials.
//!
//! - `ws`: the WebSocket upgrade and the WebSocket carried as a byte stream.
//! - `publish`: the publish API.

mod publish;
mod ws;

use crate::conn::{Context, Handshaking, Slot};
use crate::tls::TlsConfig;
use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// A connection's byte stream, plaintext or TLS.
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// What a request knows of its connection.
#[derive(Clone)]
struct Conn {
    ctx: Arc<Context>,
    peer: SocketAddr,
    conn_id: u64,
    /// Names of a verified client certificate.
    peer_names: Vec<String>,
    /// The connection's place among those in their handshake: a WebSocket keeps it until its
    /// `Hello`; any other request gives it up once it is read.
    handshaking: Arc<Mutex<Option<Handshaking>>>,
    /// Its place under the connection limits: a WebSocket takes it on; otherwise it is given
    /// back when the connection ends.
    slot: Arc<Mutex<Option<Slot>>>,
    /// Where a WebSocket's session is tracked, so that shutdown waits for it.
    sessions: TaskTracker,
}

impl Conn {
    fn take_handshaking(&self) -> Option<Handshaking> {
        take(&self.handshaking)
    }

    fn take_slot(&self) -> Option<Slot> {
        take(&self.slot)
    }

    /// The refusal of a request from a browser page whose origin is not allowed: a WebSocket,
    /// or a publish (which a page could otherwise make without the browser asking first).
    fn origin_refused(&self, headers: &HeaderMap) -> Option<Response> {
        let origin = headers.get(header::ORIGIN)?;
        let origin = origin.to_str().unwrap_or_default();
        let allowed = &self.ctx.config.http_allowed_origins;
        if allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
        {
            return None;
        }
        tracing::info!(origin, "request refused: origin not allowed");
        Some(
            (
                StatusCode::FORBIDDEN,
                format!("origin {origin:?} is not in http_allowed_origins\n"),
            )
                .into_response(),
        )
    }
}

fn take<T>(cell: &Mutex<Option<T>>) -> Option<T> {
    cell.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

/// Serves one connection accepted on the HTTP listener: its TLS handshake when it is a TLS
/// listener, then one request (a WebSocket upgrade, which then carries Broadcast frames, or
/// a publish), within the handshake timeout for the request's head.
pub(crate) async fn serve(
    stream: TcpStream,
    tls: Option<Arc<TlsConfig>>,
    peer: SocketAddr,
    ctx: Arc<Context>,
    handshaking: Handshaking,
    slot: Slot,
    sessions: TaskTracker,
) {
    let conn_id = ctx.engine.next_conn_id();
    let span = crate::conn::conn_span(peer, conn_id);
    async move {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let (io, peer_names): (Box<dyn Io>, Vec<String>) = match tls {
            None => (Box::new(stream), Vec::new()),
            Some(tls) => {
                let accept = tls.acceptor().accept(stream);
                match tokio::time::timeout(ctx.config.handshake_timeout, accept).await {
                    Ok(Ok(stream)) => {
                        let names = crate::tls::peer_names(stream.get_ref().1);
                        (Box::new(stream), names)
                    }
                    Ok(Err(e)) => {
                        tracing::info!(error = %e, "TLS handshake failed");
                        crate::conn::tls_failed(peer, &ctx);
                        return;
                    }
                    Err(_) => {
                        tracing::info!("no TLS handshake within the handshake timeout");
                        crate::conn::tls_failed(peer, &ctx);
                        return;
                    }
                }
            }
        };
        let timeout = ctx.config.handshake_timeout;
        let conn = Conn {
            ctx,
            peer,
            conn_id,
            peer_names,
            handshaking: Arc::new(Mutex::new(Some(handshaking))),
            slot: Arc::new(Mutex::new(Some(slot))),
            sessions,
        };
        let app = router(conn);
        let service = hyper_util::service::TowerToHyperService::new(app);
        let served = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(timeout)
            .keep_alive(false)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
            .await;
        if let Err(e) = served {
            tracing::debug!(error = %e, "HTTP connection ended");
        }
    }
    .instrument(span)
    .await
}

fn router(conn: Conn) -> Router {
    Router::new()
        .route("/v1/ws", any(ws::upgrade))
        .route("/v1/publish", post(publish::publish))
        .fallback(not_found)
        .with_state(conn)
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "not found: this listener serves /v1/ws (WebSocket) and POST /v1/publish\n",
    )
}
