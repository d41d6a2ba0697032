//! TLS through the real broker binary and a broker in this process: the CLI and the client over
//! TLS, a certificate not trusted or expired, a plaintext client on the TLS port, a
//! certificate renewed on SIGHUP.

use anyhow::Context as _;
use broadcast_broker::auth::{AuthSettings, IdentityConfig, RightsConfig};
use broadcast_broker::tls::{TlsConfig, server_config};
use broadcast_broker::{Broker, Config, Listeners};
use broadcast_client::{Client, ConnectError, ConnectOptions, OutgoingMessage};
use broadcast_protocol::ClientFrame;
use broadcast_tests::{RawClient, WAIT, bin_path, wait_until_serving};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, date_time_ymd};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncBufReadExt as _;
use tokio_util::sync::CancellationToken;

type R = anyhow::Result<()>;

/// A CA, a certificate it signed for localhost and 127.0.0.1, one that expired, and another
/// CA, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text);
        let ca = |name: &str| -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
        };
        let authority = ca("Broadcast test CA")?;
        write("ca.pem", authority.pem())?;
        let other = ca("Another CA")?;
        write("other-ca.pem", other.pem())?;
        // Client certificates naming a service by URI (as SPIFFE does), or by email.
        let client = |name: &str,
                      san: rcgen::SanType,
                      issuer: &CertifiedIssuer<'static, KeyPair>|
         -> anyhow::Result<()> {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.subject_alt_names = vec![san];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, issuer)?;
            write(&format!("{name}.pem"), cert.pem())?;
            write(&format!("{name}-key.pem"), key.serialize_pem())?;
            Ok(())
        };
        let uri = |uri: &str| -> anyhow::Result<rcgen::SanType> {
            Ok(rcgen::SanType::URI(uri.try_into()?))
        };
        client("billing", uri("spiffe://test/billing")?, &authority)?;
        client("stranger", uri("spiffe://test/nobody")?, &authority)?;
        client("rogue", uri("spiffe://test/billing")?, &other)?;
        let email = rcgen::SanType::Rfc822Name("mailer@test.example".try_into()?);
        client("mailer", email, &authority)?;
        let leaf = |expired: bool| -> anyhow::Result<(String, String)> {
            let mut params =
                CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
            if expired {
                params.not_before = date_time_ymd(2020, 1, 1);
                params.not_after = date_time_ymd(2021, 1, 1);
            }
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &authority)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (cert, key) = leaf(false)?;
        write("cert.pem", cert)?;
        write("key.pem", key)?;
        let (cert, key) = leaf(true)?;
        write("expired-cert.pem", cert)?;
        write("expired-key.pem", key)?;
        Ok(Self { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A broker in this process with a plaintext and a TLS listener, and an HTTP listener over
/// TLS.
async fn broker(
    pki: &Pki,
    cert: &str,
    key: &str,
) -> anyhow::Result<(Broker, CancellationToken, tempfile::TempDir)> {
    broker_with(pki, cert, key, Config::default(), None).await
}

/// As [`broker`], with `config` and client certificates verified against `client_ca`.
async fn broker_with(
    pki: &Pki,
    cert: &str,
    key: &str,
    config: Config,
    client_ca: Option<&str>,
) -> anyhow::Result<(Broker, CancellationToken, tempfile::TempDir)> {
    let data = tempfile::tempdir()?;
    let config = Config {
        data_dir: data.path().to_path_buf(),
        ..config
    };
    let client_ca = client_ca.map(|ca| pki.path(ca));
    let tls = server_config(&pki.path(cert), &pki.path(key), client_ca.as_deref())?;
    let tls = Arc::new(TlsConfig::new(tls));
    let listeners = Listeners {
        plain: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        tls: Some((
            tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            tls.clone(),
        )),
        http: Some((
            tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            Some(tls),
        )),
    };
    let shutdown = CancellationToken::new();
    let broker = Broker::start(config, listeners, shutdown.clone()).await?;
    Ok((broker, shutdown, data))
}

fn tls_options(pki: &Pki, ca: &str) -> anyhow::Result<ConnectOptions> {
    let config = broadcast_client::tls::client_config(&pki.path(ca), None)?;
    Ok(ConnectOptions::new()
        .tls(config)
        .max_reconnect_attempts(Some(1)))
}

#[tokio::test]
async fn clients_over_tls_and_plaintext_reach_each_other() -> R {
    let pki = Pki::new()?;
    let (b, _stop, _data) = broker(&pki, "cert.pem", "key.pem").await?;
    let tls_addr = b.tls_addr().context("a TLS listener")?.to_string();
    let secure = Client::connect(&tls_addr, tls_options(&pki, "ca.pem")?.name("secure")).await?;
    let plain = Client::connect(
        b.local_addr().to_string(),
        ConnectOptions::new().name("plain"),
    )
    .await?;
    let mut inbox = secure.direct_messages().context("direct stream")?;
    // Confirmed once the TLS client has taken (and so acknowledged) it.
    let confirmed =
        plain.send_confirmed(OutgoingMessage::to_client("secure", "over TLS").persistent(true));
    let received = async {
        tokio::time::timeout(WAIT, futures::StreamExt::next(&mut inbox))
            .await?
            .context("a message")
    };
    let (confirmed, got) = tokio::join!(confirmed, received);
    assert_eq!(&got?.data[..], b"over TLS");
    confirmed?;
    // "localhost" is in the certificate too.
    let port = b.tls_addr().unwrap().port();
    let by_name = Client::connect(
        format!("localhost:{port}"),
        tls_options(&pki, "ca.pem")?.name("by-name"),
    )
    .await;
    // localhost may resolve to ::1 first, where nothing listens; 127.0.0.1 then answers.
    if let Err(e) = &by_name {
        assert!(!matches!(e, ConnectError::Tls(_)), "{e}");
    }
    Ok(())
}

#[tokio::test]
async fn a_certificate_not_trusted_or_expired_is_refused_and_a_plaintext_client_closed() -> R {
    let pki = Pki::new()?;
    let (b, _stop, _data) = broker(&pki, "cert.pem", "key.pem").await?;
    let tls_addr = b.tls_addr().context("a TLS listener")?;
    let err = Client::connect(tls_addr.to_string(), tls_options(&pki, "other-ca.pem")?)
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Tls(_)), "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    // A plaintext Hello on the TLS port: the broker closes the connection at once (the
    // handshake fails on the first bytes), and others are not affected.
    let mut raw = RawClient::open(tls_addr).await?;
    futures::SinkExt::send(
        &mut raw,
        &ClientFrame::Hello(broadcast_tests::hello(Some("plain"))),
    )
    .await?;
    let end = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut raw)).await?;
    assert!(
        !matches!(end, Some(Ok(Ok(_)))),
        "no frame for a plaintext client"
    );
    Client::connect(tls_addr.to_string(), tls_options(&pki, "ca.pem")?).await?;

    // A broker serving an expired certificate is refused by the client.
    let (expired, _stop2, _data2) = broker(&pki, "expired-cert.pem", "expired-key.pem").await?;
    let err = Client::connect(
        expired.tls_addr().unwrap().to_string(),
        tls_options(&pki, "ca.pem")?,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    Ok(())
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Runs `broadcast ARGS` to the end.
async fn cli(args: &[&str]) -> anyhow::Result<std::process::Output> {
    let out = tokio::process::Command::new(bin_path("broadcast")?)
        .args(args)
        .env_remove("BROADCAST_SERVER")
        .env_remove("BROADCAST_TLS_CA")
        .output();
    Ok(tokio::time::timeout(WAIT, out).await??)
}

#[tokio::test]
async fn the_cli_talks_to_the_broker_binary_over_tls_and_refuses_the_wrong_ca() -> R {
    let pki = Pki::new()?;
    let data = tempfile::tempdir()?;
    let (plain, tls) = (free_addr()?, free_addr()?);
    let config = data.path().join("broker.toml");
    let write_config = |cert: &Path, key: &Path| {
        std::fs::write(
            &config,
            format!(
                "listen = \"{plain}\"\ntls_listen = \"{tls}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\ndata_dir = \"{}\"\n",
                cert.display(),
                key.display(),
                data.path().join("store").display()
            ),
        )
    };
    write_config(&pki.path("cert.pem"), &pki.path("key.pem"))?;
    let mut child = tokio::process::Command::new(bin_path("broadcast-broker")?)
        .arg("--config")
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut log = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    wait_until_serving(plain, || child.try_wait()).await?;

    let server = format!("tls://{tls}");
    let ca = pki.path("ca.pem");
    let ca = ca.to_str().unwrap();
    let mut listener = tokio::process::Command::new(bin_path("broadcast")?)
        .args(["--server", &server, "--tls-ca", ca])
        .args(["listen", "--name", "bob", "--count", "1"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(listener.stdout.take().unwrap()).lines();
    // Sent until bob is there (a message to a name not connected is refused as such).
    loop {
        let out = cli(&[
            "--server",
            &server,
            "--tls-ca",
            ca,
            "send",
            "--to",
            "bob",
            "--persistent",
            "false",
            "hello over TLS",
        ])
        .await?;
        assert!(out.status.code().is_some_and(|c| c <= 1), "{out:?}");
        if out.status.success() {
            break;
        }
    }
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await??
        .context("a line")?;
    let line: serde_json::Value = serde_json::from_str(&line)?;
    assert_eq!(line["data"], "hello over TLS");
    assert!(
        tokio::time::timeout(WAIT, listener.wait())
            .await??
            .success()
    );

    // The wrong CA: refused as unreachable, with the reason.
    let other = pki.path("other-ca.pem");
    let out = cli(&[
        "--server",
        &server,
        "--tls-ca",
        other.to_str().unwrap(),
        "send",
        "--to",
        "bob",
        "x",
    ])
    .await?;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("UnknownIssuer"),
        "{out:?}"
    );

    // SIGHUP with an expired certificate in the file: new connections get it.
    write_config(&pki.path("expired-cert.pem"), &pki.path("expired-key.pem"))?;
    let pid = child.id().context("pid")?;
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()?
            .success()
    );
    tokio::time::timeout(WAIT, async {
        while let Some(line) = log.next_line().await? {
            if line.contains("TLS certificate reloaded") {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("the log ended")
    })
    .await??;
    let out = cli(&[
        "--server", &server, "--tls-ca", ca, "send", "--to", "bob", "x",
    ])
    .await?;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expired"),
        "{out:?}"
    );
    child.kill().await?;
    Ok(())
}

#[tokio::test]
async fn a_client_certificate_proves_the_identity_it_maps_to_and_no_other() -> R {
    use broadcast_broker::auth::token;
    let pki = Pki::new()?;
    let config = identities_config(vec![
        identity(
            "billing",
            "URI:spiffe://test/billing",
            vec![token::to_hex(&token::hash("bct_billing"))],
        ),
        identity("mailer", "EMAIL:mailer@test.example", Vec::new()),
    ]);
    let (b, _stop, _data) =
        broker_with(&pki, "cert.pem", "key.pem", config, Some("ca.pem")).await?;
    let addr = b.tls_addr().context("a TLS listener")?.to_string();
    let with_cert = |name: &str, as_name: &str| -> anyhow::Result<ConnectOptions> {
        let (cert, key) = (
            pki.path(&format!("{name}.pem")),
            pki.path(&format!("{name}-key.pem")),
        );
        let config =
            broadcast_client::tls::client_config(&pki.path("ca.pem"), Some((&cert, &key)))?;
        Ok(ConnectOptions::new()
            .tls(config)
            .name(as_name)
            .max_reconnect_attempts(Some(1)))
    };
    // The certificate alone, no token: its URI names billing.
    let billing = Client::connect(&addr, with_cert("billing", "billing")?).await?;
    assert_eq!(billing.identity().as_deref(), Some("billing"));
    billing.close().await;
    // An email name proves its identity the same way, and only that one.
    let mailer = Client::connect(&addr, with_cert("mailer", "mailer")?).await?;
    assert_eq!(mailer.identity().as_deref(), Some("mailer"));
    mailer.close().await;
    let err = Client::connect(&addr, with_cert("mailer", "billing")?)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            ConnectError::Refused {
                code: broadcast_client::ErrorCode::Unauthorized,
                ..
            }
        ),
        "{err}"
    );
    // A certificate of the right CA whose name maps to nobody is refused.
    let err = Client::connect(&addr, with_cert("stranger", "billing")?)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ConnectError::Refused { code: broadcast_client::ErrorCode::Unauthorized, message } if message.contains("proves no identity")),
        "{err}"
    );
    // One of another CA does not get through TLS.
    let err = Client::connect(&addr, with_cert("rogue", "billing")?)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::Tls(_) | ConnectError::Io(_) | ConnectError::Protocol(_)
        ),
        "{err}"
    );
    // Without a certificate, a token still proves the identity.
    let by_token = Client::connect(
        &addr,
        tls_options(&pki, "ca.pem")?
            .name("billing")
            .token("bct_billing"),
    )
    .await?;
    assert_eq!(by_token.identity().as_deref(), Some("billing"));
    Ok(())
}

#[tokio::test]
async fn failed_tls_handshakes_count_against_their_address() -> R {
    let pki = Pki::new()?;
    let config = Config {
        max_auth_failures_per_address: 2,
        ..Config::default()
    };
    let (b, _stop, _data) = broker_with(&pki, "cert.pem", "key.pem", config, None).await?;
    let addr = b.tls_addr().context("a TLS listener")?;
    // Two clients that do not trust the broker's certificate: their handshakes fail.
    for _ in 0..2 {
        let err = Client::connect(addr.to_string(), tls_options(&pki, "other-ca.pem")?)
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Tls(_)), "{err}");
    }
    // Refused now from this address, told why over TLS.
    let err = Client::connect(addr.to_string(), tls_options(&pki, "ca.pem")?)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ConnectError::Refused { code: broadcast_client::ErrorCode::LimitReached, message } if message.contains("failed to authenticate")),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn a_websocket_over_tls_is_proved_by_its_client_certificate() -> R {
    use broadcast_protocol::{
        ClientFrame, DEFAULT_MAX_FRAME, HEADER_LEN, Hello, PROTOCOL_VERSION, ServerFrame,
    };
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let pki = Pki::new()?;
    let config = identities_config(vec![identity(
        "billing",
        "URI:spiffe://test/billing",
        Vec::new(),
    )]);
    let (b, _stop, _data) =
        broker_with(&pki, "cert.pem", "key.pem", config, Some("ca.pem")).await?;
    let addr = b.http_addr().context("an HTTP listener")?;
    let client = broadcast_client::tls::client_config(
        &pki.path("ca.pem"),
        Some((&pki.path("billing.pem"), &pki.path("billing-key.pem"))),
    )?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(client)
        .connect("localhost".try_into()?, tcp)
        .await?;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/v1/ws", tls).await?;
    let hello = ClientFrame::Hello(Hello {
        version: PROTOCOL_VERSION,
        name: Some("billing".into()),
        token: None,
        namespace: None,
        max_frame: DEFAULT_MAX_FRAME,
        heartbeat_ms: 0,
    });
    let bytes = broadcast_protocol::encode_frame(&hello, DEFAULT_MAX_FRAME as usize)?;
    ws.send(Message::Binary(bytes)).await?;
    let reply = tokio::time::timeout(WAIT, ws.next())
        .await?
        .context("the WebSocket ended")??;
    let Message::Binary(bytes) = reply else {
        anyhow::bail!("not a binary message: {reply:?}");
    };
    let frame: ServerFrame = broadcast_protocol::decode_body(&bytes[HEADER_LEN..])?;
    let ServerFrame::Welcome(w) = frame else {
        anyhow::bail!("no Welcome: {frame:?}");
    };
    assert_eq!(w.identity.as_deref(), Some("billing"));
    Ok(())
}

/// An identity with all rights, proved by a client certificate with `certificate` among its
/// names, or by one of `tokens_sha256`.
fn identity(name: &str, certificate: &str, tokens_sha256: Vec<String>) -> IdentityConfig {
    IdentityConfig {
        identity: name.into(),
        namespace: None,
        certificates: vec![certificate.into()],
        tokens_sha256,
        rights: RightsConfig::default(),
    }
}

/// A broker configuration with these identities and nothing else set.
fn identities_config(identities: Vec<IdentityConfig>) -> Config {
    Config {
        auth: AuthSettings {
            identities,
            ..AuthSettings::default()
        },
        ..Config::default()
    }
}
