//! The `broadcast-broker` binary: it creates its data directory, serves clients, says goodbye
//! and exits cleanly on SIGTERM, and refuses an address that is in use.

use anyhow::{Context as _, bail};
use broadcast_protocol::{
    ClientFrame, DEFAULT_MAX_FRAME, FrameCodec, Hello, PROTOCOL_VERSION, ServerFrame,
};
use futures::{SinkExt as _, StreamExt as _};
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// How long the test waits for any one thing before it fails.
const WAIT: Duration = Duration::from_secs(10);

type Conn = Framed<TcpStream, FrameCodec<ServerFrame>>;

/// The broker process; killed when dropped before it exits.
struct Broker {
    child: Option<Child>,
    stderr: Option<JoinHandle<String>>,
}

impl Broker {
    fn spawn(listen: SocketAddr, data_dir: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_broadcast-broker"))
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        // Read stderr as it comes, so that the broker never blocks on a full pipe.
        let mut pipe = child.stderr.take().context("piped stderr")?;
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        });
        Ok(Self {
            child: Some(child),
            stderr: Some(stderr),
        })
    }

    fn pid(&self) -> anyhow::Result<String> {
        Ok(self.child.as_ref().context("exited")?.id().to_string())
    }

    /// Waits until the process exits, within WAIT; returns its status and everything it
    /// wrote on stderr.
    async fn exit(&mut self) -> anyhow::Result<(ExitStatus, String)> {
        let mut child = self.child.take().context("already exited")?;
        let pid = child.id().to_string();
        let waiting = tokio::task::spawn_blocking(move || child.wait());
        let status = match tokio::time::timeout(WAIT, waiting).await {
            Ok(joined) => joined??,
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                bail!("the broker did not exit within {WAIT:?}");
            }
        };
        let stderr = self.stderr.take().context("stderr already read")?;
        let stderr = tokio::task::spawn_blocking(move || stderr.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the stderr reader panicked"))?;
        Ok((status, stderr))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Connects and completes a handshake under `name`.
async fn connect(addr: SocketAddr, name: &str) -> anyhow::Result<Conn> {
    let stream = TcpStream::connect(addr).await?;
    let mut conn = Framed::new(
        stream,
        FrameCodec::new(DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME),
    );
    let hello = Hello {
        version: PROTOCOL_VERSION,
        name: Some(name.to_owned()),
        token: None,
        namespace: None,
        max_frame: DEFAULT_MAX_FRAME,
        heartbeat_ms: 0,
    };
    conn.send(&ClientFrame::Hello(hello)).await?;
    match tokio::time::timeout(WAIT, conn.next()).await {
        Err(_) => bail!("no Welcome within {WAIT:?}"),
        Ok(Some(Ok(Ok(ServerFrame::Welcome(w))))) if w.name == name => Ok(conn),
        Ok(other) => bail!("expected a Welcome, got {other:?}"),
    }
}

/// Nothing announces readiness on stdout: tries a handshake every few milliseconds until one
/// succeeds, giving up after WAIT.
async fn connect_when_ready(addr: SocketAddr, name: &str) -> anyhow::Result<Conn> {
    let attempts = async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            if let Ok(conn) = connect(addr, name).await {
                return conn;
            }
        }
    };
    tokio::time::timeout(WAIT, attempts)
        .await
        .with_context(|| format!("the broker did not accept a client on {addr}"))
}

/// Every frame until the broker closes the connection, within WAIT.
async fn until_closed(conn: &mut Conn) -> anyhow::Result<Vec<ServerFrame>> {
    let mut frames = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, conn.next()).await {
            Err(_) => bail!("the connection is still open after {WAIT:?}"),
            Ok(None) | Ok(Some(Err(_))) => return Ok(frames),
            Ok(Some(Ok(Ok(frame)))) => frames.push(frame),
            Ok(Some(Ok(Err(e)))) => bail!("malformed frame from the broker: {e}"),
        }
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

#[tokio::test]
async fn the_binary_creates_its_data_dir_serves_a_client_and_says_bye_on_sigterm()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("not").join("there");
    let addr = free_addr()?;
    let mut broker = Broker::spawn(addr, &data_dir)?;
    let mut conn = connect_when_ready(addr, "alice").await?;
    assert!(data_dir.is_dir(), "{} was not created", data_dir.display());

    let term = Command::new("kill")
        .args(["-TERM", &broker.pid()?])
        .status()?;
    assert!(term.success());
    let frames = until_closed(&mut conn).await?;
    assert!(
        matches!(frames.last(), Some(ServerFrame::Bye { .. })),
        "{frames:?}"
    );
    let (status, stderr) = broker.exit().await?;
    assert!(status.success(), "{status}: {stderr}");
    Ok(())
}

#[tokio::test]
async fn the_binary_refuses_to_start_on_an_address_in_use_and_names_it() -> anyhow::Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?;
    let dir = tempfile::tempdir()?;
    let mut broker = Broker::spawn(addr, &dir.path().join("data"))?;
    let (status, stderr) = broker.exit().await?;
    assert!(!status.success(), "{status}");
    assert!(stderr.contains(&addr.to_string()), "{stderr}");
    assert!(
        stderr.to_lowercase().contains("in use"),
        "the cause is given: {stderr}"
    );
    drop(taken);
    Ok(())
}

/// Sends a persistent message to `to` and returns the frames up to its `Accepted`.
async fn send_persistent(conn: &mut Conn, to: &str, id: &str) -> anyhow::Result<Vec<ServerFrame>> {
    let msg = broadcast_protocol::Publish {
        id: id.to_owned(),
        target: broadcast_protocol::Target::Client(to.to_owned()),
        name: None,
        data: bytes::Bytes::from_static(b"keep me"),
        persistent: true,
        ttl_ms: None,
        resent: false,
    };
    conn.send(&ClientFrame::Publish(msg)).await?;
    let mut frames = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, conn.next()).await {
            Err(_) => bail!("no Accepted for {id} within {WAIT:?}: {frames:?}"),
            Ok(Some(Ok(Ok(ServerFrame::Accepted { id: a })))) if a == id => return Ok(frames),
            Ok(Some(Ok(Ok(frame)))) => frames.push(frame),
            Ok(other) => bail!("the connection ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_data_directory_deleted_under_the_broker_stops_confirmations_and_fails_the_exit()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let addr = free_addr()?;
    let mut broker = Broker::spawn(addr, &data_dir)?;
    let mut conn = connect_when_ready(addr, "alice").await?;
    let frames = send_persistent(&mut conn, "bob", "kept-1").await?;
    assert!(frames.is_empty(), "stored without a notice: {frames:?}");

    std::fs::remove_dir_all(&data_dir)?;
    // Not stored: the sender is told, and its confirmation follows the notice.
    let frames = send_persistent(&mut conn, "bob", "lost-2").await?;
    assert!(
        frames.iter().any(|f| matches!(f, ServerFrame::DeliveryFailed(f)
            if f.id == "lost-2" && f.reason == broadcast_protocol::FailureReason::StoreUnavailable)),
        "{frames:?}"
    );
    // And refused from then on.
    let frames = send_persistent(&mut conn, "bob", "refused-3").await?;
    assert!(
        frames.iter().any(|f| matches!(f, ServerFrame::DeliveryFailed(f)
            if f.id == "refused-3" && f.reason == broadcast_protocol::FailureReason::StoreUnavailable)),
        "{frames:?}"
    );

    Command::new("kill")
        .args(["-TERM", &broker.pid()?])
        .status()?;
    let (status, stderr) = broker.exit().await?;
    assert!(
        !status.success(),
        "a clean exit after losing the data directory: {stderr}"
    );
    assert!(
        stderr.contains("no longer the one the store opened"),
        "the log says why: {stderr}"
    );
    Ok(())
}

/// Runs the binary with `args` to its exit (it must not start), with backtraces asked for;
/// returns its status and stderr.
fn refused(args: &[&str]) -> anyhow::Result<(ExitStatus, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_broadcast-broker"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .output()?;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn bad_settings_and_data_directories_are_reported_in_one_line_without_a_backtrace()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x")?;
    let file = file.display().to_string();
    for (args, says) in [
        (
            vec!["--queue-max-bytes", "10"],
            "invalid setting `queue_max_bytes`",
        ),
        (
            vec!["--data-dir", file.as_str()],
            "it exists and is not a directory",
        ),
    ] {
        let (status, stderr) = refused(&args)?;
        assert!(!status.success(), "{args:?} started");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(!stderr.contains("acktrace"), "{args:?}: {stderr}");
    }
    Ok(())
}
