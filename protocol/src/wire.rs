//! Serde helpers that keep decoding allocation bounded by the bytes actually present.
//!
//! bincode's own `String`, `Vec<u8>` and sequence decoding allocates what a length prefix claims
//! before it checks that the bytes are there. These helpers decode strings and byte strings by
//! borrowing them from the frame first and copying only what is present, and cap how much a
//! sequence preallocates, so a hostile length prefix costs nothing.

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use std::fmt;

/// Most elements a sequence preallocates room for before any element has been decoded.
const SEQ_PREALLOC: usize = 64;

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a UTF-8 string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
}

/// A `String` read through `deserialize_str`, so the decoder borrows before it copies.
pub(crate) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_str(StrVisitor)
}

struct StringSeed;

impl<'de> DeserializeSeed<'de> for StringSeed {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        string(d)
    }
}

struct OptStringVisitor;

impl<'de> Visitor<'de> for OptStringVisitor {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an optional string")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        string(d).map(Some)
    }
}

/// An `Option<String>` whose string is read as [`string`] reads it.
pub(crate) fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    d.deserialize_option(OptStringVisitor)
}

struct StringVecVisitor;

impl<'de> Visitor<'de> for StringVecVisitor {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence of strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let len = seq.size_hint().unwrap_or(0);
        if len > crate::MAX_LIST {
            return Err(de::Error::invalid_length(len, &"at most 4096 names"));
        }
        let mut out = Vec::with_capacity(len.min(SEQ_PREALLOC));
        while let Some(s) = seq.next_element_seed(StringSeed)? {
            if out.len() == crate::MAX_LIST {
                return Err(de::Error::invalid_length(
                    out.len() + 1,
                    &"at most 4096 names",
                ));
            }
            out.push(s);
        }
        Ok(out)
    }
}

/// A `Vec<String>` of at most [`crate::MAX_LIST`] names that preallocates at most a few.
pub(crate) fn string_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    d.deserialize_seq(StringVecVisitor)
}

struct U64VecVisitor;

impl<'de> Visitor<'de> for U64VecVisitor {
    type Value = Vec<u64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence of integers")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let len = seq.size_hint().unwrap_or(0);
        if len > crate::MAX_ACK_TAGS {
            return Err(de::Error::invalid_length(len, &"at most 8192 tags"));
        }
        let mut out = Vec::with_capacity(len.min(SEQ_PREALLOC));
        while let Some(v) = seq.next_element::<u64>()? {
            if out.len() == crate::MAX_ACK_TAGS {
                return Err(de::Error::invalid_length(
                    out.len() + 1,
                    &"at most 8192 tags",
                ));
            }
            out.push(v);
        }
        Ok(out)
    }
}

/// A `Vec<u64>` of at most [`crate::MAX_ACK_TAGS`] tags that preallocates at most a few.
pub(crate) fn u64_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    d.deserialize_seq(U64VecVisitor)
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }
}

/// A `Bytes` read through `deserialize_bytes`, so the decoder borrows before it copies.
pub(crate) fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    d.deserialize_bytes(BytesVisitor)
}

/// Reads a `Welcome`: the fields of version 1, then those of version 2 when the version read
/// first says so.
pub(crate) struct WelcomeVisitor;

struct Str(String);

impl<'de> serde::Deserialize<'de> for Str {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string(d).map(Str)
    }
}

struct OptStr(Option<String>);

impl<'de> serde::Deserialize<'de> for OptStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        opt_string(d).map(OptStr)
    }
}

fn field<'de, T: serde::Deserialize<'de>, A: SeqAccess<'de>>(
    seq: &mut A,
    i: usize,
) -> Result<T, A::Error> {
    seq.next_element()?
        .ok_or_else(|| de::Error::invalid_length(i, &"a Welcome"))
}

impl<'de> Visitor<'de> for WelcomeVisitor {
    type Value = crate::Welcome;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Welcome")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let version: u16 = field(&mut seq, 0)?;
        let Str(name) = field(&mut seq, 1)?;
        let Str(server) = field(&mut seq, 2)?;
        let max_frame = field(&mut seq, 3)?;
        let max_payload = field(&mut seq, 4)?;
        let heartbeat_ms = field(&mut seq, 5)?;
        let mut welcome = crate::Welcome {
            version,
            name,
            server,
            max_frame,
            max_payload,
            heartbeat_ms,
            identity: None,
            namespace: None,
            expires_ms: None,
        };
        if version >= 2 {
            let OptStr(identity) = field(&mut seq, 6)?;
            let OptStr(namespace) = field(&mut seq, 7)?;
            welcome.identity = identity;
            welcome.namespace = namespace;
            welcome.expires_ms = field(&mut seq, 8)?;
        }
        Ok(welcome)
    }
}
