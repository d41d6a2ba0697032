//! NATS JetStream: persistent publish (acked by the server once stored) and
//! durable pull consumers with explicit acks.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context as _, Result};
use async_nats::jetstream::{self, Context, consumer, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::target::{Client, Subscription, Target};

/// The stream that captures every channel the workloads use.
const STREAM: &str = "BENCH";
const SUBJECTS: [&str; 2] = ["bench.>", "inbox.>"];
/// Publishes whose store acknowledgement may be outstanding at once.
const ACK_WINDOW: usize = 1024;

pub struct NatsJs {
    pub addr: String,
}

#[async_trait]
impl Target for NatsJs {
    fn persistent(&self) -> bool {
        true
    }

    async fn reset(&self) -> Result<()> {
        let js = jetstream::new(super::nats::connect(&self.addr, "reset", None).await?);
        js.delete_stream(STREAM).await.ok();
        js.create_stream(stream::Config {
            name: STREAM.to_string(),
            subjects: SUBJECTS.iter().map(|s| s.to_string()).collect(),
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("create stream")?;
        Ok(())
    }

    async fn connect(&self, id: &str) -> Result<Box<dyn Client>> {
        let js = jetstream::new(super::nats::connect(&self.addr, id, None).await?);
        Ok(Box::new(JsClient {
            id: id.to_string(),
            js,
            pending: VecDeque::new(),
        }))
    }
}

struct JsClient {
    id: String,
    js: Context,
    pending: VecDeque<jetstream::context::PublishAckFuture>,
}

#[async_trait]
impl Client for JsClient {
    fn id(&self) -> &str {
        &self.id
    }

    async fn publish(&mut self, channel: &str, payload: Bytes) -> Result<()> {
        if self.pending.len() >= ACK_WINDOW {
            self.pending.pop_front().unwrap().await?;
        }
        let ack = self.js.publish(channel.to_string(), payload).await?;
        self.pending.push_back(ack);
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        while let Some(ack) = self.pending.pop_front() {
            ack.await?;
        }
        Ok(())
    }

    async fn subscribe(&mut self, channel: &str) -> Result<Box<dyn Subscription>> {
        // Durable consumer named after the client: it survives disconnects, and
        // a reconnecting client with the same id picks up where it left off.
        let name = format!("{}-{}", self.id, channel).replace('.', "_");
        let stream = self.js.get_stream(STREAM).await?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: channel.to_string(),
                    deliver_policy: consumer::DeliverPolicy::New,
                    ack_policy: consumer::AckPolicy::Explicit,
                    ..Default::default()
                },
            )
            .await?;
        let messages = consumer.messages().await?;
        Ok(Box::new(JsSubscription(messages)))
    }

    async fn close(mut self: Box<Self>) -> Result<()> {
        self.flush().await?;
        self.js.client().flush().await?;
        Ok(())
    }
}

struct JsSubscription(consumer::pull::Stream);

#[async_trait]
impl Subscription for JsSubscription {
    async fn next(&mut self, timeout: Duration) -> Result<Option<Bytes>> {
        match tokio::time::timeout(timeout, self.0.next()).await {
            Ok(Some(msg)) => {
                let msg = msg?;
                // Fire-and-forget ack (no round trip), as a typical consumer does.
                msg.ack().await.map_err(|e| anyhow::anyhow!(e))?;
                Ok(Some(msg.message.payload))
            }
            _ => Ok(None),
        }
    }
}
