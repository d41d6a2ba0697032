//! Prints the messages of a channel, and direct messages, until Ctrl-C.
//!
//! ```text
//! cargo run -p broadcast-client --example sub -- 127.0.0.1:7400 news
//! ```

use broadcast_client::{ConnectOptions, Event};
use futures::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7400".into());
    let channel = args.next().unwrap_or_else(|| "news".into());

    let client = ConnectOptions::new().connect(addr).await?;
    println!("connected as {}", client.name());
    let mut events = client.events();
    let mut direct = client.direct_messages().expect("first call");
    let mut subscription = client.subscribe(channel).await?;

    loop {
        tokio::select! {
            Some(msg) = subscription.next() => {
                println!("[{}] {}: {}", subscription.channel(), msg.sender, String::from_utf8_lossy(&msg.data));
            }
            Some(msg) = direct.next() => {
                println!("[direct] {}: {}", msg.sender, String::from_utf8_lossy(&msg.data));
            }
            Some(event) = events.next() => match event {
                Event::Closed => break,
                other => eprintln!("{other:?}"),
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    client.close().await;
    Ok(())
}
