//! JSON rendering of received messages and of notices about sent messages.
//!
//! Every function returns one line of JSON without the trailing newline. Keys come out in a
//! fixed order so that the output is easy to read as well as to parse.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use broadcast_client::{ErrorCode, Event, FailureReason, Message, Recipient};
use serde::Serialize;

/// A received message as printed by `listen`.
#[derive(Serialize)]
struct MessageLine<'a> {
    id: &'a str,
    sender: &'a str,
    channel: Option<&'a str>,
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
    persistent: bool,
    redelivered: bool,
}

/// Who a failed delivery was meant for: `{"client":"bob"}`, `{"channel":"jobs"}` or `"all"`.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum RecipientJson<'a> {
    Client(&'a str),
    Channel(&'a str),
    All,
}

impl<'a> From<&'a Recipient> for RecipientJson<'a> {
    fn from(recipient: &'a Recipient) -> Self {
        match recipient {
            Recipient::Client(name) => RecipientJson::Client(name),
            Recipient::Channel(name) => RecipientJson::Channel(name),
            Recipient::All => RecipientJson::All,
        }
    }
}

/// A notice about a message this client sent, tagged by `"event"`.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum NoticeLine<'a> {
    /// The broker accepted the message.
    Sent { id: &'a str },
    /// The broker confirmed a persistent message.
    Accepted { id: &'a str },
    /// One recipient will not get the message.
    DeliveryFailed {
        id: &'a str,
        recipient: RecipientJson<'a>,
        reason: &'static str,
        detail: &'a str,
    },
    /// The broker refused something.
    Error {
        code: &'static str,
        message: &'a str,
        id: Option<&'a str>,
    },
}

fn to_line<T: Serialize>(value: &T) -> String {
    // Serializing these plain structs to a string cannot fail: every key is a string and
    // there are no maps or non-finite floats.
    serde_json::to_string(value).expect("serializing a JSON line cannot fail")
}

/// Renders a received message: `data` holds the payload when it is valid UTF-8; otherwise
/// `data` is absent and `data_base64` holds the payload in standard base64.
pub(crate) fn message_line(message: &Message) -> String {
    let (data, data_base64) = match std::str::from_utf8(&message.data) {
        Ok(text) => (Some(text), None),
        Err(_) => (None, Some(BASE64.encode(&message.data))),
    };
    to_line(&MessageLine {
        id: &message.id,
        sender: &message.sender,
        channel: message.channel.as_deref(),
        name: message.name.as_deref(),
        data,
        data_base64,
        persistent: message.persistent,
        redelivered: message.redelivered,
    })
}

/// Renders `{"event":"sent","id":...}`.
pub(crate) fn sent_line(id: &str) -> String {
    to_line(&NoticeLine::Sent { id })
}

/// Renders the notices a sender prints: delivery failures, acceptances and server errors.
/// Returns `None` for connection events, which are not printed as JSON.
pub(crate) fn notice_line(event: &Event) -> Option<String> {
    let line = match event {
        Event::DeliveryFailed {
            id,
            recipient,
            reason,
            detail,
        } => NoticeLine::DeliveryFailed {
            id,
            recipient: recipient.into(),
            reason: reason_name(*reason),
            detail,
        },
        Event::Accepted { id } => NoticeLine::Accepted { id },
        Event::ServerError { code, message, id } => {
            return Some(error_line(*code, message, id.as_deref()));
        }
        _ => return None,
    };
    Some(to_line(&line))
}

/// Renders `{"event":"error","code":...,"message":...,"id":...}`.
pub(crate) fn error_line(code: ErrorCode, message: &str, id: Option<&str>) -> String {
    to_line(&NoticeLine::Error {
        code: code_name(code),
        message,
        id,
    })
}

/// The snake_case name of a delivery failure reason, as printed in `"reason"`.
pub(crate) fn reason_name(reason: FailureReason) -> &'static str {
    reason.name()
}

/// The snake_case name of an error code, as printed in `"code"`.
pub(crate) fn code_name(code: ErrorCode) -> &'static str {
    code.name()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::{Value, json};

    fn message(data: &'static [u8], channel: Option<&str>, name: Option<&str>) -> Message {
        Message {
            id: "m1".to_owned(),
            sender: "alice".into(),
            channel: channel.map(Into::into),
            name: name.map(str::to_owned),
            data: Bytes::from_static(data),
            persistent: true,
            redelivered: false,
            ack_tag: None,
        }
    }

    fn parse(line: &str) -> Value {
        assert!(
            !line.contains('\n'),
            "a JSON line must not hold a newline: {line}"
        );
        serde_json::from_str(line).expect("valid JSON")
    }

    #[test]
    fn utf8_payload_is_a_string() {
        let line = message_line(&message(b"hello \xc3\xa9", Some("jobs"), Some("greet")));
        assert_eq!(
            parse(&line),
            json!({
                "id": "m1",
                "sender": "alice",
                "channel": "jobs",
                "name": "greet",
                "data": "hello é",
                "persistent": true,
                "redelivered": false,
            })
        );
        assert!(line.starts_with(r#"{"id":"m1","sender":"alice","#));
    }

    #[test]
    fn binary_payload_is_base64() {
        let value = parse(&message_line(&message(b"\xff\x00\x01", None, None)));
        assert_eq!(value["data_base64"], "/wAB");
        assert!(value.get("data").is_none());
    }

    #[test]
    fn missing_channel_and_name_are_null() {
        let value = parse(&message_line(&message(b"", None, None)));
        assert_eq!(value["channel"], Value::Null);
        assert_eq!(value["name"], Value::Null);
        assert!(value.get("channel").is_some() && value.get("name").is_some());
        assert_eq!(value["data"], "");
        assert!(value.get("data_base64").is_none());
    }

    #[test]
    fn delivery_failed_lines() {
        let event = Event::DeliveryFailed {
            id: "m1".to_owned(),
            recipient: Recipient::Client("bob".to_owned()),
            reason: FailureReason::NotConnected,
            detail: "bob is not connected".to_owned(),
        };
        let line = notice_line(&event).expect("printed");
        assert!(line.starts_with(r#"{"event":"delivery_failed","id":"m1","#));
        assert_eq!(
            parse(&line),
            json!({
                "event": "delivery_failed",
                "id": "m1",
                "recipient": {"client": "bob"},
                "reason": "not_connected",
                "detail": "bob is not connected",
            })
        );

        let event = Event::DeliveryFailed {
            id: "m2".to_owned(),
            recipient: Recipient::Channel("jobs".to_owned()),
            reason: FailureReason::NoSubscribers,
            detail: String::new(),
        };
        let value = parse(&notice_line(&event).expect("printed"));
        assert_eq!(value["recipient"], json!({"channel": "jobs"}));
        assert_eq!(value["reason"], "no_subscribers");

        let event = Event::DeliveryFailed {
            id: "m3".to_owned(),
            recipient: Recipient::All,
            reason: FailureReason::NoSubscribers,
            detail: String::new(),
        };
        assert_eq!(
            parse(&notice_line(&event).expect("printed"))["recipient"],
            "all"
        );
    }

    #[test]
    fn reason_names_are_snake_case() {
        let cases = [
            (FailureReason::NotConnected, "not_connected"),
            (FailureReason::NoSubscribers, "no_subscribers"),
            (FailureReason::SlowConsumer, "slow_consumer"),
            (FailureReason::TooLarge, "too_large"),
            (FailureReason::Expired, "expired"),
            (FailureReason::QueueFull, "queue_full"),
            (FailureReason::AttemptsExhausted, "attempts_exhausted"),
            (FailureReason::StoreUnavailable, "store_unavailable"),
            (FailureReason::ShuttingDown, "shutting_down"),
            (FailureReason::NotSubscribed, "not_subscribed"),
        ];
        for (reason, name) in cases {
            assert_eq!(reason_name(reason), name);
        }
        assert_eq!(code_name(ErrorCode::PayloadTooLarge), "payload_too_large");
        assert_eq!(code_name(ErrorCode::InvalidTarget), "invalid_target");
    }

    #[test]
    fn accepted_error_and_sent_lines() {
        let accepted = Event::Accepted {
            id: "m1".to_owned(),
        };
        assert_eq!(
            notice_line(&accepted).expect("printed"),
            r#"{"event":"accepted","id":"m1"}"#
        );
        let error = Event::ServerError {
            code: ErrorCode::InvalidTarget,
            message: "empty group".to_owned(),
            id: Some("m1".to_owned()),
        };
        assert_eq!(
            notice_line(&error).expect("printed"),
            r#"{"event":"error","code":"invalid_target","message":"empty group","id":"m1"}"#
        );
        let error = Event::ServerError {
            code: ErrorCode::Internal,
            message: "oops".to_owned(),
            id: None,
        };
        assert_eq!(
            parse(&notice_line(&error).expect("printed"))["id"],
            Value::Null
        );
        assert_eq!(sent_line("m9"), r#"{"event":"sent","id":"m9"}"#);
    }

    #[test]
    fn connection_events_are_not_notices() {
        assert!(notice_line(&Event::Closed).is_none());
        assert!(
            notice_line(&Event::Disconnected {
                reason: "reset".to_owned()
            })
            .is_none()
        );
    }
}
