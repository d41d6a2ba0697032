//! Counts of what the core decided, for the broker's metrics: plain integers kept under the
//! core's lock and copied out when metrics are read, so counting costs an addition.

use broadcast_protocol::{FailureReason, Target};

/// Every failure reason, in the order of [`Stats::failed`].
pub const FAILURE_REASONS: [FailureReason; 10] = FailureReason::ALL;

/// Every kind of target, in the order of [`Stats::published`].
pub const TARGET_KINDS: [&str; 6] = [
    "client",
    "group",
    "channel",
    "channels",
    "client_in_channel",
    "all",
];

/// A failure reason's name in metrics and reports.
pub fn reason_name(reason: FailureReason) -> &'static str {
    reason.name()
}

fn reason_index(reason: FailureReason) -> usize {
    reason.index()
}

fn target_index(target: &Target) -> usize {
    match target {
        Target::Client(_) => 0,
        Target::Group(_) => 1,
        Target::Channel(_) => 2,
        Target::Channels(_) => 3,
        Target::ClientInChannel { .. } => 4,
        Target::All => 5,
    }
}

/// A connected client, as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRow {
    /// Its name.
    pub name: std::sync::Arc<str>,
    /// The broker's number for its connection.
    pub conn_id: u64,
    /// Channels it subscribes to.
    pub subscriptions: u64,
    /// Persistent deliveries handed to it and not yet acknowledged.
    pub in_flight: u64,
}

/// A queue, as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRow {
    /// Whose queue: a client's, or a channel's backlog.
    pub queue: crate::store::QueueId,
    /// Messages and notices waiting in it (those in flight included, until acknowledged).
    pub messages: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Deliveries from it (or straight to its client) not yet acknowledged.
    pub in_flight: u64,
    /// Whether its client is connected.
    pub connected: bool,
}

/// A channel, as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRow {
    /// Its name.
    pub channel: std::sync::Arc<str>,
    /// Clients subscribed, connected or not.
    pub subscribers: u64,
    /// Of those, connected now.
    pub connected: u64,
    /// Messages kept for it while it has no subscriber at all.
    pub backlog: u64,
}

/// How much the core holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Clients connected.
    pub clients: u64,
    /// Clients whose subscriptions are remembered, connected or not.
    pub sessions: u64,
    /// Channels with at least one subscriber, connected or not.
    pub channels: u64,
    /// Messages (and notices) waiting in recipients' queues and channel backlogs.
    pub queued_messages: u64,
    /// Bytes of those.
    pub queued_bytes: u64,
}

/// What the core has decided since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages taken for routing, by target kind (as [`TARGET_KINDS`]), non-persistent
    /// first, then persistent.
    pub published: [[u64; 2]; TARGET_KINDS.len()],
    /// Messages handed to a recipient's connection, redeliveries included.
    pub delivered: u64,
    /// Of those, deliveries marked as redelivered: the recipient may have had the message
    /// before (not acknowledged in time, handed out again after a reconnect or a restart, or
    /// sent again by its sender after a reconnect).
    pub redelivered: u64,
    /// Persistent deliveries of messages acknowledged.
    pub acked: u64,
    /// Delivery failures told (or to be told) to senders, by reason (as [`FAILURE_REASONS`]).
    pub failed: [u64; FAILURE_REASONS.len()],
}

impl Stats {
    pub(super) fn published(&mut self, target: &Target, persistent: bool) {
        self.published[target_index(target)][usize::from(persistent)] += 1;
    }

    pub(super) fn failed(&mut self, reason: FailureReason) {
        self.failed[reason_index(reason)] += 1;
    }

    /// Failures of `reason`.
    pub fn failures(&self, reason: FailureReason) -> u64 {
        self.failed[reason_index(reason)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_slot_and_name() {
        for (i, reason) in FAILURE_REASONS.iter().enumerate() {
            assert_eq!(reason_index(*reason), i);
        }
        let names: std::collections::HashSet<_> =
            FAILURE_REASONS.iter().map(|r| reason_name(*r)).collect();
        assert_eq!(names.len(), FAILURE_REASONS.len());
    }
}
