//! Persistent messages through a real broker over TCP: queues of recipients that are away,
//! remembered subscriptions, channel backlogs, acknowledgements and redelivery, expiry, queue
//! limits, notices kept for senders that are away, slow recipients, a failing store, and all of
//! it across broker restarts.

use anyhow::{Context as _, bail, ensure};
use broadcast_broker::store::QueueStore;
use broadcast_client::{ConnectOptions, Event, OutgoingMessage};
use broadcast_protocol::{
    Delivery, DeliveryFailed, FailureReason, Publish, Recipient, ServerFrame, Target,
};
use broadcast_tests::{FailingStore, RawClient, TestBroker, WAIT, publish};
use futures::StreamExt as _;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

type R = anyhow::Result<()>;

fn client(n: &str) -> Target {
    Target::Client(n.into())
}

fn channel(n: &str) -> Target {
    Target::Channel(n.into())
}

/// A persistent message with a time to live.
fn with_ttl(target: Target, data: &[u8], ttl: Duration) -> Publish {
    Publish {
        ttl_ms: Some(ttl.as_millis() as u64),
        ..publish(target, data, true)
    }
}

/// Reads frames until every id in `ids` is `Accepted`; any other frame fails.
async fn accepted(c: &mut RawClient, ids: &[String]) -> R {
    let mut waiting: HashSet<&str> = ids.iter().map(String::as_str).collect();
    while !waiting.is_empty() {
        match c.next().await? {
            ServerFrame::Accepted { id } => {
                ensure!(
                    waiting.remove(id.as_str()),
                    "Accepted for an unknown or already accepted id {id}"
                );
            }
            other => bail!(
                "expected only Accepted ({} missing), got {other:?}",
                waiting.len()
            ),
        }
    }
    Ok(())
}

/// Sends `n` persistent messages, payload the index as 4 bytes big-endian, and waits until each
/// is `Accepted`. Returns their ids in send order.
async fn send_accepted(c: &mut RawClient, target: &Target, n: u32) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n as usize);
    for i in 0..n {
        let msg = publish(target.clone(), &i.to_be_bytes(), true);
        ids.push(msg.id.clone());
        c.feed(broadcast_protocol::ClientFrame::Publish(msg))
            .await?;
    }
    c.flush().await?;
    accepted(c, &ids).await?;
    Ok(ids)
}

/// Receives one delivery per id, in that order, checks id, sender, payload index and that each
/// carries an acknowledgement tag; returns the deliveries.
async fn receive_in_order(
    c: &mut RawClient,
    ids: &[String],
    sender: &str,
) -> anyhow::Result<Vec<Delivery>> {
    let mut got = Vec::with_capacity(ids.len());
    for (i, id) in (0u32..).zip(ids) {
        let d = c
            .delivery()
            .await
            .with_context(|| format!("delivery {i}"))?;
        ensure!(
            (d.id.as_str(), d.sender.as_str(), &d.data[..], d.persistent)
                == (id.as_str(), sender, &i.to_be_bytes()[..], true),
            "delivery {i} out of order or wrong: expected {id}, got {d:?}"
        );
        ensure!(d.ack_tag.is_some(), "delivery {i} has no ack_tag: {d:?}");
        got.push(d);
    }
    Ok(got)
}

fn tags(ds: &[Delivery]) -> Vec<u64> {
    ds.iter().filter_map(|d| d.ack_tag).collect()
}

/// Checks that nothing older is waiting for `to`: `from` sends a fresh persistent message, and
/// it must be the next frame `to` receives (a queue is drained before newer messages). Acks it
/// and waits for its `Accepted`.
async fn nothing_older_waits(from: &mut RawClient, to: &mut RawClient) -> R {
    let target = client(to.name());
    let id = from.publish(target, b"marker", true).await?;
    let d = to.delivery().await?;
    ensure!(
        d.id == id,
        "expected the fresh marker first, got an older delivery: {d:?}"
    );
    to.ack(d.ack_tag).await?;
    accepted(from, &[id]).await?;
    let more = to.sync().await?;
    ensure!(more.is_empty(), "more frames after the marker: {more:?}");
    Ok(())
}

/// Waits until the broker has unregistered `name`: a non-persistent probe to it fails with
/// `NotConnected`.
async fn until_gone(prober: &mut RawClient, name: &str) -> R {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        prober.publish(client(name), b"probe", false).await?;
        let frames = prober.sync().await?;
        let gone = frames.iter().any(|f| {
            matches!(f, ServerFrame::DeliveryFailed(DeliveryFailed {
                reason: FailureReason::NotConnected, recipient: Recipient::Client(n), ..
            }) if n == name)
        });
        if gone {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{name} still registered after {WAIT:?}"
        );
        tokio::task::yield_now().await;
    }
}

async fn connect(addr: SocketAddr, name: &str) -> anyhow::Result<RawClient> {
    RawClient::connect(addr, Some(name)).await
}

#[tokio::test]
async fn an_offline_recipients_queue_is_delivered_in_order_when_it_first_connects() -> R {
    let b = TestBroker::start().await?;
    let mut alice = connect(b.addr(), "alice").await?;
    // Bob has never connected: the broker has never heard of him.
    let ids = send_accepted(&mut alice, &client("bob"), 1000).await?;

    let mut bob = connect(b.addr(), "bob").await?;
    let ds = receive_in_order(&mut bob, &ids, "alice").await?;
    for d in &ds {
        ensure!(
            !d.redelivered,
            "first delivery marked redelivered: {:?}",
            d.id
        );
        ensure!(d.channel.is_none(), "{d:?}");
    }
    bob.ack(tags(&ds)).await?;
    let rest = bob.sync().await?;
    ensure!(rest.is_empty(), "frames after the queue: {rest:?}");
    drop(bob);

    let mut bob = connect(b.addr(), "bob").await?;
    nothing_older_waits(&mut alice, &mut bob).await
}

#[tokio::test]
async fn a_queue_survives_a_broker_restart_and_acknowledged_entries_stay_gone() -> R {
    let mut b = TestBroker::start().await?;
    let mut alice = connect(b.addr(), "alice").await?;
    let ids = send_accepted(&mut alice, &client("bob"), 200).await?;
    drop(alice);

    b.restart().await?;
    let mut bob = connect(b.addr(), "bob").await?;
    // The broker cannot know whether bob saw them before the restart: they may be marked
    // redelivered. Ids, payloads and order are kept.
    let ds = receive_in_order(&mut bob, &ids, "alice").await?;
    bob.ack(tags(&ds)).await?;
    ensure!(bob.sync().await?.is_empty(), "only the queue was delivered");
    drop(bob);

    // The acknowledgements are durable too.
    b.restart().await?;
    let mut alice = connect(b.addr(), "alice").await?;
    let mut bob = connect(b.addr(), "bob").await?;
    nothing_older_waits(&mut alice, &mut bob).await
}

#[tokio::test]
async fn a_subscription_is_remembered_across_a_broker_restart_for_a_client_that_is_away() -> R {
    let mut b = TestBroker::start().await?;
    let mut bob = connect(b.addr(), "bob").await?;
    bob.subscribe("jobs").await?;
    drop(bob);

    b.restart().await?;
    let mut alice = connect(b.addr(), "alice").await?;
    let id = alice.publish(channel("jobs"), b"job 1", true).await?;
    accepted(&mut alice, std::slice::from_ref(&id)).await?;

    // Bob comes back and does not subscribe again.
    let mut bob = connect(b.addr(), "bob").await?;
    let d = bob.delivery().await?;
    ensure!(
        (d.id.as_str(), d.channel.as_deref(), &d.data[..])
            == (id.as_str(), Some("jobs"), &b"job 1"[..]),
        "{d:?}"
    );
    bob.ack(d.ack_tag).await?;

    // And he is still subscribed now that he is connected.
    let id = alice.publish(channel("jobs"), b"job 2", true).await?;
    let d = bob.delivery().await?;
    ensure!(
        (d.id.as_str(), d.channel.as_deref()) == (id.as_str(), Some("jobs")),
        "{d:?}"
    );
    bob.ack(d.ack_tag).await?;
    accepted(&mut alice, &[id]).await
}

#[tokio::test]
async fn a_channel_backlog_goes_to_the_first_subscriber_only() -> R {
    let b = TestBroker::start().await?;
    let mut alice = connect(b.addr(), "alice").await?;
    let ids = send_accepted(&mut alice, &channel("news"), 3).await?;

    let mut carol = connect(b.addr(), "carol").await?;
    carol.subscribe("news").await?;
    let mut got = Vec::new();
    for i in 0u32..3 {
        let d = carol.delivery().await?;
        ensure!(
            d.channel.as_deref() == Some("news") && d.data[..] == i.to_be_bytes()[..],
            "{d:?}"
        );
        got.push(d);
    }
    ensure!(
        got.iter().map(|d| &d.id).eq(&ids),
        "backlog out of order: {got:?}"
    );
    carol.ack(tags(&got)).await?;

    let mut dave = connect(b.addr(), "dave").await?;
    dave.subscribe("news").await?;
    // A fresh message reaches both subscribers; dave's first delivery must be that one.
    let id = alice.publish(channel("news"), b"fresh", true).await?;
    for c in [&mut dave, &mut carol] {
        let d = c.delivery().await?;
        ensure!(
            d.id == id,
            "{} got an old backlog entry first: {d:?}",
            c.name()
        );
        c.ack(d.ack_tag).await?;
    }
    accepted(&mut alice, &[id]).await?;
    ensure!(dave.sync().await?.is_empty(), "dave got more");
    ensure!(carol.sync().await?.is_empty(), "carol got more");
    Ok(())
}

#[tokio::test]
async fn messages_to_absent_group_members_and_clients_in_a_channel_are_kept_for_them() -> R {
    let b = TestBroker::start().await?;
    let mut alice = connect(b.addr(), "alice").await?;
    let group = Target::Group(vec!["bob".into(), "carol".into()]);
    let to_group = alice.publish(group, b"group", true).await?;
    let in_channel = Target::ClientInChannel {
        client: "bob".into(),
        channel: "alerts".into(),
    };
    let to_bob_in_alerts = alice.publish(in_channel, b"alert", true).await?;
    accepted(&mut alice, &[to_group.clone(), to_bob_in_alerts.clone()]).await?;

    let mut bob = connect(b.addr(), "bob").await?;
    let d1 = bob.delivery().await?;
    let d2 = bob.delivery().await?;
    ensure!(
        (d1.id.as_str(), d1.channel.as_deref()) == (to_group.as_str(), None),
        "{d1:?}"
    );
    ensure!(
        (d2.id.as_str(), d2.channel.as_deref()) == (to_bob_in_alerts.as_str(), Some("alerts")),
        "{d2:?}"
    );
    let mut carol = connect(b.addr(), "carol").await?;
    let d = carol.delivery().await?;
    ensure!(d.id == to_group, "{d:?}");
    Ok(())
}

#[tokio::test]
async fn a_message_whose_ttl_runs_out_in_a_queue_is_reported_expired_and_never_delivered() -> R {
    let b = TestBroker::start_with(|c| c.expiry_interval = Duration::from_millis(20)).await?;
    let mut alice = connect(b.addr(), "alice").await?;
    let msg = with_ttl(client("bob"), b"soon stale", Duration::from_millis(100));
    let id = alice.publish_message(msg).await?;
    let (mut accepted_seen, mut expired) = (false, None);
    while !accepted_seen || expired.is_none() {
        match alice.next().await? {
            ServerFrame::Accepted { id: a } if a == id && !accepted_seen => accepted_seen = true,
            ServerFrame::DeliveryFailed(f) if expired.is_none() => expired = Some(f),
            other => bail!("unexpected {other:?}"),
        }
    }
    let f = expired.context("no notice")?;
    ensure!(
        (f.id.as_str(), &f.recipient, f.reason, f.ack_tag)
            == (
                id.as_str(),
                &Recipient::Client("bob".into()),
                FailureReason::Expired,
                None
            ),
        "{f:?}"
    );

    let mut bob = connect(b.addr(), "bob").await?;
    nothing_older_waits(&mut alice, &mut bob).await
}

#[tokio::test]
async fn a_full_queue_refuses_further_messages_with_queue_full_and_each_is_still_accepted() -> R {
    let b = TestBroker::start_with(|c| c.queue_max_messages = 3).await?;
    let mut alice = connect(b.addr(), "alice").await?;
    let mut ids = Vec::new();
    for i in 0u32..4 {
        ids.push(alice.publish(client("bob"), &i.to_be_bytes(), true).await?);
    }
    let mut accepted_ids = Vec::new();
    let mut failures = Vec::new();
    while accepted_ids.len() < 4 {
        match alice.next().await? {
            ServerFrame::Accepted { id } => accepted_ids.push(id),
            ServerFrame::DeliveryFailed(f) => {
                ensure!(
                    !accepted_ids.contains(&f.id),
                    "the notice came after the Accepted of {}",
                    f.id
                );
                failures.push(f);
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    ensure!(
        accepted_ids.iter().collect::<HashSet<_>>() == ids.iter().collect(),
        "{accepted_ids:?}"
    );
    ensure!(failures.len() == 1, "{failures:?}");
    let f = &failures[0];
    ensure!(
        (f.id.as_str(), &f.recipient, f.reason)
            == (
                ids[3].as_str(),
                &Recipient::Client("bob".into()),
                FailureReason::QueueFull
            ),
        "{f:?}"
    );
    ensure!(alice.sync().await?.is_empty(), "nothing more for alice");

    let mut bob = connect(b.addr(), "bob").await?;
    let ds = receive_in_order(&mut bob, &ids[..3], "alice").await?;
    bob.ack(tags(&ds)).await?;
    // The acknowledgements are processed (the queue has room again) before the next message.
    ensure!(bob.sync().await?.is_empty(), "only the three");
    nothing_older_waits(&mut alice, &mut bob).await
}

#[tokio::test]
async fn a_notice_for_a_sender_that_is_away_waits_for_it_and_goes_once_acknowledged() -> R {
    let b = TestBroker::start_with(|c| c.expiry_interval = Duration::from_millis(20)).await?;
    let mut carol = connect(b.addr(), "carol").await?;
    let mut alice = connect(b.addr(), "alice").await?;
    let msg = with_ttl(client("bob"), b"x", Duration::from_millis(500));
    let id = alice.publish_message(msg).await?;
    accepted(&mut alice, std::slice::from_ref(&id)).await?;
    drop(alice);
    until_gone(&mut carol, "alice").await?;

    // Carol's own message to bob expires after alice's: once carol hears of hers, alice's
    // notice has been dealt with.
    let marker = carol
        .publish_message(with_ttl(client("bob"), b"y", Duration::from_millis(500)))
        .await?;
    accepted(&mut carol, std::slice::from_ref(&marker)).await?;
    let f = carol.failure().await?;
    ensure!(
        (f.id.as_str(), f.reason) == (marker.as_str(), FailureReason::Expired),
        "{f:?}"
    );

    let mut alice = connect(b.addr(), "alice").await?;
    let f = alice.failure().await?;
    ensure!(
        (f.id.as_str(), &f.recipient, f.reason)
            == (
                id.as_str(),
                &Recipient::Client("bob".into()),
                FailureReason::Expired
            ),
        "{f:?}"
    );
    let tag = f
        .ack_tag
        .context("a notice kept for an absent sender carries an ack_tag")?;
    alice.ack([tag]).await?;
    ensure!(alice.sync().await?.is_empty(), "one notice only");
    drop(alice);
    until_gone(&mut carol, "alice").await?;

    let mut alice = connect(b.addr(), "alice").await?;
    nothing_older_waits(&mut carol, &mut alice).await
}

#[tokio::test]
async fn an_unacknowledged_delivery_is_sent_again_after_the_ack_timeout_with_the_same_id() -> R {
    let b = TestBroker::start_with(|c| c.ack_timeout = Duration::from_millis(100)).await?;
    let mut alice = connect(b.addr(), "alice").await?;
    let mut bob = connect(b.addr(), "bob").await?;
    let id = alice.publish(client("bob"), b"ack me", true).await?;
    let first = bob.delivery().await?;
    ensure!(
        first.id == id && !first.redelivered && first.ack_tag.is_some(),
        "{first:?}"
    );
    // Not acknowledged: no confirmation.
    let frames = alice.sync().await?;
    ensure!(frames.is_empty(), "confirmed before the ack: {frames:?}");

    let again = bob.delivery().await?;
    ensure!(again.id == id && again.redelivered, "{again:?}");
    ensure!(
        again.data == first.data && again.ack_tag.is_some(),
        "{again:?}"
    );
    bob.ack(again.ack_tag).await?;
    accepted(&mut alice, std::slice::from_ref(&id)).await?;
    // Further copies may have been on their way before the ack; each is marked.
    for f in bob.sync().await? {
        match f {
            ServerFrame::Deliver(d) if d.id == id && d.redelivered => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_delivery_never_acknowledged_is_given_up_after_max_attempts_and_its_sender_told() -> R {
    let b = TestBroker::start_with(|c| {
        c.ack_timeout = Duration::from_millis(50);
        c.max_attempts = 2;
    })
    .await?;
    let mut alice = connect(b.addr(), "alice").await?;
    let mut bob = connect(b.addr(), "bob").await?;
    let id = alice.publish(client("bob"), b"ignored", true).await?;
    let f = alice.failure().await?;
    ensure!(
        (f.id.as_str(), &f.recipient, f.reason)
            == (
                id.as_str(),
                &Recipient::Client("bob".into()),
                FailureReason::AttemptsExhausted
            ),
        "{f:?}"
    );
    accepted(&mut alice, std::slice::from_ref(&id)).await?;
    let mut copies = Vec::new();
    for f in bob.sync().await? {
        match f {
            ServerFrame::Deliver(d) if d.id == id => copies.push(d.redelivered),
            other => bail!("unexpected {other:?}"),
        }
    }
    ensure!(
        copies == [false, true],
        "two attempts, the second marked: {copies:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_connected_recipient_gets_a_persistent_message_at_once_and_the_sender_is_confirmed_after_the_ack()
-> R {
    let b = TestBroker::start().await?;
    let mut alice = connect(b.addr(), "alice").await?;
    let mut bob = connect(b.addr(), "bob").await?;
    let id = alice.publish(client("bob"), b"now", true).await?;
    let d = bob.delivery().await?;
    ensure!(
        (d.id.as_str(), d.persistent, d.redelivered) == (id.as_str(), true, false),
        "{d:?}"
    );
    let tag = d
        .ack_tag
        .context("a persistent delivery carries an ack_tag")?;
    let frames = alice.sync().await?;
    ensure!(frames.is_empty(), "confirmed before the ack: {frames:?}");
    bob.ack([tag]).await?;
    accepted(&mut alice, &[id]).await
}

#[tokio::test]
async fn unacknowledged_deliveries_go_back_to_the_queue_when_the_recipient_disconnects() -> R {
    let b = TestBroker::start().await?;
    let mut alice = connect(b.addr(), "alice").await?;
    let mut bob = connect(b.addr(), "bob").await?;
    let mut ids = Vec::new();
    for i in 0u32..20 {
        ids.push(alice.publish(client("bob"), &i.to_be_bytes(), true).await?);
    }
    receive_in_order(&mut bob, &ids, "alice").await?;
    ensure!(alice.sync().await?.is_empty(), "nothing confirmed yet");
    drop(bob);
    // Back in bob's queue, the messages are safe: confirmed.
    accepted(&mut alice, &ids).await?;

    let mut bob = connect(b.addr(), "bob").await?;
    let mut ds = Vec::new();
    for _ in &ids {
        ds.push(bob.delivery().await?);
    }
    let got: Vec<&str> = ds.iter().map(|d| d.id.as_str()).collect();
    ensure!(
        got.iter().collect::<HashSet<_>>()
            == ids
                .iter()
                .map(String::as_str)
                .collect::<HashSet<_>>()
                .iter()
                .collect(),
        "not the same messages: {got:?}"
    );
    let unmarked: Vec<&str> = ds
        .iter()
        .filter(|d| !d.redelivered)
        .map(|d| d.id.as_str())
        .collect();
    ensure!(unmarked.is_empty(), "not marked redelivered: {unmarked:?}");
    let order: Vec<u32> = ds
        .iter()
        .map(|d| u32::from_be_bytes(d.data[..4].try_into().unwrap_or_default()))
        .collect();
    ensure!(
        order.windows(2).all(|w| w[0] < w[1]),
        "redelivered out of their original order: {order:?}"
    );
    bob.ack(tags(&ds)).await?;
    nothing_older_waits(&mut alice, &mut bob).await
}

/// Messages of the slow-recipient tests: 64 KiB, the index in the first 4 bytes.
const SLOW_N: u32 = 200;

fn big_payload(i: u32) -> Vec<u8> {
    let mut p = vec![0u8; 64 * 1024];
    p[..4].copy_from_slice(&i.to_be_bytes());
    p
}

/// A broker with small outbound queues, alice, and bob whose socket holds little.
async fn slow_setup() -> anyhow::Result<(TestBroker, RawClient, RawClient)> {
    let b = TestBroker::start_with(|c| {
        c.outbound_frames = 16;
        c.outbound_bytes = c.max_frame() as usize;
    })
    .await?;
    let alice = connect(b.addr(), "alice").await?;
    let mut bob = RawClient::connect_with_receive_buffer(b.addr(), "bob", 16 * 1024).await?;
    ensure!(bob.sync().await?.is_empty());
    Ok((b, alice, bob))
}

/// Alice sends the 200 messages to bob; returns their ids.
async fn send_big(alice: &mut RawClient) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for i in 0..SLOW_N {
        let msg = publish(client("bob"), &big_payload(i), true);
        let id = tokio::time::timeout(WAIT, alice.publish_message(msg))
            .await
            .with_context(|| format!("the broker stopped taking alice's messages at {i}"))??;
        ids.push(id);
    }
    Ok(ids)
}

/// Bob reads the 200 messages, acknowledging each, and yielding between them when `slowly`.
/// Returns their ids in arrival order.
async fn bob_reads(bob: &mut RawClient, slowly: bool) -> anyhow::Result<Vec<String>> {
    let mut got = Vec::new();
    for i in 0..SLOW_N {
        let d = bob
            .delivery()
            .await
            .map_err(|e| anyhow::anyhow!("message {i}: {e:#}"))?;
        ensure!(
            d.data[..] == big_payload(i)[..],
            "message {i} out of order: {:?}",
            &d.data[..4]
        );
        bob.ack(d.ack_tag).await?;
        got.push(d.id);
        if slowly {
            for _ in 0..16 {
                tokio::task::yield_now().await;
            }
        }
    }
    Ok(got)
}

/// Reads `Accepted` frames into `confirmed` until `done` holds; any other frame fails.
async fn collect_accepted(
    alice: &mut RawClient,
    confirmed: &mut HashSet<String>,
    done: impl Fn(&HashSet<String>) -> bool,
) -> R {
    while !done(confirmed) {
        match alice.next().await {
            Ok(ServerFrame::Accepted { id }) => {
                confirmed.insert(id);
            }
            Ok(other) => bail!("unexpected {other:?}"),
            Err(e) => bail!("{e:#} ({} messages confirmed so far)", confirmed.len()),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_too_slow_for_its_outbound_queue_gets_every_persistent_message_in_order() -> R {
    let (_b, mut alice, mut bob) = slow_setup().await?;
    let reader = tokio::spawn(async move {
        let got = bob_reads(&mut bob, true).await?;
        ensure!(bob.sync().await?.is_empty(), "each message once");
        anyhow::Ok(got)
    });
    let ids = send_big(&mut alice).await?;
    let mut confirmed = HashSet::new();
    collect_accepted(&mut alice, &mut confirmed, |c| c.len() == ids.len()).await?;
    ensure!(
        confirmed == ids.iter().cloned().collect(),
        "every message confirmed, none failed"
    );
    let got = reader.await??;
    ensure!(got == ids, "bob got every message, in order");
    Ok(())
}

#[tokio::test]
async fn a_recipient_that_neither_reads_nor_acknowledges_does_not_hold_up_the_sender() -> R {
    let (_b, mut alice, mut bob) = slow_setup().await?;
    // Bob reads nothing. What does not fit his connection waits in his queue on disk, and is
    // confirmed as such: alice can send everything, and the last message, at least, is
    // confirmed before bob reads anything.
    let ids = send_big(&mut alice)
        .await
        .context("while bob reads nothing")?;
    let last = ids[ids.len() - 1].clone();
    let mut confirmed = HashSet::new();
    collect_accepted(&mut alice, &mut confirmed, |c| c.contains(&last))
        .await
        .context("the last message was not confirmed while bob does not read")?;
    let got = bob_reads(&mut bob, false).await?;
    ensure!(got == ids, "bob got every message, in order");
    collect_accepted(&mut alice, &mut confirmed, |c| c.len() == ids.len()).await?;
    ensure!(bob.sync().await?.is_empty(), "each message once");
    Ok(())
}

#[tokio::test]
async fn a_final_flush_that_fails_is_not_a_clean_stop() -> R {
    let store = Arc::new(FailingStore::new());
    let mut b = TestBroker::start_with_store(store.clone() as Arc<dyn QueueStore>, |_| {}).await?;
    let mut alice = connect(b.addr(), "alice").await?;
    send_accepted(&mut alice, &client("bob"), 1).await?;
    store.fail();
    // A supervisor must see that what the store took last may not be on disk.
    let Err(e) = b.stop().await else {
        bail!("the broker stopped cleanly although its final flush failed");
    };
    ensure!(
        format!("{e:#}").contains("injected failure"),
        "the error names the store's failure: {e:#}"
    );
    Ok(())
}

#[tokio::test]
async fn a_failing_store_refuses_persistent_messages_while_other_traffic_flows() -> R {
    let store = Arc::new(FailingStore::new());
    let b = TestBroker::start_with_store(store.clone() as Arc<dyn QueueStore>, |_| {}).await?;
    let mut alice = connect(b.addr(), "alice").await?;
    let mut carol = connect(b.addr(), "carol").await?;
    // The store works: a message for bob is kept.
    let kept = send_accepted(&mut alice, &client("bob"), 1).await?;

    store.fail();
    for attempt in 0..2 {
        let id = alice.publish(client("bob"), b"lost?", true).await?;
        let f = alice
            .failure()
            .await
            .with_context(|| format!("send {attempt}"))?;
        ensure!(
            (f.id.as_str(), &f.recipient, f.reason)
                == (
                    id.as_str(),
                    &Recipient::Client("bob".into()),
                    FailureReason::StoreUnavailable
                ),
            "send {attempt}: {f:?}"
        );
        // Every recipient has an outcome: the notice, then the confirmation.
        accepted(&mut alice, &[id]).await?;
    }

    let id = alice.publish(client("carol"), b"still here", false).await?;
    ensure!(alice.sync().await?.is_empty(), "delivered without a notice");
    let d = carol.delivery().await?;
    ensure!(
        (d.id.as_str(), d.persistent, d.ack_tag) == (id.as_str(), false, None),
        "{d:?}"
    );

    // What was kept before the failure is still delivered.
    let mut bob = connect(b.addr(), "bob").await?;
    receive_in_order(&mut bob, &kept, "alice").await?;
    Ok(())
}

#[tokio::test]
async fn a_broker_whose_data_directory_is_unusable_fails_to_start_naming_it() -> R {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x")?;
    let data_dir = file.clone();
    let started = TestBroker::start_with_sled(move |c| c.data_dir = data_dir).await;
    let err = match started {
        Ok(_) => bail!("a broker started on a file as its data directory"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains(&file.display().to_string()),
        "the error does not name the directory: {err}"
    );

    // A directory that cannot be read (meaningful only without the privilege to ignore it).
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked)?;
    std::fs::write(locked.join("junk"), b"x")?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000))?;
    if std::fs::read_dir(&locked).is_err() {
        let data_dir = locked.clone();
        let started = TestBroker::start_with_sled(move |c| c.data_dir = data_dir).await;
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755))?;
        let err = match started {
            Ok(_) => bail!("a broker started on an unreadable data directory"),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            err.contains(&locked.display().to_string()),
            "the error does not name the directory: {err}"
        );
    } else {
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_message_sent_through_the_library_while_the_broker_is_down_is_delivered_once()
-> R {
    let mut b = TestBroker::start().await?;
    let options = |name: &str| {
        ConnectOptions::new()
            .name(name)
            .reconnect_delay(Duration::from_millis(10), Duration::from_millis(100))
            .connect_timeout(WAIT)
    };
    let alice = options("alice").connect(b.url()).await?;
    let bob = options("bob").connect(b.url()).await?;
    let mut alice_events = alice.events();
    let mut direct = bob.direct_messages().context("bob's direct stream")?;

    b.stop().await?;
    loop {
        let e = tokio::time::timeout(WAIT, alice_events.next())
            .await
            .context("no disconnection")?
            .context("events ended")?;
        if matches!(e, Event::Disconnected { .. }) {
            break;
        }
    }
    let sender = alice.clone();
    let confirmed = tokio::spawn(async move {
        sender
            .send_confirmed(OutgoingMessage::to_client("bob", "while down"))
            .await
    });
    b.start_again().await?;
    // Bob acknowledges when he takes the message from his stream; only then is it confirmed.
    let m = tokio::time::timeout(WAIT, direct.next())
        .await
        .context("bob got nothing")?
        .context("bob's stream ended")?;
    let id = tokio::time::timeout(WAIT, confirmed)
        .await
        .context("send_confirmed did not resolve")???;
    ensure!(
        (m.id.as_str(), &*m.sender, &m.data[..]) == (id.as_str(), "alice", &b"while down"[..]),
        "{m:?}"
    );

    // Nothing else is on its way to bob: a later message is the next one he sees.
    let end = alice
        .send_confirmed(OutgoingMessage::to_client("bob", "end"))
        .await?;
    let m = tokio::time::timeout(WAIT, direct.next())
        .await
        .context("bob got no end mark")?
        .context("bob's stream ended")?;
    ensure!(m.id == end, "bob saw another message first: {m:?}");
    Ok(())
}

#[tokio::test]
async fn an_unsubscribed_client_that_is_away_no_longer_gets_the_channels_messages() -> R {
    let b = TestBroker::start().await?;
    let mut bob = connect(b.addr(), "bob").await?;
    bob.subscribe("jobs").await?;
    bob.send(broadcast_protocol::ClientFrame::Unsubscribe {
        channel: "jobs".into(),
    })
    .await?;
    let frames = bob.sync().await?;
    ensure!(
        matches!(&frames[..], [ServerFrame::Unsubscribed { channel }] if channel == "jobs"),
        "{frames:?}"
    );
    drop(bob);
    let mut carol = connect(b.addr(), "carol").await?;
    until_gone(&mut carol, "bob").await?;

    let mut alice = connect(b.addr(), "alice").await?;
    // Nobody subscribes any more: the message waits in the channel's backlog, not for bob.
    send_accepted(&mut alice, &channel("jobs"), 1).await?;
    let mut bob = connect(b.addr(), "bob").await?;
    nothing_older_waits(&mut alice, &mut bob).await
}

#[tokio::test]
async fn a_non_persistent_message_is_never_stored() -> R {
    let store = Arc::new(broadcast_broker::store::MemoryStore::new());
    let b = TestBroker::start_with_store(store.clone() as Arc<dyn QueueStore>, |_| {}).await?;
    let mut alice = connect(b.addr(), "alice").await?;
    let to_bob = alice.publish(client("bob"), b"now or never", false).await?;
    let to_news = alice
        .publish(channel("news"), b"now or never", false)
        .await?;
    let frames = alice.sync().await?;
    let reasons: Vec<(&str, FailureReason)> = frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::DeliveryFailed(f) => Some((f.id.as_str(), f.reason)),
            _ => None,
        })
        .collect();
    ensure!(
        reasons
            == [
                (to_bob.as_str(), FailureReason::NotConnected),
                (to_news.as_str(), FailureReason::NoSubscribers)
            ],
        "{frames:?}"
    );
    let stored: Vec<_> = store
        .queues()?
        .into_iter()
        .filter(|q| q.pending > 0)
        .collect();
    ensure!(
        stored.is_empty(),
        "non-persistent messages stored: {stored:?}"
    );
    let mut bob = connect(b.addr(), "bob").await?;
    nothing_older_waits(&mut alice, &mut bob).await
}

#[tokio::test]
async fn queues_left_empty_are_forgotten_so_names_used_once_take_no_room() -> R {
    let store = Arc::new(broadcast_broker::store::MemoryStore::new());
    let b = TestBroker::start_with_store(store.clone() as Arc<dyn QueueStore>, |c| {
        c.expiry_interval = Duration::from_millis(20)
    })
    .await?;
    let mut alice = connect(b.addr(), "alice").await?;
    // Bob takes his message and leaves.
    let to_bob = send_accepted(&mut alice, &client("bob"), 1).await?;
    let mut bob = connect(b.addr(), "bob").await?;
    let got = bob.delivery().await?;
    ensure!(got.id == to_bob[0], "{got:?}");
    bob.ack(got.ack_tag).await?;
    bob.sync().await?;
    drop(bob);
    until_gone(&mut alice, "bob").await?;
    // Fifty names that never connect, and a channel nobody subscribes to: every message expires.
    let mut ids = Vec::new();
    for i in 0..50 {
        let msg = with_ttl(
            client(&format!("ghost-{i}")),
            b"boo",
            Duration::from_millis(50),
        );
        ids.push(alice.publish_message(msg).await?);
    }
    let msg = with_ttl(channel("empty-hall"), b"echo", Duration::from_millis(50));
    ids.push(alice.publish_message(msg).await?);
    let (mut accepted, mut expired) = (HashSet::new(), HashSet::new());
    while accepted.len() < ids.len() || expired.len() < ids.len() {
        match alice.next().await? {
            ServerFrame::Accepted { id } => accepted.insert(id),
            ServerFrame::DeliveryFailed(f) if f.reason == FailureReason::Expired => {
                expired.insert(f.id)
            }
            other => bail!("unexpected {other:?}"),
        };
    }
    // A message confirmed after the last expiry: the store has applied everything before it.
    send_accepted(&mut alice, &client("carol"), 1).await?;
    let queues: Vec<String> = store
        .queues()?
        .into_iter()
        .map(|q| q.queue.to_string())
        .collect();
    ensure!(
        queues == [r#"queue of client "carol""#],
        "queues left in the store: {queues:?}"
    );
    // A forgotten name starts anew and gets what is sent to it.
    let again = send_accepted(&mut alice, &client("ghost-7"), 2).await?;
    let mut ghost = connect(b.addr(), "ghost-7").await?;
    receive_in_order(&mut ghost, &again, "alice").await?;
    Ok(())
}

#[tokio::test]
async fn a_store_that_can_no_longer_make_writes_durable_is_noticed_without_a_write() -> R {
    let store = Arc::new(FailingStore::new());
    let b = TestBroker::start_with_store(store.clone() as Arc<dyn QueueStore>, |_| {}).await?;
    let mut alice = connect(b.addr(), "alice").await?;
    send_accepted(&mut alice, &client("bob"), 1).await?;
    // Flushes still succeed; only the broker's own look at the store tells.
    store.lose_directory();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !send_refused(&mut alice, "bob").await?.1 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "persistent messages still confirmed {WAIT:?} after the store lost its directory"
        );
    }
    Ok(())
}

/// Sends a persistent message to `to` and reads its answers up to its `Accepted`; returns
/// its id and whether the store refused it (`StoreUnavailable`).
async fn send_refused(alice: &mut RawClient, to: &str) -> anyhow::Result<(String, bool)> {
    let id = alice.publish(client(to), b"stored?", true).await?;
    let mut refused = false;
    loop {
        match alice.next().await? {
            ServerFrame::Accepted { id: a } if a == id => return Ok((id, refused)),
            ServerFrame::DeliveryFailed(f)
                if f.id == id && f.reason == FailureReason::StoreUnavailable =>
            {
                refused = true
            }
            other => bail!("unexpected {other:?}"),
        }
    }
}

/// Sends persistent messages to `to` until one is confirmed without a `StoreUnavailable`
/// notice, within WAIT; returns its id.
async fn until_stored(alice: &mut RawClient, to: &str) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (id, refused) = send_refused(alice, to).await?;
        if !refused {
            return Ok(id);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "persistent messages still refused {WAIT:?} after the store recovered"
        );
    }
}

#[tokio::test]
async fn a_store_that_recovers_takes_writes_again_and_no_acknowledgement_made_meanwhile_is_lost()
-> R {
    let store = Arc::new(FailingStore::new());
    let mut b = TestBroker::start_with_store(store.clone() as Arc<dyn QueueStore>, |_| {}).await?;
    let mut alice = connect(b.addr(), "alice").await?;
    let kept = send_accepted(&mut alice, &client("bob"), 3).await?;

    store.fail();
    // Bob takes his messages and acknowledges them while the store takes no writes.
    let mut bob = connect(b.addr(), "bob").await?;
    let got = receive_in_order(&mut bob, &kept, "alice").await?;
    bob.ack(tags(&got)).await?;
    bob.sync().await?;
    let id = alice.publish(client("carol"), b"refused", true).await?;
    let f = alice.failure().await?;
    ensure!(
        (f.id.as_str(), f.reason) == (id.as_str(), FailureReason::StoreUnavailable),
        "{f:?}"
    );
    accepted(&mut alice, &[id]).await?;
    // The broker tries to heal while the store still fails (and must keep what it owes).
    let deadline = tokio::time::Instant::now() + WAIT;
    while store.heal_attempts() < 2 {
        ensure!(
            send_refused(&mut alice, "carol").await?.1,
            "a write was taken"
        );
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no attempt to heal within {WAIT:?}"
        );
    }

    // Space returns: the store takes writes again, without a restart.
    store.recover();
    let stored = until_stored(&mut alice, "carol").await?;

    // Across a restart, bob's acknowledgements held and carol's message was kept.
    drop(bob);
    b.restart().await?;
    let mut alice = connect(b.addr(), "alice").await?;
    let mut bob = connect(b.addr(), "bob").await?;
    nothing_older_waits(&mut alice, &mut bob).await?;
    let mut carol = connect(b.addr(), "carol").await?;
    let d = carol.delivery().await?;
    ensure!(d.id == stored, "{d:?}");
    Ok(())
}
