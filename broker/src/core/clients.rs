//! Who is connected under which name, the sessions of clients (their subscriptions, kept while
//! they are away), and taking a name over from an older connection.

use super::ops::{QueueAppend, StoreOp};
use super::outlet::{OutFrame, Outlet};
use super::{
    ChannelFilter, Client, Core, InflightKind, Now, Refusal, SessionState, State, client_on,
};
use crate::encode;
use crate::maps::{HashMap, HashSet};
use crate::store::{QueueId, Session, StoredEntry, StoredMessage};
use broadcast_protocol::{ErrorCode, ServerFrame, validate_channel};
use std::sync::Arc;

/// A subscription made by [`Core::subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// Whether the `Subscribed` answer is already queued (else the caller sends it).
    pub answered: bool,
    /// Whether the subscription is new: it is remembered once the store writes taken with it
    /// are durable. Otherwise it was remembered before.
    pub new: bool,
}

impl<O: Outlet> Core<O> {
    /// Registers a connection under `name`. Returns the connection it took the name from, if
    /// any: that connection's persistent deliveries in flight go back to the queue.
    pub fn register(&mut self, name: Arc<str>, out: O) -> Option<O> {
        let st = &mut self.st;
        let queue = QueueId::Client(name.to_string());
        let queue_mode = st.queues.get(&queue).is_some_and(|m| m.holds_entries());
        let client = Client {
            name: name.clone(),
            out: out.clone(),
            inflight: HashMap::default(),
            next_live_tag: 0,
            cursor: 0,
            queue_mode,
            settled_unread: Vec::new(),
            channels: None,
        };
        let old = st.clients.insert(name.clone(), client);
        // Marked connected, on disk too when it has subscriptions: after a crash the session
        // then counts as last seen at the restart, not at an older disconnect.
        let session = st.sessions.entry(name.clone()).or_default();
        if session.last_seen_ms != Session::CONNECTED {
            session.last_seen_ms = Session::CONNECTED;
            if !session.channels.is_empty() {
                st.ops
                    .push(StoreOp::PutSession(session_record(&name, session)));
            }
        }
        if let Some(old) = &old {
            let requeued = st.requeue(&name, old);
            if let Some(c) = st.clients.get_mut(&name) {
                // Entries requeued from the older connection are drained to this one.
                c.queue_mode |= requeued;
            }
        }
        out.wake();
        old.map(|c| c.out)
    }

    /// Removes a connection, unless its name has been taken over by a newer one. Its
    /// persistent deliveries in flight go back to its queue; its subscriptions are remembered.
    pub fn unregister(&mut self, now: Now, name: &str, conn_id: u64) {
        let st = &mut self.st;
        if client_on(&mut st.clients, name, conn_id).is_none() {
            return;
        }
        let Some((name, client)) = st.clients.remove_entry(name) else {
            return;
        };
        st.requeue(&name, &client);
        st.queues.check_idle(QueueId::Client(name.to_string()));
        if let Some(s) = st.sessions.get_mut(&name) {
            s.last_seen_ms = now.wall_ms;
            if s.channels.is_empty() {
                st.sessions.remove(&name);
            } else {
                let record = session_record(&name, s);
                st.ops.push(StoreOp::PutSession(record));
            }
        }
    }

    /// Subscribes `name` to `channel`. A subscriber receives the channel's backlog, but for
    /// its own messages.
    pub fn subscribe(
        &mut self,
        name: &Arc<str>,
        conn_id: u64,
        channel: &str,
    ) -> Result<Subscribed, Refusal> {
        // A channel of a namespace is checked without it (its separator is no name's).
        validate_channel(crate::namespace::shown(channel))
            .map_err(|e| Refusal::new(ErrorCode::InvalidName, e.to_string()))?;
        let max_subscriptions = self.config.max_subscriptions;
        let st = &mut self.st;
        if client_on(&mut st.clients, name, conn_id).is_none() {
            return Err(Refusal::new(ErrorCode::Replaced, "connection was replaced"));
        }
        let State {
            sessions,
            channels,
            queues,
            clients,
            ops,
            ..
        } = st;
        // The answer is queued now, so that it precedes every delivery through the
        // subscription; when the queue is full the connection sends it itself.
        let answer = || {
            let frame = encode::frame(&ServerFrame::Subscribed {
                channel: crate::namespace::shown(channel).to_owned(),
            });
            clients
                .get(&**name)
                .is_some_and(|c| c.out.try_push(OutFrame::control(frame)).is_ok())
        };
        let session = sessions.entry(name.clone()).or_default();
        if session.channels.contains(channel) {
            return Ok(Subscribed {
                answered: answer(),
                new: false,
            });
        }
        if session.channels.len() >= max_subscriptions {
            return Err(Refusal::new(
                ErrorCode::LimitReached,
                format!("at most {max_subscriptions} subscriptions per client"),
            ));
        }
        let answered = answer();
        let ch: Arc<str> = Arc::from(channel);
        session.channels.insert(ch.clone());
        channels.entry(ch).or_default().insert(name.clone());
        ops.push(StoreOp::PutSession(session_record(name, session)));
        // A backlog holds what was sent to the channel while nobody but its sender subscribed:
        // it goes to the new subscriber, but for the subscriber's own messages, which keep
        // waiting for someone else.
        let backlog = QueueId::Backlog(channel.to_owned());
        let has_backlog = queues.get(&backlog).is_some_and(|m| m.holds_entries());
        if has_backlog {
            let to = QueueId::Client(name.to_string());
            queues.count_move(&backlog, &to);
            if let Some(c) = clients.get_mut(&**name) {
                c.queue_mode = true;
            }
            ops.push(StoreOp::Move {
                from: backlog,
                to,
                except_from: name.to_string(),
            });
        }
        Ok(Subscribed {
            answered,
            new: true,
        })
    }

    /// Restricts the channels connection `conn_id` of `name` receives queued messages
    /// through (`None`: no restriction).
    pub fn set_channel_filter(&mut self, name: &str, conn_id: u64, filter: Option<ChannelFilter>) {
        if let Some(c) = client_on(&mut self.st.clients, name, conn_id) {
            c.channels = filter;
        }
    }

    /// Whether connection `conn_id` holds `name`.
    pub fn holds(&self, name: &str, conn_id: u64) -> bool {
        super::client_on_ref(&self.st.clients, name, conn_id).is_some()
    }

    /// Removes the subscriptions of `name` that `keep` refuses, whether or not the name is
    /// connected; returns them. A name's subscriptions outlive its connections, so a
    /// connection whose identity may subscribe to less than the one before it sheds them
    /// before it is registered, and again when its rights change.
    pub fn retain_subscriptions(
        &mut self,
        name: &Arc<str>,
        keep: &(dyn Fn(&str) -> bool + Sync),
    ) -> Vec<Arc<str>> {
        let st = &mut self.st;
        let Some(session) = st.sessions.get_mut(&**name) else {
            return Vec::new();
        };
        let dropped: Vec<Arc<str>> = session
            .channels
            .iter()
            .filter(|c| !keep(c))
            .cloned()
            .collect();
        if dropped.is_empty() {
            return dropped;
        }
        for channel in &dropped {
            session.channels.remove(channel);
            remove_subscriber(&mut st.channels, channel, name);
        }
        if session.channels.is_empty() {
            st.ops.push(StoreOp::RemoveSession(name.to_string()));
            // A session left empty is forgotten, unless its name is connected.
            if session.last_seen_ms != Session::CONNECTED {
                st.sessions.remove(&**name);
            }
        } else {
            st.ops
                .push(StoreOp::PutSession(session_record(name, session)));
        }
        dropped
    }

    /// Removes a subscription; removing one that does not exist is not an error.
    pub fn unsubscribe(&mut self, name: &Arc<str>, conn_id: u64, channel: &str) {
        let st = &mut self.st;
        if client_on(&mut st.clients, name, conn_id).is_none() {
            return;
        }
        let Some(session) = st.sessions.get_mut(&**name) else {
            return;
        };
        if !session.channels.remove(channel) {
            return;
        }
        let op = if session.channels.is_empty() {
            StoreOp::RemoveSession(name.to_string())
        } else {
            StoreOp::PutSession(session_record(name, session))
        };
        remove_subscriber(&mut st.channels, channel, name);
        st.ops.push(op);
    }
}

impl<O: Outlet> State<O> {
    /// Puts a closed connection's persistent deliveries in flight back into its queue.
    /// Returns whether anything was appended.
    fn requeue(&mut self, name: &Arc<str>, client: &Client<O>) -> bool {
        let queue = QueueId::Client(name.to_string());
        let mut items = Vec::new();
        // Back in the order they were handed out: tags grow with each delivery.
        let mut inflight: Vec<_> = client.inflight.iter().collect();
        inflight.sort_unstable_by_key(|(tag, _)| **tag);
        for (_, inflight) in inflight {
            match &inflight.what {
                InflightKind::Live { entry, confirm } => {
                    let entry = StoredEntry::Message(StoredMessage {
                        redelivered: true,
                        ..entry.clone()
                    });
                    self.queues.count_enqueued(&queue, &entry);
                    // The confirmation now waits for the write instead of the acknowledgement.
                    QueueAppend::push_to(&mut items, queue.clone(), entry, Some(*confirm));
                }
                InflightKind::Queued { seq, .. } => {
                    let meta = self.queues.entry(&queue);
                    *meta.attempts.entry(*seq).or_insert(0) = inflight.attempts;
                }
            }
        }
        if items.is_empty() {
            return false;
        }
        self.ops.push(StoreOp::Append(items));
        true
    }
}

pub(super) fn session_record(name: &str, s: &SessionState) -> Session {
    Session {
        name: name.to_owned(),
        channels: s.channels.iter().map(|c| c.to_string()).collect(),
        last_seen_ms: s.last_seen_ms,
    }
}

pub(super) fn remove_subscriber(
    channels: &mut HashMap<Arc<str>, HashSet<Arc<str>>>,
    ch: &str,
    name: &str,
) {
    if let Some(subs) = channels.get_mut(ch) {
        subs.remove(name);
        if subs.is_empty() {
            channels.remove(ch);
        }
    }
}
