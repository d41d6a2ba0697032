//! The HTTP listener over real TCP: Broadcast frames over a WebSocket, one frame per binary
//! message, with the same names, targets, persistence and credentials as TCP; the Origin
//! allow-list; `POST /v1/publish` answered with what became of the message.

use broadcast_broker::auth::{AuthSettings, IdentityConfig, RightsConfig, token};
use broadcast_protocol::{
    ClientFrame, DEFAULT_MAX_FRAME, ErrorCode, HEADER_LEN, Hello, PROTOCOL_VERSION, ServerFrame,
    Target, decode_body, encode_frame,
};
use broadcast_tests::admin::request;
use broadcast_tests::{RawClient, TestBroker, WAIT, publish};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type R = anyhow::Result<()>;
type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket on the broker's HTTP listener, sending `origin` when given.
async fn ws(addr: SocketAddr, origin: Option<&str>) -> anyhow::Result<Ws> {
    let mut request = format!("ws://{addr}/v1/ws").into_client_request()?;
    if let Some(origin) = origin {
        request.headers_mut().insert("Origin", origin.parse()?);
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await??;
    Ok(ws)
}

async fn send(ws: &mut Ws, frame: &ClientFrame) -> R {
    let bytes = encode_frame(frame, DEFAULT_MAX_FRAME as usize)?;
    ws.send(Message::Binary(bytes)).await?;
    Ok(())
}

/// The next frame, which must fill its binary message exactly; pings are answered.
async fn next(ws: &mut Ws) -> anyhow::Result<ServerFrame> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the WebSocket ended"))??;
        let Message::Binary(bytes) = msg else {
            continue;
        };
        let len = u32::from_be_bytes(bytes[..HEADER_LEN].try_into()?) as usize;
        assert_eq!(HEADER_LEN + len, bytes.len(), "one whole frame per message");
        match decode_body::<ServerFrame>(&bytes[HEADER_LEN..])? {
            ServerFrame::Ping { nonce } => send(ws, &ClientFrame::Pong { nonce }).await?,
            frame => return Ok(frame),
        }
    }
}

fn hello(name: &str, token: Option<&str>) -> ClientFrame {
    ClientFrame::Hello(Hello {
        version: PROTOCOL_VERSION,
        name: Some(name.into()),
        token: token.map(str::to_owned),
        namespace: None,
        max_frame: DEFAULT_MAX_FRAME,
        heartbeat_ms: 0,
    })
}

#[tokio::test]
async fn a_websocket_client_is_a_full_client() -> R {
    let b = TestBroker::start().await?;
    let mut web = ws(b.http_addr(), None).await?;
    send(&mut web, &hello("page", None)).await?;
    let ServerFrame::Welcome(w) = next(&mut web).await? else {
        panic!("no Welcome");
    };
    assert_eq!(w.name, "page");
    let mut bob = RawClient::connect(b.addr(), Some("bob")).await?;

    // Page to a TCP client, a TCP client to the page.
    send(
        &mut web,
        &ClientFrame::Publish(publish(
            Target::Client("bob".into()),
            b"from the page",
            false,
        )),
    )
    .await?;
    assert_eq!(&bob.delivery().await?.data[..], b"from the page");
    bob.publish(Target::Client("page".into()), b"to the page", false)
        .await?;
    let ServerFrame::Deliver(d) = next(&mut web).await? else {
        panic!("no delivery");
    };
    assert_eq!(
        (&d.data[..], d.sender.as_str()),
        (&b"to the page"[..], "bob")
    );

    // A channel, and a persistent message acknowledged over the WebSocket.
    send(
        &mut web,
        &ClientFrame::Subscribe {
            channel: "news".into(),
        },
    )
    .await?;
    assert_eq!(
        next(&mut web).await?,
        ServerFrame::Subscribed {
            channel: "news".into()
        }
    );
    let id = bob
        .publish(Target::Channel("news".into()), b"kept", true)
        .await?;
    let ServerFrame::Deliver(d) = next(&mut web).await? else {
        panic!("no channel delivery");
    };
    assert_eq!((d.channel.as_deref(), d.persistent), (Some("news"), true));
    send(
        &mut web,
        &ClientFrame::Ack {
            tags: d.ack_tag.into_iter().collect(),
        },
    )
    .await?;
    let mut frames = bob.sync().await?;
    while !frames.contains(&ServerFrame::Accepted { id: id.clone() }) {
        frames.push(bob.next().await?);
    }

    // A failure notice reaches the page.
    let msg = publish(Target::Client("nobody".into()), b"x", false);
    send(&mut web, &ClientFrame::Publish(msg.clone())).await?;
    let ServerFrame::DeliveryFailed(f) = next(&mut web).await? else {
        panic!("no notice");
    };
    assert_eq!(f.id, msg.id);

    // A persistent message to the page while it is away arrives when it is back.
    send(&mut web, &ClientFrame::Bye).await?;
    drop(web);
    let mut frames = Vec::new();
    let id = bob
        .publish(Target::Client("page".into()), b"while away", true)
        .await?;
    while !frames.contains(&ServerFrame::Accepted { id: id.clone() }) {
        frames.push(bob.next().await?);
    }
    let mut web = ws(b.http_addr(), None).await?;
    send(&mut web, &hello("page", None)).await?;
    assert!(matches!(next(&mut web).await?, ServerFrame::Welcome(_)));
    let ServerFrame::Deliver(d) = next(&mut web).await? else {
        panic!("the queued message did not come");
    };
    assert_eq!(&d.data[..], b"while away");
    Ok(())
}

#[tokio::test]
async fn frames_split_over_messages_are_read_as_a_stream() -> R {
    let b = TestBroker::start().await?;
    let mut web = ws(b.http_addr(), None).await?;
    let hello = encode_frame(&hello("page", None), DEFAULT_MAX_FRAME as usize)?;
    let (a, rest) = hello.split_at(3);
    web.send(Message::Binary(bytes::Bytes::copy_from_slice(a)))
        .await?;
    web.send(Message::Binary(bytes::Bytes::copy_from_slice(rest)))
        .await?;
    assert!(matches!(next(&mut web).await?, ServerFrame::Welcome(_)));
    // A text message is not part of the protocol: the connection closes.
    web.send(Message::Text("hello".into())).await?;
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(Ok(m)) = web.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "a text message did not close the connection");
    Ok(())
}

#[tokio::test]
async fn only_allowed_origins_may_open_a_websocket() -> R {
    let b = TestBroker::start_with(|c| c.http_allowed_origins = vec!["https://app.example".into()])
        .await?;
    let refused = ws(b.http_addr(), Some("https://evil.example")).await;
    let err = refused.expect_err("another origin was let in").to_string();
    assert!(err.contains("403"), "{err}");
    let mut web = ws(b.http_addr(), Some("https://app.example")).await?;
    send(&mut web, &hello("page", None)).await?;
    assert!(matches!(next(&mut web).await?, ServerFrame::Welcome(_)));
    Ok(())
}

/// `POST /v1/publish` with `body`, with a bearer token when given; the status and the JSON.
async fn post(addr: SocketAddr, body: &Value, token: Option<&str>) -> anyhow::Result<(u16, Value)> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    let (status, text) = request(
        addr,
        "POST",
        "/v1/publish",
        &headers,
        body.to_string().as_bytes(),
    )
    .await?;
    Ok((status, serde_json::from_str(&text)?))
}

#[tokio::test]
async fn http_publish_routes_and_answers_with_the_outcome() -> R {
    let b = TestBroker::start().await?;
    let mut bob = RawClient::connect(b.addr(), Some("bob")).await?;
    let (status, body) = post(
        b.http_addr(),
        &json!({"to": {"client": "bob"}, "data": "hi", "event": "greeting"}),
        None,
    )
    .await?;
    assert_eq!(
        (status, &body["accepted"], &body["failed"]),
        (200, &json!(true), &json!([]))
    );
    let d = bob.delivery().await?;
    assert_eq!(
        (&d.data[..], d.name.as_deref(), d.sender.as_str()),
        (&b"hi"[..], Some("greeting"), "$http")
    );
    assert_eq!(body["id"], json!(d.id));

    // Bytes in base64, from a named sender, to a channel nobody listens on.
    let (status, body) = post(
        b.http_addr(),
        &json!({"to": {"channel": "news"}, "data_base64": "AAEC", "from": "hook"}),
        None,
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(
        body["failed"],
        json!([{"recipient": {"channel": "news"}, "reason": "no_subscribers", "detail": "channel news has no subscribers but the sender"}])
    );
    bob.subscribe("news").await?;
    post(
        b.http_addr(),
        &json!({"to": {"channel": "news"}, "data_base64": "AAEC", "from": "hook"}),
        None,
    )
    .await?;
    let d = bob.delivery().await?;
    assert_eq!((&d.data[..], d.sender.as_str()), (&[0u8, 1, 2][..], "hook"));

    // Persistent, to someone away: accepted, and delivered when they come.
    let (status, body) = post(
        b.http_addr(),
        &json!({"to": {"client": "later"}, "data": "kept", "persistent": true}),
        None,
    )
    .await?;
    assert_eq!((status, &body["failed"]), (200, &json!([])));
    let mut later = RawClient::connect(b.addr(), Some("later")).await?;
    assert_eq!(&later.delivery().await?.data[..], b"kept");

    // Not persistent, to someone away: the failure, per recipient.
    let (_, body) = post(
        b.http_addr(),
        &json!({"to": {"group": ["bob", "gone"]}, "data": "x"}),
        None,
    )
    .await?;
    assert_eq!(body["failed"][0]["recipient"], json!({"client": "gone"}));
    assert_eq!(body["failed"][0]["reason"], json!("not_connected"));
    assert_eq!(body["failed"].as_array().map(Vec::len), Some(1));
    assert_eq!(&bob.delivery().await?.data[..], b"x");

    // Bad input: a clear error, nothing sent.
    for bad in [
        json!({"to": {"client": "bob"}, "data": "x", "persistant": true}),
        json!({"to": "everyone"}),
        json!({"to": {"client": ""}}),
    ] {
        let (status, body) = post(b.http_addr(), &bad, None).await?;
        assert_eq!(status, 400, "{bad} -> {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    assert!(
        bob.sync().await?.is_empty(),
        "a refused publish was delivered"
    );
    let (status, _) = request(b.http_addr(), "GET", "/v1/elsewhere", &[], b"").await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test]
async fn http_publish_takes_the_credentials_and_rights_of_a_connection() -> R {
    let identity = |name: &str, send: &[&str]| IdentityConfig {
        identity: name.into(),
        namespace: None,
        certificates: Vec::new(),
        tokens_sha256: vec![token::to_hex(&token::hash(&format!("bct_{name}")))],
        rights: RightsConfig {
            names: Some(vec![name.into()]),
            send_clients: Some(send.iter().map(|s| (*s).to_owned()).collect()),
            ..RightsConfig::default()
        },
    };
    let auth = AuthSettings {
        identities: vec![identity("hook", &["bob"]), identity("bob", &[])],
        ..AuthSettings::default()
    };
    let b = TestBroker::start_with(|c| c.auth = auth).await?;
    let mut bob = RawClient::connect_with(
        b.addr(),
        match hello("bob", Some("bct_bob")) {
            ClientFrame::Hello(h) => h,
            _ => unreachable!(),
        },
    )
    .await?;
    let msg = json!({"to": {"client": "bob"}, "data": "signed", "from": "hook"});
    let (status, body) = post(b.http_addr(), &msg, None).await?;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("unauthorized"))
    );
    let (status, _) = post(b.http_addr(), &msg, Some("bct_wrong")).await?;
    assert_eq!(status, 401);
    // A name the identity may not take.
    let as_bob = json!({"to": {"client": "bob"}, "data": "x", "from": "bob"});
    assert_eq!(post(b.http_addr(), &as_bob, Some("bct_hook")).await?.0, 401);
    // A recipient the identity may not send to.
    let to_other = json!({"to": {"client": "other"}, "data": "x", "from": "hook"});
    let (status, body) = post(b.http_addr(), &to_other, Some("bct_hook")).await?;
    assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")));
    assert!(bob.sync().await?.is_empty());
    let (status, _) = post(b.http_addr(), &msg, Some("bct_hook")).await?;
    assert_eq!(status, 200);
    let d = bob.delivery().await?;
    assert_eq!((&d.data[..], d.sender.as_str()), (&b"signed"[..], "hook"));
    // Over a WebSocket, the token goes in Hello as over TCP.
    let mut web = ws(b.http_addr(), None).await?;
    send(&mut web, &hello("hook", Some("bct_bob"))).await?;
    let ServerFrame::Error(e) = next(&mut web).await? else {
        panic!("another identity's name was taken");
    };
    assert_eq!(e.code, ErrorCode::Unauthorized);
    Ok(())
}

#[tokio::test]
async fn the_http_listener_counts_against_the_same_connection_limits() -> R {
    let b = TestBroker::start_with(|c| c.max_connections_per_address = 1).await?;
    let mut held = RawClient::connect(b.addr(), Some("held")).await?;
    let body = json!({"to": {"client": "held"}, "data": "x"}).to_string();
    let (status, text) =
        request(b.http_addr(), "POST", "/v1/publish", &[], body.as_bytes()).await?;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("limit of 1 connections"), "{text}");
    assert!(
        held.sync().await?.is_empty(),
        "a refused request was delivered"
    );
    Ok(())
}

#[tokio::test]
async fn a_publish_body_is_json_whatever_its_type_and_must_come_in_time() -> R {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let b = TestBroker::start_with(|c| {
        c.handshake_timeout = std::time::Duration::from_millis(300);
    })
    .await?;
    let mut bob = RawClient::connect(b.addr(), Some("bob")).await?;
    // As `curl -d` sends it: a form, by its type.
    let body = json!({"to": {"client": "bob"}, "data": "from curl"}).to_string();
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let (status, text) =
        request(b.http_addr(), "POST", "/v1/publish", &form, body.as_bytes()).await?;
    assert_eq!(status, 200, "{text}");
    assert_eq!(&bob.delivery().await?.data[..], b"from curl");
    // A body announced and never sent is answered 408 once the handshake timeout passed.
    let mut stream = tokio::net::TcpStream::connect(b.http_addr()).await?;
    stream
        .write_all(b"POST /v1/publish HTTP/1.1\r\nHost: broker\r\nContent-Length: 100\r\n\r\n{")
        .await?;
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response)).await??;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(bob.sync().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_page_of_another_origin_may_not_publish_either() -> R {
    let b = TestBroker::start_with(|c| c.http_allowed_origins = vec!["https://app.example".into()])
        .await?;
    let mut bob = RawClient::connect(b.addr(), Some("bob")).await?;
    let body = json!({"to": {"client": "bob"}, "data": "forged"}).to_string();
    // What a page may send without the browser asking first: a text/plain POST.
    let headers = [
        ("Origin", "https://evil.example"),
        ("Content-Type", "text/plain"),
    ];
    let (status, text) = request(
        b.http_addr(),
        "POST",
        "/v1/publish",
        &headers,
        body.as_bytes(),
    )
    .await?;
    assert_eq!(status, 403, "{text}");
    assert!(
        bob.sync().await?.is_empty(),
        "a forged request was delivered"
    );
    let allowed = [("Origin", "https://app.example")];
    let (status, _) = request(
        b.http_addr(),
        "POST",
        "/v1/publish",
        &allowed,
        body.as_bytes(),
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(&bob.delivery().await?.data[..], b"forged");
    Ok(())
}

#[tokio::test]
async fn an_open_websocket_holds_its_place_under_the_connection_limits() -> R {
    let b = TestBroker::start_with(|c| c.max_connections_per_address = 1).await?;
    let mut web = ws(b.http_addr(), None).await?;
    send(&mut web, &hello("page", None)).await?;
    assert!(matches!(next(&mut web).await?, ServerFrame::Welcome(_)));
    // While the WebSocket is open, the address has no room for another connection.
    let refused = RawClient::connect(b.addr(), Some("second")).await;
    let err = refused.expect_err("a second connection was admitted beside an open WebSocket");
    assert!(err.to_string().contains("limit of 1 connections"), "{err}");
    Ok(())
}

#[tokio::test]
async fn failed_credentials_over_http_count_against_the_address() -> R {
    let auth = AuthSettings {
        identities: vec![IdentityConfig {
            identity: "hook".into(),
            namespace: None,
            certificates: Vec::new(),
            tokens_sha256: vec![token::to_hex(&token::hash("bct_hook"))],
            rights: RightsConfig::default(),
        }],
        ..AuthSettings::default()
    };
    let b = TestBroker::start_with(|c| {
        c.auth = auth;
        c.max_auth_failures_per_address = 2;
    })
    .await?;
    let msg = json!({"to": {"client": "bob"}, "data": "x", "from": "hook"});
    for _ in 0..2 {
        assert_eq!(post(b.http_addr(), &msg, Some("bct_guess")).await?.0, 401);
    }
    // The address is blocked now, the right token too.
    let (status, text) = request(
        b.http_addr(),
        "POST",
        "/v1/publish",
        &[("Authorization", "Bearer bct_hook")],
        msg.to_string().as_bytes(),
    )
    .await?;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("failed to authenticate"), "{text}");
    Ok(())
}

#[tokio::test]
async fn a_publish_with_more_failures_than_fit_a_queue_is_answered_whole() -> R {
    let b = TestBroker::start().await?;
    let group: Vec<String> = (0..300).map(|i| format!("absent-{i}")).collect();
    let (status, body) = post(
        b.http_addr(),
        &json!({"to": {"group": group}, "data": "x"}),
        None,
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let failed = body["failed"].as_array().map_or(0, Vec::len);
    assert_eq!(failed, 300, "{body}");
    Ok(())
}
