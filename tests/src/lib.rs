//! Test harness of Broadcast: a real broker on a free port, a raw protocol client, a TCP proxy
//! that can freeze a connection, and the paths of the built binaries.
//!
//! Every wait here is on an event with a timeout; nothing sleeps to wait.
#![forbid(unsafe_code)]

pub mod admin;

use anyhow::{Context as _, anyhow, bail};
use broadcast_broker::store::{
    MemoryStore, QueueId, QueueInfo, QueueStore, Seq, Session, StoreError, StoredEntry,
};
use broadcast_broker::{Broker, BrokerHandle, Config};
use broadcast_protocol::{
    ClientFrame, DEFAULT_MAX_FRAME, Delivery, DeliveryFailed, ErrorCode, FrameCodec, Hello,
    MAX_ACK_TAGS, PROTOCOL_VERSION, Publish, ServerFrame, Target, Welcome, new_message_id,
};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// How long a test waits for any one event before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A broker running inside the test process on 127.0.0.1, with its own data directory.
#[derive(Debug)]
pub struct TestBroker {
    addr: SocketAddr,
    /// The HTTP listener's address (WebSocket and publish API).
    http_addr: SocketAddr,
    config: Config,
    shutdown: CancellationToken,
    broker: Option<Broker>,
    dir: Arc<tempfile::TempDir>,
    /// The store the broker runs on, when it is not the sled store in the data directory.
    store: Option<SharedStore>,
}

/// A store shared between the runs of a [`TestBroker`].
#[derive(Clone)]
struct SharedStore(Arc<dyn QueueStore>);

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedStore")
    }
}

impl TestBroker {
    /// Starts a broker with the default configuration on a free port.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts a broker on a free port after `tune` adjusted its configuration, on a store in
    /// memory that [`restart`](Self::restart) keeps. Many brokers run in one test process,
    /// and sled 0.34 coordinates every database of a process through one global lock, under
    /// which several databases busy at once can deadlock; the sled store is tested on its own
    /// (`store_conformance`) and through the broker binary, one database per process
    /// (`crash`, `binary`, `cli`), as the broker runs in production.
    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> anyhow::Result<Self> {
        Self::start_with_store(Arc::new(MemoryStore::new()), tune).await
    }

    /// Starts a broker like [`start_with`](Self::start_with), on the sled store in its data
    /// directory; for tests of the broker's own use of sled, one at a time.
    pub async fn start_with_sled(tune: impl FnOnce(&mut Config)) -> anyhow::Result<Self> {
        Self::launch(None, tune).await
    }

    /// Starts a broker on a free port on `store` instead of the sled store, after `tune`
    /// adjusted its configuration. [`restart`](Self::restart) keeps the same store.
    pub async fn start_with_store(
        store: Arc<dyn QueueStore>,
        tune: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Self> {
        Self::launch(Some(store), tune).await
    }

    /// Starts a broker on `store`, or on sled in a fresh data directory when there is none.
    async fn launch(
        store: Option<Arc<dyn QueueStore>>,
        tune: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Self> {
        let dir = Arc::new(tempfile::tempdir()?);
        let mut config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        tune(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let http_addr = http.local_addr()?;
        let listener = listeners(listener, http);
        let shutdown = CancellationToken::new();
        let broker = match &store {
            Some(store) => {
                Broker::start_with_store(config.clone(), store.clone(), listener, shutdown.clone())
                    .await?
            }
            None => Broker::start(config.clone(), listener, shutdown.clone()).await?,
        };
        Ok(Self {
            addr,
            http_addr,
            config,
            shutdown,
            broker: Some(broker),
            dir,
            store: store.map(SharedStore),
        })
    }

    /// The broker's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the broker's HTTP listener (WebSocket at `/v1/ws`, `POST /v1/publish`).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The broker's address as `ip:port`.
    pub fn url(&self) -> String {
        self.addr.to_string()
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// A handle on the running broker.
    pub fn handle(&self) -> anyhow::Result<BrokerHandle> {
        Ok(self.broker.as_ref().context("broker is stopped")?.handle())
    }

    /// Shuts the broker down and waits until it has stopped.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(b) = self.broker.take() {
            tokio::time::timeout(WAIT, b.wait())
                .await
                .context("broker did not stop")??;
        }
        Ok(())
    }

    /// Starts the broker again on the same address and data directory.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.start_again().await
    }

    /// Starts a [`stop`](Self::stop)ped broker again on the same address and data directory,
    /// so that a test can act while the broker is down.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.broker.is_some() {
            bail!("the broker is running");
        }
        let listener = listeners(
            TcpListener::bind(self.addr).await?,
            TcpListener::bind(self.http_addr).await?,
        );
        self.shutdown = CancellationToken::new();
        let broker = match &self.store {
            Some(SharedStore(store)) => {
                Broker::start_with_store(
                    self.config.clone(),
                    store.clone(),
                    listener,
                    self.shutdown.clone(),
                )
                .await?
            }
            None => Broker::start(self.config.clone(), listener, self.shutdown.clone()).await?,
        };
        self.broker = Some(broker);
        let _ = &self.dir;
        Ok(())
    }
}

/// A plaintext listener and an HTTP one.
fn listeners(plain: TcpListener, http: TcpListener) -> broadcast_broker::Listeners {
    broadcast_broker::Listeners {
        plain,
        tls: None,
        http: Some((http, None)),
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A client that speaks the wire protocol frame by frame, for testing the broker exactly.
#[derive(Debug)]
pub struct RawClient {
    io: Framed<TcpStream, FrameCodec<ServerFrame>>,
    /// The broker's welcome.
    pub welcome: Welcome,
}

impl RawClient {
    /// Connects and completes the handshake under `name`.
    pub async fn connect(addr: SocketAddr, name: Option<&str>) -> anyhow::Result<Self> {
        Self::connect_with(addr, hello(name)).await
    }

    /// Connects and sends `hello`, expecting a welcome.
    pub async fn connect_with(addr: SocketAddr, hello: Hello) -> anyhow::Result<Self> {
        let mut io = Self::open(addr).await?;
        io.send(&ClientFrame::Hello(hello)).await?;
        match next_frame(&mut io).await? {
            ServerFrame::Welcome(welcome) => Ok(Self { io, welcome }),
            other => bail!("expected Welcome, got {other:?}"),
        }
    }

    /// Connects under `name` with a socket receive buffer of about `bytes` (the kernel may
    /// round it), so that a client that does not read stops taking data soon.
    pub async fn connect_with_receive_buffer(
        addr: SocketAddr,
        name: &str,
        bytes: u32,
    ) -> anyhow::Result<Self> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_recv_buffer_size(bytes)?;
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut io = Framed::new(
            stream,
            FrameCodec::new(DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME),
        );
        io.send(&ClientFrame::Hello(hello(Some(name)))).await?;
        match next_frame(&mut io).await? {
            ServerFrame::Welcome(welcome) => Ok(Self { io, welcome }),
            other => bail!("expected Welcome, got {other:?}"),
        }
    }

    /// Opens a connection without a handshake.
    pub async fn open(
        addr: SocketAddr,
    ) -> anyhow::Result<Framed<TcpStream, FrameCodec<ServerFrame>>> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Framed::new(
            stream,
            FrameCodec::new(DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME),
        ))
    }

    /// The registered name.
    pub fn name(&self) -> &str {
        &self.welcome.name
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: ClientFrame) -> anyhow::Result<()> {
        self.io.send(&frame).await?;
        Ok(())
    }

    /// Queues one frame without flushing.
    pub async fn feed(&mut self, frame: ClientFrame) -> anyhow::Result<()> {
        self.io.feed(&frame).await?;
        Ok(())
    }

    /// Flushes queued frames.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        SinkExt::<&ClientFrame>::flush(&mut self.io).await?;
        Ok(())
    }

    /// Sends a message and returns its id.
    pub async fn publish(
        &mut self,
        target: Target,
        data: &[u8],
        persistent: bool,
    ) -> anyhow::Result<String> {
        let msg = publish(target, data, persistent);
        let id = msg.id.clone();
        self.send(ClientFrame::Publish(msg)).await?;
        Ok(id)
    }

    /// Sends a message as given (a `ttl_ms`, a chosen id...).
    pub async fn publish_message(&mut self, msg: Publish) -> anyhow::Result<String> {
        let id = msg.id.clone();
        self.send(ClientFrame::Publish(msg)).await?;
        Ok(id)
    }

    /// Acknowledges deliveries (and stored notices) by their tags, in as many `Ack` frames
    /// as the protocol's list limit requires.
    pub async fn ack(&mut self, tags: impl IntoIterator<Item = u64>) -> anyhow::Result<()> {
        let tags: Vec<u64> = tags.into_iter().collect();
        for chunk in tags.chunks(MAX_ACK_TAGS) {
            self.feed(ClientFrame::Ack {
                tags: chunk.to_vec(),
            })
            .await?;
        }
        self.flush().await
    }

    /// Subscribes and waits for the confirmation.
    pub async fn subscribe(&mut self, channel: &str) -> anyhow::Result<()> {
        self.send(ClientFrame::Subscribe {
            channel: channel.into(),
        })
        .await?;
        match self.next().await? {
            ServerFrame::Subscribed { channel: c } if c == channel => Ok(()),
            other => bail!("expected Subscribed, got {other:?}"),
        }
    }

    /// Pings and collects every frame that arrives before the pong: everything the broker
    /// produced for the frames sent before the ping.
    pub async fn sync(&mut self) -> anyhow::Result<Vec<ServerFrame>> {
        let nonce = fastrand_nonce();
        self.send(ClientFrame::Ping { nonce }).await?;
        let mut before = Vec::new();
        loop {
            match self.next().await? {
                ServerFrame::Pong { nonce: n } if n == nonce => return Ok(before),
                ServerFrame::Ping { nonce } => self.send(ClientFrame::Pong { nonce }).await?,
                other => before.push(other),
            }
        }
    }

    /// The next frame, answering broker pings on the way; fails after [`WAIT`].
    pub async fn next(&mut self) -> anyhow::Result<ServerFrame> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, next_frame(&mut self.io))
                .await
                .map_err(|_| anyhow!("no frame but pings within {WAIT:?}"))??;
            match frame {
                ServerFrame::Ping { nonce } => self.send(ClientFrame::Pong { nonce }).await?,
                other => return Ok(other),
            }
        }
    }

    /// The next frame, which must be a delivery.
    pub async fn delivery(&mut self) -> anyhow::Result<Delivery> {
        match self.next().await? {
            ServerFrame::Deliver(d) => Ok(d),
            other => bail!("expected a delivery, got {other:?}"),
        }
    }

    /// The next frame, which must be a delivery-failed notice.
    pub async fn failure(&mut self) -> anyhow::Result<DeliveryFailed> {
        match self.next().await? {
            ServerFrame::DeliveryFailed(f) => Ok(f),
            other => bail!("expected a delivery-failed notice, got {other:?}"),
        }
    }

    /// Waits until the broker closes the connection; returns the frames that came first.
    pub async fn until_closed(&mut self) -> anyhow::Result<Vec<ServerFrame>> {
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.io.next()).await {
                Err(_) => bail!("connection still open after {WAIT:?}"),
                Ok(None) | Ok(Some(Err(_))) => return Ok(frames),
                Ok(Some(Ok(Ok(f)))) => frames.push(f),
                Ok(Some(Ok(Err(e)))) => bail!("malformed frame from the broker: {e}"),
            }
        }
    }

    /// The underlying framed stream, for tests that write raw bytes.
    pub fn stream(&mut self) -> &mut Framed<TcpStream, FrameCodec<ServerFrame>> {
        &mut self.io
    }
}

async fn next_frame(
    io: &mut Framed<TcpStream, FrameCodec<ServerFrame>>,
) -> anyhow::Result<ServerFrame> {
    match tokio::time::timeout(WAIT, io.next()).await {
        Err(_) => bail!("no frame within {WAIT:?}"),
        Ok(None) => bail!("connection closed"),
        Ok(Some(r)) => Ok(r??),
    }
}

fn fastrand_nonce() -> u64 {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Waits until a broker process serves on `addr` (it answers a handshake: a `Welcome`, or
/// `Unauthorized` from a broker that requires credentials), trying every few milliseconds; fails when `exited` reports that the process ended, or after [`WAIT`].
pub async fn wait_until_serving(
    addr: SocketAddr,
    mut exited: impl FnMut() -> std::io::Result<Option<std::process::ExitStatus>>,
) -> anyhow::Result<()> {
    let ready = tokio::time::timeout(WAIT, async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            if let Some(status) = exited()? {
                bail!("the broker exited with {status} before accepting connections");
            }
            if answers_handshake(addr).await {
                return Ok(());
            }
        }
    });
    ready
        .await
        .with_context(|| format!("the broker did not accept connections on {addr}"))?
}

/// Whether a broker on `addr` answers a `Hello` with a `Welcome` or `Unauthorized`.
async fn answers_handshake(addr: SocketAddr) -> bool {
    let Ok(mut io) = RawClient::open(addr).await else {
        return false;
    };
    if io.send(&ClientFrame::Hello(hello(None))).await.is_err() {
        return false;
    }
    match next_frame(&mut io).await {
        Ok(ServerFrame::Welcome(_)) => true,
        Ok(ServerFrame::Error(e)) => e.code == ErrorCode::Unauthorized,
        _ => false,
    }
}

/// A `Hello` of this protocol version.
pub fn hello(name: Option<&str>) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        name: name.map(str::to_owned),
        token: None,
        namespace: None,
        max_frame: DEFAULT_MAX_FRAME,
        heartbeat_ms: 0,
    }
}

/// A message with a fresh id.
pub fn publish(target: Target, data: &[u8], persistent: bool) -> Publish {
    Publish {
        id: new_message_id(),
        target,
        name: None,
        data: Bytes::copy_from_slice(data),
        persistent,
        ttl_ms: None,
        resent: false,
    }
}

/// A TCP proxy between a client and the broker that can freeze: stop forwarding in both
/// directions while keeping both connections open, as a dead network path does.
#[derive(Debug, Clone)]
pub struct Proxy {
    addr: SocketAddr,
    frozen: Arc<AtomicBool>,
    thawed: Arc<Notify>,
    stop: CancellationToken,
}

impl Proxy {
    /// Starts a proxy on a free port forwarding to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let proxy = Self {
            addr: listener.local_addr()?,
            frozen: Arc::new(AtomicBool::new(false)),
            thawed: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = p.stop.cancelled() => return,
                    r = listener.accept() => r,
                };
                let Ok((client, _)) = accepted else { continue };
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(p.clone().pump(cr, sw));
                tokio::spawn(p.clone().pump(sr, cw));
            }
        });
        Ok(proxy)
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding; connections stay open.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Stops the proxy: its connections end.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Resumes forwarding.
    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
        self.thawed.notify_waiters();
    }

    async fn pump(
        self,
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
            };
            // A frozen path swallows nothing: it holds the bytes until it thaws or stops.
            while self.frozen.load(Ordering::SeqCst) {
                let thawed = self.thawed.notified();
                if !self.frozen.load(Ordering::SeqCst) {
                    break;
                }
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = thawed => {}
                }
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
}

/// Path of a binary of this workspace, built into the same target directory as the running
/// test (`cargo test --workspace` builds every binary of a package that has integration tests).
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test binary location {}", exe.display()))?;
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        bail!(
            "{} is not built; run `cargo build --workspace --bins` first",
            path.display()
        );
    }
    Ok(path)
}

/// A [`MemoryStore`] with a switch: while it is on, every write and flush fails, as a full or
/// broken disk would make them; reads keep working.
#[derive(Debug, Default)]
pub struct FailingStore {
    inner: MemoryStore,
    failing: AtomicBool,
    lost: AtomicBool,
    heals: AtomicU64,
}

impl FailingStore {
    /// A store that works until [`fail`](Self::fail) is called.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, writes and flushes fail.
    pub fn fail(&self) {
        self.failing.store(true, Ordering::SeqCst);
    }

    /// From now on, writes and flushes succeed again, as when space returns to a full disk.
    pub fn recover(&self) {
        self.failing.store(false, Ordering::SeqCst);
    }

    /// How many times the broker asked the store to heal.
    pub fn heal_attempts(&self) -> u64 {
        self.heals.load(Ordering::SeqCst)
    }

    /// From now on, [`QueueStore::check`] fails as for a data directory deleted under the
    /// broker, while writes and flushes still succeed (into files nobody will read).
    pub fn lose_directory(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }

    fn injected(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            Err(StoreError::Io("injected failure: the disk is gone".into()))
        } else {
            Ok(())
        }
    }
}

impl QueueStore for FailingStore {
    fn append(
        &self,
        queue: &QueueId,
        first_seq: Seq,
        entries: &[StoredEntry],
    ) -> Result<(), StoreError> {
        self.injected()?;
        self.inner.append(queue, first_seq, entries)
    }

    fn settle(&self, queue: &QueueId, seqs: &[Seq]) -> Result<(), StoreError> {
        self.injected()?;
        self.inner.settle(queue, seqs)
    }

    fn read(
        &self,
        queue: &QueueId,
        from: Seq,
        max: usize,
    ) -> Result<Vec<(Seq, StoredEntry)>, StoreError> {
        self.inner.read(queue, from, max)
    }

    fn expired(
        &self,
        now_ms: u64,
        after: Option<&(QueueId, Seq)>,
        max: usize,
    ) -> Result<Vec<(QueueId, Seq, StoredEntry)>, StoreError> {
        self.inner.expired(now_ms, after, max)
    }

    fn queues(&self) -> Result<Vec<QueueInfo>, StoreError> {
        self.inner.queues()
    }

    fn drop_queue(&self, queue: &QueueId) -> Result<(), StoreError> {
        self.injected()?;
        self.inner.drop_queue(queue)
    }

    fn put_session(&self, session: &Session) -> Result<(), StoreError> {
        self.injected()?;
        self.inner.put_session(session)
    }

    fn remove_session(&self, name: &str) -> Result<(), StoreError> {
        self.injected()?;
        self.inner.remove_session(name)
    }

    fn sessions(&self) -> Result<Vec<Session>, StoreError> {
        self.inner.sessions()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.injected()?;
        self.inner.flush()
    }

    fn heal(&self) -> Result<(), StoreError> {
        self.heals.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        self.flush()
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(StoreError::Io(
                "injected failure: the directory is gone".into(),
            ));
        }
        self.injected()
    }
}
