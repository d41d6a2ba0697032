//! `POST /v1/publish`: one message from a script or a webhook, as JSON, answered with what
//! became of it. Authenticated (`Authorization: Bearer TOKEN`), authorised and routed exactly
//! as a message from a connection.
//!
//! ```json
//! {"to": {"client": "bob"}, "data": "hello", "persistent": true, "ttl_ms": 60000}
//! ```
//!
//! `to` is `{"client": NAME}`, `{"group": [NAMES]}`, `{"channel": NAME}`, `{"channels":
//! [NAMES]}`, `{"client_in_channel": {"client": NAME, "channel": NAME}}` or `"all"`; `data` is
//! text, or `data_base64` bytes in standard base64; `event`, `persistent`, `ttl_ms`, `id`
//! (a message id of the client's own, for deduplication), `from` (the sender's name, required
//! with credentials and checked against the identity's `names`) and `namespace` are optional.
//! The answer: `200 {"id", "accepted": true, "failed": [{"recipient", "reason", "detail"}]}`
//! once the message is routed (a persistent one stored, or taken by its recipients), or an
//! error status with `{"error": {"code", "message"}}`.

use super::Conn;
use crate::conn::oneshot;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use broadcast_protocol::{
    DEFAULT_MAX_FRAME, ErrorCode, Hello, PROTOCOL_VERSION, Publish, Recipient, ServerFrame, Target,
    new_message_id,
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A message to publish.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishRequest {
    to: To,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    data_base64: Option<String>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    persistent: bool,
    #[serde(default)]
    ttl_ms: Option<u64>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

/// A target, in the shape the CLI prints recipients.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum To {
    Client(String),
    Group(Vec<String>),
    Channel(String),
    Channels(Vec<String>),
    ClientInChannel { client: String, channel: String },
    All,
}

impl From<To> for Target {
    fn from(to: To) -> Self {
        match to {
            To::Client(n) => Target::Client(n),
            To::Group(n) => Target::Group(n),
            To::Channel(n) => Target::Channel(n),
            To::Channels(n) => Target::Channels(n),
            To::ClientInChannel { client, channel } => Target::ClientInChannel { client, channel },
            To::All => Target::All,
        }
    }
}

/// A recipient that will not get the message, as the CLI prints them.
#[derive(Serialize)]
struct Failed {
    recipient: serde_json::Value,
    reason: &'static str,
    detail: String,
}

fn recipient(r: &Recipient) -> serde_json::Value {
    match r {
        Recipient::Client(n) => json!({ "client": n }),
        Recipient::Channel(n) => json!({ "channel": n }),
        Recipient::All => json!("all"),
    }
}

/// An error answer: the status the code maps to, and the code and message.
fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    answer(status_of(code), code, message)
}

fn answer(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    let body = json!({ "error": { "code": code.name(), "message": message.into() } });
    (status, Json(body)).into_response()
}

fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Unauthorized | ErrorCode::AuthExpired => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::PayloadTooLarge | ErrorCode::FrameTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::LimitReached => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::ShuttingDown | ErrorCode::Internal => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    }
}

pub(super) async fn publish(State(conn): State<Conn>, headers: HeaderMap, body: Body) -> Response {
    if let Some(refused) = conn.origin_refused(&headers) {
        return refused;
    }
    // The body comes within the handshake timeout, up to twice the largest frame (room for
    // a payload in base64); the request is past its handshake once it is read. JSON whatever
    // the content type says (`curl -d` says a form).
    let cfg = &conn.ctx.config;
    let limit = 2 * cfg.max_frame() as usize;
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return error(
            ErrorCode::PayloadTooLarge,
            format!("the body is larger than {limit} bytes"),
        );
    }
    let read = tokio::time::timeout(cfg.handshake_timeout, axum::body::to_bytes(body, limit)).await;
    drop(conn.take_handshaking());
    let body = match read {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => {
            return error(
                ErrorCode::Malformed,
                format!("the body could not be read (at most {limit} bytes): {e}"),
            );
        }
        Err(_) => {
            return answer(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::Timeout,
                format!("the body did not come within {:?}", cfg.handshake_timeout),
            );
        }
    };
    let request: PublishRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                ErrorCode::Malformed,
                format!("the body is not a publish request: {e}"),
            );
        }
    };
    let token = match headers.get(header::AUTHORIZATION).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => match v.strip_prefix("Bearer ") {
            Some(token) => Some(token.trim().to_owned()),
            None => {
                return error(
                    ErrorCode::Unauthorized,
                    "the Authorization header must be `Bearer TOKEN`",
                );
            }
        },
        Some(Err(_)) => {
            return error(
                ErrorCode::Unauthorized,
                "the Authorization header is not text",
            );
        }
    };
    let data = match (request.data, request.data_base64) {
        (Some(text), None) => Bytes::from(text),
        (None, Some(b64)) => match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => return error(ErrorCode::Malformed, format!("data_base64: {e}")),
        },
        (None, None) => Bytes::new(),
        (Some(_), Some(_)) => {
            return error(
                ErrorCode::Malformed,
                "give `data` or `data_base64`, not both",
            );
        }
    };
    let hello = Hello {
        version: PROTOCOL_VERSION,
        name: request.from,
        token,
        namespace: request.namespace,
        max_frame: DEFAULT_MAX_FRAME,
        heartbeat_ms: 0,
    };
    let msg = Publish {
        id: request.id.unwrap_or_else(new_message_id),
        target: request.to.into(),
        name: request.event,
        data,
        persistent: request.persistent,
        ttl_ms: request.ttl_ms,
        resent: false,
    };
    let id = msg.id.clone();
    let answers =
        match oneshot::publish(&conn.ctx, conn.peer, &hello, conn.peer_names.clone(), msg).await {
            Ok(answers) => answers,
            Err((code, message)) => {
                tracing::info!(code = code.name(), %message, "publish refused");
                return error(code, message);
            }
        };
    let mut failed = Vec::new();
    for answer in answers {
        match answer {
            ServerFrame::DeliveryFailed(f) => failed.push(Failed {
                recipient: recipient(&f.recipient),
                reason: f.reason.name(),
                detail: f.detail,
            }),
            ServerFrame::Error(e) => return error(e.code, e.message),
            _ => {}
        }
    }
    // Routed; a persistent message is stored (or taken by its recipients) too.
    Json(json!({ "id": id, "accepted": true, "failed": failed })).into_response()
}
