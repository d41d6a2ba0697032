//! One adapter per broker. To add a broker: write `src/targets/NAME.rs`
//! implementing `Target` and `Client`, then add it to `NAMES` and `by_name`.

use std::path::Path;

use anyhow::{Result, bail};

use crate::target::Target;

pub mod mqtt;
pub mod nats;
pub mod nats_js;
pub mod redis_pubsub;
pub mod redis_stream;

/// Target names accepted by `--target`, with the address each uses by default
/// (the ports `servers.sh` starts the servers on).
pub const NAMES: [(&str, &str); 7] = [
    ("nats", "127.0.0.1:14222"),
    ("nats-tls", "127.0.0.1:14224"),
    ("nats-js", "127.0.0.1:14223"),
    ("redis", "127.0.0.1:16379"),
    ("redis-stream", "127.0.0.1:16380"),
    ("mqtt0", "127.0.0.1:11883"),
    ("mqtt1", "127.0.0.1:11884"),
];

pub fn default_addr(name: &str) -> Option<&'static str> {
    NAMES.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

/// The target `name` at `addr`. `tls_ca` (the CA that signed the server's
/// certificate) is required by `nats-tls` and accepted by no other target.
pub fn by_name(name: &str, addr: &str, tls_ca: Option<&Path>) -> Result<Box<dyn Target>> {
    let addr = addr.to_string();
    if tls_ca.is_some() && name != "nats-tls" {
        bail!("--tls-ca applies to --target nats-tls only");
    }
    Ok(match name {
        "nats" => Box::new(nats::Nats { addr, tls_ca: None }),
        "nats-tls" => {
            let Some(ca) = tls_ca else {
                bail!("--target nats-tls needs --tls-ca (the CA's certificate, PEM)");
            };
            Box::new(nats::Nats {
                addr,
                tls_ca: Some(ca.to_path_buf()),
            })
        }
        "nats-js" => Box::new(nats_js::NatsJs { addr }),
        "redis" => Box::new(redis_pubsub::RedisPubSub { addr }),
        "redis-stream" => Box::new(redis_stream::RedisStream { addr }),
        "mqtt0" => Box::new(mqtt::Mqtt::new(&addr, rumqttc::QoS::AtMostOnce)?),
        "mqtt1" => Box::new(mqtt::Mqtt::new(&addr, rumqttc::QoS::AtLeastOnce)?),
        _ => bail!("unknown target {name}"),
    })
}
