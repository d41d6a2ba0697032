//! The client against a scripted fake broker: a `TcpListener` on 127.0.0.1:0 speaking the
//! protocol through `FrameCodec`, one frame at a time, as each test says.

use anyhow::{Context, Result, bail};
use broadcast_client::{
    Client, ConnectError, ConnectOptions, ErrorCode, Event, Events, OutgoingMessage, SendError,
    SubscribeError,
};
use broadcast_protocol::{
    ClientFrame, Delivery, ErrorFrame, FrameCodec, Hello, PROTOCOL_VERSION, ServerFrame, Welcome,
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
}

fn welcome(name: &str) -> ServerFrame {
    ServerFrame::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        name: name.into(),
        server: "fake".into(),
        max_frame: 1 << 20,
        max_payload: 1 << 16,
        heartbeat_ms: 5000,
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
    client.close().await;
    match conn.recv().await? {
        ClientFrame::Publish(p) => assert_eq!(p.id, id),
        other => bail!("expected Publish, got {other:?}"),
    }
    assert_eq!(conn.recv().await?, ClientFrame::Bye);
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
    assert_eq!(
        recipient,
        broadcast_client::Recipient::Client("alice".into())
    );
    assert_eq!(reason, broadcast_client::FailureReason::NotSubscribed);
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
