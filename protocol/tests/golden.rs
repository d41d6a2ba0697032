//! Golden vectors: the wire format frozen in `tests/vectors/*.bin` and shown in `PROTOCOL.md`.
//!
//! Each vector is a frame value and the complete frame (header and body) it encodes to. The tests
//! check that the value encodes to the checked-in bytes, that the bytes decode to the value, and
//! that the hex shown in `PROTOCOL.md` after the line `vector: <file>` is those bytes. The enum
//! tables in `PROTOCOL.md` (after a line `<!-- variants: <Type> -->`) are checked against the
//! code the same way.
//!
//! Run with `BLESS=1` to rewrite the `.bin` files from the values after a deliberate change of
//! the format; `PROTOCOL.md` is then updated by hand from the failure messages.

mod common;

use broadcast_protocol::{
    ClientFrame, DEFAULT_MAX_FRAME, DEFAULT_MAX_PAYLOAD, Delivery, DeliveryFailed, ErrorCode,
    ErrorFrame, FailureReason, FrameCodec, HEADER_LEN, Hello, Publish, Recipient, ServerFrame,
    Target, Welcome, encode_frame,
};
use bytes::{Bytes, BytesMut};
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::OnceLock;
use tokio_util::codec::Decoder;

/// The message id used in the examples, in the shape of a nanoid.
const ID: &str = "V1StGXR8_Z5jdHi6B-myT";

#[derive(Debug, Clone, PartialEq)]
enum Frame {
    Client(ClientFrame),
    Server(ServerFrame),
}

struct Vector {
    file: &'static str,
    frame: Frame,
}

fn client(file: &'static str, frame: ClientFrame) -> Vector {
    Vector {
        file,
        frame: Frame::Client(frame),
    }
}

fn server(file: &'static str, frame: ServerFrame) -> Vector {
    Vector {
        file,
        frame: Frame::Server(frame),
    }
}

fn publish(target: Target) -> Publish {
    Publish {
        id: ID.into(),
        target,
        name: None,
        data: Bytes::from_static(b"hi"),
        persistent: false,
        ttl_ms: None,
        resent: false,
    }
}

fn failed(recipient: Recipient, reason: FailureReason, detail: &str) -> DeliveryFailed {
    DeliveryFailed {
        id: ID.into(),
        recipient,
        reason,
        detail: detail.into(),
        ack_tag: None,
    }
}

fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// Every example of `PROTOCOL.md`, in the order it shows them.
fn vectors() -> Vec<Vector> {
    vec![
        client(
            "client_hello.bin",
            ClientFrame::Hello(Hello {
                version: 1,
                name: Some("alice".into()),
                token: None,
                namespace: None,
                max_frame: DEFAULT_MAX_FRAME,
                heartbeat_ms: 5000,
            }),
        ),
        client(
            "client_hello_anonymous.bin",
            ClientFrame::Hello(Hello {
                version: 1,
                name: None,
                token: None,
                namespace: None,
                max_frame: 65536,
                heartbeat_ms: 0,
            }),
        ),
        client(
            "client_publish_client.bin",
            ClientFrame::Publish(Publish {
                name: Some("greeting".into()),
                data: Bytes::from_static(b"hello"),
                persistent: true,
                ttl_ms: Some(60_000),
                ..publish(Target::Client("bob".into()))
            }),
        ),
        client(
            "client_publish_group.bin",
            ClientFrame::Publish(Publish {
                data: Bytes::from_static(&[0x00, 0xff]),
                ..publish(Target::Group(names(&["bob", "carol"])))
            }),
        ),
        client(
            "client_publish_channel.bin",
            ClientFrame::Publish(publish(Target::Channel("news".into()))),
        ),
        client(
            "client_publish_channels.bin",
            ClientFrame::Publish(Publish {
                persistent: true,
                ttl_ms: Some(1000),
                resent: true,
                ..publish(Target::Channels(names(&["news", "sport"])))
            }),
        ),
        client(
            "client_publish_client_in_channel.bin",
            ClientFrame::Publish(publish(Target::ClientInChannel {
                client: "bob".into(),
                channel: "news".into(),
            })),
        ),
        client(
            "client_publish_all.bin",
            ClientFrame::Publish(Publish {
                data: Bytes::new(),
                ..publish(Target::All)
            }),
        ),
        client(
            "client_subscribe.bin",
            ClientFrame::Subscribe {
                channel: "news".into(),
            },
        ),
        client(
            "client_unsubscribe.bin",
            ClientFrame::Unsubscribe {
                channel: "news".into(),
            },
        ),
        client(
            "client_ack.bin",
            ClientFrame::Ack {
                tags: vec![1, 250, 251, 70_000],
            },
        ),
        client("client_ping.bin", ClientFrame::Ping { nonce: 1 }),
        client("client_pong.bin", ClientFrame::Pong { nonce: 1 << 32 }),
        client("client_bye.bin", ClientFrame::Bye),
        server(
            "server_welcome.bin",
            ServerFrame::Welcome(Welcome {
                version: 1,
                name: "alice".into(),
                server: "broadcast 0.1.0".into(),
                max_frame: DEFAULT_MAX_FRAME,
                max_payload: DEFAULT_MAX_PAYLOAD,
                heartbeat_ms: 5000,
                identity: None,
                namespace: None,
                expires_ms: None,
            }),
        ),
        server(
            "server_deliver.bin",
            ServerFrame::Deliver(Delivery {
                id: ID.into(),
                sender: "carol".into(),
                channel: Some("news".into()),
                name: Some("greeting".into()),
                data: Bytes::from_static(b"hello"),
                persistent: false,
                redelivered: false,
                ack_tag: None,
            }),
        ),
        server(
            "server_deliver_persistent.bin",
            ServerFrame::Deliver(Delivery {
                id: ID.into(),
                sender: "alice".into(),
                channel: None,
                name: None,
                data: Bytes::from_static(b"hi"),
                persistent: true,
                redelivered: true,
                ack_tag: Some(300),
            }),
        ),
        server(
            "server_delivery_failed.bin",
            ServerFrame::DeliveryFailed(failed(
                Recipient::Client("bob".into()),
                FailureReason::NotConnected,
                "bob is offline",
            )),
        ),
        server(
            "server_delivery_failed_channel.bin",
            ServerFrame::DeliveryFailed(failed(
                Recipient::Channel("news".into()),
                FailureReason::NoSubscribers,
                "",
            )),
        ),
        server(
            "server_delivery_failed_all.bin",
            ServerFrame::DeliveryFailed(failed(Recipient::All, FailureReason::Expired, "")),
        ),
        server(
            "server_accepted.bin",
            ServerFrame::Accepted { id: ID.into() },
        ),
        server(
            "server_subscribed.bin",
            ServerFrame::Subscribed {
                channel: "news".into(),
            },
        ),
        server(
            "server_unsubscribed.bin",
            ServerFrame::Unsubscribed {
                channel: "news".into(),
            },
        ),
        server(
            "server_error.bin",
            ServerFrame::Error(ErrorFrame {
                code: ErrorCode::FrameTooLarge,
                message: "frame too large".into(),
                id: None,
            }),
        ),
        server(
            "server_error_with_id.bin",
            ServerFrame::Error(ErrorFrame {
                code: ErrorCode::PayloadTooLarge,
                message: "too large".into(),
                id: Some(ID.into()),
            }),
        ),
        server("server_ping.bin", ServerFrame::Ping { nonce: 1 << 32 }),
        server("server_pong.bin", ServerFrame::Pong { nonce: 1 }),
        server(
            "server_bye.bin",
            ServerFrame::Bye {
                reason: "shutting down".into(),
            },
        ),
        client(
            "client_hello_v2.bin",
            ClientFrame::Hello(Hello {
                version: 2,
                name: Some("billing".into()),
                token: Some("bc_secret".into()),
                namespace: None,
                max_frame: DEFAULT_MAX_FRAME,
                heartbeat_ms: 5000,
            }),
        ),
        client(
            "client_reauth.bin",
            ClientFrame::Reauth {
                token: "bc_fresh".into(),
            },
        ),
        server(
            "server_welcome_v2.bin",
            ServerFrame::Welcome(Welcome {
                version: 2,
                name: "billing".into(),
                server: "broadcast 0.1.0".into(),
                max_frame: DEFAULT_MAX_FRAME,
                max_payload: DEFAULT_MAX_PAYLOAD,
                heartbeat_ms: 5000,
                identity: Some("billing".into()),
                namespace: None,
                expires_ms: Some(1_800_000_000_000),
            }),
        ),
        server(
            "server_reauthed.bin",
            ServerFrame::Reauthed {
                expires_ms: Some(1_800_000_000_000),
            },
        ),
        server(
            "server_error_forbidden.bin",
            ServerFrame::Error(ErrorFrame {
                code: ErrorCode::Forbidden,
                message: "not allowed to send to bob".into(),
                id: Some(ID.into()),
            }),
        ),
    ]
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn vector_path(file: &str) -> PathBuf {
    crate_dir().join("tests").join("vectors").join(file)
}

fn encode(frame: &Frame) -> Vec<u8> {
    let max = DEFAULT_MAX_FRAME as usize;
    match frame {
        Frame::Client(f) => encode_frame(f, max),
        Frame::Server(f) => encode_frame(f, max),
    }
    .expect("every example encodes")
    .to_vec()
}

/// Decodes one complete frame with the codec and checks that nothing is left over.
fn decode_whole<F: broadcast_protocol::FrameBody + Debug>(bytes: &[u8]) -> F {
    let mut codec = FrameCodec::<F>::new(DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::from(bytes);
    let frame = codec
        .decode(&mut buf)
        .expect("framing is intact")
        .expect("a whole frame")
        .expect("a valid frame");
    assert!(buf.is_empty(), "{} bytes after the frame", buf.len());
    frame
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// With `BLESS` set, writes every vector file from its example, once per test run, before any
/// test reads them.
fn bless_once() {
    static BLESSED: OnceLock<()> = OnceLock::new();
    BLESSED.get_or_init(|| {
        if !std::env::var_os("BLESS").is_some_and(|v| !v.is_empty() && v != "0") {
            return;
        }
        for v in vectors() {
            let path = vector_path(v.file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, encode(&v.frame)).unwrap();
        }
    });
}

/// The checked-in bytes of a vector.
fn stored(file: &str) -> std::io::Result<Vec<u8>> {
    bless_once();
    std::fs::read(vector_path(file))
}

#[test]
fn examples_encode_to_the_checked_in_vectors() {
    let mut wrong = Vec::new();
    for v in vectors() {
        let bytes = encode(&v.frame);
        match stored(v.file) {
            Ok(stored) if stored == bytes => {}
            Ok(stored) => wrong.push(format!(
                "{}:\n  stored:  {}\n  encoded: {}",
                v.file,
                hex(&stored),
                hex(&bytes)
            )),
            Err(e) => wrong.push(format!("{}: {e}", v.file)),
        }
    }
    assert!(
        wrong.is_empty(),
        "encoding differs from the golden vectors (run with BLESS=1 only if the format change \
         is deliberate):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn checked_in_vectors_decode_to_the_examples() {
    for v in vectors() {
        let bytes = stored(v.file).unwrap();
        let len = u32::from_be_bytes(bytes[..HEADER_LEN].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - HEADER_LEN, "{}: header", v.file);
        let decoded = match &v.frame {
            Frame::Client(_) => Frame::Client(decode_whole(&bytes)),
            Frame::Server(_) => Frame::Server(decode_whole(&bytes)),
        };
        assert_eq!(decoded, v.frame, "{}", v.file);
    }
}

#[test]
fn every_vector_file_is_an_example() {
    bless_once();
    let known: BTreeSet<String> = vectors().iter().map(|v| v.file.to_owned()).collect();
    assert_eq!(
        known.len(),
        vectors().len(),
        "two examples share a file name"
    );
    let on_disk: BTreeSet<String> = std::fs::read_dir(crate_dir().join("tests").join("vectors"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".bin"))
        .collect();
    assert_eq!(
        on_disk, known,
        "vector files without an example, or examples without a file"
    );
}

fn protocol_md() -> String {
    std::fs::read_to_string(crate_dir().join("PROTOCOL.md")).unwrap()
}

/// The hex blocks of `PROTOCOL.md`: for each line `vector: <file>`, the bytes of the next
/// ```` ```hex ```` block, where `#` starts a comment that runs to the end of the line.
fn hex_blocks(doc: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(file) = line.trim().strip_prefix("vector:") else {
            continue;
        };
        let file = file.trim().trim_matches('`').to_owned();
        let open = lines
            .by_ref()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("{file}: no block after the marker"));
        assert_eq!(
            open.trim(),
            "```hex",
            "{file}: the marker must precede a hex block"
        );
        let mut bytes = Vec::new();
        for l in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            let data = l.split('#').next().unwrap();
            for pair in data.split_whitespace() {
                let b = u8::from_str_radix(pair, 16)
                    .unwrap_or_else(|_| panic!("{file}: {pair:?} is not a hex byte"));
                assert_eq!(pair.len(), 2, "{file}: {pair:?} is not two hex digits");
                bytes.push(b);
            }
        }
        out.push((file, bytes));
    }
    out
}

#[test]
fn protocol_md_shows_every_vector_byte_for_byte() {
    let blocks = hex_blocks(&protocol_md());
    let shown: Vec<&str> = blocks.iter().map(|(f, _)| f.as_str()).collect();
    let expected: Vec<&str> = vectors().iter().map(|v| v.file).collect();
    assert_eq!(
        shown, expected,
        "PROTOCOL.md must show every vector once, in this order"
    );
    let mut wrong = Vec::new();
    for (file, bytes) in &blocks {
        let stored = stored(file).unwrap();
        if *bytes != stored {
            wrong.push(format!(
                "{file}:\n  shown: {}\n  file:  {}",
                hex(bytes),
                hex(&stored)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "PROTOCOL.md differs from the vectors:\n{}",
        wrong.join("\n")
    );
}

/// The rows `| <number> | `<Name>` | ...` of the table after `<!-- variants: <ty> -->`.
fn variant_table(doc: &str, ty: &str) -> Vec<(u32, String)> {
    let marker = format!("<!-- variants: {ty} -->");
    let start = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("PROTOCOL.md has no {marker}"));
    doc[start + marker.len()..]
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.trim_start().starts_with('|'))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let number = cells.get(1)?.parse().ok()?;
            Some((number, cells.get(2)?.trim_matches('`').to_owned()))
        })
        .collect()
}

/// The name of the variant `value` is, from its `Debug` form.
fn variant_name(value: &impl Debug) -> String {
    format!("{value:?}")
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect()
}

/// The variant index a body starts with (all indices of this protocol fit in one byte).
fn index_at(body: &[u8], at: usize) -> u32 {
    assert!(body[at] < 251, "variant indices are single bytes");
    u32::from(body[at])
}

fn body<T: serde::Serialize>(value: &T) -> Vec<u8> {
    encode_frame(value, DEFAULT_MAX_FRAME as usize).unwrap()[HEADER_LEN..].to_vec()
}

/// One value of each variant of each enum, with the index it is written with.
fn variants_in_code() -> Vec<(&'static str, Vec<(u32, String)>)> {
    let vectors = vectors();
    let client_frames: Vec<&ClientFrame> = vectors
        .iter()
        .filter_map(|v| match &v.frame {
            Frame::Client(f) => Some(f),
            Frame::Server(_) => None,
        })
        .collect();
    let server_frames: Vec<&ServerFrame> = vectors
        .iter()
        .filter_map(|v| match &v.frame {
            Frame::Server(f) => Some(f),
            Frame::Client(_) => None,
        })
        .collect();
    let targets: Vec<&Target> = client_frames
        .iter()
        .filter_map(|f| match f {
            ClientFrame::Publish(p) => Some(&p.target),
            _ => None,
        })
        .collect();
    let recipients: Vec<&Recipient> = server_frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::DeliveryFailed(d) => Some(&d.recipient),
            _ => None,
        })
        .collect();

    let unique = |mut rows: Vec<(u32, String)>| {
        rows.sort();
        rows.dedup();
        rows
    };
    vec![
        (
            "ClientFrame",
            unique(
                client_frames
                    .iter()
                    .map(|f| (index_at(&body(f), 0), variant_name(f)))
                    .collect(),
            ),
        ),
        (
            "ServerFrame",
            unique(
                server_frames
                    .iter()
                    .map(|f| (index_at(&body(f), 0), variant_name(f)))
                    .collect(),
            ),
        ),
        (
            "Target",
            unique(
                targets
                    .iter()
                    // Publish: [1, id ...] with an empty id puts the target at byte 2.
                    .map(|t| {
                        let p = ClientFrame::Publish(Publish {
                            id: String::new(),
                            ..publish((*t).clone())
                        });
                        (index_at(&body(&p), 2), variant_name(t))
                    })
                    .collect(),
            ),
        ),
        (
            "Recipient",
            unique(
                recipients
                    .iter()
                    .map(|r| {
                        let f = ServerFrame::DeliveryFailed(DeliveryFailed {
                            id: String::new(),
                            ..failed((*r).clone(), FailureReason::Expired, "")
                        });
                        (index_at(&body(&f), 2), variant_name(r))
                    })
                    .collect(),
            ),
        ),
        (
            "FailureReason",
            common::FAILURE_REASONS
                .iter()
                .map(|r| {
                    let f = ServerFrame::DeliveryFailed(DeliveryFailed {
                        id: String::new(),
                        ..failed(Recipient::All, *r, "")
                    });
                    (index_at(&body(&f), 3), variant_name(r))
                })
                .collect(),
        ),
        (
            "ErrorCode",
            common::ERROR_CODES
                .iter()
                .map(|c| {
                    let f = ServerFrame::Error(ErrorFrame {
                        code: *c,
                        message: String::new(),
                        id: None,
                    });
                    (index_at(&body(&f), 1), variant_name(c))
                })
                .collect(),
        ),
    ]
}

#[test]
fn protocol_md_numbers_every_variant_as_the_code_does() {
    let doc = protocol_md();
    for (ty, in_code) in variants_in_code() {
        let numbers: Vec<u32> = in_code.iter().map(|(n, _)| *n).collect();
        let all: Vec<u32> = (0..u32::try_from(in_code.len()).unwrap()).collect();
        assert_eq!(numbers, all, "{ty}: the examples must cover every variant");
        assert_eq!(variant_table(&doc, ty), in_code, "{ty}: PROTOCOL.md table");
    }
}

/// Fails to compile when a variant is added, so that the lists of every variant used above
/// (and the examples) are revisited.
#[allow(dead_code)]
fn every_variant_is_listed(
    c: &ClientFrame,
    s: &ServerFrame,
    t: &Target,
    r: &Recipient,
    f: FailureReason,
    e: ErrorCode,
) -> usize {
    let c = match c {
        ClientFrame::Hello(_)
        | ClientFrame::Publish(_)
        | ClientFrame::Subscribe { .. }
        | ClientFrame::Unsubscribe { .. }
        | ClientFrame::Ack { .. }
        | ClientFrame::Ping { .. }
        | ClientFrame::Pong { .. }
        | ClientFrame::Bye
        | ClientFrame::Reauth { .. } => 9,
    };
    let s = match s {
        ServerFrame::Welcome(_)
        | ServerFrame::Deliver(_)
        | ServerFrame::DeliveryFailed(_)
        | ServerFrame::Accepted { .. }
        | ServerFrame::Subscribed { .. }
        | ServerFrame::Unsubscribed { .. }
        | ServerFrame::Error(_)
        | ServerFrame::Ping { .. }
        | ServerFrame::Pong { .. }
        | ServerFrame::Bye { .. }
        | ServerFrame::Reauthed { .. } => 11,
    };
    let t = match t {
        Target::Client(_)
        | Target::Group(_)
        | Target::Channel(_)
        | Target::Channels(_)
        | Target::ClientInChannel { .. }
        | Target::All => 6,
    };
    let r = match r {
        Recipient::Client(_) | Recipient::Channel(_) | Recipient::All => 3,
    };
    let f = match f {
        FailureReason::NotConnected
        | FailureReason::NoSubscribers
        | FailureReason::SlowConsumer
        | FailureReason::TooLarge
        | FailureReason::Expired
        | FailureReason::QueueFull
        | FailureReason::AttemptsExhausted
        | FailureReason::StoreUnavailable
        | FailureReason::ShuttingDown
        | FailureReason::NotSubscribed => common::FAILURE_REASONS.len(),
    };
    let e = match e {
        ErrorCode::UnsupportedVersion
        | ErrorCode::BadHandshake
        | ErrorCode::InvalidName
        | ErrorCode::Replaced
        | ErrorCode::FrameTooLarge
        | ErrorCode::Malformed
        | ErrorCode::InvalidTarget
        | ErrorCode::PayloadTooLarge
        | ErrorCode::LimitReached
        | ErrorCode::ShuttingDown
        | ErrorCode::Timeout
        | ErrorCode::Internal
        | ErrorCode::Unauthorized
        | ErrorCode::Forbidden
        | ErrorCode::AuthExpired => common::ERROR_CODES.len(),
    };
    c + s + t + r + f + e
}
