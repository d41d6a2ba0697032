//! The `broadcast` command against the `broadcast-broker` binary: what a user does in their
//! first five minutes.

use anyhow::{Context as _, bail};
use broadcast_protocol::{FailureReason, ServerFrame, Target};
use broadcast_tests::{RawClient, WAIT, bin_path, wait_until_serving};
use serde_json::Value;
use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

type R = anyhow::Result<()>;

/// A free port on 127.0.0.1, found by binding port 0 and letting it go.
fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The `broadcast-broker` binary running on a free port; killed when dropped.
struct BrokerProcess {
    addr: SocketAddr,
    /// Its admin API.
    admin: SocketAddr,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl BrokerProcess {
    /// Starts the broker and waits until it completes a handshake.
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let addr = free_addr()?;
        let admin = free_addr()?;
        let mut child = Command::new(bin_path("broadcast-broker")?)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        // Nothing announces readiness on stdout.
        wait_until_serving(addr, || child.try_wait()).await?;
        Ok(Self {
            addr,
            admin,
            _child: child,
            _dir: dir,
        })
    }
}

/// The `broadcast` command with `--server addr`; killed if dropped before it exits.
fn broadcast(addr: SocketAddr) -> anyhow::Result<Command> {
    let mut cmd = Command::new(bin_path("broadcast")?);
    cmd.arg("--server")
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    Ok(cmd)
}

/// Runs a command to its end, within WAIT.
async fn output(mut cmd: Command) -> anyhow::Result<Output> {
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .context("the command did not finish in time")?
        .context("cannot run the command")
}

/// The next line of a child's stdout, within WAIT.
async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> anyhow::Result<Value> {
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .context("no line within the wait")??
        .context("stdout closed")?;
    serde_json::from_str(&line).with_context(|| format!("not one JSON object: {line:?}"))
}

fn json_lines(stdout: &[u8]) -> anyhow::Result<Vec<Value>> {
    std::str::from_utf8(stdout)?
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l:?}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_prints_the_message_that_send_sent_as_one_json_line() -> R {
    let broker = BrokerProcess::start().await?;
    let mut cmd = broadcast(broker.addr)?;
    cmd.args(["listen", "--name", "bob", "--count", "2"])
        .stdout(Stdio::piped());
    let mut listen = cmd.spawn()?;
    let mut lines = BufReader::new(listen.stdout.take().context("piped stdout")?).lines();

    // `listen` prints nothing when it is ready, and `send` to a client that is not connected
    // yet would fail. So a probe client sends bob non-persistent messages until one is not
    // refused as "not connected": from then on bob is connected, and exactly one probe
    // (the first one delivered) is printed, before anything sent later. Hence `--count 2`.
    let mut probe = RawClient::connect(broker.addr, Some("probe")).await?;
    let probe_id = tokio::time::timeout(WAIT, async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            let id = probe
                .publish(Target::Client("bob".into()), b"probe", false)
                .await?;
            match probe.sync().await?.as_slice() {
                [] => return anyhow::Ok(id),
                [ServerFrame::DeliveryFailed(f)] if f.reason == FailureReason::NotConnected => {}
                other => bail!("unexpected answer to the probe: {other:?}"),
            }
        }
    })
    .await
    .context("`listen` did not connect")??;
    let first = next_line(&mut lines).await?;
    assert_eq!(
        (&first["id"], &first["sender"], &first["data"]),
        (
            &Value::from(probe_id),
            &Value::from("probe"),
            &Value::from("probe")
        )
    );

    let mut send = broadcast(broker.addr)?;
    send.args(["send", "--name", "alice", "--to", "bob", "hello"]);
    let sent = output(send).await?;
    let stderr = String::from_utf8_lossy(&sent.stderr);
    assert!(sent.status.success(), "{:?}: {stderr}", sent.status);
    let report = json_lines(&sent.stdout)?;
    assert_eq!(report.len(), 1, "{report:?}");
    assert!(
        report[0]["event"] == "sent" || report[0]["event"] == "accepted",
        "{report:?}"
    );

    let line = next_line(&mut lines).await?;
    assert_eq!(line["sender"], "alice", "{line}");
    assert_eq!(line["data"], "hello", "{line}");
    assert_eq!(line["channel"], Value::Null, "{line}");
    assert_eq!(line["id"], report[0]["id"], "{line}");
    let status = tokio::time::timeout(WAIT, listen.wait())
        .await
        .context("listen did not exit after --count messages")??;
    assert!(status.success(), "{status}");
    let rest = tokio::time::timeout(WAIT, lines.next_line()).await??;
    assert_eq!(rest, None, "nothing more is printed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_a_client_that_is_not_connected_prints_the_failure_and_exits_non_zero() -> R {
    let broker = BrokerProcess::start().await?;
    let mut send = broadcast(broker.addr)?;
    send.args(["send", "--persistent", "false", "--to", "nobody", "hello"]);
    let out = output(send).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{:?}: {stderr}", out.status);
    let lines = json_lines(&out.stdout)?;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["event"], "delivery_failed", "{line}");
    assert_eq!(line["reason"], "not_connected", "{line}");
    assert_eq!(line["recipient"]["client"], "nobody", "{line}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_a_broker_that_is_not_running_names_the_address_and_exits_non_zero() -> R {
    let addr = free_addr()?;
    let mut send = broadcast(addr)?;
    send.args(["send", "--to", "bob", "hello"]);
    let out = output(send).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "unreachable: {:?}", out.status);
    assert!(stderr.contains(&addr.to_string()), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

/// The value of a row of `broadcast stats`' table.
fn stats_row(table: &str, label: &str) -> Option<String> {
    table
        .lines()
        .find(|l| l.starts_with(label) && l[label.len()..].starts_with(' '))
        .map(|l| l[label.len()..].trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_queues_print_what_the_admin_api_reports() -> R {
    let broker = BrokerProcess::start().await?;
    let admin = format!("http://{}", broker.admin);
    let mut alice = RawClient::connect(broker.addr, Some("alice")).await?;
    for i in 0..3u8 {
        alice
            .publish(Target::Client("away".into()), &[i], true)
            .await?;
    }
    let mut accepted = 0;
    while accepted < 3 {
        if let ServerFrame::Accepted { .. } = alice.next().await? {
            accepted += 1;
        }
    }

    let mut cmd = broadcast(broker.addr)?;
    cmd.args(["stats", "--admin", &admin]);
    let out = output(cmd).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout)?;
    assert_eq!(
        stats_row(&table, "queued messages").as_deref(),
        Some("3"),
        "{table}"
    );
    assert_eq!(
        stats_row(&table, "clients").as_deref(),
        Some("1"),
        "{table}"
    );
    assert_eq!(
        stats_row(&table, "ready").as_deref(),
        Some("yes"),
        "{table}"
    );
    assert!(stats_row(&table, "connections").is_some(), "{table}");

    let mut cmd = broadcast(broker.addr)?;
    cmd.args(["stats", "--json", "--admin", &admin]);
    let out = output(cmd).await?;
    let server = &json_lines(&out.stdout)?[0];
    assert_eq!(server["queued_messages"], 3);
    assert_eq!(server["totals"]["messages_published"], 3);

    let mut cmd = broadcast(broker.addr)?;
    cmd.args(["queues", "--admin", &admin]);
    let out = output(cmd).await?;
    let table = String::from_utf8(out.stdout)?;
    let away: Vec<&str> = table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("away"))
        .with_context(|| format!("no queue of away in {table}"))?
        .split_whitespace()
        .collect();
    assert_eq!(away.len(), 6, "{table}");
    assert_eq!(
        (away[0], away[1], away[2], away[4], away[5]),
        ("client", "away", "3", "0", "no"),
        "{table}"
    );

    // Without the admin API there, the command says where it looked and exits 3.
    let mut cmd = broadcast(broker.addr)?;
    cmd.args(["stats", "--admin", &format!("http://{}", free_addr()?)]);
    let out = output(cmd).await?;
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API"));
    Ok(())
}
