//! Starting a broker on a bound listener and waiting for it to stop.

use crate::auth::Credentials;
use crate::config::{Config, ConfigError};
use crate::conn::{Context, listener, listener::Kind};
use crate::engine::Engine;
use crate::error::BrokerError;
use crate::handle::BrokerHandle;
use crate::store::{QueueStore, SledOptions, SledStore};
use crate::sweeper;
use crate::tls::TlsConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where a broker takes connections: a plaintext listener, and a TLS one beside it when
/// configured.
#[derive(Debug)]
pub struct Listeners {
    /// Plaintext clients.
    pub plain: TcpListener,
    /// TLS clients, with the configuration their connections are accepted with (replace it to
    /// renew the certificate for connections accepted afterwards).
    pub tls: Option<(TcpListener, Arc<TlsConfig>)>,
    /// HTTP clients (WebSocket at `/v1/ws`, `POST /v1/publish`), over TLS when a
    /// configuration is given.
    pub http: Option<(TcpListener, Option<Arc<TlsConfig>>)>,
}

impl From<TcpListener> for Listeners {
    fn from(plain: TcpListener) -> Self {
        Self {
            plain,
            tls: None,
            http: None,
        }
    }
}

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    handle: BrokerHandle,
    task: JoinHandle<Result<(), BrokerError>>,
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
        listener: impl Into<Listeners>,
        shutdown: CancellationToken,
    ) -> Result<Self, BrokerError> {
        config.validate()?;
        if config.data_dir.exists() && !config.data_dir.is_dir() {
            return Err(BrokerError::DataDir {
                path: config.data_dir.clone(),
                source: std::io::Error::other("it exists and is not a directory"),
            });
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|source| BrokerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let dir = config.data_dir.clone();
        let options = SledOptions {
            sync: config.store_sync,
            cache_bytes: config.store_cache_bytes,
            min_free_bytes: config.store_min_free_bytes,
        };
        let store = tokio::task::spawn_blocking(move || SledStore::open_with(&dir, &options))
            .await
            .map_err(|_| BrokerError::Stopped)??;
        Self::start_with_store(config, Arc::new(store), listener, shutdown).await
    }

    /// Starts a broker on `store` instead of the sled store in `config.data_dir` (tests use
    /// the in-memory store, or one that fails on purpose).
    ///
    /// # Errors
    /// As [`Broker::start`], and [`BrokerError::Store`] when the store cannot be read.
    pub async fn start_with_store(
        config: Config,
        store: Arc<dyn QueueStore>,
        listener: impl Into<Listeners>,
        shutdown: CancellationToken,
    ) -> Result<Self, BrokerError> {
        config.validate()?;
        let Listeners { plain, tls, http } = listener.into();
        let addr = plain.local_addr().map_err(BrokerError::Listener)?;
        let tls_addr = match &tls {
            Some((l, _)) => Some(l.local_addr().map_err(BrokerError::Listener)?),
            None => None,
        };
        let http_addr = match &http {
            Some((l, _)) => Some(l.local_addr().map_err(BrokerError::Listener)?),
            None => None,
        };
        let rt = tokio::runtime::Handle::current();
        let cfg = config.clone();
        let engine = tokio::task::spawn_blocking(move || Engine::start(cfg, store, rt))
            .await
            .map_err(|_| BrokerError::Stopped)??;
        let drain = config.drain_timeout;
        let every = config.expiry_interval;
        let partial = crate::conn::PartialFrames::new(
            config.partial_frames_max_bytes,
            config.partial_frame_wait,
        );
        let credentials = Credentials::new(&config.auth)
            .map_err(|e| ConfigError {
                field: "auth",
                reason: e.0,
            })?
            .map(Arc::new);
        let credentials = Arc::new(tokio::sync::watch::Sender::new(credentials));
        let config_for_admission = config.clone();
        let ctx = Arc::new(Context {
            engine: engine.clone(),
            config,
            shutdown: shutdown.clone(),
            partial: Arc::new(partial),
            credentials: credentials.clone(),
            admission: crate::conn::Admission::new(&config_for_admission),
        });
        let handle = BrokerHandle {
            engine: engine.clone(),
            shutdown: shutdown.clone(),
            credentials,
        };
        let task = tokio::spawn(async move {
            let tracker = TaskTracker::new();
            tracker.spawn(sweeper::run(engine.clone(), every, shutdown.clone()));
            let plain_loop =
                listener::accept_loop(plain, None, Kind::Broadcast, ctx.clone(), &tracker);
            let tls_loop = async {
                if let Some((l, config)) = tls {
                    listener::accept_loop(l, Some(config), Kind::Broadcast, ctx.clone(), &tracker)
                        .await;
                }
            };
            let http_loop = async {
                if let Some((l, config)) = http {
                    listener::accept_loop(l, config, Kind::Http, ctx.clone(), &tracker).await;
                }
            };
            tokio::join!(plain_loop, tls_loop, http_loop);
            tracker.close();
            tracing::info!(connections = tracker.len(), "shutting down");
            let grace = drain + Duration::from_secs(1);
            if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
                tracing::warn!("connections still open after {grace:?}; stopping anyway");
            }
            // Everything the connections left for the store is written before the end; a
            // final flush that fails is the broker's failure too.
            engine.persist.shutdown().await.map_err(BrokerError::Store)
        });
        tracing::info!(%addr, "broker listening");
        if let Some(tls_addr) = tls_addr {
            tracing::info!(%tls_addr, "broker listening with TLS");
        }
        if let Some(http_addr) = http_addr {
            tracing::info!(%http_addr, "broker listening for HTTP and WebSocket");
        }
        Ok(Self {
            addr,
            tls_addr,
            http_addr,
            handle,
            task,
        })
    }

    /// The address the broker listens on for plaintext clients.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the broker listens on for TLS clients, if it does.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The address of the broker's HTTP listener (WebSocket and publish API), if it has one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// A handle to send messages as the broker and observe client messages.
    pub fn handle(&self) -> BrokerHandle {
        self.handle.clone()
    }

    /// Waits until the broker has shut down.
    ///
    /// # Errors
    /// [`BrokerError::Store`] if the store's final flush failed (what it took last may not be
    /// on disk); [`BrokerError::Stopped`] if the broker task ended abnormally.
    pub async fn wait(self) -> Result<(), BrokerError> {
        self.task.await.map_err(|_| BrokerError::Stopped)?
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
