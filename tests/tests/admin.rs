//! The admin API over real HTTP against a broker on port 0: metrics that move by exactly what
//! clients did, readiness while the broker shuts down, the bearer token.

use anyhow::{Context as _, bail};
use broadcast_protocol::{ServerFrame, Target};
use broadcast_tests::admin::{get, scrape, serve_admin};
use broadcast_tests::{RawClient, TestBroker, WAIT};
use std::collections::HashMap;

type R = anyhow::Result<()>;

/// How much `name` moved between two scrapes (a sample missing from either is an error).
fn moved(before: &HashMap<String, f64>, after: &HashMap<String, f64>, name: &str) -> f64 {
    let (Some(b), Some(a)) = (before.get(name), after.get(name)) else {
        panic!("no sample {name}");
    };
    a - b
}

#[tokio::test]
async fn metrics_move_by_exactly_what_clients_sent_and_received() -> R {
    let broker = TestBroker::start().await?;
    let admin = serve_admin(&broker, None).await?;
    let before = scrape(admin).await?;

    let mut bob = RawClient::connect(broker.addr(), Some("bob")).await?;
    let mut alice = RawClient::connect(broker.addr(), Some("alice")).await?;
    for i in 0..30u8 {
        alice
            .publish(Target::Client("bob".into()), &[i], false)
            .await?;
    }
    for i in 0..10u8 {
        alice
            .publish(Target::Client("away".into()), &[i], true)
            .await?;
    }
    for i in 0..5u8 {
        alice
            .publish(Target::Client("nobody".into()), &[i], false)
            .await?;
    }
    for i in 0..4u8 {
        alice
            .publish(Target::Channel("empty".into()), &[i], false)
            .await?;
    }
    // Alice hears of every message: 10 accepted, 9 not delivered.
    let (mut accepted, mut failures) = (0, Vec::new());
    while accepted < 10 || failures.len() < 9 {
        match alice.next().await? {
            ServerFrame::Accepted { .. } => accepted += 1,
            ServerFrame::DeliveryFailed(n) => failures.push(n.reason),
            other => bail!("unexpected {other:?}"),
        }
    }
    assert_eq!(failures.len(), 9, "{failures:?}");
    for _ in 0..30 {
        bob.delivery().await?;
    }

    let after = scrape(admin).await?;
    let m = |name: &str| moved(&before, &after, name);
    assert_eq!(
        m(r#"broadcast_messages_published_total{target="client",persistence="non_persistent"}"#),
        35.0
    );
    assert_eq!(
        m(r#"broadcast_messages_published_total{target="client",persistence="persistent"}"#),
        10.0
    );
    assert_eq!(
        m(r#"broadcast_messages_published_total{target="channel",persistence="non_persistent"}"#),
        4.0
    );
    assert_eq!(m("broadcast_deliveries_total"), 30.0);
    assert_eq!(
        m(r#"broadcast_delivery_failures_total{reason="not_connected"}"#),
        5.0
    );
    assert_eq!(
        m(r#"broadcast_delivery_failures_total{reason="no_subscribers"}"#),
        4.0
    );
    assert_eq!(m("broadcast_queued_messages"), 10.0);
    assert_eq!(m("broadcast_connections_accepted_total"), 2.0);
    assert_eq!(after["broadcast_clients"], 2.0);
    assert_eq!(after["broadcast_connections"], 2.0);
    assert!(m("broadcast_frames_sent_total") >= 30.0 + 10.0 + 9.0);
    assert!(m("broadcast_store_flushes_total") >= 1.0);
    assert!(after["broadcast_process_resident_memory_bytes"] > 0.0);

    // Once bob is away and back, his persistent messages count as deliveries and acks.
    for i in 0..3u8 {
        alice
            .publish(Target::Client("bob".into()), &[i], true)
            .await?;
    }
    let mut tags = Vec::new();
    for _ in 0..3 {
        tags.push(bob.delivery().await?.ack_tag.context("no ack tag")?);
    }
    bob.ack(tags).await?;
    bob.sync().await?;
    let acked = scrape(admin).await?;
    assert_eq!(moved(&after, &acked, "broadcast_deliveries_total"), 3.0);
    assert_eq!(moved(&after, &acked, "broadcast_acks_total"), 3.0);
    Ok(())
}

#[tokio::test]
async fn readyz_answers_503_once_the_broker_is_shutting_down() -> R {
    let mut broker = TestBroker::start().await?;
    let admin = serve_admin(&broker, None).await?;
    let (status, body) = get(admin, "/readyz", None).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(admin, "/healthz", None).await?.0, 200);
    // A client that stays connected: the broker drains it as it stops.
    let _client = RawClient::connect(broker.addr(), Some("stays")).await?;
    broker.handle()?.shutdown();
    let (status, body) = get(admin, "/readyz", None).await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shutting down"), "{body}");
    broker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_token_guards_everything_but_health_and_readiness() -> R {
    let broker = TestBroker::start().await?;
    let admin = serve_admin(&broker, Some("s3cret")).await?;
    assert_eq!(get(admin, "/metrics", None).await?.0, 401);
    assert_eq!(get(admin, "/metrics", Some("wrong")).await?.0, 401);
    assert_eq!(get(admin, "/v1/server", Some("s3cre")).await?.0, 401);
    assert_eq!(get(admin, "/metrics", Some("s3cret")).await?.0, 200);
    let (status, body) = get(admin, "/v1/server", Some("s3cret")).await?;
    assert_eq!(status, 200);
    let server: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(server["ready"], true);
    assert_eq!(get(admin, "/healthz", None).await?.0, 200);
    assert_eq!(get(admin, "/readyz", None).await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn lists_of_connections_queues_and_channels_come_in_pages() -> R {
    let broker = TestBroker::start().await?;
    let admin = serve_admin(&broker, None).await?;
    let mut carol = RawClient::connect(broker.addr(), Some("carol")).await?;
    carol.subscribe("news").await?;
    let mut dave = RawClient::connect(broker.addr(), Some("dave")).await?;
    for name in ["q1", "q2", "q3", "q4", "q5"] {
        dave.publish(Target::Client(name.into()), b"x", true)
            .await?;
    }
    let mut accepted = 0;
    while accepted < 5 {
        if let ServerFrame::Accepted { .. } = dave.next().await? {
            accepted += 1;
        }
    }

    // Five queues of absent clients and two of connected ones, two at a time.
    let mut names = Vec::new();
    let mut path = "/v1/queues?limit=2".to_owned();
    loop {
        let (status, body) = get(admin, &path, None).await?;
        assert_eq!(status, 200, "{body}");
        let page: serde_json::Value = serde_json::from_str(&body)?;
        assert_eq!(page["total"], 7, "{body}");
        let items = page["items"].as_array().context("items")?;
        assert!(items.len() <= 2);
        for q in items {
            names.push(q["name"].as_str().context("name")?.to_owned());
            if q["connected"] == false {
                assert_eq!(q["messages"], 1, "{q}");
            }
        }
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/queues?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(names, ["carol", "dave", "q1", "q2", "q3", "q4", "q5"]);

    let (_, body) = get(admin, "/v1/connections", None).await?;
    let conns: serde_json::Value = serde_json::from_str(&body)?;
    let items = conns["items"].as_array().context("items")?;
    let carol_row = items
        .iter()
        .find(|c| c["name"] == "carol")
        .context("carol")?;
    assert_eq!(carol_row["subscriptions"], 1);
    assert!(
        carol_row["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );

    let (_, body) = get(admin, "/v1/channels", None).await?;
    let channels: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(channels["items"][0]["channel"], "news", "{body}");
    assert_eq!(channels["items"][0]["subscribers"], 1);
    assert_eq!(channels["items"][0]["connected_subscribers"], 1);
    Ok(())
}

#[tokio::test]
async fn readyz_answers_503_while_the_store_refuses_writes_and_200_once_it_heals() -> R {
    use broadcast_broker::store::QueueStore;
    use broadcast_tests::FailingStore;
    use std::sync::Arc;
    let store = Arc::new(FailingStore::new());
    let broker = TestBroker::start_with_store(store.clone() as Arc<dyn QueueStore>, |_| {}).await?;
    let admin = serve_admin(&broker, None).await?;
    assert_eq!(get(admin, "/readyz", None).await?.0, 200);

    store.fail();
    let mut alice = RawClient::connect(broker.addr(), Some("alice")).await?;
    alice
        .publish(Target::Client("bob".into()), b"x", true)
        .await?;
    let failure = alice.failure().await?;
    assert_eq!(
        failure.reason,
        broadcast_protocol::FailureReason::StoreUnavailable
    );
    let (status, body) = get(admin, "/readyz", None).await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("the store refuses writes"), "{body}");

    // The store heals about once a second once it works again.
    store.recover();
    let healed = tokio::time::timeout(WAIT, async {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
        loop {
            tick.tick().await;
            if get(admin, "/readyz", None).await?.0 == 200 {
                return anyhow::Ok(());
            }
        }
    });
    healed
        .await
        .context("/readyz stayed 503 after the store healed")??;
    Ok(())
}
