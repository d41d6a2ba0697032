//! Namespaces through a real broker over TCP: clients, channels, queues and `All` of two
//! namespaces never meet, through a restart too; an identity lives in its namespace.

use broadcast_broker::auth::{AuthSettings, IdentityConfig, RightsConfig, token};
use broadcast_protocol::{
    ClientFrame, ErrorCode, FailureReason, Hello, PROTOCOL_VERSION, Recipient, ServerFrame, Target,
};
use broadcast_tests::{RawClient, TestBroker, WAIT};
use bytes::Bytes;
use std::net::SocketAddr;

type R = anyhow::Result<()>;

fn hello(ns: Option<&str>, name: &str, token: Option<&str>) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        name: Some(name.into()),
        token: token.map(str::to_owned),
        namespace: ns.map(str::to_owned),
        max_frame: broadcast_protocol::DEFAULT_MAX_FRAME,
        heartbeat_ms: 0,
    }
}

async fn in_ns(addr: SocketAddr, ns: &str, name: &str) -> anyhow::Result<RawClient> {
    RawClient::connect_with(addr, hello(Some(ns), name, None)).await
}

#[tokio::test]
async fn the_same_name_in_two_namespaces_is_two_clients_that_never_meet() -> R {
    let b = TestBroker::start().await?;
    let mut a_billing = in_ns(b.addr(), "a", "billing").await?;
    let mut b_billing = in_ns(b.addr(), "b", "billing").await?;
    let mut shop = in_ns(b.addr(), "a", "shop").await?;
    let mut plain = RawClient::connect(b.addr(), Some("billing")).await?;
    assert_eq!(
        (a_billing.name(), a_billing.welcome.namespace.as_deref()),
        ("billing", Some("a"))
    );
    assert_eq!(plain.welcome.namespace, None);

    // To a client: only the namespace's own, shown the sender without the namespace.
    shop.publish(Target::Client("billing".into()), b"direct", false)
        .await?;
    let d = a_billing.delivery().await?;
    assert_eq!((d.sender.as_str(), &d.data[..]), ("shop", &b"direct"[..]));
    // To everyone: the namespace only.
    shop.publish(Target::All, b"all", false).await?;
    assert_eq!(&a_billing.delivery().await?.data[..], b"all");
    assert!(shop.sync().await?.is_empty());
    for other in [&mut b_billing, &mut plain] {
        assert!(other.sync().await?.is_empty(), "nothing crossed namespaces");
    }

    // A channel of another namespace is another channel.
    b_billing.subscribe("news").await?;
    shop.publish(Target::Channel("news".into()), b"x", false)
        .await?;
    let notices = shop.sync().await?;
    let [ServerFrame::DeliveryFailed(f)] = &notices[..] else {
        panic!("{notices:?}");
    };
    assert_eq!(
        (&f.recipient, f.reason),
        (
            &Recipient::Channel("news".into()),
            FailureReason::NoSubscribers
        )
    );
    assert!(!f.detail.contains('\u{1f}'), "{:?}", f.detail);
    a_billing.subscribe("news").await?;
    shop.publish(Target::Channel("news".into()), b"y", false)
        .await?;
    let d = a_billing.delivery().await?;
    assert_eq!(d.channel.as_deref(), Some("news"));
    assert!(b_billing.sync().await?.is_empty());

    // The broker's own messages reach the namespace named.
    let handle = b.handle()?;
    let (_, failed) = handle.publish_in(Some("b"), Target::All, None, Bytes::from_static(b"hi"))?;
    assert!(failed.is_empty(), "{failed:?}");
    let d = b_billing.delivery().await?;
    assert_eq!((d.sender.as_str(), &d.data[..]), ("$broker", &b"hi"[..]));
    let (_, failed) = handle.publish_in(
        Some("b"),
        Target::Client("shop".into()),
        None,
        Bytes::from_static(b"no"),
    )?;
    assert_eq!(
        failed.iter().map(|f| &f.recipient).collect::<Vec<_>>(),
        [&Recipient::Client("shop".into())],
        "shop is in a, not b"
    );
    assert!(a_billing.sync().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn queues_of_two_namespaces_stay_apart_through_a_restart() -> R {
    let mut b = TestBroker::start_with_sled(|_| {}).await?;
    let mut shop = in_ns(b.addr(), "a", "shop").await?;
    let mut observed = b.handle()?.observe();
    let id = shop
        .publish(Target::Client("away".into()), b"kept", true)
        .await?;
    // Accepted may come after the pong: read on until it is there.
    let accepted = ServerFrame::Accepted { id };
    let mut frames = shop.sync().await?;
    while !frames.contains(&accepted) {
        frames.push(shop.next().await?);
    }
    let seen = tokio::time::timeout(WAIT, observed.recv()).await??;
    assert_eq!(
        (seen.namespace.as_deref(), seen.sender.as_str()),
        (Some("a"), "shop")
    );
    assert_eq!(seen.message.target, Target::Client("away".into()));
    drop(shop);
    b.restart().await?;

    // The same name in the other namespace gets nothing; in its own, the message.
    let mut other = in_ns(b.addr(), "b", "away").await?;
    assert!(other.sync().await?.is_empty());
    let mut away = in_ns(b.addr(), "a", "away").await?;
    let d = away.delivery().await?;
    assert_eq!((d.sender.as_str(), &d.data[..]), ("shop", &b"kept"[..]));
    Ok(())
}

/// Sends a persistent message of 1,000 bytes to `to`; the failures that came before its
/// `Accepted`.
async fn queue_kilobyte(client: &mut RawClient, to: &str) -> anyhow::Result<Vec<FailureReason>> {
    let id = client
        .publish(Target::Client(to.into()), &[b'x'; 1000], true)
        .await?;
    let mut failed = Vec::new();
    loop {
        match client.next().await? {
            ServerFrame::Accepted { id: a } if a == id => return Ok(failed),
            ServerFrame::DeliveryFailed(f) => {
                assert!(!f.detail.contains('\u{1f}'), "{:?}", f.detail);
                failed.push(f.reason);
            }
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_namespace_queues_at_most_its_bytes_and_leaves_room_for_the_others() -> R {
    let mut b = TestBroker::start_with_sled(|c| c.namespace_max_bytes = 5_000).await?;
    let mut shop = in_ns(b.addr(), "a", "shop").await?;
    let mut kept = 0;
    loop {
        let failed = queue_kilobyte(&mut shop, "away").await?;
        if failed == [FailureReason::QueueFull] {
            break;
        }
        assert!(failed.is_empty(), "{failed:?}");
        kept += 1;
        assert!(kept < 10, "namespace a was never full");
    }
    assert!(kept >= 3, "only {kept} messages of 1,000 bytes in 5,000");
    // Another namespace, and the default one, still have room.
    let mut other = in_ns(b.addr(), "b", "shop").await?;
    assert!(queue_kilobyte(&mut other, "away").await?.is_empty());
    let mut plain = RawClient::connect(b.addr(), Some("shop")).await?;
    assert!(queue_kilobyte(&mut plain, "away").await?.is_empty());
    drop((shop, other, plain));

    // The count is restored from the store.
    b.restart().await?;
    let mut shop = in_ns(b.addr(), "a", "shop").await?;
    assert_eq!(
        queue_kilobyte(&mut shop, "away").await?,
        [FailureReason::QueueFull]
    );
    // What was kept is delivered, and once taken leaves room again.
    let mut away = in_ns(b.addr(), "a", "away").await?;
    for _ in 0..kept {
        let d = away.delivery().await?;
        away.ack(d.ack_tag).await?;
    }
    assert!(away.sync().await?.is_empty(), "a refused message was kept");
    assert!(
        queue_kilobyte(&mut shop, "elsewhere").await?.is_empty(),
        "acknowledged messages still counted against the namespace"
    );
    Ok(())
}

#[tokio::test]
async fn an_identity_lives_in_its_namespace() -> R {
    let identity = |name: &str, ns: Option<&str>| IdentityConfig {
        certificates: Vec::new(),
        identity: name.into(),
        namespace: ns.map(str::to_owned),
        tokens_sha256: vec![token::to_hex(&token::hash(&format!("bct_{name}")))],
        rights: RightsConfig {
            names: Some(vec!["billing".into()]),
            ..RightsConfig::default()
        },
    };
    let b = TestBroker::start_with(|c| {
        c.auth = AuthSettings {
            identities: vec![identity("tenant-a", Some("a")), identity("root", None)],
            ..AuthSettings::default()
        };
    })
    .await?;
    let a = RawClient::connect_with(b.addr(), hello(None, "billing", Some("bct_tenant-a"))).await?;
    assert_eq!(a.welcome.namespace.as_deref(), Some("a"));
    let root = RawClient::connect_with(b.addr(), hello(None, "billing", Some("bct_root"))).await?;
    assert_eq!(root.welcome.namespace, None);
    // Both hold "billing": one in each namespace, neither replaced.
    let mut a = a;
    assert!(a.sync().await?.is_empty());

    let mut io = RawClient::open(b.addr()).await?;
    let wrong = hello(Some("b"), "billing", Some("bct_tenant-a"));
    futures::SinkExt::send(&mut io, &ClientFrame::Hello(wrong)).await?;
    match tokio::time::timeout(WAIT, futures::StreamExt::next(&mut io)).await? {
        Some(Ok(Ok(ServerFrame::Error(e)))) => {
            assert_eq!(e.code, ErrorCode::Unauthorized, "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    Ok(())
}
