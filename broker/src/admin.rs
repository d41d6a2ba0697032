//! The admin HTTP API, for operators and their tools: health, readiness, Prometheus metrics and
//! the broker's state. Meant for loopback or an operators' network; with a token, every path
//! but `/healthz` and `/readyz` asks for it as `Authorization: Bearer TOKEN`.
//!
//! - `GET /healthz`: 200 while the process serves requests.
//! - `GET /readyz`: 200 when the broker takes messages; 503 with the reasons while it shuts
//!   down, while its store refuses writes, or while a flush of the store has been stuck for
//!   more than 10 s.
//! - `GET /metrics`: every metric, in the OpenMetrics text format.
//! - `GET /v1/server`: version, uptime, the settings in force and totals, as JSON.
//! - `GET /v1/connections`, `/v1/queues`, `/v1/channels`: lists as JSON, sorted by key, in
//!   pages: `?limit=N` (default 100, at most 1,000) and `?after=KEY` (the `next` of the
//!   page before).

use crate::core::{FAILURE_REASONS, reason_name};
use crate::engine::Engine;
use crate::handle::BrokerHandle;
use crate::metrics::{self, Source};
use crate::namespace::{namespace_of, shown};
use crate::store::QueueId;
use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self as mw, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// Settings of the admin API.
#[derive(Debug, Clone, Default)]
pub struct AdminOptions {
    /// When set, requests other than health and readiness must carry it as a bearer token.
    pub token: Option<String>,
    /// The settings in force, shown by `/v1/server`.
    pub settings: Option<Value>,
}

struct AdminState {
    engine: Arc<Engine>,
    shutdown: CancellationToken,
    registry: Registry,
    options: AdminOptions,
    started: Instant,
    started_ms: u64,
}

/// The admin API of the broker behind `handle`, to serve on a listener of its own.
pub fn router(handle: &BrokerHandle, options: AdminOptions) -> Router {
    let engine = handle.engine.clone();
    let source: Arc<dyn Source> = engine.clone();
    let registry = metrics::registry(engine.metrics.clone(), source);
    let state = Arc::new(AdminState {
        engine,
        shutdown: handle.shutdown.clone(),
        registry,
        options,
        started: Instant::now(),
        started_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    });
    let guarded = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/v1/server", get(server))
        .route("/v1/connections", get(connections))
        .route("/v1/queues", get(queues))
        .route("/v1/channels", get(channels))
        .route_layer(mw::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .merge(guarded)
        .with_state(state)
}

/// Compares two byte strings in time that depends on their lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    a.ct_eq(b).into()
}

async fn authorize(State(state): State<Arc<AdminState>>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.options.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a bearer token is required\n",
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// Whether the store's flush thread has been stuck for longer than a flush may take.
fn stalled(state: &AdminState) -> bool {
    let metrics = &state.engine.metrics;
    let seen = metrics.flusher_seen_ms.load(Ordering::Relaxed);
    let now = metrics.started.elapsed().as_millis() as u64;
    now.saturating_sub(seen) > STALLED_MS
}

/// How long the flush thread may go without a round before the broker is not ready.
const STALLED_MS: u64 = 10_000;

async fn ready(State(state): State<Arc<AdminState>>) -> Response {
    let mut reasons = Vec::new();
    if state.shutdown.is_cancelled() {
        reasons.push("the broker is shutting down");
    }
    if state.engine.store_failed() {
        reasons.push("the store refuses writes");
    }
    if stalled(&state) {
        reasons.push("the store's flush has not made progress for 10 s");
    }
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "ready": reasons.is_empty(), "reasons": reasons });
    (status, axum::Json(body)).into_response()
}

async fn metrics_text(State(state): State<Arc<AdminState>>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        )
            .into_response(),
    }
}

async fn server(State(state): State<Arc<AdminState>>) -> Response {
    let (stats, gauges) = state.engine.core();
    let m = &state.engine.metrics;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let published: u64 = stats.published.iter().flatten().sum();
    let [frames_in, bytes_in, frames_out, bytes_out] = m.traffic();
    let failures: serde_json::Map<String, Value> = FAILURE_REASONS
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let n = stats.failed[i] + load(&m.failed_after_wait[i]);
            (reason_name(*r).to_owned(), json!(n))
        })
        .collect();
    let body = json!({
        "server": format!("broadcast-broker {}", env!("CARGO_PKG_VERSION")),
        "version": env!("CARGO_PKG_VERSION"),
        "started_at_ms": state.started_ms,
        "uptime_secs": state.started.elapsed().as_secs_f64(),
        "ready": !state.shutdown.is_cancelled() && !state.engine.store_failed() && !stalled(&state),
        "store_failed": state.engine.store_failed(),
        "settings": state.options.settings.clone().unwrap_or(Value::Null),
        "connections": load(&m.connections_open),
        "clients": gauges.clients,
        "sessions": gauges.sessions,
        "channels": gauges.channels,
        "queued_messages": gauges.queued_messages,
        "queued_bytes": gauges.queued_bytes,
        "totals": {
            "connections_accepted": load(&m.connections),
            "messages_published": published,
            "deliveries": stats.delivered + load(&m.delivered_after_wait),
            "redeliveries": stats.redelivered,
            "acks": stats.acked,
            "delivery_failures": failures,
            "frames_received": frames_in,
            "frames_sent": frames_out,
            "received_bytes": bytes_in,
            "sent_bytes": bytes_out,
            "store_flushes": load(&m.flushes),
        },
    });
    axum::Json(body).into_response()
}

/// Where a page of a list starts and how long it is.
#[derive(Debug, serde::Deserialize)]
struct PageQuery {
    limit: Option<usize>,
    after: Option<String>,
}

/// Items on a page unless asked otherwise, and at most.
const PAGE: usize = 100;
const PAGE_MAX: usize = 1000;

/// One page of `items` (each with its key), sorted by key.
fn page(mut items: Vec<(String, Value)>, query: &PageQuery) -> Value {
    let total = items.len();
    items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let limit = query.limit.unwrap_or(PAGE).clamp(1, PAGE_MAX);
    let start = query
        .after
        .as_ref()
        .map_or(0, |after| items.partition_point(|(k, _)| k <= after));
    let rest = &items[start.min(total)..];
    let shown = &rest[..limit.min(rest.len())];
    let next = (rest.len() > shown.len())
        .then(|| shown.last().map(|(k, _)| k.clone()))
        .flatten();
    json!({
        "total": total,
        "items": shown.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
        "next": next,
    })
}

async fn connections(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<PageQuery>,
) -> Response {
    let clients = state.engine.client_rows();
    let conns = state.engine.conns();
    let items = clients
        .into_iter()
        .map(|c| {
            let info = conns.get(&c.conn_id);
            let item = json!({
                "name": shown(&c.name),
                "namespace": namespace_field(&c.name),
                "connection": c.conn_id,
                "address": info.map(|i| i.peer.to_string()),
                "connected_since_ms": info.map(|i| i.since_ms),
                "subscriptions": c.subscriptions,
                "in_flight": c.in_flight,
                "outbound_queued_bytes": info.map(|i| i.out.queued_bytes()),
            });
            (c.name.to_string(), item)
        })
        .collect();
    axum::Json(page(items, &query)).into_response()
}

/// A name's namespace for the lists: `null` for the default namespace.
fn namespace_field(name: &str) -> Option<&str> {
    Some(namespace_of(name)).filter(|ns| !ns.is_empty())
}

async fn queues(State(state): State<Arc<AdminState>>, Query(query): Query<PageQuery>) -> Response {
    let queues = state.engine.queue_rows();
    let items = queues
        .into_iter()
        .map(|q| {
            let (kind, name) = match &q.queue {
                QueueId::Client(n) => ("client", n),
                QueueId::Backlog(n) => ("backlog", n),
            };
            let key = format!("{kind}:{name}");
            let item = json!({
                "key": key,
                "kind": kind,
                "name": shown(name),
                "namespace": namespace_field(name),
                "messages": q.messages,
                "bytes": q.bytes,
                "in_flight": q.in_flight,
                "connected": q.connected,
            });
            (key, item)
        })
        .collect();
    axum::Json(page(items, &query)).into_response()
}

async fn channels(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<PageQuery>,
) -> Response {
    let channels = state.engine.channel_rows();
    let items = channels
        .into_iter()
        .map(|c| {
            let item = json!({
                "channel": shown(&c.channel),
                "namespace": namespace_field(&c.channel),
                "subscribers": c.subscribers,
                "connected_subscribers": c.connected,
                "backlog": c.backlog,
            });
            (c.channel.to_string(), item)
        })
        .collect();
    axum::Json(page(items, &query)).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_compare_whole() {
        assert!(super::same(b"secret", b"secret"));
        assert!(!super::same(b"secret", b"secreT"));
        assert!(!super::same(b"secret", b"secret2"));
        assert!(!super::same(b"", b"x"));
    }

    #[test]
    fn pages_follow_each_other_without_gaps_or_repeats() {
        let items: Vec<(String, serde_json::Value)> = (0..25)
            .rev()
            .map(|i| (format!("k{i:02}"), serde_json::json!(i)))
            .collect();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let query = super::PageQuery {
                limit: Some(10),
                after: after.clone(),
            };
            let page = super::page(items.clone(), &query);
            assert_eq!(page["total"], 25);
            for v in page["items"].as_array().unwrap() {
                seen.push(v.as_u64().unwrap());
            }
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, (0..25).collect::<Vec<u64>>());
    }
}
