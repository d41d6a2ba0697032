//! HTTP against a broker: its admin API served on a free port, and requests over plain
//! HTTP/1.1 (one per connection, so what the test sends is what goes on the wire).

use crate::{TestBroker, WAIT};
use anyhow::{Context as _, bail};
use broadcast_broker::AdminOptions;
use std::collections::HashMap;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Serves the admin API of `broker` on a free port.
pub async fn serve_admin(broker: &TestBroker, token: Option<&str>) -> anyhow::Result<SocketAddr> {
    let options = AdminOptions {
        token: token.map(str::to_owned),
        settings: None,
    };
    let app = broadcast_broker::admin::router(&broker.handle()?, options);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// `method path` over HTTP/1.1 with extra header lines and a body; the status and the body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: broker\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(String::from_utf8(response)?)
    };
    let response = tokio::time::timeout(WAIT, exchange).await??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of the headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    Ok((status, body.to_owned()))
}

/// `GET path`, with a bearer token when given; the status and the body.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    request(addr, "GET", path, &headers, b"").await
}

/// Every sample of a metrics page, by name with its labels as written.
pub fn samples(page: &str) -> HashMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The samples of the admin API at `addr`.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<HashMap<String, f64>> {
    let (status, body) = get(addr, "/metrics", None).await?;
    if status != 200 {
        bail!("/metrics answered {status}: {body}");
    }
    Ok(samples(&body))
}
