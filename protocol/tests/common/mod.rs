//! Proptest strategies for every frame type, shared by the property and allocation tests.
//!
//! Each test binary uses a different part of this module.
#![allow(dead_code)]

use broadcast_protocol::{
    ClientFrame, Delivery, DeliveryFailed, ErrorCode, ErrorFrame, FailureReason, Hello,
    PROTOCOL_VERSION, Publish, Recipient, ServerFrame, Target, Welcome,
};
use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;

/// Integers around every varint width boundary, plus anything at all.
pub(crate) fn any_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => any::<u64>(),
        2 => 0u64..300,
        1 => prop::sample::select(vec![
            250,
            251,
            252,
            u64::from(u16::MAX),
            u64::from(u16::MAX) + 1,
            u64::from(u32::MAX),
            u64::from(u32::MAX) + 1,
            u64::MAX,
        ]),
    ]
}

/// Like [`any_u64`], for `u32`.
pub(crate) fn any_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => any::<u32>(),
        2 => 0u32..300,
        1 => prop::sample::select(vec![250, 251, u32::from(u16::MAX), 1 << 16, u32::MAX]),
    ]
}

/// A protocol version: mostly the supported one, sometimes any other.
pub(crate) fn version() -> impl Strategy<Value = u16> {
    prop_oneof![3 => Just(PROTOCOL_VERSION), 1 => Just(1), 1 => any::<u16>()]
}

/// Names and other strings: empty, name-like, long, and arbitrary unicode.
pub(crate) fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        4 => "[A-Za-z0-9_.-]{1,21}",
        2 => any::<String>(),
        1 => "\\PC{200,300}",
        1 => "[\u{0}-\u{10ffff}]{0,8}",
    ]
}

/// An optional [`text`].
pub(crate) fn opt_text() -> impl Strategy<Value = Option<String>> {
    prop::option::of(text())
}

/// Payloads: mostly small, sometimes a few KiB.
pub(crate) fn data() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        3 => vec(any::<u8>(), 0..32),
        1 => vec(any::<u8>(), 0..4096),
    ]
    .prop_map(Bytes::from)
}

pub(crate) fn hello() -> impl Strategy<Value = Hello> {
    (
        version(),
        opt_text(),
        opt_text(),
        opt_text(),
        any_u32(),
        any_u32(),
    )
        .prop_map(
            |(version, name, token, namespace, max_frame, heartbeat_ms)| Hello {
                version,
                name,
                token,
                namespace,
                max_frame,
                heartbeat_ms,
            },
        )
}

pub(crate) fn welcome() -> impl Strategy<Value = Welcome> {
    (
        (version(), text(), text(), any_u32(), any_u32(), any_u32()),
        (opt_text(), opt_text(), proptest::option::of(any_u64())),
    )
        .prop_map(
            |(
                (version, name, server, max_frame, max_payload, heartbeat_ms),
                (identity, namespace, expires_ms),
            )| {
                // A version 1 Welcome has no room for the fields of version 2.
                let v2 = version >= 2;
                Welcome {
                    version,
                    name,
                    server,
                    max_frame,
                    max_payload,
                    heartbeat_ms,
                    identity: identity.filter(|_| v2),
                    namespace: namespace.filter(|_| v2),
                    expires_ms: expires_ms.filter(|_| v2),
                }
            },
        )
}

pub(crate) fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        text().prop_map(Target::Client),
        vec(text(), 0..8).prop_map(Target::Group),
        text().prop_map(Target::Channel),
        vec(text(), 0..8).prop_map(Target::Channels),
        (text(), text()).prop_map(|(client, channel)| Target::ClientInChannel { client, channel }),
        Just(Target::All),
    ]
}

pub(crate) fn publish() -> impl Strategy<Value = Publish> {
    (
        text(),
        target(),
        opt_text(),
        data(),
        any::<bool>(),
        prop::option::of(any_u64()),
        any::<bool>(),
    )
        .prop_map(
            |(id, target, name, data, persistent, ttl_ms, resent)| Publish {
                id,
                target,
                name,
                data,
                persistent,
                ttl_ms,
                resent,
            },
        )
}

pub(crate) fn delivery() -> impl Strategy<Value = Delivery> {
    (
        text(),
        text(),
        opt_text(),
        opt_text(),
        data(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(any_u64()),
    )
        .prop_map(
            |(id, sender, channel, name, data, persistent, redelivered, ack_tag)| Delivery {
                id,
                sender,
                channel,
                name,
                data,
                persistent,
                redelivered,
                ack_tag,
            },
        )
}

pub(crate) fn recipient() -> impl Strategy<Value = Recipient> {
    prop_oneof![
        text().prop_map(Recipient::Client),
        text().prop_map(Recipient::Channel),
        Just(Recipient::All),
    ]
}

/// Every failure reason, in wire order.
pub(crate) const FAILURE_REASONS: [FailureReason; 10] = FailureReason::ALL;

/// Every error code, in wire order.
pub(crate) const ERROR_CODES: [ErrorCode; 15] = [
    ErrorCode::UnsupportedVersion,
    ErrorCode::BadHandshake,
    ErrorCode::InvalidName,
    ErrorCode::Replaced,
    ErrorCode::FrameTooLarge,
    ErrorCode::Malformed,
    ErrorCode::InvalidTarget,
    ErrorCode::PayloadTooLarge,
    ErrorCode::LimitReached,
    ErrorCode::ShuttingDown,
    ErrorCode::Timeout,
    ErrorCode::Internal,
    ErrorCode::Unauthorized,
    ErrorCode::Forbidden,
    ErrorCode::AuthExpired,
];

pub(crate) fn delivery_failed() -> impl Strategy<Value = DeliveryFailed> {
    (
        text(),
        recipient(),
        prop::sample::select(&FAILURE_REASONS[..]),
        text(),
        prop::option::of(any_u64()),
    )
        .prop_map(|(id, recipient, reason, detail, ack_tag)| DeliveryFailed {
            id,
            recipient,
            reason,
            detail,
            ack_tag,
        })
}

pub(crate) fn error_frame() -> impl Strategy<Value = ErrorFrame> {
    (prop::sample::select(&ERROR_CODES[..]), text(), opt_text())
        .prop_map(|(code, message, id)| ErrorFrame { code, message, id })
}

pub(crate) fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        hello().prop_map(ClientFrame::Hello),
        publish().prop_map(ClientFrame::Publish),
        text().prop_map(|channel| ClientFrame::Subscribe { channel }),
        text().prop_map(|channel| ClientFrame::Unsubscribe { channel }),
        vec(any_u64(), 0..64).prop_map(|tags| ClientFrame::Ack { tags }),
        any_u64().prop_map(|nonce| ClientFrame::Ping { nonce }),
        any_u64().prop_map(|nonce| ClientFrame::Pong { nonce }),
        Just(ClientFrame::Bye),
        text().prop_map(|token| ClientFrame::Reauth { token }),
    ]
}

pub(crate) fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        welcome().prop_map(ServerFrame::Welcome),
        delivery().prop_map(ServerFrame::Deliver),
        delivery_failed().prop_map(ServerFrame::DeliveryFailed),
        text().prop_map(|id| ServerFrame::Accepted { id }),
        text().prop_map(|channel| ServerFrame::Subscribed { channel }),
        text().prop_map(|channel| ServerFrame::Unsubscribed { channel }),
        error_frame().prop_map(ServerFrame::Error),
        any_u64().prop_map(|nonce| ServerFrame::Ping { nonce }),
        any_u64().prop_map(|nonce| ServerFrame::Pong { nonce }),
        text().prop_map(|reason| ServerFrame::Bye { reason }),
        proptest::option::of(any_u64()).prop_map(|expires_ms| ServerFrame::Reauthed { expires_ms }),
    ]
}

/// The protocol version a frame announces, when it is a handshake.
pub(crate) fn client_version(frame: &ClientFrame) -> Option<u16> {
    match frame {
        ClientFrame::Hello(h) => Some(h.version),
        _ => None,
    }
}

/// The protocol version a frame announces, when it is a handshake.
pub(crate) fn server_version(frame: &ServerFrame) -> Option<u16> {
    match frame {
        ServerFrame::Welcome(w) => Some(w.version),
        _ => None,
    }
}
