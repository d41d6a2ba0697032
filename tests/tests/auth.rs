//! Identities, tokens, JWTs and rights through a real broker over TCP: who may connect, under
//! which name, to send to whom and subscribe to what; credentials reloaded and renewed.

use broadcast_broker::auth::{
    AuthSettings, IdentityConfig, JwtAlgorithm, JwtKeyConfig, RightsConfig, token,
};
use broadcast_client::{Client, ConnectError, ConnectOptions, OutgoingMessage, SendError};
use broadcast_protocol::{ClientFrame, ErrorCode, Hello, PROTOCOL_VERSION, ServerFrame, Target};
use broadcast_tests::{RawClient, TestBroker, WAIT, bin_path, publish, wait_until_serving};
use jsonwebtoken::{EncodingKey, Header, encode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::AsyncBufReadExt as _;

type R = anyhow::Result<()>;

const SECRET: &str = "the HS256 secret of these tests, 32+ bytes";

fn identity(name: &str, rights: RightsConfig) -> IdentityConfig {
    IdentityConfig {
        certificates: Vec::new(),
        identity: name.into(),
        namespace: None,
        tokens_sha256: vec![token::to_hex(&token::hash(&format!("bct_{name}")))],
        rights,
    }
}

fn list(items: &[&str]) -> Option<Vec<String>> {
    Some(items.iter().map(|s| (*s).to_owned()).collect())
}

/// billing sends to shipping.* but not shipping.secret, to channels orders.> and subscribes to
/// orders.>; shipping takes any shipping.* name; mallory has the defaults.
fn settings() -> AuthSettings {
    AuthSettings {
        identities: vec![
            identity(
                "billing",
                RightsConfig {
                    send_clients: list(&["shipping.*", "billing"]),
                    deny_send_clients: vec!["shipping.secret".into()],
                    send_channels: list(&["orders.>"]),
                    send_all: Some(false),
                    subscribe: list(&["orders.>"]),
                    ..RightsConfig::default()
                },
            ),
            identity(
                "shipping",
                RightsConfig {
                    names: list(&["shipping.*"]),
                    ..RightsConfig::default()
                },
            ),
            identity("mallory", RightsConfig::default()),
        ],
        jwt_keys: vec![JwtKeyConfig {
            kid: None,
            algorithm: JwtAlgorithm::HS256,
            secret: Some(SECRET.into()),
            secret_file: None,
            public_key: None,
            public_key_file: None,
        }],
        jwt_leeway_secs: 0,
        ..AuthSettings::default()
    }
}

async fn broker() -> anyhow::Result<TestBroker> {
    TestBroker::start_with(|c| c.auth = settings()).await
}

fn hello(name: &str, token: Option<&str>) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        name: Some(name.into()),
        token: token.map(str::to_owned),
        namespace: None,
        max_frame: broadcast_protocol::DEFAULT_MAX_FRAME,
        heartbeat_ms: 0,
    }
}

async fn as_(addr: SocketAddr, name: &str, identity: &str) -> anyhow::Result<RawClient> {
    RawClient::connect_with(addr, hello(name, Some(&format!("bct_{identity}")))).await
}

/// Sends `hello` and returns the error the broker closes the connection with.
async fn refused(addr: SocketAddr, hello: Hello) -> anyhow::Result<(ErrorCode, String)> {
    let mut io = RawClient::open(addr).await?;
    futures::SinkExt::send(&mut io, &ClientFrame::Hello(hello)).await?;
    let frame = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut io))
        .await?
        .ok_or_else(|| anyhow::anyhow!("closed without an answer"))???;
    let ServerFrame::Error(e) = frame else {
        anyhow::bail!("expected an error, got {frame:?}");
    };
    let end = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut io)).await?;
    assert!(end.is_none(), "the connection closes after {e:?}");
    Ok((e.code, e.message))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(sub: &str, exp: u64, broadcast: serde_json::Value) -> String {
    encode(
        &Header::default(),
        &serde_json::json!({ "sub": sub, "exp": exp, "broadcast": broadcast }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The one error frame in `frames`.
fn error_in(frames: &[ServerFrame]) -> Option<(ErrorCode, Option<String>)> {
    frames.iter().find_map(|f| match f {
        ServerFrame::Error(e) => Some((e.code, e.id.clone())),
        _ => None,
    })
}

#[tokio::test]
async fn a_token_admits_its_identity_and_nothing_else_gets_in() -> R {
    let b = broker().await?;
    let c = as_(b.addr(), "billing", "billing").await?;
    assert_eq!(c.welcome.version, 2);
    assert_eq!(c.welcome.identity.as_deref(), Some("billing"));
    assert_eq!(c.welcome.expires_ms, None);

    let (code, message) = refused(b.addr(), hello("billing", None)).await?;
    assert_eq!(code, ErrorCode::Unauthorized, "{message}");
    let (code, message) = refused(b.addr(), hello("billing", Some("bct_guess"))).await?;
    assert_eq!(
        (code, message.as_str()),
        (ErrorCode::Unauthorized, "unknown token")
    );
    // Version 1 has no token to send.
    let v1 = Hello {
        version: 1,
        token: None,
        ..hello("billing", None)
    };
    let (code, message) = refused(b.addr(), v1).await?;
    assert_eq!(code, ErrorCode::BadHandshake);
    assert!(message.contains("version 2"), "{message}");
    Ok(())
}

#[tokio::test]
async fn a_broker_without_credentials_still_speaks_version_1() -> R {
    let b = TestBroker::start().await?;
    let v1 = Hello {
        version: 1,
        ..hello("old", None)
    };
    let mut old = RawClient::connect_with(b.addr(), v1).await?;
    assert_eq!(old.welcome.version, 1);
    let new = RawClient::connect_with(b.addr(), hello("new", None)).await?;
    assert_eq!(
        (new.welcome.version, new.welcome.identity.as_ref()),
        (2, None)
    );
    old.publish(Target::Client("new".into()), b"x", false)
        .await?;
    assert!(old.sync().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_name_is_taken_only_by_an_identity_allowed_it_and_its_holder_is_untouched() -> R {
    let b = broker().await?;
    let mut billing = as_(b.addr(), "billing", "billing").await?;
    let (code, message) = refused(b.addr(), hello("billing", Some("bct_mallory"))).await?;
    assert_eq!(code, ErrorCode::Unauthorized);
    assert!(message.contains("may not register as billing"), "{message}");
    // The holder goes on, and still gets its messages.
    let mut shipping = as_(b.addr(), "shipping.eu", "shipping").await?;
    shipping
        .publish(Target::Client("billing".into()), b"invoice", false)
        .await?;
    assert_eq!(&billing.delivery().await?.data[..], b"invoice");
    // Names outside an identity's patterns are refused; its own pattern admits.
    let (code, _) = refused(b.addr(), hello("shipping", Some("bct_shipping"))).await?;
    assert_eq!(code, ErrorCode::Unauthorized);
    // The same identity may take its name over.
    let _again = as_(b.addr(), "billing", "billing").await?;
    let closing = billing.until_closed().await?;
    assert_eq!(error_in(&closing).map(|e| e.0), Some(ErrorCode::Replaced));
    Ok(())
}

#[tokio::test]
async fn a_message_with_one_forbidden_recipient_is_refused_whole_and_the_connection_goes_on() -> R {
    let b = broker().await?;
    let mut billing = as_(b.addr(), "billing", "billing").await?;
    let mut eu = as_(b.addr(), "shipping.eu", "shipping").await?;
    let mut secret = as_(b.addr(), "shipping.secret", "shipping").await?;

    // Persistent, to one allowed and one denied recipient: nothing delivered, nothing kept.
    let group = Target::Group(vec!["shipping.eu".into(), "shipping.secret".into()]);
    let msg = publish(group, b"both", true);
    let id = billing.publish_message(msg).await?;
    let frames = billing.sync().await?;
    assert_eq!(
        error_in(&frames),
        Some((ErrorCode::Forbidden, Some(id.clone()))),
        "{frames:?}"
    );
    assert!(
        !frames
            .iter()
            .any(|f| matches!(f, ServerFrame::Accepted { .. })),
        "{frames:?}"
    );
    // To a client offline and forbidden: not queued either (the next delivery to it, once
    // it is allowed, is the first it gets).
    let offline = billing
        .publish_message(publish(Target::Client("hr".into()), b"x", true))
        .await?;
    assert_eq!(
        error_in(&billing.sync().await?),
        Some((ErrorCode::Forbidden, Some(offline)))
    );
    for target in [
        Target::All,
        Target::Channel("hr.salaries".into()),
        Target::ClientInChannel {
            client: "shipping.eu".into(),
            channel: "hr".into(),
        },
    ] {
        billing.publish(target.clone(), b"no", false).await?;
        let frames = billing.sync().await?;
        assert_eq!(
            error_in(&frames).map(|e| e.0),
            Some(ErrorCode::Forbidden),
            "{target:?}: {frames:?}"
        );
    }
    billing
        .publish(Target::Client("shipping.eu".into()), b"allowed", true)
        .await?;
    let d = eu.delivery().await?;
    assert_eq!(
        &d.data[..],
        b"allowed",
        "the refused messages never arrived"
    );
    assert!(
        secret.sync().await?.is_empty(),
        "nothing reached the denied one"
    );

    // A forbidden subscription is refused by its channel; an allowed one works.
    billing
        .send(ClientFrame::Subscribe {
            channel: "hr".into(),
        })
        .await?;
    assert_eq!(
        error_in(&billing.sync().await?),
        Some((ErrorCode::Forbidden, Some("hr".into())))
    );
    billing.subscribe("orders.new").await?;
    Ok(())
}

#[tokio::test]
async fn a_reload_closes_connections_it_no_longer_admits_and_a_bad_one_changes_nothing() -> R {
    let b = broker().await?;
    let handle = b.handle()?;
    let mut billing = as_(b.addr(), "billing", "billing").await?;
    billing.subscribe("orders.new").await?;
    let mut mallory = as_(b.addr(), "mallory", "mallory").await?;

    let mut bad = settings();
    bad.identities[0].rights.subscribe = list(&["a.>.b"]);
    assert!(handle.reload_auth(&bad).is_err());
    let off = handle.reload_auth(&AuthSettings::default()).unwrap_err();
    assert!(
        off.to_string().contains("cannot turn credentials off"),
        "{off}"
    );
    assert!(billing.sync().await?.is_empty());
    assert!(mallory.sync().await?.is_empty());

    // mallory removed; billing may no longer subscribe to orders.new.
    let mut next = settings();
    next.identities.retain(|i| i.identity != "mallory");
    next.identities[0].rights.subscribe = list(&["orders.old"]);
    handle.reload_auth(&next)?;
    let closing = mallory.until_closed().await?;
    assert_eq!(
        error_in(&closing).map(|e| e.0),
        Some(ErrorCode::Unauthorized),
        "{closing:?}"
    );
    let frames = billing.sync().await?;
    assert_eq!(
        frames,
        vec![ServerFrame::Unsubscribed {
            channel: "orders.new".into()
        }]
    );
    let (code, _) = refused(b.addr(), hello("mallory", Some("bct_mallory"))).await?;
    assert_eq!(code, ErrorCode::Unauthorized);

    // Rights added and narrowed while connected: a new identity gets in; billing may no
    // longer send to shipping.eu, from its next message on.
    let mut eu = as_(b.addr(), "shipping.eu", "shipping").await?;
    let mut added = next.clone();
    added
        .identities
        .push(identity("late", RightsConfig::default()));
    added.identities[0].rights.send_clients = list(&["billing"]);
    handle.reload_auth(&added)?;
    as_(b.addr(), "late", "late").await?;
    let id = billing
        .publish(
            Target::Client("shipping.eu".into()),
            b"now forbidden",
            false,
        )
        .await?;
    assert_eq!(
        error_in(&billing.sync().await?),
        Some((ErrorCode::Forbidden, Some(id)))
    );
    assert!(eu.sync().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_forbidden_message_in_a_run_of_persistent_ones_is_answered_where_it_stands() -> R {
    let b = broker().await?;
    let mut billing = as_(b.addr(), "billing", "billing").await?;
    let mut eu = as_(b.addr(), "shipping.eu", "shipping").await?;
    let to = |n: &str| Target::Client(n.into());
    let msgs = [
        publish(to("shipping.eu"), b"1", true),
        publish(to("hr"), b"2", true),
        publish(to("shipping.eu"), b"3", true),
    ];
    // One write: the broker reads them as one run.
    for m in &msgs {
        billing.feed(ClientFrame::Publish(m.clone())).await?;
    }
    billing.flush().await?;
    // Forbidden for the second, at once; the others are delivered in order and accepted
    // once acknowledged.
    let first = eu.delivery().await?;
    let third = eu.delivery().await?;
    assert_eq!((&first.data[..], &third.data[..]), (&b"1"[..], &b"3"[..]));
    let tags: Vec<u64> = [first.ack_tag, third.ack_tag]
        .into_iter()
        .flatten()
        .collect();
    eu.ack(tags).await?;
    let mut answers = Vec::new();
    while answers.len() < 3 {
        match billing.next().await? {
            ServerFrame::Error(e) => answers.push((e.id.unwrap_or_default(), "forbidden")),
            ServerFrame::Accepted { id } => answers.push((id, "accepted")),
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        answers,
        vec![
            (msgs[1].id.clone(), "forbidden"),
            (msgs[0].id.clone(), "accepted"),
            (msgs[2].id.clone(), "accepted"),
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_jwt_closes_its_connection_at_expiry_unless_a_reauth_renews_it() -> R {
    let b = broker().await?;
    let soon = now_secs() + 1;
    let token = jwt("audit", soon, serde_json::json!({}));
    let mut renewed = RawClient::connect_with(b.addr(), hello("audit", Some(&token))).await?;
    assert_eq!(renewed.welcome.expires_ms, Some(soon * 1000));
    let later = now_secs() + 600;
    renewed
        .send(ClientFrame::Reauth {
            token: jwt("audit", later, serde_json::json!({})),
        })
        .await?;
    assert_eq!(
        renewed.sync().await?,
        vec![ServerFrame::Reauthed {
            expires_ms: Some(later * 1000)
        }]
    );

    let mut lapsing = RawClient::connect_with(
        b.addr(),
        hello(
            "audit.2",
            Some(&jwt(
                "audit",
                soon,
                serde_json::json!({"names": ["audit.*"]}),
            )),
        ),
    )
    .await?;
    let closing = lapsing.until_closed().await?;
    assert_eq!(
        error_in(&closing).map(|e| e.0),
        Some(ErrorCode::AuthExpired),
        "{closing:?}"
    );
    // The renewed connection outlived the first credential.
    assert!(renewed.sync().await?.is_empty());

    // A Reauth for another identity is refused and closes.
    renewed
        .send(ClientFrame::Reauth {
            token: "bct_billing".into(),
        })
        .await?;
    let closing = renewed.until_closed().await?;
    assert_eq!(
        error_in(&closing).map(|e| e.0),
        Some(ErrorCode::Unauthorized),
        "{closing:?}"
    );
    Ok(())
}

#[tokio::test]
async fn the_client_presents_its_token_learns_refusals_and_renews_before_expiry() -> R {
    let b = broker().await?;
    let addr = b.addr().to_string();
    let err = Client::connect(&addr, ConnectOptions::new().name("billing"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::Refused {
                code: ErrorCode::Unauthorized,
                ..
            }
        ),
        "{err}"
    );

    let billing = Client::connect(
        &addr,
        ConnectOptions::new().name("billing").token("bct_billing"),
    )
    .await?;
    assert_eq!(billing.identity().as_deref(), Some("billing"));
    let refused = billing
        .send_confirmed(OutgoingMessage::to_client("hr", "x").persistent(true))
        .await
        .unwrap_err();
    assert!(matches!(refused, SendError::Forbidden(_)), "{refused}");

    // A credential that expires in a few seconds, renewed by the refresh callback.
    let called = Arc::new(tokio::sync::Notify::new());
    let signal = called.clone();
    let later = now_secs() + 600;
    let audit = Client::connect(
        &addr,
        ConnectOptions::new()
            .name("audit")
            .token(jwt("audit", now_secs() + 3, serde_json::json!({})))
            .token_refresh(move || {
                let signal = signal.clone();
                async move {
                    signal.notify_one();
                    Ok(jwt("audit", later, serde_json::json!({})))
                }
            }),
    )
    .await?;
    tokio::time::timeout(WAIT, called.notified()).await?;
    // The Reauth went out before this flush's ping: its answer came before the pong.
    audit.flush().await?;
    assert_eq!(audit.credential_expires_ms(), Some(later * 1000));
    Ok(())
}

#[tokio::test]
async fn the_cli_reports_unauthorized_and_forbidden_as_json_with_their_own_status() -> R {
    let b = broker().await?;
    // The broker runs on this test's runtime: the command is awaited, not waited on.
    let addr = b.addr().to_string();
    let run = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(bin_path("broadcast").unwrap());
        cmd.arg("--server").arg(&addr).args(args);
        cmd.env_remove("BROADCAST_TOKEN");
        async move { cmd.output().await }
    };
    let out = run(&["send", "--name", "billing", "--to", "shipping.eu", "hi"]).await?;
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(line["code"], "unauthorized", "{line}");

    let out = run(&[
        "--token",
        "bct_billing",
        "send",
        "--name",
        "billing",
        "--to",
        "hr",
        "hi",
    ])
    .await?;
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(line["code"], "forbidden", "{line}");

    let out = run(&[
        "--token",
        "bct_billing",
        "send",
        "--name",
        "billing",
        "--to",
        "shipping.eu",
        "hi",
    ])
    .await?;
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // billing listens; mallory can neither take its name nor send to it.
    let mut listener = tokio::process::Command::new(bin_path("broadcast")?)
        .args(["--server", &addr, "--token", "bct_billing"])
        .args(["listen", "--name", "billing"])
        .env_remove("BROADCAST_TOKEN")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(listener.stdout.take().unwrap()).lines();
    let mut probe = as_(b.addr(), "shipping.eu", "shipping").await?;
    // The listener is connected once a message to it is no longer refused as not connected.
    loop {
        probe
            .publish(Target::Client("billing".into()), b"ping?", false)
            .await?;
        if probe.sync().await?.is_empty() {
            break;
        }
    }
    let first = tokio::time::timeout(WAIT, lines.next_line()).await??;
    let first: serde_json::Value = serde_json::from_str(&first.unwrap_or_default())?;
    assert_eq!(first["data"], "ping?");
    let out = run(&[
        "--token",
        "bct_mallory",
        "listen",
        "--name",
        "billing",
        "--count",
        "1",
    ])
    .await?;
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let refusal: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(refusal["code"], "unauthorized");
    let mut narrowed = settings();
    narrowed.identities[2].rights.send_clients = list(&["mallory"]);
    b.handle()?.reload_auth(&narrowed)?;
    let out = run(&[
        "--token",
        "bct_mallory",
        "send",
        "--name",
        "mallory",
        "--to",
        "billing",
        "x",
    ])
    .await?;
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    // billing, still connected, got nothing from mallory before the probe's next message.
    probe
        .publish(Target::Client("billing".into()), b"after", false)
        .await?;
    loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await??
            .ok_or_else(|| anyhow::anyhow!("the listener ended"))?;
        let line: serde_json::Value = serde_json::from_str(&line)?;
        assert_eq!(line["sender"].as_str(), Some("shipping.eu"), "{line}");
        if line["data"] == "after" {
            break;
        }
    }
    listener.kill().await?;
    Ok(())
}

#[tokio::test]
async fn sighup_rereads_the_credentials_of_the_config_file() -> R {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("broker.toml");
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let write = |identities: &[&str]| -> std::io::Result<()> {
        let mut text = format!(
            "listen = \"{addr}\"\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        );
        for name in identities {
            let hash = token::to_hex(&token::hash(&format!("bct_{name}")));
            text.push_str(&format!(
                "[[auth.identities]]\nidentity = \"{name}\"\ntokens_sha256 = [\"{hash}\"]\n"
            ));
        }
        std::fs::write(&file, text)
    };
    write(&["billing", "mallory"])?;
    let mut child = tokio::process::Command::new(bin_path("broadcast-broker")?)
        .arg("--config")
        .arg(&file)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let mut log = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    // Waits for a log line holding `text`.
    async fn logged(
        log: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
        text: &str,
    ) -> anyhow::Result<()> {
        tokio::time::timeout(WAIT, async {
            while let Some(line) = log.next_line().await? {
                if line.contains(text) {
                    return Ok(());
                }
            }
            anyhow::bail!("the broker's log ended before {text:?}")
        })
        .await?
    }
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    wait_until_serving(addr, || child.try_wait()).await?;
    let mut billing = as_(addr, "billing", "billing").await?;
    let mut mallory = as_(addr, "mallory", "mallory").await?;
    let hangup = || {
        std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
    };

    // A file that does not parse changes nothing.
    std::fs::write(&file, "[auth\n")?;
    assert!(hangup()?.success());
    logged(&mut log, "credentials NOT reloaded").await?;
    write(&["billing"])?;
    // Still served after the bad reload: both answer.
    assert!(billing.sync().await?.is_empty());
    assert!(mallory.sync().await?.is_empty());
    assert!(hangup()?.success());
    logged(&mut log, "credentials reloaded").await?;
    let closing = mallory.until_closed().await?;
    assert_eq!(
        error_in(&closing).map(|e| e.0),
        Some(ErrorCode::Unauthorized),
        "{closing:?}"
    );
    assert!(billing.sync().await?.is_empty());
    child.kill().await?;
    Ok(())
}

#[tokio::test]
async fn messages_queued_through_a_channel_never_reach_an_identity_that_may_not_subscribe_to_it()
-> R {
    let owner = |deny: &[&str]| RightsConfig {
        names: list(&["billing"]),
        deny_subscribe: deny.iter().map(|s| (*s).to_owned()).collect(),
        ..RightsConfig::default()
    };
    let b = TestBroker::start_with(|c| {
        c.auth = AuthSettings {
            identities: vec![
                identity("first", owner(&[])),
                identity("second", owner(&["secret"])),
                identity("sender", RightsConfig::default()),
            ],
            ..AuthSettings::default()
        };
    })
    .await?;
    let mut first = as_(b.addr(), "billing", "first").await?;
    first.subscribe("secret").await?;
    first.subscribe("public").await?;
    drop(first);
    let mut sender = as_(b.addr(), "sender", "sender").await?;
    // Wait until billing is away: a message to it is then queued, not delivered.
    loop {
        let id = sender
            .publish(Target::Client("billing".into()), b"probe", false)
            .await?;
        let frames = sender.sync().await?;
        if frames
            .iter()
            .any(|f| matches!(f, ServerFrame::DeliveryFailed(n) if n.id == id))
        {
            break;
        }
    }
    let secret = sender
        .publish(Target::Channel("secret".into()), b"secret", true)
        .await?;
    let public = sender
        .publish(Target::Channel("public".into()), b"public", true)
        .await?;
    let mut accepted = 0;
    while accepted < 2 {
        if let ServerFrame::Accepted { .. } = sender.next().await? {
            accepted += 1;
        }
    }

    // Another identity allowed the name, but not the channel, takes it over.
    let mut second = as_(b.addr(), "billing", "second").await?;
    assert_eq!(
        second.next().await?,
        ServerFrame::Unsubscribed {
            channel: "secret".into()
        }
    );
    let d = second.delivery().await?;
    assert_eq!(
        (d.id.as_str(), d.channel.as_deref()),
        (public.as_str(), Some("public"))
    );
    second.ack(d.ack_tag).await?;
    assert!(
        second.sync().await?.is_empty(),
        "the secret message never arrives"
    );
    // Its sender is told instead.
    let f = sender.failure().await?;
    assert_eq!(
        (f.id.as_str(), f.reason, &f.recipient),
        (
            secret.as_str(),
            broadcast_protocol::FailureReason::NotSubscribed,
            &broadcast_protocol::Recipient::Client("billing".into())
        )
    );
    Ok(())
}

/// Waits for the first event `pick` accepts.
async fn event_where(
    events: &mut broadcast_client::Events,
    pick: impl Fn(&broadcast_client::Event) -> bool,
) -> anyhow::Result<broadcast_client::Event> {
    use futures::StreamExt as _;
    tokio::time::timeout(WAIT, async {
        while let Some(event) = events.next().await {
            if pick(&event) {
                return Ok(event);
            }
        }
        anyhow::bail!("the events ended")
    })
    .await?
}

#[tokio::test]
async fn a_client_whose_credential_is_revoked_stops_unless_its_token_source_renews_it() -> R {
    use broadcast_client::Event;
    let b = broker().await?;
    let handle = b.handle()?;
    let addr = b.addr().to_string();
    let plain = Client::connect(
        &addr,
        ConnectOptions::new().name("mallory").token("bct_mallory"),
    )
    .await?;
    let renewing = Client::connect(
        &addr,
        ConnectOptions::new()
            .name("shipping.eu")
            .token("bct_shipping")
            .reconnect_delay(
                std::time::Duration::from_millis(1),
                std::time::Duration::from_millis(10),
            )
            .token_refresh(|| async { Ok("bct_shipping.2".to_owned()) }),
    )
    .await?;
    let mut plain_events = plain.events();
    let mut renewing_events = renewing.events();

    // mallory is removed; shipping's token is replaced by another.
    let mut next = settings();
    next.identities.retain(|i| i.identity != "mallory");
    next.identities[1].tokens_sha256 = vec![token::to_hex(&token::hash("bct_shipping.2"))];
    handle.reload_auth(&next)?;

    // Without a token source, a refused credential ends the client.
    event_where(&mut plain_events, |e| matches!(e, Event::Closed)).await?;
    // With one, the client reconnects with the token it renews.
    event_where(&mut renewing_events, |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await?;
    event_where(&mut renewing_events, |e| {
        matches!(e, Event::Connected { .. })
    })
    .await?;
    renewing
        .send_confirmed(OutgoingMessage::to_client("hr", "kept").persistent(true))
        .await?;
    Ok(())
}
