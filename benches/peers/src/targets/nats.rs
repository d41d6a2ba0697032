//! Core NATS (at-most-once pub/sub) through async-nats, over plain TCP or TLS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::target::{Client, Subscription, Target};

pub struct Nats {
    pub addr: String,
    /// TLS required, trusting only this CA (PEM); `None` for plain TCP.
    pub tls_ca: Option<PathBuf>,
}

#[async_trait]
impl Target for Nats {
    async fn connect(&self, id: &str) -> Result<Box<dyn Client>> {
        let client = connect(&self.addr, id, self.tls_ca.as_deref()).await?;
        Ok(Box::new(NatsClient {
            id: id.to_string(),
            client,
        }))
    }
}

/// Connect with the library defaults (which include a client-side queue of
/// 65,536 messages per subscription; beyond that messages are dropped as a
/// "slow consumer", which the workloads then report as lost).
///
/// With `tls_ca`, TLS is required and the server's certificate must be signed by
/// that CA: the server sends its INFO in plain text, then the connection is
/// upgraded (the usual NATS handshake, not `handshake_first`).
pub async fn connect(addr: &str, id: &str, tls_ca: Option<&Path>) -> Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name(id)
        .connection_timeout(Duration::from_secs(10));
    if let Some(ca) = tls_ca {
        options = options
            .require_tls(true)
            .add_root_certificates(ca.to_path_buf());
    }
    Ok(options.connect(addr).await?)
}

struct NatsClient {
    id: String,
    client: async_nats::Client,
}

#[async_trait]
impl Client for NatsClient {
    fn id(&self) -> &str {
        &self.id
    }

    async fn publish(&mut self, channel: &str, payload: Bytes) -> Result<()> {
        self.client.publish(channel.to_string(), payload).await?;
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        // A flush ends with a PING/PONG round trip, so the server has read everything.
        self.client.flush().await?;
        Ok(())
    }

    async fn subscribe(&mut self, channel: &str) -> Result<Box<dyn Subscription>> {
        let sub = self.client.subscribe(channel.to_string()).await?;
        self.client.flush().await?;
        Ok(Box::new(NatsSubscription(sub)))
    }

    async fn close(self: Box<Self>) -> Result<()> {
        self.client.flush().await?;
        self.client.drain().await.ok();
        Ok(())
    }
}

struct NatsSubscription(async_nats::Subscriber);

#[async_trait]
impl Subscription for NatsSubscription {
    async fn next(&mut self, timeout: Duration) -> Result<Option<Bytes>> {
        Ok(tokio::time::timeout(timeout, self.0.next())
            .await
            .ok()
            .flatten()
            .map(|m| m.payload))
    }
}
