use super::*;
use crate::store::codec::config;
use broadcast_protocol::{DeliveryFailed, FailureReason, Recipient};
use bytes::Bytes;
use proptest::prelude::*;

/// Integers around every boundary of the variable-length encoding, and any other.
fn int() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..300,
        (0u64..6).prop_map(|d| 65_533 + d),
        (0u64..6).prop_map(|d| 4_294_967_293 + d),
        (0u64..3).prop_map(|d| u64::MAX - d),
        any::<u64>(),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,20}", "x{250,260}"]
}

fn message() -> impl Strategy<Value = StoredEntry> {
    message_of(prop_oneof![
        30 => proptest::collection::vec(any::<u8>(), 0..300),
        1 => proptest::collection::vec(any::<u8>(), 65_530..65_540),
    ])
}

fn message_of(data: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = StoredEntry> {
    (
        text(),
        // Few senders, so that runs of one sender's messages are common.
        prop_oneof![Just("alice".to_owned()), Just("bob".to_owned()), text()],
        proptest::option::of(text()),
        proptest::option::of(text()),
        data,
        int(),
        any::<bool>(),
    )
        .prop_map(
            |(id, sender, channel, name, data, expires_at_ms, redelivered)| {
                StoredEntry::Message(StoredMessage {
                    id,
                    sender,
                    channel,
                    name,
                    data: Bytes::from(data),
                    expires_at_ms,
                    redelivered,
                })
            },
        )
}

fn notice(id: &str, expires_at_ms: u64) -> StoredEntry {
    StoredEntry::Notice {
        notice: DeliveryFailed {
            id: id.to_owned(),
            recipient: Recipient::Client("bob".to_owned()),
            reason: FailureReason::Expired,
            detail: "bob did not connect in time".to_owned(),
            ack_tag: None,
        },
        expires_at_ms,
    }
}

fn entry() -> impl Strategy<Value = StoredEntry> {
    prop_oneof![
        8 => message(),
        1 => (text(), int()).prop_map(|(id, expires)| notice(&id, expires)),
    ]
}

/// An entry of at most a few hundred bytes.
fn small_entry() -> impl Strategy<Value = StoredEntry> {
    prop_oneof![
        8 => message_of(proptest::collection::vec(any::<u8>(), 0..40)),
        1 => (".{0,20}", int()).prop_map(|(id, expires)| notice(&id, expires)),
    ]
}

fn msg(seq: u64, sender: &str, len: usize) -> StoredEntry {
    StoredEntry::Message(StoredMessage {
        id: format!("m{seq}"),
        sender: sender.to_owned(),
        channel: None,
        name: None,
        data: Bytes::from(vec![seq as u8; len]),
        expires_at_ms: 1_000_000 + seq,
        redelivered: false,
    })
}

/// A segment of `entries` as store format 1 wrote it.
fn format_1(entries: &[StoredEntry]) -> Vec<u8> {
    let metas: Vec<EntryMeta> = entries.iter().map(EntryMeta::of).collect();
    format_1_segment(&metas, entries)
}

proptest! {
    #[test]
    fn segments_read_back_what_was_written(
        entries in proptest::collection::vec(entry(), 1..200),
        first in 0u64..1_000_000,
    ) {
        let segments = encode_segments(first, &entries).unwrap();
        let mut next = first;
        let mut back = Vec::new();
        for (k, s) in segments.iter().enumerate() {
            prop_assert_eq!(s.first, next);
            let (metas, at) = decode_segment_header(&s.value).unwrap();
            prop_assert_eq!(&metas, &s.metas);
            // Within the limits, and the entry after it would not have fitted.
            let body = s.value.len() - at;
            prop_assert!(metas.len() <= SEGMENT_ENTRIES);
            prop_assert!(body <= SEGMENT_BYTES || metas.len() == 1, "{} bytes", body);
            if k + 1 < segments.len() && metas.len() < SEGMENT_ENTRIES {
                let i = (segments[k + 1].first - first) as usize;
                let next_len = match &entries[i] {
                    StoredEntry::Message(m) => {
                        message_len(m, same_sender(&entries[i - 1], m))
                    }
                    StoredEntry::Notice { .. } => {
                        encode_segments(0, &entries[i..=i]).unwrap()[0].value.len()
                            - decode_segment_header(
                                &encode_segments(0, &entries[i..=i]).unwrap()[0].value,
                            )
                            .unwrap()
                            .1
                    }
                };
                prop_assert!(body + next_len > SEGMENT_BYTES, "{} + {} fitted", body, next_len);
            }
            let decoded = decode_segment(&s.value).unwrap();
            prop_assert_eq!(decoded.len(), metas.len());
            next += decoded.len() as u64;
            back.extend(decoded);
        }
        prop_assert_eq!(back, entries);
    }

    #[test]
    fn format_1_segments_are_still_read(entries in proptest::collection::vec(entry(), 1..40)) {
        let value = format_1(&entries);
        prop_assert_ne!(value[0], COMPACT);
        prop_assert_eq!(decode_segment(&value).unwrap(), entries);
    }

    #[test]
    fn any_bytes_after_a_header_decode_to_its_entries_or_are_corrupt(
        metas in proptest::collection::vec((int(), int()), 1..4),
        tail in proptest::collection::vec(any::<u8>(), 0..400),
        raw in any::<bool>(),
    ) {
        let metas: Vec<EntryMeta> = metas
            .into_iter()
            .map(|(size, expires_at_ms)| EntryMeta { size, expires_at_ms })
            .collect();
        let mut value = Vec::new();
        if raw {
            // Arbitrary bytes after the marker, header included.
            value.push(COMPACT);
        } else {
            encode_header(&metas, &mut value);
        }
        // Valid tags most of the time, so that entry decoding is reached.
        value.extend(tail.iter().enumerate().map(|(i, &b)| if i == 0 { b & 0x0F } else { b }));
        match decode_segment(&value) {
            Ok(entries) => {
                let (header, _) = decode_segment_header(&value).unwrap();
                prop_assert_eq!(entries.len(), header.len());
            }
            Err(e) => prop_assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}"),
        }
    }

    #[test]
    fn every_cut_of_a_segment_is_corrupt_and_a_flipped_byte_is_corrupt_or_decodes(
        entries in proptest::collection::vec(small_entry(), 1..6),
        flip in any::<(usize, u8)>(),
    ) {
        let value = &encode_segments(0, &entries).unwrap()[0].value;
        for cut in 0..value.len() {
            prop_assert!(matches!(decode_segment(&value[..cut]), Err(StoreError::Corrupt(_))));
        }
        let mut flipped = value.clone();
        let at = flip.0 % flipped.len();
        flipped[at] ^= flip.1 | 1;
        match decode_segment(&flipped) {
            Ok(back) => prop_assert_eq!(back.len(), decode_segment_header(&flipped).unwrap().0.len()),
            Err(e) => prop_assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}"),
        }
    }
}

#[test]
fn a_run_of_one_senders_messages_names_the_sender_once() {
    let one: Vec<StoredEntry> = (0..10).map(|i| msg(i, "a-long-sender-name", 10)).collect();
    let mixed: Vec<StoredEntry> = (0..10)
        .map(|i| {
            msg(
                i,
                if i % 2 == 0 {
                    "a-long-sender-name"
                } else {
                    "b-long-sender-name"
                },
                10,
            )
        })
        .collect();
    let one = encode_segments(0, &one).unwrap();
    let mixed = encode_segments(0, &mixed).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(mixed.len(), 1);
    // Nine senders left out, 19 bytes each.
    assert_eq!(mixed[0].value.len() - one[0].value.len(), 9 * 19);
}

#[test]
fn a_message_is_its_id_payload_and_a_few_bytes() {
    // 64 messages of 128 bytes from one sender, with 21-byte ids and expiries a few
    // milliseconds apart: 1 + 22 + 129 bytes of entry and 2 or 3 of header each.
    let entries: Vec<StoredEntry> = (0..64)
        .map(|i| {
            let StoredEntry::Message(mut m) = msg(i, "sender", 128) else {
                unreachable!()
            };
            m.id = format!("{i:021}");
            m.expires_at_ms = 1_780_000_000_000 + i / 3;
            StoredEntry::Message(m)
        })
        .collect();
    let segments = encode_segments(0, &entries).unwrap();
    let bytes: usize = segments.iter().map(|s| s.value.len()).sum();
    let per_message = bytes as f64 / 64.0;
    assert!(
        (152.0..156.0).contains(&per_message),
        "{per_message} bytes per message"
    );
    let format_1_per_message = format_1(&entries).len() as f64 / 64.0;
    assert!(
        format_1_per_message > per_message + 25.0,
        "{format_1_per_message}"
    );
}

#[test]
fn a_sender_left_out_of_the_first_entry_is_corrupt() {
    let mut value = Vec::new();
    encode_header(
        &[EntryMeta {
            size: 1,
            expires_at_ms: 5,
        }],
        &mut value,
    );
    encode_message(
        match &msg(0, "alice", 1) {
            StoredEntry::Message(m) => m,
            StoredEntry::Notice { .. } => unreachable!(),
        },
        true,
        &mut value,
    );
    assert!(matches!(
        decode_segment(&value),
        Err(StoreError::Corrupt(e)) if e.contains("sender")
    ));
}

#[test]
fn a_notice_tag_on_a_message_is_corrupt() {
    let m = msg(0, "alice", 3);
    let mut value = Vec::new();
    encode_header(
        &[EntryMeta {
            size: m.size(),
            expires_at_ms: m.expires_at_ms(),
        }],
        &mut value,
    );
    value.push(NOTICE);
    value.extend(bincode::serde::encode_to_vec(&m, config()).unwrap());
    assert!(matches!(
        decode_segment(&value),
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn long_senders_in_runs_fill_segments_to_the_limit() {
    // 40-byte senders left out of all but the first entry of each segment: the boundaries
    // must count each entry as it is written, full for a segment's first entry.
    let sender = "s".repeat(40);
    let entries: Vec<StoredEntry> = (0..400).map(|i| msg(i, &sender, 200)).collect();
    let segments = encode_segments(0, &entries).unwrap();
    for s in &segments[..segments.len() - 1] {
        let (_, at) = decode_segment_header(&s.value).unwrap();
        let body = s.value.len() - at;
        let short = message_len(
            match &entries[0] {
                StoredEntry::Message(m) => m,
                StoredEntry::Notice { .. } => unreachable!(),
            },
            true,
        );
        assert!(
            body <= SEGMENT_BYTES && body + short > SEGMENT_BYTES,
            "{body}"
        );
    }
}
