//! Persistent deliveries in flight: acknowledgements, draining a queue to its connected
//! recipient within a window, and redelivery after `ack_timeout` up to `max_attempts`.

use super::{Inflight, InflightKind, Router, lock};
use crate::encode::{self, DeliveryRef};
use crate::outbound::{OutFrame, PushError};
use crate::persist::Command;
use crate::store::{QueueId, Seq, StoredEntry, StoredMessage};
use broadcast_protocol::{DeliveryFailed, FailureReason, HEADER_LEN, Recipient};
use bytes::Bytes;
use tokio::time::Instant;

/// What a connection's drainer should do next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DrainStep {
    /// Read up to `max` entries from `from` on.
    Read {
        /// First sequence number to read.
        from: Seq,
        /// Most entries to read.
        max: usize,
        /// The queue's count of decided entries when the read was asked for.
        decided: u64,
    },
    /// Nothing to do until woken.
    Idle,
    /// The connection is gone.
    Gone,
}

/// Most entries read from the store at a time.
const READ_BATCH: usize = 512;

fn frame_for(seq: Seq, entry: &StoredEntry, redelivered: bool) -> Bytes {
    match entry {
        StoredEntry::Message(m) => message_frame(m, Some(seq), redelivered),
        StoredEntry::Notice { notice, .. } => encode::failed(DeliveryFailed {
            ack_tag: Some(seq),
            ..notice.clone()
        }),
    }
}

fn message_frame(m: &StoredMessage, tag: Option<u64>, redelivered: bool) -> Bytes {
    let d = DeliveryRef {
        id: &m.id,
        sender: &m.sender,
        channel: m.channel.as_deref(),
        name: m.name.as_deref(),
        data: &m.data,
        persistent: true,
        redelivered: redelivered || m.redelivered,
        ack_tag: tag,
    };
    encode::deliver(&d).unwrap_or_default()
}

impl Router {
    /// Handles acknowledgements from `name`'s connection; returns the store command that
    /// settles the acknowledged queue entries.
    pub(crate) fn ack(&self, name: &str, conn_id: u64, tags: &[u64]) -> Option<Command> {
        let mut st = lock(&self.state);
        let queue = QueueId::Client(name.to_owned());
        let mut seqs = Vec::new();
        let mut settled = Vec::new();
        {
            let client = st
                .clients
                .get_mut(name)
                .filter(|c| c.out.conn_id == conn_id)?;
            for tag in tags {
                let Some(inflight) = client.inflight.remove(tag) else {
                    continue;
                };
                match inflight.what {
                    InflightKind::Live { confirm, .. } => confirm.settle(),
                    InflightKind::Queued { seq, entry } => {
                        seqs.push(seq);
                        settled.push((seq, entry.size()));
                    }
                }
            }
            client.wake.notify_one();
        }
        for (seq, size) in settled {
            Self::count_settled(&mut st, &queue, seq, size);
        }
        (!seqs.is_empty()).then(|| Command::Settle(queue, seqs))
    }

    /// The next step of `name`'s drainer.
    pub(crate) fn drain_step(&self, name: &str, conn_id: u64) -> DrainStep {
        let st = lock(&self.state);
        let Some(client) = st.clients.get(name).filter(|c| c.out.conn_id == conn_id) else {
            return DrainStep::Gone;
        };
        let room = self
            .config
            .max_unacked
            .saturating_sub(client.inflight.len());
        if !client.queue_mode || room == 0 {
            return DrainStep::Idle;
        }
        let decided = st
            .queues
            .get(&QueueId::Client(name.to_owned()))
            .map_or(0, |m| m.decided);
        DrainStep::Read {
            from: client.cursor,
            max: room.min(READ_BATCH),
            decided,
        }
    }

    /// Hands entries read from the queue to `name`'s connection. An empty read means the
    /// connection has everything the store holds: when nothing is on its way to the store
    /// either, persistent messages go straight to the connection again. Returns whether the
    /// drainer should read again at once (false: wait to be woken).
    pub(crate) fn drained(
        &self,
        name: &str,
        conn_id: u64,
        from: Seq,
        decided_then: u64,
        entries: Vec<(Seq, StoredEntry)>,
    ) -> bool {
        let mut st = lock(&self.state);
        let queue = QueueId::Client(name.to_owned());
        let (hwm, unapplied, decided) = st
            .queues
            .get(&queue)
            .map_or((0, 0, 0), |m| (m.hwm, m.unapplied, m.decided));
        let mut attempts_of = crate::maps::HashMap::default();
        if let Some(meta) = st.queues.get(&queue) {
            for (seq, _) in &entries {
                if let Some(a) = meta.attempts.get(seq) {
                    attempts_of.insert(*seq, *a);
                }
            }
        }
        let deadline = Instant::now() + self.config.ack_timeout;
        let Some(client) = st
            .clients
            .get_mut(name)
            .filter(|c| c.out.conn_id == conn_id)
        else {
            return false;
        };
        if client.cursor != from {
            // A newer read already moved on (the connection was woken twice).
            return true;
        }
        if entries.is_empty() {
            if unapplied > 0 {
                // Entries are on their way to the store; `appended` wakes the drainer.
                return false;
            }
            if decided != decided_then {
                // Entries were decided (and appended) after the read was asked for: read
                // again rather than leave them behind.
                return true;
            }
            client.queue_mode = false;
            return false;
        }
        let mut progress = false;
        let mut top = hwm;
        for (seq, entry) in entries {
            if client.inflight.contains_key(&seq) {
                client.cursor = seq + 1;
                progress = true;
                continue;
            }
            let attempts = attempts_of.get(&seq).copied().unwrap_or(0);
            let bytes = frame_for(seq, &entry, seq <= hwm || attempts > 0);
            if bytes.len() - HEADER_LEN > client.out.max_frame {
                // Cannot ever be handed to this connection; tell the sender and settle it.
                client.cursor = seq + 1;
                let notice = too_large(name, &entry, client.out.max_frame);
                drop(st);
                self.give_up(name, seq, &entry, notice);
                return true;
            }
            match client.out.try_push(OutFrame::control(bytes)) {
                Ok(()) => {}
                Err(PushError::Full) => {
                    // Wait for the writer to make room.
                    client.out.want_room();
                    break;
                }
                Err(PushError::Closed) => break,
            }
            progress = true;
            client.cursor = seq + 1;
            top = top.max(seq);
            let what = InflightKind::Queued { seq, entry };
            client.inflight.insert(
                seq,
                Inflight {
                    what,
                    attempts: attempts + 1,
                    deadline,
                },
            );
        }
        if let Some(meta) = st.queues.get_mut(&queue) {
            meta.hwm = meta.hwm.max(top);
        }
        progress
    }

    /// Earliest acknowledgement deadline of `name`'s connection.
    pub(crate) fn next_deadline(&self, name: &str, conn_id: u64) -> Option<Instant> {
        let st = lock(&self.state);
        let client = st.clients.get(name).filter(|c| c.out.conn_id == conn_id)?;
        client.inflight.values().map(|i| i.deadline).min()
    }

    /// Sends again every delivery of `name`'s connection whose acknowledgement is late, or
    /// gives up on it after `max_attempts`.
    pub(crate) fn redeliver_late(&self, name: &str, conn_id: u64, now: Instant) {
        let mut st = lock(&self.state);
        let max_attempts = self.config.max_attempts;
        let retry = now + self.config.ack_timeout;
        let mut exhausted = Vec::new();
        {
            let Some(client) = st
                .clients
                .get_mut(name)
                .filter(|c| c.out.conn_id == conn_id)
            else {
                return;
            };
            let late: Vec<u64> = client
                .inflight
                .iter()
                .filter(|(_, i)| i.deadline <= now)
                .map(|(t, _)| *t)
                .collect();
            for tag in late {
                let Some(inflight) = client.inflight.get_mut(&tag) else {
                    continue;
                };
                if inflight.attempts >= max_attempts {
                    if let Some(i) = client.inflight.remove(&tag) {
                        exhausted.push(i);
                    }
                    continue;
                }
                let bytes = match &inflight.what {
                    InflightKind::Live { entry, .. } => message_frame(entry, Some(tag), true),
                    InflightKind::Queued { seq, entry } => frame_for(*seq, entry, true),
                };
                if client.out.try_push(OutFrame::control(bytes)).is_ok() {
                    inflight.attempts += 1;
                    inflight.deadline = retry;
                } else {
                    // No room now: try again a little later.
                    inflight.deadline = now + self.config.ack_timeout / 4;
                }
            }
            if !exhausted.is_empty() {
                client.wake.notify_one();
            }
        }
        drop(st);
        for i in exhausted {
            let detail = format!("{name} did not acknowledge it after {max_attempts} attempts");
            match i.what {
                InflightKind::Live { entry, confirm } => {
                    let notice = DeliveryFailed {
                        id: entry.id.clone(),
                        recipient: Recipient::Client(name.to_owned()),
                        reason: FailureReason::AttemptsExhausted,
                        detail,
                        ack_tag: None,
                    };
                    self.notify(&entry.sender, notice);
                    confirm.settle();
                }
                InflightKind::Queued { seq, entry } => {
                    let notice = notice_for(name, &entry, FailureReason::AttemptsExhausted, detail);
                    self.give_up(name, seq, &entry, notice);
                }
            }
        }
    }

    /// Settles a queue entry that will never be delivered and tells its sender.
    fn give_up(&self, name: &str, seq: Seq, entry: &StoredEntry, notice: Option<DeliveryFailed>) {
        let queue = QueueId::Client(name.to_owned());
        {
            let mut st = lock(&self.state);
            Self::count_settled(&mut st, &queue, seq, entry.size());
        }
        self.persist
            .send_detached(Command::Settle(queue, vec![seq]), &self.rt);
        match (notice, entry) {
            (Some(n), StoredEntry::Message(m)) => self.notify(&m.sender, n),
            _ => {
                tracing::warn!(client = %name, seq, "a delivery-failed notice could not be delivered and was dropped")
            }
        }
    }
}

fn notice_for(
    name: &str,
    entry: &StoredEntry,
    reason: FailureReason,
    detail: String,
) -> Option<DeliveryFailed> {
    match entry {
        StoredEntry::Message(m) => Some(DeliveryFailed {
            id: m.id.clone(),
            recipient: Recipient::Client(name.to_owned()),
            reason,
            detail,
            ack_tag: None,
        }),
        StoredEntry::Notice { .. } => None,
    }
}

fn too_large(name: &str, entry: &StoredEntry, max: usize) -> Option<DeliveryFailed> {
    notice_for(
        name,
        entry,
        FailureReason::TooLarge,
        format!("{name} accepts frames of at most {max} bytes"),
    )
}
