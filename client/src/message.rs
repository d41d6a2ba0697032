//! Messages: [`OutgoingMessage`] to send, [`Message`] received.

use crate::SendError;
use broadcast_protocol::{
    Delivery, Publish, Target, new_message_id, validate_channel, validate_client_name, validate_id,
};
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// A message to send, built from one of the `to_*` constructors and the optional setters.
///
/// ```
/// use broadcast_client::OutgoingMessage;
/// use std::time::Duration;
///
/// let msg = OutgoingMessage::to_channel("jobs", "resize 42.png")
///     .event("job.created")
///     .ttl(Duration::from_secs(60));
/// assert_eq!(msg.message_id().len(), 21);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    id: String,
    target: Target,
    name: Option<String>,
    data: Bytes,
    persistent: bool,
    ttl: Option<Duration>,
}

impl OutgoingMessage {
    fn new(target: Target, data: Bytes) -> Self {
        Self {
            id: new_message_id(),
            target,
            name: None,
            data,
            persistent: true,
            ttl: None,
        }
    }

    /// A message for one client, by name.
    pub fn to_client(client: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Self::new(Target::Client(client.into()), data.into())
    }

    /// A message for each of several clients, by name; each one gets its own delivery outcome.
    pub fn to_group<I, S>(clients: I, data: impl Into<Bytes>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let clients = clients.into_iter().map(Into::into).collect();
        Self::new(Target::Group(clients), data.into())
    }

    /// A message for every subscriber of a channel except the sending connection.
    pub fn to_channel(channel: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Self::new(Target::Channel(channel.into()), data.into())
    }

    /// A message for every subscriber of any of several channels, each subscriber once.
    pub fn to_channels<I, S>(channels: I, data: impl Into<Bytes>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let channels = channels.into_iter().map(Into::into).collect();
        Self::new(Target::Channels(channels), data.into())
    }

    /// A message for one client in its role as a subscriber of `channel`: only that client
    /// gets it, tagged with the channel.
    pub fn to_client_in_channel(
        client: impl Into<String>,
        channel: impl Into<String>,
        data: impl Into<Bytes>,
    ) -> Self {
        let target = Target::ClientInChannel {
            client: client.into(),
            channel: channel.into(),
        };
        Self::new(target, data.into())
    }

    /// A message for every connected client except the sender.
    pub fn to_all(data: impl Into<Bytes>) -> Self {
        Self::new(Target::All, data.into())
    }

    /// Sets an event name, for the receiver to dispatch on.
    pub fn event(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Whether the broker keeps the message for recipients it cannot reach now (default: true).
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self
    }

    /// Whether the message is persistent (see [`persistent`](Self::persistent)).
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// How long the message may wait for a recipient (millisecond precision).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Replaces the message id (by default a new nanoid). The id is kept end to end and named
    /// in delivery-failure notices.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Where the message goes.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The message id.
    pub fn message_id(&self) -> &str {
        &self.id
    }

    /// The payload.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Checks the id and every name in the target, as the broker would.
    ///
    /// # Errors
    /// [`SendError::InvalidName`] for a bad id, client or channel name;
    /// [`SendError::InvalidTarget`] for an empty list or a name listed twice.
    pub fn validate(&self) -> Result<(), SendError> {
        validate_id(&self.id)?;
        match &self.target {
            Target::Client(client) => validate_client_name(client)?,
            Target::Group(clients) => check_list("group", clients, validate_client_name)?,
            Target::Channel(channel) => validate_channel(channel)?,
            Target::Channels(channels) => check_list("channel list", channels, validate_channel)?,
            Target::ClientInChannel { client, channel } => {
                validate_client_name(client)?;
                validate_channel(channel)?;
            }
            Target::All => {}
        }
        Ok(())
    }

    /// The protocol frame for this message.
    pub(crate) fn into_publish(self) -> Publish {
        Publish {
            id: self.id,
            target: self.target,
            name: self.name,
            data: self.data,
            persistent: self.persistent,
            ttl_ms: self
                .ttl
                .map(|ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            resent: false,
        }
    }
}

fn check_list(
    what: &str,
    names: &[String],
    validate: fn(&str) -> Result<(), broadcast_protocol::NameError>,
) -> Result<(), SendError> {
    if names.is_empty() {
        return Err(SendError::InvalidTarget(format!("the {what} is empty")));
    }
    let mut seen = HashSet::with_capacity(names.len());
    for name in names {
        validate(name)?;
        if !seen.insert(name.as_str()) {
            return Err(SendError::InvalidTarget(format!(
                "{name:?} is listed twice in the {what}"
            )));
        }
    }
    Ok(())
}

/// A message received from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sender's id for the message.
    pub id: String,
    /// Name of the sending client; `$broker` for messages the broker itself sends. Shared
    /// between the messages of the same sender.
    pub sender: Arc<str>,
    /// The channel the message came through: `None` for direct messages. Shared between the
    /// messages of the same channel.
    pub channel: Option<Arc<str>>,
    /// The sender's event name.
    pub name: Option<String>,
    /// The payload.
    pub data: Bytes,
    /// The sender's persistence flag.
    pub persistent: bool,
    /// True when this client may have been handed the message before. The client drops
    /// redelivered duplicates of the messages it handed over recently (see
    /// [`ConnectOptions::dedup_window`](crate::ConnectOptions::dedup_window)); one that gets
    /// through is marked with this flag.
    pub redelivered: bool,
    /// The broker's acknowledgement tag, for deliveries the broker wants acknowledged
    /// (persistent messages). In manual mode
    /// ([`ConnectOptions::manual_ack`](crate::ConnectOptions::manual_ack)) pass the message to
    /// [`Client::ack`](crate::Client::ack); otherwise the client acknowledges it when the
    /// message is taken from its stream.
    pub ack_tag: Option<u64>,
}

impl From<Delivery> for Message {
    fn from(d: Delivery) -> Self {
        Self {
            id: d.id,
            sender: Arc::from(d.sender),
            channel: d.channel.map(Arc::from),
            name: d.name,
            data: d.data,
            persistent: d.persistent,
            redelivered: d.redelivered,
            ack_tag: d.ack_tag,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broadcast_protocol::NameError;

    #[test]
    fn defaults_are_persistent_with_a_fresh_id_and_no_ttl() {
        let a = OutgoingMessage::to_client("bob", "hi");
        let b = OutgoingMessage::to_client("bob", "hi");
        assert_ne!(a.message_id(), b.message_id());
        assert_eq!(
            a.message_id().len(),
            broadcast_protocol::names::MESSAGE_ID_LEN
        );
        let p = a.into_publish();
        assert!(p.persistent);
        assert_eq!(p.ttl_ms, None);
        assert_eq!(p.name, None);
        assert_eq!(p.target, Target::Client("bob".into()));
        assert_eq!(p.data, Bytes::from_static(b"hi"));
    }

    #[test]
    fn setters_fill_the_publish_frame() {
        let p = OutgoingMessage::to_client_in_channel("bob", "news", vec![1, 2, 3])
            .event("tick")
            .persistent(false)
            .ttl(Duration::from_millis(1500))
            .id("m-1")
            .into_publish();
        assert_eq!(p.id, "m-1");
        assert_eq!(p.name.as_deref(), Some("tick"));
        assert!(!p.persistent);
        assert_eq!(p.ttl_ms, Some(1500));
        assert_eq!(
            p.target,
            Target::ClientInChannel {
                client: "bob".into(),
                channel: "news".into()
            }
        );
    }

    #[test]
    fn each_constructor_makes_its_target() {
        assert_eq!(
            OutgoingMessage::to_group(["a", "b"], "x").target(),
            &Target::Group(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            OutgoingMessage::to_channels(vec![String::from("c")], "x").target(),
            &Target::Channels(vec!["c".into()])
        );
        assert_eq!(
            OutgoingMessage::to_channel("c", "x").target(),
            &Target::Channel("c".into())
        );
        assert_eq!(OutgoingMessage::to_all("x").target(), &Target::All);
    }

    #[test]
    fn validation_refuses_bad_targets_and_ids() {
        let empty: [&str; 0] = [];
        assert!(matches!(
            OutgoingMessage::to_group(empty, "x").validate(),
            Err(SendError::InvalidTarget(_))
        ));
        assert!(matches!(
            OutgoingMessage::to_channels(empty, "x").validate(),
            Err(SendError::InvalidTarget(_))
        ));
        assert!(matches!(
            OutgoingMessage::to_group(["a", "b", "a"], "x").validate(),
            Err(SendError::InvalidTarget(_))
        ));
        assert!(matches!(
            OutgoingMessage::to_client("$broker", "x").validate(),
            Err(SendError::InvalidName(NameError::Reserved { .. }))
        ));
        assert!(matches!(
            OutgoingMessage::to_channel("a b", "x").validate(),
            Err(SendError::InvalidName(NameError::BadCharacter { .. }))
        ));
        assert!(matches!(
            OutgoingMessage::to_all("x").id("").validate(),
            Err(SendError::InvalidName(NameError::Empty { .. }))
        ));
        assert_eq!(
            OutgoingMessage::to_group(["a", "b"], "x").validate(),
            Ok(())
        );
        assert_eq!(OutgoingMessage::to_all("x").validate(), Ok(()));
    }
}
