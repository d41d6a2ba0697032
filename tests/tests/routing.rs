//! Routing through a real broker over TCP, frame by frame: every target kind, sender
//! exclusion, name takeover, and a failure notice for every delivery that cannot be made.

use broadcast_protocol::{ClientFrame, ErrorCode, FailureReason, Recipient, ServerFrame, Target};
use broadcast_tests::{RawClient, TestBroker, hello};

type R = anyhow::Result<()>;

fn client(n: &str) -> Target {
    Target::Client(n.into())
}

#[tokio::test]
async fn a_direct_message_reaches_the_named_client_with_its_id_and_sender() -> R {
    let b = TestBroker::start().await?;
    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    let mut bob = RawClient::connect(b.addr(), Some("bob")).await?;
    let id = alice.publish(client("bob"), b"hello", false).await?;
    assert!(
        alice.sync().await?.is_empty(),
        "no notice for a delivered message"
    );
    let d = bob.delivery().await?;
    assert_eq!(
        (d.id.as_str(), d.sender.as_str(), &d.data[..]),
        (id.as_str(), "alice", &b"hello"[..])
    );
    assert_eq!(
        (d.channel, d.persistent, d.redelivered),
        (None, false, false)
    );
    Ok(())
}

#[tokio::test]
async fn the_broker_sets_the_sender_and_generates_a_name_when_none_is_given() -> R {
    let b = TestBroker::start().await?;
    let mut anon = RawClient::connect(b.addr(), None).await?;
    let mut bob = RawClient::connect(b.addr(), Some("bob")).await?;
    assert!(!anon.name().is_empty());
    anon.publish(client("bob"), b"x", false).await?;
    assert_eq!(bob.delivery().await?.sender, anon.name());
    Ok(())
}

#[tokio::test]
async fn a_group_message_reaches_each_member_once_and_reports_each_missing_one() -> R {
    let b = TestBroker::start().await?;
    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    let mut bob = RawClient::connect(b.addr(), Some("bob")).await?;
    let mut carol = RawClient::connect(b.addr(), Some("carol")).await?;
    let group = Target::Group(vec![
        "bob".into(),
        "carol".into(),
        "dave".into(),
        "bob".into(),
    ]);
    let id = alice.publish(group, b"g", false).await?;
    let notices = alice.sync().await?;
    assert_eq!(notices.len(), 1, "{notices:?}");
    let ServerFrame::DeliveryFailed(f) = &notices[0] else {
        panic!("{notices:?}")
    };
    assert_eq!(
        (f.id.as_str(), &f.recipient, f.reason),
        (
            id.as_str(),
            &Recipient::Client("dave".into()),
            FailureReason::NotConnected
        )
    );
    assert_eq!(bob.delivery().await?.id, id);
    assert_eq!(carol.delivery().await?.id, id);
    assert!(bob.sync().await?.is_empty(), "bob got the message once");
    Ok(())
}

#[tokio::test]
async fn a_channel_message_reaches_every_subscriber_but_the_sender() -> R {
    let b = TestBroker::start().await?;
    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    let mut bob = RawClient::connect(b.addr(), Some("bob")).await?;
    let mut carol = RawClient::connect(b.addr(), Some("carol")).await?;
    for c in [&mut alice, &mut bob, &mut carol] {
        c.subscribe("jobs").await?;
    }
    let id = alice
        .publish(Target::Channel("jobs".into()), b"j", false)
        .await?;
    assert!(
        alice.sync().await?.is_empty(),
        "the sender does not get its own message"
    );
    for c in [&mut bob, &mut carol] {
        let d = c.delivery().await?;
        assert_eq!(
            (d.id.as_str(), d.channel.as_deref()),
            (id.as_str(), Some("jobs"))
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_channel_with_no_subscriber_but_the_sender_produces_a_notice() -> R {
    let b = TestBroker::start().await?;
    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    alice.subscribe("lonely").await?;
    let id = alice
        .publish(Target::Channel("lonely".into()), b"?", false)
        .await?;
    let f = alice.failure().await?;
    assert_eq!(
        (f.id, f.recipient, f.reason),
        (
            id,
            Recipient::Channel("lonely".into()),
            FailureReason::NoSubscribers
        )
    );
    Ok(())
}

#[tokio::test]
async fn a_multi_channel_message_reaches_each_subscriber_of_any_channel_exactly_once() -> R {
    let b = TestBroker::start().await?;
    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    let mut both = RawClient::connect(b.addr(), Some("both")).await?;
    let mut only_b = RawClient::connect(b.addr(), Some("only-b")).await?;
    both.subscribe("a").await?;
    both.subscribe("b").await?;
    only_b.subscribe("b").await?;
    let target = Target::Channels(vec!["a".into(), "b".into(), "empty".into()]);
    let id = alice.publish(target, b"m", false).await?;
    let notices = alice.sync().await?;
    assert_eq!(notices.len(), 1, "{notices:?}");
    let ServerFrame::DeliveryFailed(f) = &notices[0] else {
        panic!("{notices:?}")
    };
    assert_eq!(
        (&f.recipient, f.reason),
        (
            &Recipient::Channel("empty".into()),
            FailureReason::NoSubscribers
        )
    );
    let d = both.delivery().await?;
    assert_eq!(
        (d.id.as_str(), d.channel.as_deref()),
        (id.as_str(), Some("a"))
    );
    assert!(
        both.sync().await?.is_empty(),
        "delivered once although subscribed to both"
    );
    assert_eq!(only_b.delivery().await?.channel.as_deref(), Some("b"));
    Ok(())
}

#[tokio::test]
async fn a_client_within_a_channel_gets_it_tagged_with_the_channel_and_nobody_else_does() -> R {
    let b = TestBroker::start().await?;
    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    let mut bob = RawClient::connect(b.addr(), Some("bob")).await?;
    let mut carol = RawClient::connect(b.addr(), Some("carol")).await?;
    let mut dave = RawClient::connect(b.addr(), Some("dave")).await?;
    bob.subscribe("jobs").await?;
    carol.subscribe("jobs").await?;
    let t = |c: &str| Target::ClientInChannel {
        client: c.into(),
        channel: "jobs".into(),
    };
    let id = alice.publish(t("bob"), b"for bob", false).await?;
    let not_subscribed = alice.publish(t("dave"), b"x", false).await?;
    let offline = alice.publish(t("erin"), b"x", false).await?;
    let notices = alice.sync().await?;
    let reasons: Vec<_> = notices
        .iter()
        .map(|n| match n {
            ServerFrame::DeliveryFailed(f) => (f.id.clone(), f.reason),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            (not_subscribed, FailureReason::NotSubscribed),
            (offline, FailureReason::NotConnected)
        ]
    );
    let d = bob.delivery().await?;
    assert_eq!(
        (d.id.as_str(), d.channel.as_deref()),
        (id.as_str(), Some("jobs"))
    );
    assert!(carol.sync().await?.is_empty());
    assert!(dave.sync().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_message_to_all_reaches_everyone_connected_but_the_sender() -> R {
    let b = TestBroker::start().await?;
    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    let id = alice.publish(Target::All, b"nobody", false).await?;
    let f = alice.failure().await?;
    assert_eq!(
        (f.id, f.recipient, f.reason),
        (id, Recipient::All, FailureReason::NoSubscribers)
    );
    let mut bob = RawClient::connect(b.addr(), Some("bob")).await?;
    let mut carol = RawClient::connect(b.addr(), Some("carol")).await?;
    let id = alice.publish(Target::All, b"all", false).await?;
    assert!(alice.sync().await?.is_empty());
    assert_eq!(bob.delivery().await?.id, id);
    assert_eq!(carol.delivery().await?.id, id);
    Ok(())
}

#[tokio::test]
async fn a_second_connection_with_a_name_takes_it_over() -> R {
    let b = TestBroker::start().await?;
    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    let mut old = RawClient::connect(b.addr(), Some("bob")).await?;
    old.subscribe("jobs").await?;
    let mut new = RawClient::connect(b.addr(), Some("bob")).await?;
    let frames = old.until_closed().await?;
    assert!(
        matches!(frames.last(), Some(ServerFrame::Error(e)) if e.code == ErrorCode::Replaced),
        "{frames:?}"
    );
    let id = alice
        .publish(client("bob"), b"to the new bob", false)
        .await?;
    assert_eq!(new.delivery().await?.id, id);
    // Subscriptions belong to the name: the new connection has them.
    let id = alice
        .publish(Target::Channel("jobs".into()), b"j", false)
        .await?;
    let d = new.delivery().await?;
    assert_eq!((d.id, d.channel.as_deref()), (id, Some("jobs")));
    Ok(())
}

#[tokio::test]
async fn an_unsubscribed_channel_no_longer_delivers() -> R {
    let b = TestBroker::start().await?;
    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    let mut bob = RawClient::connect(b.addr(), Some("bob")).await?;
    bob.subscribe("jobs").await?;
    bob.send(ClientFrame::Unsubscribe {
        channel: "jobs".into(),
    })
    .await?;
    assert!(
        matches!(bob.next().await?, ServerFrame::Unsubscribed { channel } if channel == "jobs")
    );
    alice
        .publish(Target::Channel("jobs".into()), b"j", false)
        .await?;
    assert_eq!(alice.failure().await?.reason, FailureReason::NoSubscribers);
    Ok(())
}

#[tokio::test]
async fn a_delivery_larger_than_the_recipient_accepts_produces_a_too_large_notice() -> R {
    let b = TestBroker::start().await?;
    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    let small = broadcast_protocol::Hello {
        max_frame: 4096,
        ..hello(Some("small"))
    };
    let mut small = RawClient::connect_with(b.addr(), small).await?;
    let id = alice
        .publish(client("small"), &vec![7u8; 8000], false)
        .await?;
    let f = alice.failure().await?;
    assert_eq!((f.id, f.reason), (id, FailureReason::TooLarge));
    assert!(small.sync().await?.is_empty());
    Ok(())
}

/// Sends `n` non-persistent messages of 64 KiB to `to` in one go.
async fn send_64k(alice: &mut RawClient, to: &str, n: usize) -> R {
    let payload = vec![1u8; 64 * 1024];
    for _ in 0..n {
        let m = broadcast_tests::publish(client(to), &payload, false);
        alice.feed(ClientFrame::Publish(m)).await?;
    }
    alice.flush().await?;
    Ok(())
}

#[tokio::test]
async fn a_recipient_that_does_not_read_gets_what_fits_and_the_sender_is_told_of_the_rest() -> R {
    let b = TestBroker::start_with(|c| {
        c.outbound_frames = 16;
        c.outbound_bytes = c.max_frame() as usize;
    })
    .await?;
    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    let mut slow = RawClient::connect(b.addr(), Some("slow")).await?;
    let total = 400;
    send_64k(&mut alice, "slow", total).await?;
    let failed: Vec<_> = alice
        .sync()
        .await?
        .into_iter()
        .map(|f| match f {
            ServerFrame::DeliveryFailed(f) => f,
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(
        !failed.is_empty(),
        "the queue and socket buffers cannot hold 25 MiB"
    );
    assert!(
        failed
            .iter()
            .all(|f| f.reason == FailureReason::SlowConsumer)
    );
    let mut delivered = 0;
    while delivered + failed.len() < total {
        slow.delivery().await?;
        delivered += 1;
    }
    assert!(
        slow.sync().await?.is_empty(),
        "nothing beyond what was not reported failed"
    );
    Ok(())
}

#[tokio::test]
async fn the_byte_budget_of_a_recipient_that_does_not_read_holds_when_frames_would_fit() -> R {
    // Room for thousands of frames, but about one megabyte: 25 MiB sent to a recipient that
    // reads nothing must not all be queued.
    let b = TestBroker::start_with(|c| c.outbound_bytes = c.max_frame() as usize).await?;
    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    let mut slow = RawClient::connect(b.addr(), Some("slow")).await?;
    let total = 400;
    send_64k(&mut alice, "slow", total).await?;
    let failed = alice.sync().await?;
    assert!(
        failed.len() > total / 2
            && failed.iter().all(|f| matches!(f,
                ServerFrame::DeliveryFailed(f) if f.reason == FailureReason::SlowConsumer)),
        "{} of {total} reported too slow",
        failed.len()
    );
    let mut delivered = 0;
    while delivered + failed.len() < total {
        slow.delivery().await?;
        delivered += 1;
    }
    assert!(slow.sync().await?.is_empty(), "more than was not reported");
    Ok(())
}

#[tokio::test]
async fn one_sender_to_one_recipient_arrives_complete_and_in_order() -> R {
    let b = TestBroker::start().await?;
    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    let mut bob = RawClient::connect(b.addr(), Some("bob")).await?;
    let n = 100_000u32;
    let reader = tokio::spawn(async move {
        for i in 0..n {
            let d = bob.delivery().await?;
            anyhow::ensure!(d.data[..] == i.to_be_bytes(), "message {i} out of order");
        }
        anyhow::Ok(())
    });
    for i in 0..n {
        let m = broadcast_tests::publish(client("bob"), &i.to_be_bytes(), false);
        alice.feed(ClientFrame::Publish(m)).await?;
    }
    alice.flush().await?;
    assert!(
        alice.sync().await?.is_empty(),
        "no notice: every message was delivered"
    );
    reader.await??;
    Ok(())
}

#[tokio::test]
async fn a_one_mebibyte_payload_arrives_intact() -> R {
    let b = TestBroker::start().await?;
    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    let mut bob = RawClient::connect(b.addr(), Some("bob")).await?;
    let payload: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    alice.publish(client("bob"), &payload, false).await?;
    assert_eq!(bob.delivery().await?.data, payload);
    let too_big = vec![0u8; 1024 * 1024 + 1];
    let id = alice.publish(client("bob"), &too_big, false).await?;
    match alice.next().await? {
        ServerFrame::Error(e) => {
            assert_eq!((e.code, e.id), (ErrorCode::PayloadTooLarge, Some(id)));
        }
        other => panic!("{other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn the_embedding_service_sends_as_the_broker_and_observes_client_messages() -> R {
    let b = TestBroker::start().await?;
    let handle = b.handle()?;
    let mut observed = handle.observe();
    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    let mut bob = RawClient::connect(b.addr(), Some("bob")).await?;
    bob.subscribe("news").await?;
    let (id, failed) = handle.publish(
        Target::Channel("news".into()),
        Some("ev".into()),
        "hi".into(),
    )?;
    assert!(failed.is_empty());
    let d = bob.delivery().await?;
    assert_eq!(
        (d.id, d.sender.as_str(), d.name.as_deref()),
        (id, "$broker", Some("ev"))
    );
    let (_, failed) = handle.publish(client("nobody"), None, "x".into())?;
    assert_eq!(failed[0].reason, FailureReason::NotConnected);
    let id = alice.publish(client("bob"), b"seen", false).await?;
    let seen = tokio::time::timeout(broadcast_tests::WAIT, observed.recv()).await??;
    assert_eq!(
        (seen.sender.as_str(), seen.message.id.as_str()),
        ("alice", id.as_str())
    );
    Ok(())
}

#[tokio::test]
async fn shutdown_says_bye_to_every_connection() -> R {
    let mut b = TestBroker::start().await?;
    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    b.stop().await?;
    let frames = alice.until_closed().await?;
    assert!(
        matches!(frames.last(), Some(ServerFrame::Bye { .. })),
        "{frames:?}"
    );
    Ok(())
}

#[tokio::test]
async fn messages_still_queued_for_a_recipient_that_goes_away_are_reported_to_their_sender() -> R {
    let b = TestBroker::start_with(|c| {
        c.outbound_frames = 64;
        c.outbound_bytes = c.max_frame() as usize;
        c.slow_consumer_wait = std::time::Duration::from_millis(50);
    })
    .await?;
    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    let slow = RawClient::connect(b.addr(), Some("slow")).await?;
    let payload = vec![2u8; 32 * 1024];
    // More than the socket buffers hold: the rest waits in the broker's queue for `slow`.
    for _ in 0..400 {
        let m = broadcast_tests::publish(client("slow"), &payload, false);
        alice.feed(ClientFrame::Publish(m)).await?;
    }
    alice.flush().await?;
    let _ = alice.sync().await?;
    drop(slow);
    // Notices for messages that waited in vain (SlowConsumer) may come first; then the
    // messages that were still queued when `slow` went away are reported.
    loop {
        let f = alice.failure().await?;
        if f.reason == FailureReason::NotConnected {
            assert!(f.detail.contains("before the message was written"), "{f:?}");
            return Ok(());
        }
        assert_eq!(f.reason, FailureReason::SlowConsumer, "{f:?}");
    }
}
