//! Messages whose time to live ran out, and sessions that expired.

use super::{InflightKind, Router, lock, now_ms, remove_subscriber};
use crate::maps::HashMap;
use crate::persist::Command;
use crate::store::{QueueId, Seq, StoredEntry};
use broadcast_protocol::{DeliveryFailed, FailureReason, Recipient};

impl Router {
    /// Settles expired entries the store found, except those handed to a connection and
    /// waiting for its acknowledgement, and tells each sender. Returns the store commands.
    pub(crate) fn expire(&self, found: Vec<(QueueId, Seq, StoredEntry)>) -> Vec<Command> {
        let mut settle: HashMap<QueueId, Vec<Seq>> = HashMap::default();
        let mut notices = Vec::new();
        {
            let mut st = lock(&self.state);
            for (queue, seq, entry) in found {
                let in_flight = match &queue {
                    QueueId::Client(name) => st.clients.get(name.as_str()).is_some_and(|c| {
                        c.inflight.values().any(
                            |i| matches!(&i.what, InflightKind::Queued { seq: s, .. } if *s == seq),
                        )
                    }),
                    QueueId::Backlog(_) => false,
                };
                if in_flight {
                    continue;
                }
                Self::count_settled(&mut st, &queue, seq, entry.size());
                settle.entry(queue.clone()).or_default().push(seq);
                match entry {
                    StoredEntry::Message(m) => {
                        let (recipient, detail) = match &queue {
                            QueueId::Client(c) => (
                                Recipient::Client(c.clone()),
                                format!("its time to live ran out before {c} took it"),
                            ),
                            QueueId::Backlog(c) => (
                                Recipient::Channel(c.clone()),
                                format!("its time to live ran out before anyone subscribed to {c}"),
                            ),
                        };
                        let notice = DeliveryFailed {
                            id: m.id,
                            recipient,
                            reason: FailureReason::Expired,
                            detail,
                            ack_tag: None,
                        };
                        notices.push((m.sender, notice));
                    }
                    StoredEntry::Notice { notice, .. } => {
                        tracing::warn!(%queue, id = %notice.id, "a delivery-failed notice expired before its sender came back");
                    }
                }
            }
        }
        for (sender, notice) in notices {
            self.notify(&sender, notice);
        }
        settle
            .into_iter()
            .map(|(q, seqs)| Command::Settle(q, seqs))
            .collect()
    }

    /// Forgets the subscriptions of clients away for longer than `session_expiry`. Returns
    /// the store commands.
    pub(crate) fn expire_sessions(&self) -> Vec<Command> {
        let cutoff = now_ms().saturating_sub(self.config.session_expiry.as_millis() as u64);
        let mut st = lock(&self.state);
        let expired: Vec<_> = st
            .sessions
            .iter()
            .filter(|(name, s)| !st.clients.contains_key(&***name) && s.last_seen_ms < cutoff)
            .map(|(name, _)| name.clone())
            .collect();
        let mut cmds = Vec::new();
        for name in expired {
            if let Some(s) = st.sessions.remove(&name) {
                for ch in &s.channels {
                    remove_subscriber(&mut st.channels, ch, &name);
                }
                tracing::info!(client = %name, "session expired");
                cmds.push(Command::RemoveSession(name.to_string(), None));
            }
        }
        cmds
    }
}
