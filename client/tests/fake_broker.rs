//! The client against a scripted fake broker: a `TcpListener` on 127.0.0.1:0 speaking the
//! protocol through `FrameCodec`, one frame at a time, as each test says.

use anyhow::{Context, Result, bail};
use broadcast_client::{
    Client, ConnectError, ConnectOptions, ErrorCode, Event, Events, FailureReason, OutgoingMessage,
    Recipient, SendError, SubscribeError,
};
use broadcast_protocol::{
    ClientFrame, Delivery, DeliveryFailed, ErrorFrame, FrameCodec, Hello, PROTOCOL_VERSION,
    Publish, ServerFrame, Welcome,
};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use std::future::Future;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::codec::Framed;

/// Upper bound on any single wait; tests never sleep, they wait for what they expect.
const WAIT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    timeout(WAIT, fut)
        .await
        .with_context(|| format!("timed out waiting for {what}"))
}

struct FakeBroker {
    listener: TcpListener,
    addr: String,
}

impl FakeBroker {
    async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        Ok(Self { listener, addr })
    }

    async fn accept(&self) -> Result<Conn> {
        let (stream, _) = within("a connection", self.listener.accept()).await??;
        Ok(Conn {
            framed: Framed::new(stream, FrameCodec::new(1 << 20, 1 << 20)),
        })
    }

    /// Accepts a connection and welcomes it as `name`; returns the client's `Hello`.
    async fn accept_as(&self, name: &str) -> Result<(Conn, Hello)> {
        let mut conn = self.accept().await?;
        let hello = match conn.recv().await? {
            ClientFrame::Hello(hello) => hello,
            other => bail!("expected Hello, got {other:?}"),
        };
        conn.send(welcome(name)).await?;
        Ok((conn, hello))
    }
}

struct Conn {
    framed: Framed<TcpStream, FrameCodec<ClientFrame>>,
}

impl Conn {
    async fn recv(&mut self) -> Result<ClientFrame> {
        match within("a frame", self.framed.next()).await? {
            Some(frame) => Ok(frame??),
            None => bail!("the client closed the connection"),
        }
    }

    async fn send(&mut self, frame: ServerFrame) -> Result<()> {
        self.framed.send(&frame).await?;
        Ok(())
    }

    /// Expects a `Subscribe` for `channel` and confirms it.
    async fn confirm_subscribe(&mut self, channel: &str) -> Result<()> {
        match self.recv().await? {
            ClientFrame::Subscribe { channel: c } if c == channel => {}
            other => bail!("expected Subscribe {channel:?}, got {other:?}"),
        }
        self.send(ServerFrame::Subscribed {
            channel: channel.into(),
        })
        .await
    }

    /// Expects a `Publish` and returns it.
    async fn expect_publish(&mut self) -> Result<Publish> {
        match self.recv().await? {
            ClientFrame::Publish(p) => Ok(p),
            other => bail!("expected Publish, got {other:?}"),
        }
    }

    /// Expects a `Ping` and answers it.
    async fn answer_ping(&mut self) -> Result<()> {
        match self.recv().await? {
            ClientFrame::Ping { nonce } => self.send(ServerFrame::Pong { nonce }).await,
            other => bail!("expected Ping, got {other:?}"),
        }
    }

    /// Reads `Ack` frames (answering pings) until they have carried every tag of `want`;
    /// returns the tags in the order received.
    async fn expect_acks(&mut self, want: &[u64]) -> Result<Vec<u64>> {
        let mut got = Vec::new();
        while !want.iter().all(|tag| got.contains(tag)) {
            match self.recv().await? {
                ClientFrame::Ack { tags } => got.extend(tags),
                ClientFrame::Ping { nonce } => self.send(ServerFrame::Pong { nonce }).await?,
                other => bail!("expected Ack, got {other:?}"),
            }
        }
        Ok(got)
    }
}

/// A flush round trip whose `Ping` must be the next frame: proves that the client has nothing
/// (such as an acknowledgement) queued before it.
async fn flush_with_nothing_before(client: &Client, conn: &mut Conn) -> Result<()> {
    let (flushed, answered) = tokio::join!(client.flush(), conn.answer_ping());
    answered?;
    flushed?;
    Ok(())
}

fn welcome(name: &str) -> ServerFrame {
    ServerFrame::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        name: name.into(),
        server: "fake".into(),
        max_frame: 1 << 20,
        max_payload: 1 << 16,
        heartbeat_ms: 5000,
        identity: None,
        namespace: None,
        expires_ms: None,
    })
}

fn delivery(id: &str, channel: Option<&str>) -> ServerFrame {
    ServerFrame::Deliver(Delivery {
        id: id.into(),
        sender: "someone".into(),
        channel: channel.map(Into::into),
        name: None,
        data: Bytes::from_static(b"payload"),
        persistent: false,
        redelivered: false,
        ack_tag: None,
    })
}

/// A delivery of a persistent message from `sender`, to acknowledge with `tag`.
fn tagged(id: &str, sender: &str, tag: u64, redelivered: bool) -> ServerFrame {
    ServerFrame::Deliver(Delivery {
        id: id.into(),
        sender: sender.into(),
        channel: None,
        name: None,
        data: Bytes::from_static(b"payload"),
        persistent: true,
        redelivered,
        ack_tag: Some(tag),
    })
}

fn error(code: ErrorCode, message: &str) -> ServerFrame {
    ServerFrame::Error(ErrorFrame {
        code,
        message: message.into(),
        id: None,
    })
}

fn options() -> ConnectOptions {
    ConnectOptions::new().reconnect_delay(Duration::from_millis(1), Duration::from_millis(20))
}

/// Connects a client to `broker`, which welcomes it as `name`.
async fn connect(
    broker: &FakeBroker,
    options: ConnectOptions,
    name: &str,
) -> Result<(Client, Conn)> {
    let (client, accepted) =
        tokio::join!(options.connect(broker.addr.clone()), broker.accept_as(name));
    Ok((client?, accepted?.0))
}

/// Waits for the first event matching `want`, skipping the others.
async fn wait_for(events: &mut Events, want: impl Fn(&Event) -> bool) -> Result<Event> {
    within("an event", async {
        while let Some(event) = events.next().await {
            if want(&event) {
                return Ok(event);
            }
        }
        bail!("the event stream ended")
    })
    .await?
}

#[tokio::test]
async fn reconnects_under_the_same_name_and_resubscribes_after_the_connection_drops() -> Result<()>
{
    let broker = FakeBroker::start().await?;
    let (client, mut conn) = connect(&broker, options(), "gen-7").await?;
    assert_eq!(client.name(), "gen-7");
    let mut events = client.events();
    let mut direct = client.direct_messages().context("direct stream")?;
    assert!(
        client.direct_messages().is_none(),
        "the direct stream is handed out once"
    );

    let (sub, confirmed) = tokio::join!(client.subscribe("news"), conn.confirm_subscribe("news"));
    let mut sub = sub?;
    confirmed?;
    assert_eq!(sub.channel(), "news");

    drop(conn);
    wait_for(&mut events, |e| matches!(e, Event::Disconnected { .. })).await?;
    wait_for(&mut events, |e| {
        matches!(e, Event::Reconnecting { attempt: 1, .. })
    })
    .await?;

    let (mut conn, hello) = broker.accept_as("gen-7").await?;
    assert_eq!(
        hello.name.as_deref(),
        Some("gen-7"),
        "keeps the generated name"
    );
    conn.confirm_subscribe("news").await?;
    let connected = wait_for(&mut events, |e| matches!(e, Event::Connected { .. })).await?;
    assert_eq!(
        connected,
        Event::Connected {
            name: "gen-7".into()
        }
    );

    conn.send(delivery("m1", Some("news"))).await?;
    conn.send(delivery("m2", None)).await?;
    conn.send(delivery("m3", Some("elsewhere"))).await?;
    let m1 = within("m1", sub.next())
        .await?
        .context("subscription ended")?;
    assert_eq!(
        (m1.id.as_str(), m1.channel.as_deref()),
        ("m1", Some("news"))
    );
    let m2 = within("m2", direct.next()).await?.context("direct ended")?;
    assert_eq!((m2.id.as_str(), m2.channel), ("m2", None));
    let m3 = within("m3", direct.next()).await?.context("direct ended")?;
    assert_eq!(
        m3.id, "m3",
        "channel messages without a subscription go to the direct stream"
    );
    Ok(())
}

#[tokio::test]
async fn messages_sent_while_disconnected_go_out_in_order_after_resubscribing() -> Result<()> {
    let broker = FakeBroker::start().await?;
    let (client, mut conn) = connect(&broker, options().send_buffer(2), "alice").await?;
    let mut events = client.events();
    let (sub, confirmed) = tokio::join!(client.subscribe("news"), conn.confirm_subscribe("news"));
    let _sub = sub?;
    confirmed?;

    conn.send(ServerFrame::Bye {
        reason: "restarting".into(),
    })
    .await?;
    let disconnected = wait_for(&mut events, |e| matches!(e, Event::Disconnected { .. })).await?;
    assert!(format!("{disconnected:?}").contains("restarting"));
    drop(conn);

    // Nothing is pulled from the buffer while disconnected: two fit, the third does not.
    let first = client.try_send(OutgoingMessage::to_client("bob", "1"))?;
    let second = client.try_send(OutgoingMessage::to_channel("news", "2"))?;
    assert_eq!(
        client.try_send(OutgoingMessage::to_all("3")),
        Err(SendError::BufferFull)
    );

    let (mut conn, _) = broker.accept_as("alice").await?;
    conn.confirm_subscribe("news").await?;
    for expected in [&first, &second] {
        match conn.recv().await? {
            ClientFrame::Publish(p) => assert_eq!(&p.id, expected),
            other => bail!("expected Publish {expected}, got {other:?}"),
        }
    }

    // A flush is a ping/pong round trip.
    let (flushed, answered) = tokio::join!(client.flush(), async {
        match conn.recv().await? {
            ClientFrame::Ping { nonce } => conn.send(ServerFrame::Pong { nonce }).await,
            other => bail!("expected Ping, got {other:?}"),
        }
    });
    answered?;
    flushed?;
    Ok(())
}

#[tokio::test]
async fn a_replaced_client_stops_without_reconnecting() -> Result<()> {
    let broker = FakeBroker::start().await?;
    let (client, mut conn) = connect(&broker, options(), "alice").await?;
    let mut events = client.events();

    conn.send(error(ErrorCode::Replaced, "alice connected elsewhere"))
        .await?;
    let server_error = wait_for(&mut events, |e| matches!(e, Event::ServerError { .. })).await?;
    assert!(matches!(
        server_error,
        Event::ServerError {
            code: ErrorCode::Replaced,
            ..
        }
    ));
    let next = within("an event", events.next()).await?;
    assert!(
        matches!(next, Some(Event::Disconnected { .. })),
        "got {next:?}"
    );
    assert_eq!(
        within("an event", events.next()).await?,
        Some(Event::Closed)
    );
    assert_eq!(
        client.send(OutgoingMessage::to_all("late")).await,
        Err(SendError::Closed)
    );
    Ok(())
}

#[tokio::test]
async fn the_client_answers_the_brokers_pings() -> Result<()> {
    let broker = FakeBroker::start().await?;
    let (_client, mut conn) = connect(&broker, options(), "alice").await?;
    conn.send(ServerFrame::Ping { nonce: 42 }).await?;
    assert_eq!(conn.recv().await?, ClientFrame::Pong { nonce: 42 });
    Ok(())
}

#[tokio::test]
async fn dropping_the_last_subscription_of_a_channel_unsubscribes() -> Result<()> {
    let broker = FakeBroker::start().await?;
    let (client, mut conn) = connect(&broker, options(), "alice").await?;
    let (a, confirmed) = tokio::join!(client.subscribe("news"), conn.confirm_subscribe("news"));
    let (a, _) = (a?, confirmed?);
    let (b, confirmed) = tokio::join!(client.subscribe("news"), conn.confirm_subscribe("news"));
    let (b, _) = (b?, confirmed?);

    // Both subscriptions get each message of the channel.
    conn.send(delivery("m1", Some("news"))).await?;
    let (mut a, mut b) = (a, b);
    assert_eq!(within("a", a.next()).await?.context("a ended")?.id, "m1");
    assert_eq!(within("b", b.next()).await?.context("b ended")?.id, "m1");

    drop(a);
    // The next frame after the first drop is the flush's ping, not an Unsubscribe.
    let (flushed, answered) = tokio::join!(client.flush(), async {
        match conn.recv().await? {
            ClientFrame::Ping { nonce } => conn.send(ServerFrame::Pong { nonce }).await,
            other => bail!("expected Ping, got {other:?}"),
        }
    });
    answered?;
    flushed?;

    drop(b);
    assert_eq!(
        conn.recv().await?,
        ClientFrame::Unsubscribe {
            channel: "news".into()
        }
    );
    Ok(())
}

#[tokio::test]
async fn a_refused_subscription_fails_subscribe() -> Result<()> {
    let broker = FakeBroker::start().await?;
    let (client, mut conn) = connect(&broker, options(), "alice").await?;
    let (sub, refused) = tokio::join!(client.subscribe("news"), async {
        conn.recv().await?;
        conn.send(error(ErrorCode::LimitReached, "at most 0 subscriptions"))
            .await
    });
    refused?;
    assert!(
        matches!(sub, Err(SubscribeError::Refused { .. })),
        "got {sub:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_refused_handshake_is_returned_by_connect() -> Result<()> {
    let broker = FakeBroker::start().await?;
    let (client, refused) = tokio::join!(
        options().name("alice").connect(broker.addr.clone()),
        async {
            let mut conn = broker.accept().await?;
            conn.recv().await?;
            conn.send(error(ErrorCode::BadHandshake, "no")).await
        }
    );
    refused?;
    assert!(
        matches!(
            client,
            Err(ConnectError::Refused {
                code: ErrorCode::BadHandshake,
                ..
            })
        ),
        "got {client:?}"
    );
    Ok(())
}

#[tokio::test]
async fn connect_gives_up_after_the_allowed_attempts() -> Result<()> {
    // A port nobody listens on any more.
    let addr = FakeBroker::start().await?.addr;
    let res = within(
        "connect to give up",
        options().max_reconnect_attempts(Some(3)).connect(addr),
    )
    .await?;
    assert!(
        matches!(res, Err(ConnectError::AttemptsExhausted { attempts: 3 })),
        "got {res:?}"
    );
    Ok(())
}

#[tokio::test]
async fn local_validation_happens_before_anything_is_queued() -> Result<()> {
    let broker = FakeBroker::start().await?;
    let (client, _conn) = connect(&broker, options(), "alice").await?;
    assert!(matches!(
        client.try_send(OutgoingMessage::to_group(Vec::<String>::new(), "x")),
        Err(SendError::InvalidTarget(_))
    ));
    assert!(matches!(
        client.try_send(OutgoingMessage::to_client("", "x")),
        Err(SendError::InvalidName(_))
    ));
    assert_eq!(
        client.try_send(OutgoingMessage::to_all(vec![0u8; (1 << 16) + 1])),
        Err(SendError::TooLarge {
            size: (1 << 16) + 1,
            max: 1 << 16
        })
    );
    assert!(matches!(
        client.subscribe("bad channel").await,
        Err(SubscribeError::InvalidName(_))
    ));
    Ok(())
}

#[tokio::test]
async fn close_writes_queued_messages_then_says_goodbye() -> Result<()> {
    let broker = FakeBroker::start().await?;
    let (client, mut conn) = connect(&broker, options(), "alice").await?;
    let mut events = client.events();
    let id = client
        .send(OutgoingMessage::to_client("bob", "last words"))
        .await?;
    // The persistent message is confirmed before the client says goodbye.
    let ((), broker) = tokio::join!(client.close(), async {
        let p = conn.expect_publish().await?;
        assert_eq!(p.id, id);
        assert!(!p.resent);
        conn.send(ServerFrame::Accepted { id: p.id }).await?;
        assert_eq!(conn.recv().await?, ClientFrame::Bye);
        anyhow::Ok(())
    });
    broker?;
    assert_eq!(
        within("Accepted", events.next()).await?,
        Some(Event::Accepted { id })
    );
    assert_eq!(within("Closed", events.next()).await?, Some(Event::Closed));
    assert_eq!(
        client
            .send(OutgoingMessage::to_client("bob", "too late"))
            .await,
        Err(SendError::Closed)
    );
    client.close().await;
    Ok(())
}

#[tokio::test]
async fn an_idle_client_pings_and_a_silent_broker_counts_as_lost() -> Result<()> {
    let broker = FakeBroker::start().await?;
    let heartbeat = options().heartbeat(Duration::from_millis(50));
    let (client, mut conn) = connect(&broker, heartbeat, "alice").await?;
    let mut events = client.events();
    assert!(matches!(conn.recv().await?, ClientFrame::Ping { .. }));
    // The fake broker never answers: after three intervals the client gives up on it.
    let lost = wait_for(&mut events, |e| matches!(e, Event::Disconnected { .. })).await?;
    assert!(
        format!("{lost:?}").contains("nothing received"),
        "got {lost:?}"
    );
    let (_conn, hello) = broker.accept_as("alice").await?;
    assert_eq!(hello.heartbeat_ms, 50);
    Ok(())
}

#[tokio::test]
async fn a_message_nothing_can_take_is_reported_not_dropped_silently() -> Result<()> {
    let broker = FakeBroker::start().await?;
    let (client, mut conn) = connect(&broker, options(), "alice").await?;
    let mut events = client.events();
    drop(client.direct_messages());
    conn.send(delivery("m1", None)).await?;
    let failed = wait_for(&mut events, |e| matches!(e, Event::DeliveryFailed { .. })).await?;
    let Event::DeliveryFailed {
        id,
        recipient,
        reason,
        ..
    } = failed
    else {
        bail!("not a DeliveryFailed");
    };
    assert_eq!(id, "m1");
    assert_eq!(recipient, Recipient::Client("alice".into()));
    assert_eq!(reason, FailureReason::NotSubscribed);
    Ok(())
}

#[tokio::test]
async fn a_slow_subscription_gets_every_message_in_order() -> Result<()> {
    let broker = FakeBroker::start().await?;
    let (client, mut conn) = connect(&broker, options().receive_buffer(2), "alice").await?;
    let (sub, confirmed) = tokio::join!(client.subscribe("news"), conn.confirm_subscribe("news"));
    let mut sub = sub?;
    confirmed?;
    let ids: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
    let (sent, received) = tokio::join!(
        async {
            for id in &ids {
                conn.send(delivery(id, Some("news"))).await?;
            }
            anyhow::Ok(conn)
        },
        async {
            let mut got = Vec::new();
            while got.len() < ids.len() {
                let msg = within("a message", sub.next()).await?.context("ended")?;
                got.push(msg.id);
            }
            anyhow::Ok(got)
        }
    );
    let _conn = sent?;
    assert_eq!(received?, ids);
    Ok(())
}

#[tokio::test]
async fn close_reports_messages_the_broker_never_confirmed() -> Result<()> {
    let broker = FakeBroker::start().await?;
    let quick = options().close_timeout(Duration::from_millis(50));
    let (client, mut conn) = connect(&broker, quick, "alice").await?;
    let mut events = client.events();
    let confirmed = client.send(OutgoingMessage::to_client("bob", "1")).await?;
    let unconfirmed = client.send(OutgoingMessage::to_client("bob", "2")).await?;
    let fire_and_forget = OutgoingMessage::to_client("bob", "3").persistent(false);
    client.send(fire_and_forget).await?;
    assert_eq!(conn.expect_publish().await?.id, confirmed);
    assert_eq!(conn.expect_publish().await?.id, unconfirmed);
    conn.expect_publish().await?;
    conn.send(ServerFrame::Accepted {
        id: confirmed.clone(),
    })
    .await?;
    wait_for(&mut events, |e| matches!(e, Event::Accepted { .. })).await?;

    // The broker withholds the second `Accepted`: close gives up after its timeout.
    let ((), bye) = tokio::join!(client.close(), conn.recv());
    assert_eq!(bye?, ClientFrame::Bye);
    assert_eq!(
        within("Unconfirmed", events.next()).await?,
        Some(Event::Unconfirmed { id: unconfirmed })
    );
    assert_eq!(within("Closed", events.next()).await?, Some(Event::Closed));
    Ok(())
}

#[tokio::test]
async fn unconfirmed_messages_are_resent_after_a_reconnect_and_confirmed_ones_are_not() -> Result<()>
{
    let broker = FakeBroker::start().await?;
    let (client, mut conn) = connect(&broker, options(), "alice").await?;
    let mut events = client.events();
    let (sub, confirmed) = tokio::join!(client.subscribe("news"), conn.confirm_subscribe("news"));
    let _sub = sub?;
    confirmed?;

    let accepted = client
        .send(OutgoingMessage::to_channel("news", "1"))
        .await?;
    let pending = client
        .send(OutgoingMessage::to_channel("news", "2"))
        .await?;
    let volatile = OutgoingMessage::to_channel("news", "3").persistent(false);
    let volatile = client.send(volatile).await?;
    for id in [&accepted, &pending, &volatile] {
        let p = conn.expect_publish().await?;
        assert_eq!((&p.id, p.resent), (id, false));
    }
    conn.send(ServerFrame::Accepted {
        id: accepted.clone(),
    })
    .await?;
    let event = wait_for(&mut events, |e| matches!(e, Event::Accepted { .. })).await?;
    assert_eq!(event, Event::Accepted { id: accepted });

    drop(conn);
    wait_for(&mut events, |e| matches!(e, Event::Disconnected { .. })).await?;
    let newer = client.try_send(OutgoingMessage::to_channel("news", "4"))?;

    let (mut conn, _) = broker.accept_as("alice").await?;
    conn.confirm_subscribe("news").await?;
    // Only the unconfirmed persistent message comes again, marked, before the newer one.
    let resent = conn.expect_publish().await?;
    assert_eq!((&resent.id, resent.resent), (&pending, true));
    assert_eq!(resent.data, Bytes::from_static(b"2"));
    let next = conn.expect_publish().await?;
    assert_eq!((&next.id, next.resent), (&newer, false));
    flush_with_nothing_before(&client, &mut conn).await?;
    Ok(())
}

#[tokio::test]
async fn deliveries_are_acknowledged_once_the_application_takes_them() -> Result<()> {
    let broker = FakeBroker::start().await?;
    let (client, mut conn) = connect(&broker, options(), "alice").await?;
    let mut direct = client.direct_messages().context("direct stream")?;
    conn.send(tagged("m1", "bob", 7, false)).await?;
    conn.send(tagged("m2", "bob", 8, false)).await?;
    // Not taken yet: nothing to acknowledge.
    flush_with_nothing_before(&client, &mut conn).await?;

    for (id, tag) in [("m1", 7), ("m2", 8)] {
        let msg = within(id, direct.next()).await?.context("direct ended")?;
        assert_eq!((msg.id.as_str(), msg.ack_tag), (id, Some(tag)));
    }
    let mut tags = conn.expect_acks(&[7, 8]).await?;
    tags.sort_unstable();
    assert_eq!(tags, [7, 8], "each tag is acknowledged once");
    Ok(())
}

#[tokio::test]
async fn in_manual_mode_nothing_is_acknowledged_until_the_application_says_so() -> Result<()> {
    let broker = FakeBroker::start().await?;
    let (client, mut conn) = connect(&broker, options().manual_ack(true), "alice").await?;
    let mut direct = client.direct_messages().context("direct stream")?;
    conn.send(tagged("m1", "bob", 5, false)).await?;
    conn.send(delivery("m2", None)).await?;
    let msg = within("m1", direct.next()).await?.context("direct ended")?;
    assert_eq!(msg.ack_tag, Some(5));
    let untagged = within("m2", direct.next()).await?.context("direct ended")?;
    assert_eq!(untagged.ack_tag, None);
    flush_with_nothing_before(&client, &mut conn).await?;

    client.ack(&untagged);
    client.ack(&msg);
    assert_eq!(conn.recv().await?, ClientFrame::Ack { tags: vec![5] });
    // A second acknowledgement of the same message is not sent again.
    client.ack(&msg);
    flush_with_nothing_before(&client, &mut conn).await?;
    Ok(())
}

#[tokio::test]
async fn a_redelivered_duplicate_is_acknowledged_but_not_handed_over_again() -> Result<()> {
    let broker = FakeBroker::start().await?;
    let (client, mut conn) = connect(&broker, options(), "alice").await?;
    let mut direct = client.direct_messages().context("direct stream")?;
    conn.send(tagged("m1", "bob", 1, false)).await?;
    let first = within("m1", direct.next()).await?.context("direct ended")?;
    assert_eq!((first.id.as_str(), first.redelivered), ("m1", false));
    conn.expect_acks(&[1]).await?;

    // The same message again, and a redelivery the client never handed over.
    conn.send(tagged("m1", "bob", 2, true)).await?;
    conn.send(tagged("m1", "carol", 3, true)).await?;
    conn.expect_acks(&[2]).await?;
    let next = within("m1 from carol", direct.next())
        .await?
        .context("direct ended")?;
    assert_eq!(
        (next.id.as_str(), &*next.sender, next.redelivered),
        ("m1", "carol", true),
        "the duplicate was skipped; a redelivery outside the window is passed on"
    );
    conn.expect_acks(&[3]).await?;
    Ok(())
}

#[tokio::test]
async fn a_stored_delivery_failure_is_acknowledged_when_reported() -> Result<()> {
    let broker = FakeBroker::start().await?;
    let (client, mut conn) = connect(&broker, options(), "alice").await?;
    let mut events = client.events();
    conn.send(ServerFrame::DeliveryFailed(DeliveryFailed {
        id: "m1".into(),
        recipient: Recipient::Client("bob".into()),
        reason: FailureReason::Expired,
        detail: String::new(),
        ack_tag: Some(11),
    }))
    .await?;
    let failed = wait_for(&mut events, |e| matches!(e, Event::DeliveryFailed { .. })).await?;
    assert!(matches!(failed, Event::DeliveryFailed { ref id, .. } if id == "m1"));
    assert_eq!(conn.expect_acks(&[11]).await?, [11]);
    Ok(())
}

#[tokio::test]
async fn send_confirmed_resolves_when_the_broker_accepts_the_message() -> Result<()> {
    let broker = FakeBroker::start().await?;
    let (client, mut conn) = connect(&broker, options(), "alice").await?;
    let sender = client.clone();
    let confirmed = tokio::spawn(async move {
        sender
            .send_confirmed(OutgoingMessage::to_client("bob", "important").id("m-1"))
            .await
    });
    let p = conn.expect_publish().await?;
    assert_eq!(p.id, "m-1");
    flush_with_nothing_before(&client, &mut conn).await?;
    assert!(!confirmed.is_finished(), "resolved before Accepted");
    conn.send(ServerFrame::Accepted { id: p.id }).await?;
    assert_eq!(
        within("send_confirmed", confirmed).await??,
        Ok("m-1".into())
    );

    // A non-persistent message is confirmed by a flush round trip.
    let volatile = OutgoingMessage::to_client("bob", "x").persistent(false);
    let (confirmed, broker_side) = tokio::join!(client.send_confirmed(volatile), async {
        conn.expect_publish().await?;
        conn.answer_ping().await
    });
    broker_side?;
    confirmed?;
    Ok(())
}

#[tokio::test]
async fn at_most_max_unconfirmed_messages_are_outstanding() -> Result<()> {
    let broker = FakeBroker::start().await?;
    let bounded = options().max_unconfirmed(2).send_buffer(1);
    let (client, mut conn) = connect(&broker, bounded, "alice").await?;
    let first = client.send(OutgoingMessage::to_client("bob", "1")).await?;
    client.send(OutgoingMessage::to_client("bob", "2")).await?;
    conn.expect_publish().await?;
    conn.expect_publish().await?;

    // Two are outstanding: the third waits in the buffer, which is then full.
    let third = client.try_send(OutgoingMessage::to_client("bob", "3"))?;
    assert_eq!(
        client.try_send(OutgoingMessage::to_client("bob", "4")),
        Err(SendError::BufferFull)
    );

    conn.send(ServerFrame::Accepted { id: first }).await?;
    assert_eq!(conn.expect_publish().await?.id, third);
    within("room in the buffer", async {
        loop {
            match client.try_send(OutgoingMessage::to_client("bob", "4")) {
                Err(SendError::BufferFull) => tokio::task::yield_now().await,
                other => return other,
            }
        }
    })
    .await??;
    Ok(())
}
