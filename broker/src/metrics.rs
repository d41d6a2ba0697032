//! The broker's metrics, in one Prometheus registry per broker (several brokers in one process
//! stay apart).
//!
//! Two kinds of counts: those of the shell ([`Metrics`]: connections, frames and bytes, the
//! store's writes and flushes), kept in atomics or histograms as they happen, and those of the
//! routing core ([`crate::core::Stats`] and [`crate::core::Gauges`]: messages published,
//! delivered, acknowledged, failed, queued), plain integers under the core's lock that a scrape
//! copies. No metric has a label with a client or channel name: what they hold is bounded
//! whatever the traffic.

use crate::core::{FAILURE_REASONS, Gauges, Stats, TARGET_KINDS, reason_name};
use broadcast_protocol::{ErrorCode, FailureReason};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a connection was refused before its handshake completed, as metrics label it.
pub(crate) const REFUSALS: [&str; 14] = [
    "max_connections",
    "max_connections_per_address",
    "connections_per_address_per_sec",
    "handshake_timeout",
    "bad_handshake",
    "unsupported_version",
    "invalid_name",
    "frame_too_large",
    "limit_reached",
    "unauthorized",
    "tls_handshake",
    "auth_failures",
    "max_connections_per_identity",
    "max_pending_handshakes",
];

/// The refusal label of a handshake refused with `code`.
pub(crate) fn refusal(code: ErrorCode) -> usize {
    match code {
        ErrorCode::Timeout => 3,
        ErrorCode::UnsupportedVersion => 5,
        ErrorCode::InvalidName => 6,
        ErrorCode::FrameTooLarge => 7,
        ErrorCode::LimitReached => 8,
        ErrorCode::Unauthorized => 9,
        _ => 4,
    }
}

/// The refusal label of a failed or timed-out TLS handshake.
pub(crate) const REFUSED_TLS: usize = 10;
/// The refusal label of an address refused for its failed authentications.
pub(crate) const REFUSED_AUTH_FAILURES: usize = 11;
/// The refusal label of the limit of connections per identity.
pub(crate) const REFUSED_PER_IDENTITY: usize = 12;
/// The refusal label of the limit of connections in their handshake.
pub(crate) const REFUSED_PENDING_HANDSHAKES: usize = 13;

/// The refusal label of the connection limit.
pub(crate) const REFUSED_MAX_CONNECTIONS: usize = 0;
/// The refusal label of the limit of connections open per address.
pub(crate) const REFUSED_PER_ADDRESS: usize = 1;
/// The refusal label of the limit of new connections a second per address.
pub(crate) const REFUSED_ADDRESS_RATE: usize = 2;

/// Frames and bytes one way, on a cache line of their own.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Flow {
    pub(crate) frames: AtomicU64,
    pub(crate) bytes: AtomicU64,
}

impl Flow {
    pub(crate) fn add(&self, frames: u64, bytes: u64) {
        add(&self.frames, frames);
        add(&self.bytes, bytes);
    }
}

/// One connection's traffic, written only by its own reading and writing tasks, so that
/// connections never contend for a counter; summed when metrics are read.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    pub(crate) read: Flow,
    pub(crate) written: Flow,
}

/// Totals of traffic: frames and bytes read, frames and bytes written.
pub(crate) type Totals = [u64; 4];

impl Traffic {
    fn totals(&self) -> Totals {
        [
            load(&self.read.frames),
            load(&self.read.bytes),
            load(&self.written.frames),
            load(&self.written.bytes),
        ]
    }
}

/// The traffic of open connections, and the totals of those that closed.
#[derive(Debug, Default)]
struct TrafficBook {
    open: crate::maps::HashMap<u64, Arc<Traffic>>,
    closed: Totals,
}

/// What the shell counts, shared by every connection and the store threads.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) connections_open: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) refused: [AtomicU64; REFUSALS.len()],
    traffic: std::sync::Mutex<TrafficBook>,
    /// Non-persistent deliveries that waited for room at a slow recipient and got it.
    pub(crate) delivered_after_wait: AtomicU64,
    /// Deliveries that failed in the shell (after waiting for room), by reason.
    pub(crate) failed_after_wait: [AtomicU64; FAILURE_REASONS.len()],
    /// Seconds each flush of the store took.
    pub(crate) flush_seconds: Histogram,
    /// Groups of writes each flush made durable.
    pub(crate) flush_groups: Histogram,
    /// Seconds the store thread took to apply each group of writes.
    pub(crate) apply_seconds: Histogram,
    /// When the flush thread last went round its loop, in milliseconds since `started`: at
    /// least once a second unless a flush is stuck.
    pub(crate) flusher_seen_ms: AtomicU64,
    /// A monotonic origin for `flusher_seen_ms`.
    pub(crate) started: std::time::Instant,
    /// Flushes made.
    pub(crate) flushes: AtomicU64,
    /// Times a connection was held back for its publish rate, and the microseconds it waited.
    held_back: AtomicU64,
    held_back_micros: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections_open: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            refused: Default::default(),
            traffic: std::sync::Mutex::default(),
            delivered_after_wait: AtomicU64::new(0),
            failed_after_wait: Default::default(),
            // 10 µs to about 10 s.
            flush_seconds: Histogram::new(exponential_buckets(1e-5, 4.0, 11)),
            flush_groups: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            apply_seconds: Histogram::new(exponential_buckets(1e-5, 4.0, 11)),
            flusher_seen_ms: AtomicU64::new(0),
            started: std::time::Instant::now(),
            flushes: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
            held_back_micros: AtomicU64::new(0),
        }
    }
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Counts a connection held back for `waited` by its publish rate.
    pub(crate) fn held_back(&self, waited: std::time::Duration) {
        add(&self.held_back, 1);
        add(
            &self.held_back_micros,
            u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
        );
    }

    fn book(&self) -> std::sync::MutexGuard<'_, TrafficBook> {
        self.traffic.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The counters of a new connection's traffic.
    pub(crate) fn open_traffic(&self, conn_id: u64) -> Arc<Traffic> {
        let traffic = Arc::new(Traffic::default());
        self.book().open.insert(conn_id, traffic.clone());
        traffic
    }

    /// Adds a closed connection's traffic to the totals.
    pub(crate) fn close_traffic(&self, conn_id: u64) {
        let mut book = self.book();
        if let Some(traffic) = book.open.remove(&conn_id) {
            for (total, n) in book.closed.iter_mut().zip(traffic.totals()) {
                *total += n;
            }
        }
    }

    /// Frames and bytes read and written, over every connection since the start.
    pub(crate) fn traffic(&self) -> Totals {
        let book = self.book();
        let mut totals = book.closed;
        for traffic in book.open.values() {
            for (total, n) in totals.iter_mut().zip(traffic.totals()) {
                *total += n;
            }
        }
        totals
    }

    /// A delivery the shell gave up on.
    pub(crate) fn failed(&self, reason: FailureReason) {
        add(&self.failed_after_wait[reason.index()], 1);
    }
}

/// Where a scrape reads what the core and the store hold now.
pub(crate) trait Source: Send + Sync + 'static {
    /// The core's counts and gauges.
    fn core(&self) -> (Stats, Gauges);
    /// Whether the store refuses writes.
    fn store_failed(&self) -> bool;
    /// Bytes the store takes on disk, when known.
    fn store_bytes(&self) -> Option<u64>;
}

/// A registry of every metric of one broker.
pub(crate) fn registry(metrics: Arc<Metrics>, source: Arc<dyn Source>) -> Registry {
    let mut registry = Registry::with_prefix("broadcast");
    registry.register_with_unit(
        "store_flush",
        "Time each flush of the store took to make writes durable",
        Unit::Seconds,
        metrics.flush_seconds.clone(),
    );
    registry.register(
        "store_flush_groups",
        "Groups of writes made durable by each flush of the store",
        metrics.flush_groups.clone(),
    );
    registry.register_with_unit(
        "store_apply",
        "Time the store thread took to apply each group of writes",
        Unit::Seconds,
        metrics.apply_seconds.clone(),
    );
    registry.register_collector(Box::new(Scrape { metrics, source }));
    registry
}

struct Scrape {
    metrics: Arc<Metrics>,
    source: Arc<dyn Source>,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A counter with one sample per label set.
fn counters<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let mut d = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(d.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        let m = &*self.metrics;
        let (stats, gauges) = self.source.core();
        let [frames_in, bytes_in, frames_out, bytes_out] = m.traffic();

        gauge(
            &mut e,
            "connections",
            "Connections open now",
            load(&m.connections_open),
        )?;
        counter(
            &mut e,
            "connections_accepted",
            "Connections accepted",
            load(&m.connections),
        )?;
        counters(
            &mut e,
            "connections_refused",
            "Connections refused before their handshake completed, by reason",
            REFUSALS
                .iter()
                .zip(&m.refused)
                .map(|(label, value)| ([("reason", *label)], load(value))),
        )?;
        counter(
            &mut e,
            "publishers_held_back",
            "Times a connection over its publish rate was held back",
            load(&m.held_back),
        )?;
        let waited = ConstCounter::new(load(&m.held_back_micros) as f64 / 1e6);
        waited.encode(e.encode_descriptor(
            "publishers_held_back_seconds",
            "Seconds connections over their publish rate were held back",
            None,
            waited.metric_type(),
        )?)?;
        gauge(
            &mut e,
            "clients",
            "Clients connected under a name now",
            gauges.clients,
        )?;
        gauge(
            &mut e,
            "sessions",
            "Clients whose subscriptions are remembered",
            gauges.sessions,
        )?;
        gauge(
            &mut e,
            "channels",
            "Channels with at least one subscriber",
            gauges.channels,
        )?;
        counter(
            &mut e,
            "frames_received",
            "Frames received from clients",
            frames_in,
        )?;
        counter(&mut e, "frames_sent", "Frames sent to clients", frames_out)?;
        counter(
            &mut e,
            "received_bytes",
            "Bytes received from clients",
            bytes_in,
        )?;
        counter(&mut e, "sent_bytes", "Bytes sent to clients", bytes_out)?;
        counters(
            &mut e,
            "messages_published",
            "Messages taken for routing, by target kind and persistence",
            TARGET_KINDS
                .iter()
                .zip(&stats.published)
                .flat_map(|(kind, counts)| {
                    ["non_persistent", "persistent"]
                        .into_iter()
                        .zip(counts)
                        .map(move |(persistence, value)| {
                            ([("target", *kind), ("persistence", persistence)], *value)
                        })
                }),
        )?;
        let delivered = stats.delivered + load(&m.delivered_after_wait);
        counter(
            &mut e,
            "deliveries",
            "Messages handed to recipients' connections, redeliveries included",
            delivered,
        )?;
        counter(
            &mut e,
            "redeliveries",
            "Deliveries marked as redelivered: the recipient may have had them before",
            stats.redelivered,
        )?;
        counter(
            &mut e,
            "acks",
            "Persistent deliveries acknowledged",
            stats.acked,
        )?;
        counters(
            &mut e,
            "delivery_failures",
            "Deliveries that failed, each told to its sender, by reason",
            FAILURE_REASONS.iter().enumerate().map(|(i, reason)| {
                let value = stats.failed[i] + load(&m.failed_after_wait[i]);
                ([("reason", reason_name(*reason))], value)
            }),
        )?;
        gauge(
            &mut e,
            "queued_messages",
            "Messages and notices waiting in queues and backlogs",
            gauges.queued_messages,
        )?;
        gauge(
            &mut e,
            "queued_bytes",
            "Bytes of the messages waiting in queues and backlogs",
            gauges.queued_bytes,
        )?;
        counter(
            &mut e,
            "store_flushes",
            "Flushes of the store",
            load(&m.flushes),
        )?;
        gauge(
            &mut e,
            "store_failed",
            "1 while the store refuses writes (persistent messages are refused), else 0",
            u64::from(self.source.store_failed()),
        )?;
        if let Some(bytes) = self.source.store_bytes() {
            gauge(
                &mut e,
                "store_bytes",
                "Bytes the store takes on disk",
                bytes,
            )?;
        }
        process(&mut e)
    }
}

/// The process's resident memory, CPU time and open files, from `/proc/self` (Linux only).
fn process(e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
    #[cfg(target_os = "linux")]
    {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            let rss_kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
            if let Some(kib) = rss_kib {
                gauge(
                    e,
                    "process_resident_memory_bytes",
                    "Resident memory of the broker process",
                    kib * 1024,
                )?;
            }
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which may hold spaces) start after its ')'.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
            let ticks: u64 = [11, 12]
                .iter()
                .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
                .sum();
            // The kernel's USER_HZ is 100 on every architecture Linux supports today.
            let cpu = ConstCounter::new(ticks as f64 / 100.0);
            cpu.encode(e.encode_descriptor(
                "process_cpu_seconds",
                "CPU time of the broker process, user and system",
                None,
                cpu.metric_type(),
            )?)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                e,
                "process_open_fds",
                "Open file descriptors of the broker process",
                fds.count() as u64,
            )?;
        }
    }
    Ok(())
}
