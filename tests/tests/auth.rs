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

type R = anyhow::Result<()>;

const SECRET: &str = "the HS256 secret of these tests, 32+ bytes";

fn identity(name: &str, rights: RightsConfig) -> IdentityConfig {
    IdentityConfig {
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
