//! The `broadcast-broker` binary's settings: a config file, the environment and flags.

use anyhow::{Context as _, bail};
use broadcast_tests::{WAIT, bin_path, wait_until_serving};
use std::process::{Output, Stdio};
use tokio::process::Command;

type R = anyhow::Result<()>;

/// `broadcast-broker ARGS` with the environment `env` (and no `BROADCAST_*` variable from the
/// test's own environment).
async fn broker(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Output> {
    let mut command = Command::new(bin_path("broadcast-broker")?);
    for (key, _) in std::env::vars() {
        if key.starts_with("BROADCAST_") {
            command.env_remove(key);
        }
    }
    let output = command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output();
    Ok(tokio::time::timeout(WAIT, output).await??)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The `heartbeat_secs` line of the settings `check-config` prints.
fn heartbeat(output: &Output) -> anyhow::Result<String> {
    if !output.status.success() {
        bail!("check-config failed: {}", stderr(output));
    }
    stdout(output)
        .lines()
        .find(|l| l.starts_with("heartbeat_secs = "))
        .map(str::to_owned)
        .context("no heartbeat_secs in the settings printed")
}

#[tokio::test]
async fn a_flag_wins_over_the_environment_which_wins_over_the_file() -> R {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("broker.toml");
    std::fs::write(&file, "heartbeat_secs = 7\nmax_attempts = 3\n")?;
    let file = file.to_str().context("path")?;
    let env = [("BROADCAST_HEARTBEAT_SECS", "8")];

    let out = broker(&["check-config", file], &[]).await?;
    assert_eq!(heartbeat(&out)?, "heartbeat_secs = 7.0");
    assert!(
        stdout(&out).contains("max_attempts = 3\n"),
        "{}",
        stdout(&out)
    );
    let out = broker(&["check-config", file], &env).await?;
    assert_eq!(heartbeat(&out)?, "heartbeat_secs = 8.0");
    let out = broker(&["--heartbeat-secs", "9", "check-config", file], &env).await?;
    assert_eq!(heartbeat(&out)?, "heartbeat_secs = 9.0");
    // What neither the environment nor a flag names stays the file's.
    assert!(
        stdout(&out).contains("max_attempts = 3\n"),
        "{}",
        stdout(&out)
    );
    Ok(())
}

#[tokio::test]
async fn check_config_refuses_an_unknown_key_naming_it() -> R {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("broker.toml");
    std::fs::write(&file, "heartbeat_secs = 2\nmax_conections = 10\n")?;
    let out = broker(&["check-config", file.to_str().context("path")?], &[]).await?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("unknown field `max_conections`"), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(stdout(&out).is_empty());

    // A value out of range is refused naming its key, from the file as from a flag.
    std::fs::write(&file, "store_cache_mib = 0\n")?;
    let out = broker(&["check-config", file.to_str().context("path")?], &[]).await?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("`store_cache_mib`"),
        "{}",
        stderr(&out)
    );
    Ok(())
}

#[tokio::test]
async fn the_default_config_file_passes_check_config_and_starts_a_broker() -> R {
    let dir = tempfile::tempdir()?;
    let out = broker(&["print-default-config"], &[]).await?;
    assert!(out.status.success());
    let defaults = stdout(&out);
    assert!(
        defaults.contains("\n# Most connections at once"),
        "{defaults}"
    );

    // The default file, with the address and data directory changed, runs a broker.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let data = dir.path().join("data");
    let text = defaults
        .replace(
            "listen = \"127.0.0.1:7400\"",
            &format!("listen = \"{addr}\""),
        )
        .replace(
            "data_dir = \"broadcast-data\"",
            &format!("data_dir = {:?}", data.to_str().context("path")?),
        );
    let file = dir.path().join("broker.toml");
    std::fs::write(&file, text)?;
    let file = file.to_str().context("path")?;
    let out = broker(&["check-config", file], &[]).await?;
    assert!(out.status.success(), "{}", stderr(&out));

    let mut child = Command::new(bin_path("broadcast-broker")?)
        .args(["--config", file])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    wait_until_serving(addr, || child.try_wait())
        .await
        .context("no broker on the file's address")?;
    assert!(
        data.join("db").exists(),
        "the store is not in the file's data_dir"
    );
    Ok(())
}

#[tokio::test]
async fn the_packaged_config_file_passes_check_config() -> R {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/broker.toml");
    let out = broker(&["check-config", file.to_str().context("path")?], &[]).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    let settings = stdout(&out);
    assert!(
        settings.contains("data_dir = \"/var/lib/broadcast/data\""),
        "{settings}"
    );
    assert!(
        settings.contains("admin_listen = \"127.0.0.1:7402\""),
        "{settings}"
    );
    Ok(())
}

#[tokio::test]
async fn the_admin_token_is_never_printed() -> R {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("broker.toml");
    std::fs::write(&file, "admin_listen = \"127.0.0.1:0\"\n")?;
    let env = [("BROADCAST_ADMIN_TOKEN", "t0ps3cr3t")];
    let out = broker(&["check-config", file.to_str().context("path")?], &env).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("admin_token = \"(set)\""),
        "{}",
        stdout(&out)
    );
    let out = broker(&["--help"], &env).await?;
    for text in [stdout(&out), stderr(&out)] {
        assert!(!text.contains("t0ps3cr3t"), "{text}");
    }
    Ok(())
}

#[tokio::test]
async fn listening_beyond_loopback_without_credentials_needs_to_be_asked_for() -> R {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let data = data.to_str().context("path")?;
    // Refused before anything is bound or opened.
    let out = broker(&["--listen", "0.0.0.0:0", "--data-dir", data], &[]).await?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("allow_unauthenticated"), "{err}");
    assert!(err.contains("0.0.0.0:0"), "{err}");
    assert!(!std::path::Path::new(data).exists(), "the store was opened");
    // The same from the environment and from a file.
    let out = broker(&["--data-dir", data], &[("BROADCAST_LISTEN", "[::]:0")]).await?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // Asked for, it is only checked, not refused: check-config shows it in force.
    let file = dir.path().join("broker.toml");
    std::fs::write(
        &file,
        "listen = \"0.0.0.0:7400\"\nallow_unauthenticated = true\n",
    )?;
    let out = broker(&["check-config", file.to_str().context("path")?], &[]).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("allow_unauthenticated = true"));
    Ok(())
}

#[tokio::test]
async fn token_new_prints_the_token_then_config_lines_that_admit_it() -> R {
    let out = broker(&["token", "new", "--identity", "billing"], &[]).await?;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let (token, lines) = text.split_once('\n').context("two parts")?;
    assert!(token.starts_with("bct_") && token.len() > 40, "{token:?}");
    assert!(
        !lines.contains(token),
        "the token is shown once, not in the config lines"
    );
    // The lines, appended to a config file, admit the token for its identity.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("broker.toml");
    std::fs::write(&file, lines)?;
    let settings = broadcast_broker::Settings::from_file(&file)?;
    let credentials = broadcast_broker::auth::Credentials::new(&settings.auth)?
        .context("credentials configured")?;
    let grant = credentials
        .authenticate(token)
        .map_err(anyhow::Error::msg)?;
    assert_eq!(&*grant.identity, "billing");
    assert!(credentials.authenticate("bct_other").is_err());
    let refused = broker(&["token", "new", "--identity", "$broker"], &[]).await?;
    assert!(!refused.status.success());
    Ok(())
}
