//! The client library against a real broker over TCP: every target kind, failure notices,
//! reconnection after a broker restart and after a half-open connection, a long burst, name
//! takeover and a full send buffer.

use anyhow::{Context as _, bail, ensure};
use broadcast_client::{
    Client, ConnectOptions, ErrorCode, Event, Events, FailureReason, Message, OutgoingMessage,
    Recipient, SendError, Target,
};
use broadcast_tests::{Proxy, RawClient, TestBroker, WAIT};
use futures::{FutureExt as _, Stream, StreamExt as _};
use std::future::Future;
use std::time::Duration;

type R = anyhow::Result<()>;

/// Options of every client here: a name, quick reconnections, and attempts that never give up
/// before the test does.
fn options(name: &str) -> ConnectOptions {
    ConnectOptions::new()
        .name(name)
        .reconnect_delay(Duration::from_millis(10), Duration::from_millis(100))
        .connect_timeout(WAIT)
}

async fn connect(b: &TestBroker, name: &str) -> anyhow::Result<Client> {
    Ok(options(name).connect(b.url()).await?)
}

/// The next item of a stream; fails after [`WAIT`] or when the stream ends.
async fn next<S: Stream + Unpin>(stream: &mut S, what: &str) -> anyhow::Result<S::Item> {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .with_context(|| format!("no {what} within {WAIT:?}"))?
        .with_context(|| format!("the stream of {what} ended"))
}

/// The output of `f` if it is ready at once. Outside tokio's cooperative budget, which would
/// otherwise make a ready stream look empty after a hundred or so items in one task poll.
fn now<F: Future>(f: F) -> Option<F::Output> {
    tokio::task::unconstrained(f).now_or_never()
}

/// Every event already raised, without waiting.
fn raised(events: &mut Events) -> Vec<Event> {
    let mut seen = Vec::new();
    while let Some(Some(event)) = now(events.next()) {
        seen.push(event);
    }
    seen
}

/// Whether a stream holds nothing right now.
fn is_empty<S: Stream + Unpin>(stream: &mut S) -> bool {
    now(stream.next()).is_none()
}

fn check(m: &Message, id: &str, channel: Option<&str>, data: &str) {
    assert_eq!(
        (m.id.as_str(), &*m.sender, m.channel.as_deref(), &m.data[..]),
        (id, "alice", channel, data.as_bytes()),
        "{m:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_target_kind_reaches_its_recipients_with_the_id_and_sender() -> R {
    let b = TestBroker::start().await?;
    let alice = connect(&b, "alice").await?;
    let bob = connect(&b, "bob").await?;
    let carol = connect(&b, "carol").await?;
    let mut alice_events = alice.events();
    let mut alice_direct = alice.direct_messages().context("alice's direct stream")?;
    let mut bob_direct = bob.direct_messages().context("bob's direct stream")?;
    let mut carol_direct = carol.direct_messages().context("carol's direct stream")?;
    let mut bob_news = bob.subscribe("news").await?;
    let mut carol_news = carol.subscribe("news").await?;
    let mut carol_sport = carol.subscribe("sport").await?;
    let send = |m: OutgoingMessage| alice.send(m.persistent(false));

    let id = send(OutgoingMessage::to_client("bob", "one")).await?;
    check(&next(&mut bob_direct, "to_client").await?, &id, None, "one");

    let id = send(OutgoingMessage::to_group(["bob", "carol"], "group")).await?;
    check(
        &next(&mut bob_direct, "to_group").await?,
        &id,
        None,
        "group",
    );
    check(
        &next(&mut carol_direct, "to_group").await?,
        &id,
        None,
        "group",
    );

    let id = send(OutgoingMessage::to_channel("news", "channel")).await?;
    check(
        &next(&mut bob_news, "to_channel").await?,
        &id,
        Some("news"),
        "channel",
    );
    check(
        &next(&mut carol_news, "to_channel").await?,
        &id,
        Some("news"),
        "channel",
    );

    // Carol subscribes to both channels: she gets the message once, on one of them.
    let id = send(OutgoingMessage::to_channels(["news", "sport"], "channels")).await?;
    check(
        &next(&mut bob_news, "to_channels").await?,
        &id,
        Some("news"),
        "channels",
    );
    let m = tokio::time::timeout(WAIT, async {
        tokio::select! {
            m = carol_news.next() => m,
            m = carol_sport.next() => m,
        }
    })
    .await
    .context("to_channels did not reach carol")?
    .context("carol's subscriptions ended")?;
    let through = m
        .channel
        .clone()
        .context("a channel message has a channel")?;
    assert!(&*through == "news" || &*through == "sport", "{m:?}");
    check(&m, &id, Some(&through), "channels");

    let id = send(OutgoingMessage::to_client_in_channel(
        "carol",
        "sport",
        "in channel",
    ))
    .await?;
    check(
        &next(&mut carol_sport, "to_client_in_channel").await?,
        &id,
        Some("sport"),
        "in channel",
    );

    let id = send(OutgoingMessage::to_all("all")).await?;
    check(&next(&mut bob_direct, "to_all").await?, &id, None, "all");
    check(&next(&mut carol_direct, "to_all").await?, &id, None, "all");

    alice.flush().await?;
    let notices = raised(&mut alice_events);
    assert!(notices.is_empty(), "every delivery was made: {notices:?}");

    // Nobody got anything more. A client hands deliveries to its streams in arrival order, so
    // once a last direct message has arrived, any earlier extra delivery would be waiting.
    let end = send(OutgoingMessage::to_group(["bob", "carol"], "end")).await?;
    assert_eq!(next(&mut bob_direct, "end mark").await?.id, end);
    assert_eq!(next(&mut carol_direct, "end mark").await?.id, end);
    assert!(is_empty(&mut bob_news), "bob got a channel message twice");
    assert!(
        is_empty(&mut carol_news),
        "carol got a channel message twice"
    );
    assert!(
        is_empty(&mut carol_sport),
        "carol got a channel message twice"
    );
    let end = bob
        .send(OutgoingMessage::to_client("alice", "end").persistent(false))
        .await?;
    let m = next(&mut alice_direct, "bob's message").await?;
    assert_eq!(
        (m.id, &*m.sender),
        (end, "bob"),
        "the sender got none of its own messages"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_is_an_event_of_the_sender_by_the_time_flush_returns() -> R {
    let b = TestBroker::start().await?;
    let alice = connect(&b, "alice").await?;
    let mut events = alice.events();
    let id = alice
        .send(OutgoingMessage::to_client("nobody", "hello?").persistent(false))
        .await?;
    alice.flush().await?;
    let event = now(events.next())
        .context("flush returned before the failure notice was raised")?
        .context("the event stream ended")?;
    let Event::DeliveryFailed {
        id: failed,
        recipient,
        reason,
        detail,
    } = event
    else {
        bail!("expected a delivery failure, got {event:?}");
    };
    assert_eq!(
        (failed, recipient, reason),
        (
            id,
            Recipient::Client("nobody".into()),
            FailureReason::NotConnected
        )
    );
    assert!(!detail.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_restart_the_client_reconnects_resubscribes_and_sends_what_it_queued_in_order()
-> R {
    let mut b = TestBroker::start().await?;
    // Alice reaches the broker through a proxy, which the test freezes while the broker comes
    // back: her reconnection gets through only once bob is back to receive what she queued.
    let proxy = Proxy::start(b.addr()).await?;
    let alice = options("alice").connect(proxy.addr().to_string()).await?;
    let mut events = alice.events();
    let mut news = alice.subscribe("news").await?;
    let mut bob = RawClient::connect(b.addr(), Some("bob")).await?;
    let id = bob
        .publish(Target::Channel("news".into()), b"before", false)
        .await?;
    assert_eq!(next(&mut news, "channel message").await?.id, id);

    b.stop().await?;
    let event = next(&mut events, "event").await?;
    assert!(matches!(event, Event::Disconnected { .. }), "{event:?}");
    let mut queued = Vec::new();
    for i in 0..50u32 {
        let m = OutgoingMessage::to_client("bob", i.to_be_bytes().to_vec()).persistent(false);
        queued.push(alice.send(m).await?);
    }

    proxy.freeze();
    b.start_again().await?;
    let mut bob = RawClient::connect(b.addr(), Some("bob")).await?;
    proxy.thaw();

    let mut attempts = Vec::new();
    loop {
        match next(&mut events, "event").await? {
            Event::Reconnecting { attempt, .. } => attempts.push(attempt),
            Event::Connected { name } => {
                assert_eq!(name, "alice");
                break;
            }
            other => bail!("unexpected event while reconnecting: {other:?}"),
        }
    }
    let expected: Vec<u32> = (1..).take(attempts.len()).collect();
    assert!(!attempts.is_empty(), "no Reconnecting event");
    assert_eq!(attempts, expected);

    for (i, id) in (0u32..).zip(&queued) {
        let d = bob.delivery().await?;
        assert_eq!(
            (d.id.as_str(), d.sender.as_str(), &d.data[..]),
            (id.as_str(), "alice", &i.to_be_bytes()[..]),
            "message {i}"
        );
    }
    let id = bob
        .publish(Target::Channel("news".into()), b"after", false)
        .await?;
    assert!(bob.sync().await?.is_empty(), "alice is subscribed again");
    let m = next(&mut news, "channel message after the restart").await?;
    assert_eq!((m.id, &m.data[..]), (id, &b"after"[..]));
    alice.flush().await?;
    let notices = raised(&mut events);
    assert!(notices.is_empty(), "{notices:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_half_open_connection_is_dropped_by_the_heartbeat_and_the_client_reconnects() -> R
{
    let b = TestBroker::start().await?;
    let proxy = Proxy::start(b.addr()).await?;
    let carol = options("carol")
        .heartbeat(Duration::from_millis(500))
        .connect(proxy.addr().to_string())
        .await?;
    let mut events = carol.events();
    let mut direct = carol.direct_messages().context("the direct stream")?;

    // Both TCP connections stay open; nothing gets through.
    proxy.freeze();
    let reason = loop {
        match next(&mut events, "event").await? {
            Event::Disconnected { reason } => break reason,
            Event::Reconnecting { .. } | Event::Connected { .. } => {}
            other => bail!("unexpected event: {other:?}"),
        }
    };
    assert!(reason.contains("nothing received"), "{reason}");

    // The reconnection attempt is held by the frozen proxy until it thaws.
    proxy.thaw();
    loop {
        match next(&mut events, "event").await? {
            Event::Connected { name } => {
                assert_eq!(name, "carol");
                break;
            }
            Event::Reconnecting { .. } => {}
            other => bail!("unexpected event while reconnecting: {other:?}"),
        }
    }
    let mut dave = RawClient::connect(b.addr(), Some("dave")).await?;
    let id = dave
        .publish(Target::Client("carol".into()), b"still there?", false)
        .await?;
    assert!(dave.sync().await?.is_empty(), "carol is connected again");
    let m = next(&mut direct, "direct message").await?;
    assert_eq!((m.id, &*m.sender), (id, "dave"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_100_000_messages_arrives_complete_and_in_order() -> R {
    const N: u32 = 100_000;
    // Default limits: when bob reads more slowly than alice sends, the broker makes alice
    // wait for room instead of dropping (the next test is about a recipient that does not
    // keep up at all).
    let b = TestBroker::start().await?;
    let alice = connect(&b, "alice").await?;
    let bob = connect(&b, "bob").await?;
    let mut events = alice.events();
    let mut direct = bob.direct_messages().context("the direct stream")?;
    let reader = tokio::spawn(async move {
        let (mut expected, mut lost, mut behind) = (0u32, 0u32, 0u32);
        loop {
            let m = next(&mut direct, "message of the burst").await?;
            if m.data[..] == b"end"[..] {
                break;
            }
            let seq = u32::from_be_bytes(<[u8; 4]>::try_from(&m.data[..])?);
            if seq < expected {
                behind += 1;
            } else {
                lost += seq - expected;
                expected = seq + 1;
            }
        }
        lost += N - expected;
        anyhow::Ok((lost, behind))
    });
    for i in 0..N {
        let m = OutgoingMessage::to_client("bob", i.to_be_bytes().to_vec()).persistent(false);
        alice.send(m).await?;
    }
    alice
        .send(OutgoingMessage::to_client("bob", "end").persistent(false))
        .await?;
    alice.flush().await?;
    let notices = raised(&mut events);
    let (lost, behind) = reader.await??;
    assert_eq!((lost, behind), (0, 0), "lost; duplicated or out of order");
    assert!(notices.is_empty(), "{:?}", notices.first());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_to_a_client_that_does_not_keep_up_arrives_in_order_or_is_reported() -> R {
    const N: usize = 1000;
    let b = TestBroker::start_with(|c| c.outbound_frames = 16).await?;
    let alice = connect(&b, "alice").await?;
    // Bob holds one message and reads no more until the test reads it.
    let bob = options("bob").receive_buffer(1).connect(b.url()).await?;
    let mut direct = bob.direct_messages().context("the direct stream")?;
    let mut events = alice.events();
    let mut ids = Vec::with_capacity(N);
    for _ in 0..N {
        let m = OutgoingMessage::to_client("bob", vec![7u8; 32 * 1024]).persistent(false);
        ids.push(alice.send(m).await?);
    }
    alice.flush().await?;
    // At most one notice per message: fewer than an event stream holds.
    let mut reported = Vec::new();
    for event in raised(&mut events) {
        match event {
            Event::DeliveryFailed {
                id,
                recipient,
                reason: FailureReason::SlowConsumer,
                ..
            } if recipient == Recipient::Client("bob".into()) => reported.push(id),
            other => bail!("unexpected event: {other:?}"),
        }
    }
    assert!(
        !reported.is_empty(),
        "32 MiB do not fit in a 16-frame queue and the socket buffers"
    );

    let mut arrived = Vec::new();
    for _ in 0..N - reported.len() {
        arrived.push(next(&mut direct, "message").await?.id);
    }
    let end = alice
        .send(OutgoingMessage::to_client("bob", "end").persistent(false))
        .await?;
    assert_eq!(
        next(&mut direct, "end mark").await?.id,
        end,
        "nothing else arrived"
    );
    let not_reported: Vec<String> = ids
        .into_iter()
        .filter(|id| !reported.contains(id))
        .collect();
    assert!(
        arrived == not_reported,
        "every message that was not reported arrived, in order"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_client_with_the_same_name_takes_it_over_and_the_first_stops_for_good() -> R {
    let b = TestBroker::start().await?;
    let first = connect(&b, "dup").await?;
    let mut first_events = first.events();
    let second = connect(&b, "dup").await?;
    let mut second_events = second.events();
    let mut second_direct = second.direct_messages().context("the direct stream")?;

    let event = next(&mut first_events, "event").await?;
    assert!(
        matches!(
            event,
            Event::ServerError {
                code: ErrorCode::Replaced,
                ..
            }
        ),
        "{event:?}"
    );
    let event = next(&mut first_events, "event").await?;
    assert!(matches!(event, Event::Disconnected { .. }), "{event:?}");
    assert_eq!(next(&mut first_events, "event").await?, Event::Closed);
    assert_eq!(
        first
            .send(OutgoingMessage::to_client("second", "x").persistent(false))
            .await,
        Err(SendError::Closed)
    );

    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    let id = alice
        .publish(Target::Client("dup".into()), b"to the new one", false)
        .await?;
    assert!(alice.sync().await?.is_empty());
    assert_eq!(next(&mut second_direct, "direct message").await?.id, id);
    second.flush().await?;
    let notices = raised(&mut second_events);
    assert!(
        notices.is_empty(),
        "the first client did not take the name back: {notices:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_send_fails_with_buffer_full_while_the_broker_is_down_and_the_queue_goes_out_after() -> R
{
    let mut b = TestBroker::start().await?;
    let alice = options("alice").send_buffer(4).connect(b.url()).await?;
    let mut events = alice.events();
    b.stop().await?;
    let event = next(&mut events, "event").await?;
    assert!(matches!(event, Event::Disconnected { .. }), "{event:?}");

    let message = || OutgoingMessage::to_client("nobody", "x").persistent(false);
    let mut queued = Vec::new();
    for _ in 0..4 {
        queued.push(alice.try_send(message())?);
    }
    assert_eq!(alice.try_send(message()), Err(SendError::BufferFull));

    // Once back, the queued messages go out in order; each fails as nobody is connected.
    b.start_again().await?;
    alice.flush().await?;
    let failed: Vec<String> = raised(&mut events)
        .into_iter()
        .filter_map(|e| match e {
            Event::DeliveryFailed {
                id,
                reason: FailureReason::NotConnected,
                ..
            } => Some(id),
            Event::Reconnecting { .. } | Event::Connected { .. } => None,
            other => panic!("unexpected event: {other:?}"),
        })
        .collect();
    assert_eq!(failed, queued);
    ensure!(
        alice.try_send(message()).is_ok(),
        "room again once the queue is sent"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_sent_in_order_with_one_result_per_message() -> R {
    let b = TestBroker::start().await?;
    // A send buffer smaller than the batch: the batch goes in chunks, still in order.
    let alice = options("alice").send_buffer(64).connect(b.url()).await?;
    let bob = connect(&b, "bob").await?;
    let mut direct = bob.direct_messages().context("the direct stream")?;
    let mut batch: Vec<OutgoingMessage> = (0..200u32)
        .map(|i| OutgoingMessage::to_client("bob", i.to_be_bytes().to_vec()).persistent(false))
        .collect();
    // One message is not valid: it alone fails, in its place.
    batch.insert(
        100,
        OutgoingMessage::to_client("not a name", "x").persistent(false),
    );
    let results = alice.send_batch(batch).await;
    assert_eq!(results.len(), 201);
    for (i, r) in results.iter().enumerate() {
        match (i, r) {
            (100, Err(SendError::InvalidName(_))) => {}
            (100, other) => bail!("the invalid message gave {other:?}"),
            (_, Ok(_)) => {}
            (_, Err(e)) => bail!("message {i} failed: {e}"),
        }
    }
    alice.flush().await?;
    for i in 0..200u32 {
        let m = next(&mut direct, "message of the batch").await?;
        assert_eq!(&m.data[..], &i.to_be_bytes()[..], "message {i}");
    }
    // Sent by a client that has stopped, every message fails as closed.
    alice.close().await;
    let results = alice
        .send_batch([OutgoingMessage::to_client("bob", "late")])
        .await;
    assert!(
        matches!(results[..], [Err(SendError::Closed)]),
        "{results:?}"
    );
    Ok(())
}
