//! Starting a broker on a bound listener and waiting for it to stop.

use crate::config::Config;
use crate::connection::Context;
use crate::error::BrokerError;
use crate::handle::BrokerHandle;
use crate::listener;
use crate::router::{Limits, Router};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    addr: SocketAddr,
    handle: BrokerHandle,
    task: JoinHandle<()>,
}

impl Broker {
    /// Starts a broker on an already bound listener (tests bind port 0). It runs until
    /// `shutdown` is cancelled, then stops accepting, lets each connection finish the frame
    /// it is handling and write what is queued for it, says `Bye`, and stops.
    ///
    /// # Errors
    /// [`BrokerError::Config`] for an invalid configuration, [`BrokerError::DataDir`] when the
    /// data directory cannot be created, [`BrokerError::Listener`] when the listener has no
    /// local address.
    pub async fn start(
        config: Config,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<Self, BrokerError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| BrokerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let addr = listener.local_addr().map_err(BrokerError::Listener)?;
        let router = Arc::new(Router::new(Limits {
            max_payload: config.max_payload as usize,
            max_target_names: config.max_target_names,
            max_subscriptions: config.max_subscriptions,
        }));
        let drain = config.drain_timeout;
        let ctx = Arc::new(Context {
            router: router.clone(),
            config,
            shutdown: shutdown.clone(),
        });
        let handle = BrokerHandle { router, shutdown };
        let task = tokio::spawn(async move {
            let tracker = TaskTracker::new();
            listener::accept_loop(listener, ctx, &tracker).await;
            tracker.close();
            tracing::info!(connections = tracker.len(), "shutting down");
            let grace = drain + Duration::from_secs(1);
            if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
                tracing::warn!("connections still open after {grace:?}; stopping anyway");
            }
        });
        tracing::info!(%addr, "broker listening");
        Ok(Self { addr, handle, task })
    }

    /// The address the broker listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle to send messages as the broker and observe client messages.
    pub fn handle(&self) -> BrokerHandle {
        self.handle.clone()
    }

    /// Waits until the broker has shut down.
    ///
    /// # Errors
    /// [`BrokerError::Stopped`] if the broker task ended abnormally.
    pub async fn wait(self) -> Result<(), BrokerError> {
        self.task.await.map_err(|_| BrokerError::Stopped)
    }
}

/// Runs a broker on `listener` until `shutdown` is cancelled and it has stopped.
///
/// # Errors
/// As [`Broker::start`] and [`Broker::wait`].
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), BrokerError> {
    Broker::start(config, listener, shutdown)
        .await?
        .wait()
        .await
}
