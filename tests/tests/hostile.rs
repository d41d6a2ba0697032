//! Hostile clients against a broker that requires credentials, over TCP: every hijack,
//! forged or malformed credential and cross-namespace attempt is refused and delivers, queues
//! or diverts nothing. Each attempt pipelines a message to the victim and a subscription right
//! behind its `Hello`, so a broker that acted before refusing would be caught.

use broadcast_broker::auth::{
    AuthSettings, IdentityConfig, JwtAlgorithm, JwtKeyConfig, RightsConfig, token,
};
use broadcast_protocol::{
    ClientFrame, ErrorCode, Hello, PROTOCOL_VERSION, Recipient, ServerFrame, Target,
};
use broadcast_tests::{RawClient, TestBroker, WAIT, publish};
use futures::{SinkExt, StreamExt as _};
use jsonwebtoken::{EncodingKey, Header, encode};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

type R = anyhow::Result<()>;

const SECRET: &str = "the HS256 secret of the hostile tests";

/// An RSA public key the broker checks RS256 JWTs with (its private key is not needed here:
/// the attacks below never have it).
const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAxhkG61mXYxCM+zih+eIl
AJUtOoDhrPULsno0UbBpPAzLN9HMO+Kb2f40YP37mI9R7LePdC7+Abll2dPqXFU7
50LXFM9egQFQXB1MaNJ48X4uSSvokzDDu3BLwGKAJbf333bQ8aponvIT7CvoPogS
ISg/h3hL5kAYJDcwNOi3HP2pqKnpwVjf0poNi6WlLv2OTVabTc8VLv4+1Cdov1DZ
sKmH52TRWaXtUwpYi0006GOylYl2cIzEoPR5Dg4zu8WsaW+aHwW7t9jNanum1Ut3
uixBWYa4ymsOfdn04/TS/Obw0kjSKUpo3wTD0bPg2ginTinUWOWAOqDFLw5rHVmy
PQIDAQAB
-----END PUBLIC KEY-----
";

fn identity(name: &str, ns: Option<&str>) -> IdentityConfig {
    IdentityConfig {
        certificates: Vec::new(),
        identity: name.into(),
        namespace: ns.map(str::to_owned),
        tokens_sha256: vec![token::to_hex(&token::hash(&format!("bct_{name}")))],
        rights: RightsConfig::default(),
    }
}

async fn broker() -> anyhow::Result<TestBroker> {
    TestBroker::start_with(|c| {
        c.auth = AuthSettings {
            identities: vec![
                identity("billing", None),
                identity("mallory", None),
                identity("tenant-b", Some("b")),
            ],
            jwt_keys: vec![
                JwtKeyConfig {
                    kid: None,
                    algorithm: JwtAlgorithm::HS256,
                    secret: Some(SECRET.into()),
                    secret_file: None,
                    public_key: None,
                    public_key_file: None,
                },
                JwtKeyConfig {
                    kid: None,
                    algorithm: JwtAlgorithm::RS256,
                    secret: None,
                    secret_file: None,
                    public_key: Some(RSA_PUBLIC.into()),
                    public_key_file: None,
                },
            ],
            jwt_leeway_secs: 0,
            ..AuthSettings::default()
        };
    })
    .await
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hs256(key: &[u8], claims: serde_json::Value) -> String {
    encode(&Header::default(), &claims, &EncodingKey::from_secret(key)).unwrap()
}

/// `token` with its claims replaced by `claims`, its header and signature kept.
fn tampered(token: &str, claims: &serde_json::Value) -> String {
    let mut parts = token.split('.');
    let (header, _, signature) = (parts.next().unwrap(), parts.next(), parts.next().unwrap());
    format!(
        "{header}.{}.{signature}",
        b64(claims.to_string().as_bytes())
    )
}

/// Every credential an attacker might try for the name `billing`, by kind.
fn hostile_hellos() -> Vec<(&'static str, Hello)> {
    let t = now();
    let billing = |exp: u64| serde_json::json!({"sub": "billing", "exp": exp});
    let valid = hs256(SECRET.as_bytes(), billing(t + 600));
    let hello = |token: Option<String>, ns: Option<&str>| Hello {
        version: PROTOCOL_VERSION,
        name: Some("billing".into()),
        token,
        namespace: ns.map(str::to_owned),
        max_frame: broadcast_protocol::DEFAULT_MAX_FRAME,
        heartbeat_ms: 0,
    };
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(billing(t + 600).to_string().as_bytes())
    );
    vec![
        ("no token", hello(None, None)),
        (
            "version 1",
            Hello {
                version: 1,
                ..hello(None, None)
            },
        ),
        (
            "unknown service token",
            hello(Some("bct_guessed".into()), None),
        ),
        (
            "another identity's token",
            hello(Some("bct_mallory".into()), None),
        ),
        (
            "a namespace not granted",
            hello(Some("bct_tenant-b".into()), Some("c")),
        ),
        (
            "an identity of another namespace",
            hello(Some("bct_tenant-b".into()), None),
        ),
        (
            "forged signature",
            hello(
                Some(hs256(
                    b"not the broker's secret, but long enough",
                    billing(t + 600),
                )),
                None,
            ),
        ),
        (
            "expired",
            hello(Some(hs256(SECRET.as_bytes(), billing(t - 60))), None),
        ),
        (
            "not yet valid",
            hello(
                Some(hs256(
                    SECRET.as_bytes(),
                    serde_json::json!({"sub": "billing", "exp": t + 600, "nbf": t + 300}),
                )),
                None,
            ),
        ),
        ("alg none", hello(Some(unsigned), None)),
        (
            "HS256 signed with the RS256 public key",
            hello(Some(hs256(RSA_PUBLIC.as_bytes(), billing(t + 600))), None),
        ),
        (
            "truncated",
            hello(Some(valid[..valid.len() - 5].to_owned()), None),
        ),
        (
            "claims changed under a valid signature",
            hello(Some(tampered(&valid, &billing(t + 6000))), None),
        ),
        ("garbage", hello(Some("a.b.c".into()), None)),
        ("empty", hello(Some(String::new()), None)),
    ]
}

/// Sends `hello` with a message to `billing` and a subscription behind it, in one write;
/// returns the code of the error the broker closed with.
async fn attempt(addr: SocketAddr, hello: Hello) -> anyhow::Result<ErrorCode> {
    let mut io = RawClient::open(addr).await?;
    io.feed(&ClientFrame::Hello(hello)).await?;
    let msg = publish(Target::Client("billing".into()), b"stolen", true);
    io.feed(&ClientFrame::Publish(msg)).await?;
    io.feed(&ClientFrame::Subscribe {
        channel: "news".into(),
    })
    .await?;
    SinkExt::<&ClientFrame>::flush(&mut io).await?;
    let mut code = None;
    loop {
        match tokio::time::timeout(WAIT, io.next()).await? {
            None | Some(Err(_)) => break,
            Some(Ok(Ok(ServerFrame::Error(e)))) if code.is_none() => code = Some(e.code),
            Some(other) => anyhow::bail!("after the refusal, the broker sent {other:?}"),
        }
    }
    code.ok_or_else(|| anyhow::anyhow!("closed without an error"))
}

#[tokio::test]
async fn hijacks_forgeries_and_malformed_credentials_are_refused_and_divert_nothing() -> R {
    let b = broker().await?;
    let mut billing = RawClient::connect_with(
        b.addr(),
        Hello {
            token: Some("bct_billing".into()),
            ..broadcast_tests::hello(Some("billing"))
        },
    )
    .await?;
    billing.subscribe("news").await?;
    const ROUNDS: usize = 20;
    let mut attempts = 0;
    for _ in 0..ROUNDS {
        for (kind, hello) in hostile_hellos() {
            let code = attempt(b.addr(), hello).await?;
            let expected = if kind == "version 1" {
                ErrorCode::BadHandshake
            } else {
                ErrorCode::Unauthorized
            };
            assert_eq!(code, expected, "{kind}");
            attempts += 1;
        }
    }
    // The victim is still connected, got nothing, and its queue holds nothing.
    let leaked = billing.sync().await?;
    assert!(leaked.is_empty(), "{leaked:?}");
    let others = b.handle()?.connected_clients();
    assert_eq!(others, ["billing"], "no attacker is connected");
    eprintln!(
        "hostile credentials: {attempts} attempts of {} kinds, {} messages leaked",
        hostile_hellos().len(),
        leaked.len()
    );
    Ok(())
}

#[tokio::test]
async fn a_namespace_reaches_nothing_of_another_with_any_target_kind() -> R {
    let b = broker().await?;
    let token = |name: &str| Hello {
        token: Some(format!("bct_{name}")),
        ..broadcast_tests::hello(Some(name))
    };
    let mut billing = RawClient::connect_with(b.addr(), token("billing")).await?;
    billing.subscribe("news").await?;
    let mut tenant = RawClient::connect_with(b.addr(), token("tenant-b")).await?;
    assert_eq!(tenant.welcome.namespace.as_deref(), Some("b"));
    let targets = [
        Target::Client("billing".into()),
        Target::Group(vec!["billing".into(), "mallory".into()]),
        Target::Channel("news".into()),
        Target::Channels(vec!["news".into(), "other".into()]),
        Target::ClientInChannel {
            client: "billing".into(),
            channel: "news".into(),
        },
        Target::All,
    ];
    let mut attempts = 0;
    for persistent in [false, true] {
        for target in &targets {
            tenant.publish(target.clone(), b"cross", persistent).await?;
            attempts += 1;
            for frame in tenant.sync().await? {
                // What the tenant hears back names only its own namespace's view.
                if let ServerFrame::DeliveryFailed(f) = &frame {
                    match &f.recipient {
                        Recipient::Client(n) | Recipient::Channel(n) => {
                            assert!(!n.contains('\u{1f}'), "{frame:?}");
                        }
                        Recipient::All => {}
                    }
                    assert!(!f.detail.contains('\u{1f}'), "{frame:?}");
                }
            }
        }
    }
    let leaked = billing.sync().await?;
    assert!(leaked.is_empty(), "{leaked:?}");
    // The persistent ones wait in namespace b, for b's billing: default's billing never
    // gets them, even reconnecting.
    drop(billing);
    let mut again = RawClient::connect_with(b.addr(), token("billing")).await?;
    let after = again.sync().await?;
    assert!(after.is_empty(), "{after:?}");
    eprintln!(
        "cross-namespace: {attempts} messages of {} target kinds, {} leaked",
        targets.len(),
        leaked.len() + after.len()
    );
    Ok(())
}

/// Sends `hello` from `source` (a loopback address) and returns the first frame.
async fn hello_from(source: &str, addr: SocketAddr, hello: Hello) -> anyhow::Result<ServerFrame> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse()?)?;
    let stream = socket.connect(addr).await?;
    let mut io = tokio_util::codec::Framed::new(
        stream,
        broadcast_protocol::FrameCodec::<ServerFrame>::new(
            broadcast_protocol::DEFAULT_MAX_FRAME,
            broadcast_protocol::DEFAULT_MAX_FRAME,
        ),
    );
    io.send(&ClientFrame::Hello(hello)).await?;
    match tokio::time::timeout(WAIT, io.next()).await? {
        Some(Ok(Ok(frame))) => Ok(frame),
        other => anyhow::bail!("no frame: {other:?}"),
    }
}

fn error_code(frame: &ServerFrame) -> Option<ErrorCode> {
    match frame {
        ServerFrame::Error(e) => Some(e.code),
        _ => None,
    }
}

#[tokio::test]
async fn an_address_that_keeps_failing_is_refused_for_a_while_and_others_are_not() -> R {
    let b = TestBroker::start_with(|c| {
        c.auth = AuthSettings {
            identities: vec![identity("billing", None)],
            ..AuthSettings::default()
        };
        c.max_auth_failures_per_address = 3;
    })
    .await?;
    let with = |token: &str| Hello {
        token: Some(token.into()),
        ..broadcast_tests::hello(Some("billing"))
    };
    for _ in 0..3 {
        let frame = hello_from("127.0.0.1", b.addr(), with("bct_guess")).await?;
        assert_eq!(
            error_code(&frame),
            Some(ErrorCode::Unauthorized),
            "{frame:?}"
        );
    }
    // Blocked now, even with the right token.
    let frame = hello_from("127.0.0.1", b.addr(), with("bct_billing")).await?;
    let ServerFrame::Error(e) = &frame else {
        panic!("{frame:?}");
    };
    assert_eq!(e.code, ErrorCode::LimitReached);
    assert!(
        e.message.contains("failed to authenticate"),
        "{}",
        e.message
    );
    // Another address is not.
    let frame = hello_from("127.0.0.2", b.addr(), with("bct_billing")).await?;
    assert!(matches!(frame, ServerFrame::Welcome(_)), "{frame:?}");
    Ok(())
}

#[tokio::test]
async fn an_identity_holds_at_most_its_limit_of_connections() -> R {
    let b = TestBroker::start_with(|c| {
        let mut billing = identity("billing", None);
        billing.rights.names = Some(vec!["billing.*".into()]);
        c.auth = AuthSettings {
            identities: vec![billing, identity("mallory", None)],
            ..AuthSettings::default()
        };
        c.max_connections_per_identity = 2;
    })
    .await?;
    let hello = |name: &str, token: &str| Hello {
        token: Some(token.into()),
        ..broadcast_tests::hello(Some(name))
    };
    let first = RawClient::connect_with(b.addr(), hello("billing.1", "bct_billing")).await?;
    let _second = RawClient::connect_with(b.addr(), hello("billing.2", "bct_billing")).await?;
    let frame = hello_from("127.0.0.1", b.addr(), hello("billing.3", "bct_billing")).await?;
    let ServerFrame::Error(e) = &frame else {
        panic!("{frame:?}");
    };
    assert_eq!(e.code, ErrorCode::LimitReached, "{}", e.message);
    // Other identities are not affected.
    RawClient::connect_with(b.addr(), hello("mallory", "bct_mallory")).await?;
    // Once one closes, its slot is free again (the broker notices the close first).
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let frame = hello_from("127.0.0.1", b.addr(), hello("billing.3", "bct_billing")).await?;
        if matches!(frame, ServerFrame::Welcome(_)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{frame:?}");
    }
    Ok(())
}

/// Opens `n` connections from `source` that never finish a handshake (every other one
/// drips the first byte of a header).
async fn stalled(
    source: &str,
    addr: SocketAddr,
    n: usize,
) -> anyhow::Result<Vec<tokio::net::TcpStream>> {
    let mut streams = Vec::new();
    for i in 0..n {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(format!("{source}:0").parse()?)?;
        let mut stream = socket.connect(addr).await?;
        if i % 2 == 1 {
            tokio::io::AsyncWriteExt::write_all(&mut stream, &[0]).await?;
        }
        streams.push(stream);
    }
    Ok(streams)
}

/// The error a refused connection reads.
async fn refusal(stream: &mut tokio::net::TcpStream) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read_to_end(stream, &mut buf)).await??;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[tokio::test]
async fn connections_that_never_finish_their_handshake_are_bounded_and_others_are_served() -> R {
    let b = TestBroker::start_with(|c| {
        c.max_pending_handshakes = 50;
        c.max_connections_per_address = 40;
        c.handshake_timeout = std::time::Duration::from_secs(60);
    })
    .await?;
    // From one address: its first 40 wait for their handshake, the other 60 are refused.
    let mut first = stalled("127.0.0.1", b.addr(), 100).await?;
    for stream in &mut first[40..] {
        let said = refusal(stream).await?;
        assert!(said.contains("this address has its limit"), "{said:?}");
    }
    // A client from another address is served meanwhile.
    let frame = hello_from(
        "127.0.0.2",
        b.addr(),
        broadcast_tests::hello(Some("normal")),
    )
    .await?;
    assert!(matches!(frame, ServerFrame::Welcome(_)), "{frame:?}");
    // From a second address: 10 more fill the broker's 50 handshakes, the rest are refused.
    let mut second = stalled("127.0.0.3", b.addr(), 40).await?;
    for stream in &mut second[10..] {
        let said = refusal(stream).await?;
        assert!(said.contains("connections in their handshake"), "{said:?}");
    }
    // Those admitted are still waiting (nothing to read, not closed).
    let mut buf = [0u8; 16];
    for stream in first[..40].iter().chain(&second[..10]) {
        let r = stream.try_read(&mut buf);
        assert!(
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{r:?}"
        );
    }
    Ok(())
}

/// A client publishing faster than its rate: its messages are held back, never refused, and
/// arrive whole and in order; its acknowledgements are handled while they wait, and its
/// pings after them.
#[tokio::test]
async fn a_client_over_its_publish_rate_is_held_back_and_loses_nothing() -> R {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const COUNT: usize = 600;
    // A second's worth (200) passes at once; the other 400 take two seconds.
    let broker = TestBroker::start_with(|c| c.publish_messages_per_sec = 200.0).await?;
    let admin = broadcast_tests::admin::serve_admin(&broker, None).await?;
    let mut rx = RawClient::connect(broker.addr(), Some("rx")).await?;
    let mut tx = RawClient::connect(broker.addr(), Some("tx")).await?;
    let mut other = RawClient::connect(broker.addr(), Some("other")).await?;
    let received = Arc::new(AtomicUsize::new(0));
    let receiving = {
        let received = received.clone();
        tokio::spawn(async move {
            for i in 0..COUNT {
                let d = rx.delivery().await?;
                anyhow::ensure!(d.data == i.to_string().as_bytes(), "out of order at {i}");
                anyhow::ensure!(d.persistent == (i % 2 == 0), "persistence of {i}");
                if let Some(tag) = d.ack_tag {
                    rx.ack([tag]).await?;
                }
                received.store(i + 1, Ordering::SeqCst);
            }
            anyhow::Ok(rx)
        })
    };
    for i in 0..COUNT {
        let msg = publish(
            Target::Client("rx".into()),
            i.to_string().as_bytes(),
            i % 2 == 0,
        );
        tx.feed(ClientFrame::Publish(msg)).await?;
    }
    tx.flush().await?;
    // A persistent message to the held-back client, confirmed to its sender once acknowledged:
    // the acknowledgement is read ahead of the waiting publishes and handled at once.
    let id = other
        .publish(Target::Client("tx".into()), b"to tx", true)
        .await?;
    let mut accepted = 0;
    let tag = loop {
        match tx.next().await? {
            ServerFrame::Deliver(d) => {
                break d.ack_tag.ok_or_else(|| anyhow::anyhow!("no ack tag"))?;
            }
            ServerFrame::Accepted { .. } => accepted += 1,
            other => anyhow::bail!("unexpected {other:?}"),
        }
    };
    tx.ack([tag]).await?;
    assert_eq!(other.next().await?, ServerFrame::Accepted { id });
    let at_ack = received.load(Ordering::SeqCst);
    assert!(
        at_ack < COUNT / 2,
        "the acknowledgement waited behind the held-back publishes ({at_ack} delivered by then)"
    );
    // A ping after the publishes is answered only once they are handled.
    tx.send(ClientFrame::Ping { nonce: 7 }).await?;
    loop {
        match tx.next().await? {
            ServerFrame::Accepted { .. } => accepted += 1,
            ServerFrame::Pong { nonce: 7 } => break,
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    while accepted < COUNT / 2 {
        match tx.next().await? {
            ServerFrame::Accepted { .. } => accepted += 1,
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    tokio::time::timeout(4 * WAIT, receiving).await???;
    let metrics = broadcast_tests::admin::scrape(admin).await?;
    let held = metrics["broadcast_publishers_held_back_total"];
    assert!(held >= 1.0, "the publisher was never held back ({held})");
    Ok(())
}
