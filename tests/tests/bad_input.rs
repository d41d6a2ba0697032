//! Bad input gets a clear error frame and never takes the broker down.

use broadcast_protocol::{
    ClientFrame, ErrorCode, FailureReason, Hello, PROTOCOL_VERSION, ServerFrame, Target,
};
use broadcast_tests::{RawClient, TestBroker, hello};
use futures::SinkExt;
use tokio::io::AsyncWriteExt;

type R = anyhow::Result<()>;

async fn refused(b: &TestBroker, first: ClientFrame) -> anyhow::Result<ErrorCode> {
    let mut io = RawClient::open(b.addr()).await?;
    io.send(&first).await?;
    let mut raw = RawClientFrames(io);
    raw.error().await
}

struct RawClientFrames(
    tokio_util::codec::Framed<tokio::net::TcpStream, broadcast_protocol::FrameCodec<ServerFrame>>,
);

impl RawClientFrames {
    async fn error(&mut self) -> anyhow::Result<ErrorCode> {
        use futures::StreamExt;
        let f = tokio::time::timeout(broadcast_tests::WAIT, self.0.next()).await?;
        match f {
            Some(Ok(Ok(ServerFrame::Error(e)))) => {
                let end = tokio::time::timeout(broadcast_tests::WAIT, self.0.next()).await?;
                anyhow::ensure!(
                    end.is_none() || matches!(end, Some(Err(_))),
                    "connection not closed: {end:?}"
                );
                Ok(e.code)
            }
            other => anyhow::bail!("expected an error frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_handshake_refuses_other_versions_bad_names_and_non_hello_frames() -> R {
    let b = TestBroker::start().await?;
    let v2 = Hello {
        version: PROTOCOL_VERSION + 1,
        ..hello(Some("a"))
    };
    assert_eq!(
        refused(&b, ClientFrame::Hello(v2)).await?,
        ErrorCode::UnsupportedVersion
    );
    assert_eq!(
        refused(&b, ClientFrame::Hello(hello(Some("a b")))).await?,
        ErrorCode::InvalidName
    );
    assert_eq!(
        refused(&b, ClientFrame::Hello(hello(Some("$broker")))).await?,
        ErrorCode::InvalidName
    );
    assert_eq!(
        refused(&b, ClientFrame::Bye).await?,
        ErrorCode::BadHandshake
    );
    // Version 1 has no token and no namespace.
    let token = Hello {
        version: 1,
        token: Some("t".into()),
        ..hello(Some("a"))
    };
    assert_eq!(
        refused(&b, ClientFrame::Hello(token)).await?,
        ErrorCode::BadHandshake
    );
    let namespace = Hello {
        version: 1,
        namespace: Some("ns".into()),
        ..hello(Some("a"))
    };
    assert_eq!(
        refused(&b, ClientFrame::Hello(namespace)).await?,
        ErrorCode::BadHandshake
    );
    // A broker that requires no credentials takes a version 2 token without checking it, and
    // says so: no identity in its Welcome.
    let token = Hello {
        token: Some("t".into()),
        ..hello(Some("a"))
    };
    let c = RawClient::connect_with(b.addr(), token).await?;
    assert_eq!((c.welcome.version, c.welcome.identity.as_ref()), (2, None));
    Ok(())
}

#[tokio::test]
async fn a_malformed_frame_gets_an_error_and_the_connection_goes_on() -> R {
    let b = TestBroker::start().await?;
    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    let mut bob = RawClient::connect(b.addr(), Some("bob")).await?;
    alice
        .stream()
        .get_mut()
        .write_all(&[0, 0, 0, 3, 0xff, 0xfe, 0xfd])
        .await?;
    match alice.next().await? {
        ServerFrame::Error(e) => assert_eq!(e.code, ErrorCode::Malformed),
        other => panic!("{other:?}"),
    }
    let id = alice
        .publish(Target::Client("bob".into()), b"still here", false)
        .await?;
    assert_eq!(bob.delivery().await?.id, id);
    Ok(())
}

#[tokio::test]
async fn an_oversized_frame_is_refused_before_it_is_read_and_closes_only_that_connection() -> R {
    let b = TestBroker::start().await?;
    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    let mut bob = RawClient::connect(b.addr(), Some("bob")).await?;
    bob.stream()
        .get_mut()
        .write_all(&u32::MAX.to_be_bytes())
        .await?;
    let frames = bob.until_closed().await?;
    assert!(
        matches!(frames.last(), Some(ServerFrame::Error(e)) if e.code == ErrorCode::FrameTooLarge),
        "{frames:?}"
    );
    let id = alice
        .publish(Target::Client("bob".into()), b"gone", false)
        .await?;
    let f = alice.failure().await?;
    assert_eq!((f.id, f.reason), (id, FailureReason::NotConnected));
    Ok(())
}

#[tokio::test]
async fn invalid_targets_are_refused_with_the_message_id() -> R {
    let b = TestBroker::start().await?;
    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    for target in [
        Target::Group(vec![]),
        Target::Channels(vec![]),
        Target::Client(String::new()),
        Target::Channel("has space".into()),
    ] {
        let id = alice.publish(target.clone(), b"x", false).await?;
        match alice.next().await? {
            ServerFrame::Error(e) => {
                assert!(
                    matches!(e.code, ErrorCode::InvalidTarget | ErrorCode::InvalidName),
                    "{target:?}: {e:?}"
                );
                assert_eq!(e.id, Some(id));
            }
            other => panic!("{target:?}: {other:?}"),
        }
    }
    alice
        .stream()
        .send(&ClientFrame::Hello(hello(Some("again"))))
        .await?;
    assert!(
        matches!(alice.next().await?, ServerFrame::Error(e) if e.code == ErrorCode::BadHandshake)
    );
    Ok(())
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_three_heartbeats() -> R {
    let b = TestBroker::start_with(|c| c.heartbeat = std::time::Duration::from_millis(100)).await?;
    let mut io = RawClient::open(b.addr()).await?;
    io.send(&ClientFrame::Hello(hello(Some("mute")))).await?;
    // Read nothing and answer no ping: the broker must give up on us.
    let mut frames = Vec::new();
    use futures::StreamExt;
    while let Some(Ok(Ok(f))) = tokio::time::timeout(broadcast_tests::WAIT, io.next()).await? {
        frames.push(f);
    }
    assert!(matches!(frames.first(), Some(ServerFrame::Welcome(_))));
    assert!(frames.iter().any(|f| matches!(f, ServerFrame::Ping { .. })));
    assert!(
        matches!(frames.last(), Some(ServerFrame::Error(e)) if e.code == ErrorCode::Timeout),
        "{frames:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_client_that_only_receives_and_answers_pings_stays_connected() -> R {
    // heartbeat_ms = 0: the client never pings, it only answers the broker's pings. A steady
    // stream of deliveries keeps the broker's writer busy, so the broker must probe the client
    // because it has not heard from it, not because it has sent it nothing.
    let b = TestBroker::start_with(|c| c.heartbeat = std::time::Duration::from_millis(100)).await?;
    let mut quiet = RawClient::connect(b.addr(), Some("quiet")).await?;
    let mut talker = RawClient::connect(b.addr(), Some("talker")).await?;
    let to_quiet = || broadcast_tests::publish(Target::Client("quiet".into()), b"tick", false);
    // Several messages in flight at a time, one more for each one received: the receiver
    // always has something on its way.
    for _ in 0..8 {
        talker.feed(ClientFrame::Publish(to_quiet())).await?;
    }
    talker.flush().await?;
    let (mut pings, mut deliveries) = (0u32, 0u64);
    // Six answered pings span more than three heartbeat intervals of only receiving.
    while pings < 6 {
        use futures::StreamExt;
        let frame = tokio::time::timeout(broadcast_tests::WAIT, quiet.stream().next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("closed after {deliveries} deliveries"))???;
        match frame {
            ServerFrame::Ping { nonce } => {
                pings += 1;
                quiet.send(ClientFrame::Pong { nonce }).await?;
            }
            ServerFrame::Deliver(_) => {
                deliveries += 1;
                anyhow::ensure!(
                    deliveries < 10_000_000,
                    "no ping in {deliveries} deliveries"
                );
                talker.send(ClientFrame::Publish(to_quiet())).await?;
            }
            other => anyhow::bail!("after {deliveries} deliveries and {pings} pings: {other:?}"),
        }
    }
    // Still connected: a barrier answers.
    quiet.sync().await?;
    Ok(())
}

#[tokio::test]
async fn a_burst_of_persistent_messages_gets_one_answer_each_even_with_a_bad_one_inside() -> R {
    // Written in one go, the broker reads these together and routes the persistent ones as a
    // run: the refused one in the middle must not take the others down, nor reorder them.
    let b = TestBroker::start().await?;
    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    let to_bob = || Target::Client("bob".into());
    let first = broadcast_tests::publish(to_bob(), b"one", true);
    let bad = broadcast_tests::publish(Target::Client("not a name".into()), b"bad", true);
    let fleeting = broadcast_tests::publish(to_bob(), b"fleeting", false);
    let second = broadcast_tests::publish(to_bob(), b"two", true);
    for msg in [&first, &bad, &fleeting, &second] {
        alice.feed(ClientFrame::Publish(msg.clone())).await?;
    }
    alice.flush().await?;

    let (mut accepted, mut refused, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    while accepted.len() < 2 || refused.is_empty() || failed.is_empty() {
        match alice.next().await? {
            ServerFrame::Accepted { id } => accepted.push(id),
            ServerFrame::Error(e) => refused.push((e.code, e.id)),
            ServerFrame::DeliveryFailed(f) => failed.push((f.id, f.reason)),
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    accepted.sort();
    let mut want = vec![first.id.clone(), second.id.clone()];
    want.sort();
    assert_eq!(accepted, want, "each valid persistent message is confirmed");
    assert_eq!(refused, [(ErrorCode::InvalidName, Some(bad.id.clone()))]);
    assert_eq!(failed, [(fleeting.id.clone(), FailureReason::NotConnected)]);
    let late = alice.sync().await?;
    assert!(late.is_empty(), "nothing more for alice: {late:?}");

    let mut bob = RawClient::connect(b.addr(), Some("bob")).await?;
    let one = bob.delivery().await?;
    let two = bob.delivery().await?;
    assert_eq!((one.id, &one.data[..]), (first.id, &b"one"[..]));
    assert_eq!((two.id, &two.data[..]), (second.id, &b"two"[..]));
    Ok(())
}

#[tokio::test]
async fn incomplete_frames_over_the_brokers_budget_are_held_back_then_closed_others_flow() -> R {
    let b = TestBroker::start_with(|c| {
        c.max_payload = 64 * 1024;
        c.partial_frames_max_bytes = 256 * 1024;
        c.partial_frame_wait = std::time::Duration::from_millis(200);
    })
    .await?;
    // Eight connections each send 60 KiB of a 100 KiB frame, and no more: 480 KiB held.
    let mut drippers = Vec::new();
    for i in 0..8 {
        let mut c = RawClient::connect(b.addr(), Some(&format!("dripper-{i}"))).await?;
        let io = c.stream().get_mut();
        io.write_all(&(100u32 * 1024).to_be_bytes()).await?;
        io.write_all(&vec![0u8; 60 * 1024]).await?;
        drippers.push(c);
    }
    // Those past the budget are not read from, and are closed once they waited too long.
    let closed = futures::future::select_ok(
        drippers
            .iter_mut()
            .map(|c| Box::pin(async move { c.until_closed().await })),
    )
    .await?
    .0;
    assert!(
        matches!(closed.last(), Some(ServerFrame::Error(e)) if e.code == ErrorCode::LimitReached
            && e.message.contains("incomplete frames")),
        "{closed:?}"
    );
    // Complete frames keep flowing meanwhile.
    let mut alice = RawClient::connect(b.addr(), Some("alice")).await?;
    let mut carol = RawClient::connect(b.addr(), Some("carol")).await?;
    let id = alice
        .publish(Target::Client("carol".into()), b"still served", false)
        .await?;
    let d = carol.delivery().await?;
    assert_eq!(d.id, id);
    Ok(())
}

#[tokio::test]
async fn connections_from_one_address_are_bounded_in_number_and_in_rate() -> R {
    // Two open at once per address.
    let b = TestBroker::start_with(|c| c.max_connections_per_address = 2).await?;
    let first = RawClient::connect(b.addr(), Some("one")).await?;
    let _second = RawClient::connect(b.addr(), Some("two")).await?;
    let mut third = RawClientFrames(RawClient::open(b.addr()).await?);
    assert_eq!(third.error().await?, ErrorCode::LimitReached);
    // The first two are served all along; once one closes, a new one is let in.
    drop(first);
    let again = tokio::time::timeout(broadcast_tests::WAIT, async {
        loop {
            if let Ok(c) = RawClient::connect(b.addr(), Some("three")).await {
                return c;
            }
            tokio::task::yield_now().await;
        }
    })
    .await?;
    assert_eq!(again.name(), "three");

    // One new connection every thousand seconds: the second is refused however fast the
    // machine is, while the first stays served.
    let b = TestBroker::start_with(|c| c.connections_per_address_per_sec = 0.001).await?;
    let mut first = RawClient::connect(b.addr(), Some("one")).await?;
    let mut second = RawClientFrames(RawClient::open(b.addr()).await?);
    assert_eq!(second.error().await?, ErrorCode::LimitReached);
    assert!(first.sync().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn an_error_about_an_overlong_id_or_channel_leaves_it_out_and_fits_the_smallest_frame() -> R {
    let b = TestBroker::start().await?;
    let mut alice = RawClient::connect_with(
        b.addr(),
        Hello {
            max_frame: broadcast_protocol::MIN_FRAME,
            ..hello(Some("alice"))
        },
    )
    .await?;
    let long = "x".repeat(8 * 1024);
    let mut msg = broadcast_tests::publish(Target::Client("bob".into()), b"x", false);
    msg.id = long.clone();
    alice.send(ClientFrame::Publish(msg)).await?;
    alice.send(ClientFrame::Subscribe { channel: long }).await?;
    for what in ["publish", "subscribe"] {
        match alice.next().await? {
            ServerFrame::Error(e) => {
                assert_eq!(e.code, ErrorCode::InvalidName, "{what}");
                assert_eq!(e.id, None, "{what}");
                assert!(e.message.len() < 512, "{what}: {}", e.message);
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // A valid id is still repeated, and the connection goes on.
    let id = alice
        .publish(Target::Channel("has space".into()), b"x", false)
        .await?;
    match alice.next().await? {
        ServerFrame::Error(e) => assert_eq!(e.id, Some(id)),
        other => panic!("{other:?}"),
    }
    Ok(())
}
