//! Publishes one message to a channel and waits until the broker has processed it.
//!
//! ```text
//! cargo run -p broadcast-client --example pub -- 127.0.0.1:7400 news "hello, world"
//! ```

use broadcast_client::{ConnectOptions, Event, OutgoingMessage};
use futures::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7400".into());
    let channel = args.next().unwrap_or_else(|| "news".into());
    let text = args.next().unwrap_or_else(|| "hello".into());

    let client = ConnectOptions::new().connect(addr).await?;
    let mut events = client.events();
    let id = client
        .send(OutgoingMessage::to_channel(channel, text).persistent(false))
        .await?;
    // After the flush, every delivery failure the message caused has been reported.
    client.flush().await?;
    client.close().await;
    while let Some(event) = events.next().await {
        match event {
            Event::DeliveryFailed { id, reason, .. } => {
                println!("{id}: not delivered ({reason:?})")
            }
            Event::Closed => break,
            _ => {}
        }
    }
    println!("sent {id}");
    Ok(())
}
