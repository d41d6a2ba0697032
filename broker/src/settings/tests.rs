use super::*;
use clap::Parser;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    overrides: Overrides,
}

#[test]
fn the_defaults_are_configs_defaults_and_valid() {
    let config = Settings::default().config().unwrap();
    assert_eq!(format!("{config:?}"), format!("{:?}", Config::default()));
}

#[test]
fn the_default_file_names_every_setting_and_reads_back_as_the_defaults() {
    let file = Settings::default_file().unwrap();
    for (key, doc) in KEYS {
        assert!(file.contains(&format!("\n{key} = ")), "{key} missing");
        assert!(!doc.is_empty(), "{key} has no description");
    }
    assert_eq!(Settings::from_toml(&file).unwrap(), Settings::default());
}

#[test]
fn a_file_replaces_only_the_keys_it_names() {
    let settings = Settings::from_toml(
        "heartbeat_secs = 2.5\nstore_sync = \"os\"\nqueue_max_messages = 7\nlog_format = \"json\"\n",
    )
    .unwrap();
    assert_eq!(
        settings,
        Settings {
            heartbeat_secs: 2.5,
            store_sync: SyncMode::Os,
            queue_max_messages: 7,
            log_format: LogFormat::Json,
            ..Settings::default()
        }
    );
    // Whole seconds may be written as integers.
    let settings = Settings::from_toml("ack_timeout_secs = 3").unwrap();
    assert_eq!(
        settings.config().unwrap().ack_timeout,
        Duration::from_secs(3)
    );
}

#[test]
fn an_unknown_key_is_refused_by_name() {
    let err = Settings::from_toml("heartbeat_secs = 2\nheartbeet_secs = 3\n").unwrap_err();
    assert!(err.contains("heartbeet_secs"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn a_value_of_the_wrong_type_is_refused_naming_the_key() {
    for (text, key) in [
        ("max_payload = \"big\"", "max_payload"),
        ("store_sync = \"always\"", "store_sync"),
        ("max_connections = -1", "max_connections"),
        ("listen = 7400", "listen"),
    ] {
        let err = Settings::from_toml(text).unwrap_err();
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn a_value_out_of_range_is_refused_naming_the_key() {
    for (settings, key) in [
        (
            Settings {
                heartbeat_secs: -1.0,
                ..Settings::default()
            },
            "heartbeat_secs",
        ),
        (
            Settings {
                heartbeat_secs: 0.001,
                ..Settings::default()
            },
            "heartbeat_secs",
        ),
        (
            Settings {
                store_cache_mib: 0,
                ..Settings::default()
            },
            "store_cache_mib",
        ),
        (
            Settings {
                partial_frames_max_mib: 0,
                ..Settings::default()
            },
            "partial_frames_max_mib",
        ),
        (
            Settings {
                backlog_max_messages: 0,
                ..Settings::default()
            },
            "backlog_max_messages",
        ),
        (
            Settings {
                default_ttl_secs: f64::NAN,
                ..Settings::default()
            },
            "default_ttl_secs",
        ),
    ] {
        let err = settings.config().unwrap_err();
        assert_eq!(err.field, key, "{err}");
        assert!(err.to_string().contains(key), "{err}");
    }
}

#[test]
fn flags_replace_the_files_settings_and_only_those_given() {
    let mut settings = Settings::from_toml("heartbeat_secs = 2\nmax_attempts = 4\n").unwrap();
    let cli =
        Cli::try_parse_from(["broker", "--heartbeat-secs", "9", "--store-sync", "os"]).unwrap();
    cli.overrides.apply(&mut settings);
    assert_eq!(settings.heartbeat_secs, 9.0);
    assert_eq!(settings.store_sync, SyncMode::Os);
    assert_eq!(settings.max_attempts, 4);
    assert_eq!(settings.max_payload, Settings::default().max_payload);
    let err = Cli::try_parse_from(["broker", "--store-sync", "never"]).unwrap_err();
    assert!(err.to_string().contains("not a sync mode"), "{err}");
}

#[test]
fn every_setting_has_a_flag_and_an_environment_variable() {
    use clap::CommandFactory;
    let command = Cli::command();
    for (key, _) in KEYS {
        let arg = command
            .get_arguments()
            .find(|a| a.get_id().as_str() == *key)
            .unwrap_or_else(|| panic!("no flag for {key}"));
        assert_eq!(arg.get_long(), Some(key.replace('_', "-").as_str()));
        let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or_default();
        assert_eq!(env, format!("BROADCAST_{}", key.to_uppercase()));
    }
}
