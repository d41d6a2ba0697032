//! Persistent deliveries in flight: acknowledgements, draining a queue to its connected
//! recipient within a window, and redelivery after `ack_timeout` up to `max_attempts`.
//!
//! A connection's drainer (in the shell) asks [`Core::drain_step`] what to read, reads it from
//! the store, and hands the entries to [`Core::drained`]; it sleeps until
//! [`Core::next_deadline`] and then calls [`Core::redeliver_late`].

use super::expiry::expired_notice;
use super::notices::undeliverable;
use super::ops::StoreOp;
use super::outlet::{OutFrame, Outlet, PushError};
use super::{Core, Inflight, InflightKind, Now, State, client_on, client_on_ref};
use crate::encode::{self, DeliveryRef};
use crate::maps::HashMap;
use crate::store::{QueueId, Seq, StoredEntry, StoredMessage};
use broadcast_protocol::{DeliveryFailed, FailureReason, HEADER_LEN, Recipient};
use bytes::Bytes;

/// What a connection's drainer should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum DrainStep {
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

impl<O: Outlet> Core<O> {
    /// Handles acknowledgements from `name`'s connection: live deliveries settle their
    /// confirmations, queue entries are settled in the store.
    pub fn ack(&mut self, name: &str, conn_id: u64, tags: &[u64]) {
        let st = &mut self.st;
        let queue = QueueId::Client(name.to_owned());
        let mut seqs = Vec::new();
        let mut settled = Vec::new();
        let Some(client) = client_on(&mut st.clients, name, conn_id) else {
            return;
        };
        for tag in tags {
            let Some(inflight) = client.inflight.remove(tag) else {
                continue;
            };
            if let InflightKind::Live { .. }
            | InflightKind::Queued {
                entry: StoredEntry::Message(_),
                ..
            } = inflight.what
            {
                st.stats.acked += 1;
            }
            match inflight.what {
                InflightKind::Live { confirm, .. } => st.confirms.settle(confirm),
                InflightKind::Queued { seq, entry } => {
                    seqs.push(seq);
                    settled.push((seq, entry.size()));
                }
            }
        }
        client.out.wake();
        for (seq, size) in settled {
            st.queues.count_settled(&queue, seq, size);
        }
        if !seqs.is_empty() {
            st.ops.push(StoreOp::Settle(queue, seqs));
        }
    }

    /// The next step of `name`'s drainer.
    pub fn drain_step(&self, name: &str, conn_id: u64) -> DrainStep {
        let st = &self.st;
        let Some(client) = client_on_ref(&st.clients, name, conn_id) else {
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

    /// Hands entries read from the queue (from `from` on, asked for when the queue's count of
    /// decided entries was `decided_then`) to `name`'s connection. An empty read means the
    /// connection has everything the store holds: when nothing is on its way to the store
    /// either, persistent messages go straight to the connection again. Returns whether the
    /// drainer should read again at once (false: wait to be woken).
    pub fn drained(
        &mut self,
        now: Now,
        name: &str,
        conn_id: u64,
        from: Seq,
        decided_then: u64,
        entries: Vec<(Seq, StoredEntry)>,
    ) -> bool {
        let deadline = now.mono_ms + self.config.ack_timeout.as_millis() as u64;
        let st = &mut self.st;
        let queue = QueueId::Client(name.to_owned());
        let (hwm, unapplied, decided, moving_in) =
            st.queues.get(&queue).map_or((0, 0, 0, false), |m| {
                (m.hwm, m.unapplied, m.decided, m.moves_in > 0)
            });
        let mut attempts_of = HashMap::default();
        if let Some(meta) = st.queues.get(&queue) {
            for (seq, _) in &entries {
                if let Some(a) = meta.attempts.get(seq) {
                    attempts_of.insert(*seq, *a);
                }
            }
        }
        let Some(client) = client_on(&mut st.clients, name, conn_id) else {
            return false;
        };
        let settled_unread = std::mem::take(&mut client.settled_unread);
        if moving_in {
            // A backlog is being moved into the queue: what was read may hold moved entries
            // that are not counted here yet. Read again once the move is reported.
            client.settled_unread = settled_unread;
            return false;
        }
        if client.cursor != from {
            // A newer read already moved on (the connection was woken twice).
            return true;
        }
        if entries.is_empty() {
            if unapplied > 0 {
                // Entries are on their way to the store; their `Appended` wakes the drainer.
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
        let mut expired = Vec::new();
        for (seq, entry) in entries {
            if client.inflight.contains_key(&seq) || settled_unread.contains(&seq) {
                client.cursor = seq + 1;
                progress = true;
                continue;
            }
            if entry.expires_at_ms() <= now.wall_ms {
                // Its time to live ran out before the sweeper found it: never handed out.
                client.cursor = seq + 1;
                progress = true;
                expired.push((seq, entry));
                continue;
            }
            if let (StoredEntry::Message(m), Some(allowed)) = (&entry, &client.channels)
                && let Some(channel) = &m.channel
                && !(allowed.0)(channel)
            {
                // Its channel is one this connection's identity may not subscribe to (the
                // message was queued for the name under other rights): never handed out.
                client.cursor = seq + 1;
                let detail = format!("{name} may not subscribe to {channel}");
                let notice = notice_for(name, &entry, FailureReason::NotSubscribed, detail);
                st.give_up(now, name, seq, &entry, notice);
                return true;
            }
            let attempts = attempts_of.get(&seq).copied().unwrap_or(0);
            let again = seq <= hwm || attempts > 0;
            let bytes = frame_for(seq, &entry, again);
            let max_frame = client.out.max_frame();
            if bytes.len() - HEADER_LEN > max_frame {
                // Cannot ever be handed to this connection; tell the sender and settle it.
                client.cursor = seq + 1;
                let notice = notice_for(
                    name,
                    &entry,
                    FailureReason::TooLarge,
                    format!("{name} accepts frames of at most {max_frame} bytes"),
                );
                st.give_up(now, name, seq, &entry, notice);
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
            if let StoredEntry::Message(m) = &entry {
                st.stats.delivered += 1;
                st.stats.redelivered += u64::from(again || m.redelivered);
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
        if !expired.is_empty() {
            let seqs = expired.iter().map(|(seq, _)| *seq).collect();
            for (seq, entry) in expired {
                st.expire_entry(now, &queue, seq, entry);
            }
            st.ops.push(StoreOp::Settle(queue, seqs));
        }
        progress
    }

    /// Earliest acknowledgement deadline of `name`'s connection, in monotonic milliseconds.
    pub fn next_deadline(&self, name: &str, conn_id: u64) -> Option<u64> {
        let client = client_on_ref(&self.st.clients, name, conn_id)?;
        client.inflight.values().map(|i| i.deadline).min()
    }

    /// Sends again every delivery of `name`'s connection whose acknowledgement is late at
    /// `now`, or gives up on it after `max_attempts`.
    pub fn redeliver_late(&mut self, now: Now, name: &str, conn_id: u64) {
        let cfg = &self.config;
        let st = &mut self.st;
        let max_attempts = cfg.max_attempts;
        let ack_timeout = cfg.ack_timeout.as_millis() as u64;
        let retry = now.mono_ms + ack_timeout;
        let mut exhausted = Vec::new();
        let mut expired = Vec::new();
        let Some(client) = client_on(&mut st.clients, name, conn_id) else {
            return;
        };
        let mut late: Vec<u64> = client
            .inflight
            .iter()
            .filter(|(_, i)| i.deadline <= now.mono_ms)
            .map(|(t, _)| *t)
            .collect();
        // In the order they were handed out, whatever the map's order.
        late.sort_unstable();
        for tag in late {
            let Some(inflight) = client.inflight.get_mut(&tag) else {
                continue;
            };
            let expires_at_ms = match &inflight.what {
                InflightKind::Live { entry, .. } => entry.expires_at_ms,
                InflightKind::Queued { entry, .. } => entry.expires_at_ms(),
            };
            if expires_at_ms <= now.wall_ms {
                // Not handed out again past its time to live.
                if let Some(i) = client.inflight.remove(&tag) {
                    expired.push(i);
                }
                continue;
            }
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
                if let InflightKind::Live { .. }
                | InflightKind::Queued {
                    entry: StoredEntry::Message(_),
                    ..
                } = inflight.what
                {
                    st.stats.delivered += 1;
                    st.stats.redelivered += 1;
                }
                inflight.attempts += 1;
                inflight.deadline = retry;
            } else {
                // No room now: try again a little later.
                inflight.deadline = now.mono_ms + ack_timeout / 4;
            }
        }
        if !exhausted.is_empty() || !expired.is_empty() {
            client.out.wake();
        }
        let queue = QueueId::Client(name.to_owned());
        for i in expired {
            match i.what {
                InflightKind::Live { entry, confirm } => {
                    let notice = expired_notice(&queue, &entry.id);
                    st.notify_before(now, &entry.sender, notice, Some(confirm));
                }
                InflightKind::Queued { seq, entry } => {
                    st.expire_entry(now, &queue, seq, entry);
                    st.ops.push(StoreOp::Settle(queue.clone(), vec![seq]));
                }
            }
        }
        for i in exhausted {
            let detail = format!("{name} did not acknowledge it after {max_attempts} attempts");
            match i.what {
                InflightKind::Live { entry, confirm } => {
                    let notice = undeliverable(
                        &entry.sender,
                        &entry.id,
                        Recipient::Client(name.to_owned()),
                        FailureReason::AttemptsExhausted,
                        detail,
                    );
                    st.notify_before(now, &entry.sender, notice, Some(confirm));
                }
                InflightKind::Queued { seq, entry } => {
                    let notice = notice_for(name, &entry, FailureReason::AttemptsExhausted, detail);
                    st.give_up(now, name, seq, &entry, notice);
                }
            }
        }
    }
}

impl<O: Outlet> State<O> {
    /// `n` entries were appended to `queue`: its connected recipient's drainer can read them.
    pub(super) fn appended(&mut self, queue: &QueueId, n: u64) {
        if let Some(meta) = self.queues.get_mut(queue) {
            meta.unapplied = meta.unapplied.saturating_sub(n);
        }
        if let QueueId::Client(name) = queue {
            if let Some(c) = self.clients.get(name.as_str()) {
                c.out.wake();
            }
        }
    }

    /// Settles a queue entry that will never be delivered and tells its sender.
    fn give_up(
        &mut self,
        now: Now,
        name: &str,
        seq: Seq,
        entry: &StoredEntry,
        notice: Option<DeliveryFailed>,
    ) {
        let queue = QueueId::Client(name.to_owned());
        self.queues.count_settled(&queue, seq, entry.size());
        self.ops.push(StoreOp::Settle(queue, vec![seq]));
        match (notice, entry) {
            (Some(n), StoredEntry::Message(m)) => {
                self.notify(now, &m.sender, n);
            }
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
