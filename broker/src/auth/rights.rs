//! What an identity may do: the names it may register under, and whom it may send to and
//! subscribe to. The same fields configure an identity in the config file and a JWT's
//! `broadcast` claim.

use super::pattern::Allowed;
use broadcast_protocol::Target;
use serde::{Deserialize, Serialize};

/// Rights as written: each `deny_*` list wins over its allow list; an allow list left out
/// allows every name, except `names`, which defaults to the identity itself.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RightsConfig {
    /// Patterns of the names the identity may register under (and take over). Default: the
    /// identity's own name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
    /// Clients it may send to (`Client`, each `Group` member, `ClientInChannel`'s client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_clients: Option<Vec<String>>,
    /// Clients it may not send to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_send_clients: Vec<String>,
    /// Channels it may send to (`Channel`, each of `Channels`, `ClientInChannel`'s channel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_channels: Option<Vec<String>>,
    /// Channels it may not send to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_send_channels: Vec<String>,
    /// Whether it may send to `All` (default: yes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_all: Option<bool>,
    /// Channels it may subscribe to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Vec<String>>,
    /// Channels it may not subscribe to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_subscribe: Vec<String>,
}

/// Compiled rights of one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rights {
    names: Allowed,
    send_clients: Allowed,
    send_channels: Allowed,
    send_all: bool,
    subscribe: Allowed,
}

impl Rights {
    /// Compiles the rights of `identity`.
    ///
    /// # Errors
    /// The first pattern that does not compile, naming its list.
    pub fn new(identity: &str, c: &RightsConfig) -> Result<Self, String> {
        let own = [identity.to_owned()];
        Ok(Self {
            names: Allowed::new("names", Some(c.names.as_deref().unwrap_or(&own)), &[])?,
            send_clients: Allowed::new(
                "send_clients",
                c.send_clients.as_deref(),
                &c.deny_send_clients,
            )?,
            send_channels: Allowed::new(
                "send_channels",
                c.send_channels.as_deref(),
                &c.deny_send_channels,
            )?,
            send_all: c.send_all.unwrap_or(true),
            subscribe: Allowed::new("subscribe", c.subscribe.as_deref(), &c.deny_subscribe)?,
        })
    }

    /// Whether the identity may register under `name`.
    pub fn may_take(&self, name: &str) -> bool {
        self.names.permits(name)
    }

    /// Whether the identity may subscribe to `channel`.
    pub fn may_subscribe(&self, channel: &str) -> bool {
        self.subscribe.permits(channel)
    }

    /// Checks every recipient of a message; the error names the first one refused.
    ///
    /// # Errors
    /// What the identity may not send to.
    pub fn check_send(&self, target: &Target) -> Result<(), String> {
        let client = |name: &str| {
            if self.send_clients.permits(name) {
                Ok(())
            } else {
                Err(format!("not allowed to send to client {name}"))
            }
        };
        let channel = |name: &str| {
            if self.send_channels.permits(name) {
                Ok(())
            } else {
                Err(format!("not allowed to send to channel {name}"))
            }
        };
        match target {
            Target::Client(name) => client(name),
            Target::Group(names) => names.iter().try_for_each(|n| client(n)),
            Target::Channel(name) => channel(name),
            Target::Channels(names) => names.iter().try_for_each(|n| channel(n)),
            Target::ClientInChannel {
                client: c,
                channel: ch,
            } => client(c).and_then(|()| channel(ch)),
            Target::All if self.send_all => Ok(()),
            Target::All => Err("not allowed to send to all".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Option<Vec<String>> {
        Some(items.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn by_default_an_identity_takes_its_own_name_and_sends_anywhere() {
        let r = Rights::new("billing", &RightsConfig::default()).unwrap();
        assert!(r.may_take("billing"));
        assert!(!r.may_take("billing.eu"));
        assert!(!r.may_take("shipping"));
        assert!(r.check_send(&Target::All).is_ok());
        assert!(r.check_send(&Target::Client("x".into())).is_ok());
        assert!(r.may_subscribe("news"));
    }

    #[test]
    fn one_refused_recipient_refuses_the_whole_target() {
        let c = RightsConfig {
            send_clients: list(&["shipping.*"]),
            deny_send_clients: vec!["shipping.secret".into()],
            send_channels: list(&["orders.>"]),
            send_all: Some(false),
            ..RightsConfig::default()
        };
        let r = Rights::new("billing", &c).unwrap();
        let group = |names: &[&str]| Target::Group(names.iter().map(|s| (*s).into()).collect());
        assert!(
            r.check_send(&group(&["shipping.eu", "shipping.us"]))
                .is_ok()
        );
        let refused = r
            .check_send(&group(&["shipping.eu", "shipping.secret"]))
            .unwrap_err();
        assert!(refused.contains("shipping.secret"), "{refused}");
        assert!(r.check_send(&Target::Channel("orders.new".into())).is_ok());
        assert!(
            r.check_send(&Target::Channels(vec!["orders.new".into(), "hr".into()]))
                .is_err()
        );
        let in_channel = |client: &str, channel: &str| Target::ClientInChannel {
            client: client.into(),
            channel: channel.into(),
        };
        assert!(r.check_send(&in_channel("shipping.eu", "orders.x")).is_ok());
        assert!(r.check_send(&in_channel("shipping.eu", "hr")).is_err());
        assert!(r.check_send(&in_channel("hr", "orders.x")).is_err());
        assert!(r.check_send(&Target::All).is_err());
    }
}
