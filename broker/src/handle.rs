//! Embedding API: send messages as the broker and observe what clients send.

use crate::BROKER_SENDER;
use crate::auth::{AuthError, AuthSettings, Credentials};
use crate::engine::Engine;
use crate::error::BrokerError;
use broadcast_protocol::{DeliveryFailed, Publish, Target, new_message_id};
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// A message a client sent, as seen by an observer.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The sender's namespace; `None`: the default namespace.
    pub namespace: Option<String>,
    /// The sending client's name (within its namespace).
    pub sender: String,
    /// The message as the client sent it.
    pub message: Publish,
}

/// A cheap, cloneable handle on a running broker.
#[derive(Debug, Clone)]
pub struct BrokerHandle {
    pub(crate) engine: Arc<Engine>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) credentials: Arc<watch::Sender<Option<Arc<Credentials>>>>,
}

impl BrokerHandle {
    /// Replaces the credentials clients must present, while the broker serves. Settings that
    /// fail validation change nothing, and so do settings without any credential when the
    /// broker requires them (turning them off takes a restart). Every connection is then checked again before it
    /// handles its next frame: one whose token no longer proves its identity, or whose
    /// identity may no longer have its name, is closed with `Unauthorized`; subscriptions its
    /// rights no longer cover are dropped (`Unsubscribed`).
    ///
    /// # Errors
    /// [`AuthError`] naming what is wrong; the credentials in force stay.
    pub fn reload_auth(&self, settings: &AuthSettings) -> Result<(), AuthError> {
        let credentials = Credentials::new(settings)?.map(Arc::new);
        if credentials.is_none() && self.credentials.borrow().is_some() {
            // An emptied [auth] table would open a broker that may listen beyond loopback
            // to anyone, names and namespaces included.
            return Err(AuthError(
                "a reload cannot turn credentials off: restart the broker without them".into(),
            ));
        }
        self.credentials.send_replace(credentials);
        Ok(())
    }

    /// Sends a non-persistent message from the broker itself (sender name `$broker`) and
    /// returns its id and a notice for every recipient that did not get it.
    ///
    /// # Errors
    /// [`BrokerError::InvalidMessage`] when the target or payload is not valid;
    /// [`BrokerError::Stopped`] after shutdown.
    pub fn publish(
        &self,
        target: Target,
        name: Option<String>,
        data: Bytes,
    ) -> Result<(String, Vec<DeliveryFailed>), BrokerError> {
        self.publish_in(None, target, name, data)
    }

    /// Sends a complete message from the broker itself (sender name `$broker`), returning a
    /// notice for every recipient that did not get it. Messages from the broker are delivered
    /// to the clients connected now and are never kept: `persistent` is ignored.
    ///
    /// # Errors
    /// As [`BrokerHandle::publish`].
    pub fn publish_message(&self, msg: &Publish) -> Result<Vec<DeliveryFailed>, BrokerError> {
        self.publish_message_in(None, msg)
    }

    /// As [`BrokerHandle::publish`], to the clients of `namespace` (`None`: the default
    /// namespace); `All` reaches that namespace only.
    ///
    /// # Errors
    /// As [`BrokerHandle::publish`], and [`BrokerError::InvalidMessage`] for a namespace name
    /// that is not valid.
    pub fn publish_in(
        &self,
        namespace: Option<&str>,
        target: Target,
        name: Option<String>,
        data: Bytes,
    ) -> Result<(String, Vec<DeliveryFailed>), BrokerError> {
        let msg = Publish {
            id: new_message_id(),
            target,
            name,
            data,
            persistent: false,
            ttl_ms: None,
            resent: false,
        };
        let failed = self.publish_message_in(namespace, &msg)?;
        Ok((msg.id, failed))
    }

    /// As [`BrokerHandle::publish_message`], in `namespace` (`None`: the default namespace).
    ///
    /// # Errors
    /// As [`BrokerHandle::publish_in`].
    pub fn publish_message_in(
        &self,
        namespace: Option<&str>,
        msg: &Publish,
    ) -> Result<Vec<DeliveryFailed>, BrokerError> {
        if self.shutdown.is_cancelled() {
            return Err(BrokerError::Stopped);
        }
        if let Some(ns) = namespace {
            crate::auth::validate_namespace(ns).map_err(BrokerError::InvalidMessage)?;
        }
        self.engine
            .validate(msg)
            .map_err(|r| BrokerError::InvalidMessage(r.message))?;
        let sender = Arc::from(crate::namespace::scoped(namespace, BROKER_SENDER));
        let msg = crate::namespace::scope(namespace, msg);
        let routed = self.engine.route(&sender, &msg);
        // The broker does not wait for slow recipients: they are reported at once.
        let mut failed = routed.failed;
        for blocked in routed.blocked {
            self.engine.metrics.failed(blocked.notice.reason);
            failed.push(blocked.notice);
        }
        for notice in &mut failed {
            crate::encode::shown_notice(notice);
        }
        Ok(failed)
    }

    /// A receiver of every message clients send from now on. It never slows routing: a
    /// receiver that falls more than 1,024 messages behind gets `RecvError::Lagged`.
    pub fn observe(&self) -> broadcast::Receiver<Arc<Observed>> {
        self.engine.observe()
    }

    /// Names of the clients connected now.
    pub fn connected_clients(&self) -> Vec<String> {
        self.engine.connected()
    }

    /// Asks the broker to shut down: stop accepting, finish frames in flight, say bye.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}
