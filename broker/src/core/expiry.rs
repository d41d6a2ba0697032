//! Messages whose time to live ran out, and sessions that expired.

use super::clients::remove_subscriber;
use super::ops::StoreOp;
use super::outlet::Outlet;
use super::{Core, InflightKind, Now, State};
use crate::maps::HashMap;
use crate::store::{QueueId, Seq, Session, StoredEntry};
use broadcast_protocol::{DeliveryFailed, FailureReason, Recipient};

impl<O: Outlet> Core<O> {
    /// Opens a look for expired entries: call it before asking the store, and hand the answer
    /// (or nothing, if the look failed) to [`Core::expire`].
    pub fn begin_expiry_scan(&mut self) {
        self.st.queues.begin_scan();
    }

    /// Settles expired entries the store found, except those handed to a connection and
    /// waiting for its acknowledgement and those settled since the look began, and tells each
    /// sender.
    pub fn expire(&mut self, now: Now, found: Vec<(QueueId, Seq, StoredEntry)>) {
        let st = &mut self.st;
        let settled_meanwhile = st.queues.end_scan();
        // Settled per queue, in the order the queues first came up.
        let mut settle: Vec<(QueueId, Vec<Seq>)> = Vec::new();
        let mut index: HashMap<QueueId, usize> = HashMap::default();
        for (queue, seq, entry) in found {
            let in_flight = match &queue {
                QueueId::Client(name) => st.clients.get(name.as_str()).is_some_and(|c| {
                    c.inflight.values().any(
                        |i| matches!(&i.what, InflightKind::Queued { seq: s, .. } if *s == seq),
                    )
                }),
                // Being moved to a subscriber: a later look finds them where they went.
                QueueId::Backlog(_) => st.queues.is_moving(&queue),
            };
            if in_flight || settled_meanwhile.contains(&(queue.clone(), seq)) {
                continue;
            }
            match index.get(&queue) {
                Some(&i) => settle[i].1.push(seq),
                None => {
                    index.insert(queue.clone(), settle.len());
                    settle.push((queue.clone(), vec![seq]));
                }
            }
            st.expire_entry(now, &queue, seq, entry);
        }
        for (queue, seqs) in settle {
            st.ops.push(StoreOp::Settle(queue, seqs));
        }
    }

    /// Forgets the subscriptions of clients away for longer than `session_expiry` at `now`.
    ///
    /// A client's time away counts from when it was last seen; a session restored after a
    /// crash while its client was connected ([`Session::CONNECTED`]) counts as last seen at
    /// this core's first look.
    pub fn expire_sessions(&mut self, now: Now) {
        let expiry = self.config.session_expiry.as_millis() as u64;
        let cutoff = now.wall_ms.saturating_sub(expiry);
        let st = &mut self.st;
        let since = *st.sessions_since_ms.get_or_insert(now.wall_ms);
        let mut expired: Vec<_> = st
            .sessions
            .iter()
            .filter(|(name, s)| {
                let seen = if s.last_seen_ms == Session::CONNECTED {
                    since
                } else {
                    s.last_seen_ms
                };
                !st.clients.contains_key(&***name) && seen < cutoff
            })
            .map(|(name, _)| name.clone())
            .collect();
        expired.sort_unstable();
        for name in expired {
            if let Some(s) = st.sessions.remove(&name) {
                for ch in &s.channels {
                    remove_subscriber(&mut st.channels, ch, &name);
                }
                tracing::info!(client = %name, "session expired");
                st.ops.push(StoreOp::RemoveSession(name.to_string()));
            }
        }
    }
}

impl<O: Outlet> State<O> {
    /// Counts an entry of `queue` whose time to live ran out at `now` as settled and tells its
    /// sender; the caller settles it in the store.
    pub(super) fn expire_entry(&mut self, now: Now, queue: &QueueId, seq: Seq, entry: StoredEntry) {
        self.queues.count_settled(queue, seq, entry.size());
        if let QueueId::Client(name) = queue {
            if let Some(c) = self.clients.get_mut(name.as_str()) {
                // Its drainer may have read it already: it must not hand it out.
                c.settled_unread.push(seq);
            }
        }
        match entry {
            StoredEntry::Message(m) => {
                let notice = expired_notice(queue, &m.id);
                self.notify(now, &m.sender, notice);
            }
            StoredEntry::Notice { notice, .. } => {
                tracing::warn!(%queue, id = %notice.id, "a delivery-failed notice expired before its sender came back");
            }
        }
    }
}

/// The notice for a message whose time to live ran out in `queue`.
pub(super) fn expired_notice(queue: &QueueId, id: &str) -> DeliveryFailed {
    let (recipient, detail) = match queue {
        QueueId::Client(c) => (
            Recipient::Client(c.clone()),
            format!("its time to live ran out before {c} took it"),
        ),
        QueueId::Backlog(c) => (
            Recipient::Channel(c.clone()),
            format!("its time to live ran out before anyone subscribed to {c}"),
        ),
    };
    DeliveryFailed {
        id: id.to_owned(),
        recipient,
        reason: FailureReason::Expired,
        detail,
        ack_tag: None,
    }
}
