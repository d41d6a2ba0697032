//! bincode's variable-length integers and length-prefixed byte strings, written and read
//! without serde: what the fast frame codecs and the broker's store segments are made of.
//!
//! An integer up to 250 is one byte; a larger one is a marker byte (251, 252 or 253) then the
//! value as a little-endian `u16`, `u32` or `u64`. A byte string is its length, then its bytes.

/// Appends `v` in its shortest encoding.
pub fn put(buf: &mut Vec<u8>, v: u64) {
    if v <= 250 {
        buf.push(v as u8);
    } else if let Ok(v) = u16::try_from(v) {
        buf.push(251);
        buf.extend_from_slice(&v.to_le_bytes());
    } else if let Ok(v) = u32::try_from(v) {
        buf.push(252);
        buf.extend_from_slice(&v.to_le_bytes());
    } else {
        buf.push(253);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// Bytes the shortest encoding of `v` takes (what [`put`] writes).
pub fn len(v: u64) -> usize {
    match v {
        0..=250 => 1,
        251..=0xFFFF => 3,
        0x1_0000..=0xFFFF_FFFF => 5,
        _ => 9,
    }
}

/// Appends a byte string: its length, then the bytes.
pub fn put_bytes(buf: &mut Vec<u8>, s: &[u8]) {
    put(buf, s.len() as u64);
    buf.extend_from_slice(s);
}

/// Bytes [`put_bytes`] takes for a byte string of `n` bytes.
pub fn bytes_len(n: usize) -> usize {
    len(n as u64) + n
}

/// Reads from the front of a byte slice; every read checks the slice's end, and a failed
/// read is `None`.
#[derive(Debug, Clone)]
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// Reads `bytes` from its start.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }

    /// What is left to read.
    pub fn rest(&self) -> &'a [u8] {
        self.0
    }

    /// Skips `n` bytes read by other means.
    pub fn advance(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    /// The next byte.
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    /// A variable-length integer in its shortest form only.
    pub fn varint(&mut self) -> Option<u64> {
        let (v, used) = match self.u8()? {
            b @ 0..=250 => (u64::from(b), 1),
            251 => (
                u64::from(u16::from_le_bytes(self.take(2)?.try_into().ok()?)),
                3,
            ),
            252 => (
                u64::from(u32::from_le_bytes(self.take(4)?.try_into().ok()?)),
                5,
            ),
            253 => (u64::from_le_bytes(self.take(8)?.try_into().ok()?), 9),
            _ => return None,
        };
        (len(v) == used).then_some(v)
    }

    /// A byte string; a length beyond what is left fails without allocating.
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        self.take(n)
    }

    /// A byte string that is UTF-8.
    pub fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_read_back_at_every_boundary_and_only_in_their_shortest_form() {
        for v in [
            0,
            250,
            251,
            0xFFFF,
            0x1_0000,
            0xFFFF_FFFF,
            0x1_0000_0000,
            u64::MAX,
        ] {
            let mut buf = Vec::new();
            put(&mut buf, v);
            assert_eq!(buf.len(), len(v));
            let mut r = Reader::new(&buf);
            assert_eq!(r.varint(), Some(v));
            assert!(r.rest().is_empty());
        }
        // 5 written with a two-byte marker is not its shortest form.
        assert_eq!(Reader::new(&[251, 5, 0]).varint(), None);
        assert_eq!(Reader::new(&[254]).varint(), None);
        assert_eq!(Reader::new(&[252, 1, 2]).varint(), None);
    }

    #[test]
    fn a_byte_string_longer_than_what_is_left_is_refused() {
        let mut buf = Vec::new();
        put_bytes(&mut buf, b"abc");
        assert_eq!(buf.len(), bytes_len(3));
        assert_eq!(Reader::new(&buf).str(), Some("abc"));
        assert_eq!(Reader::new(&buf[..3]).bytes(), None);
        assert_eq!(
            Reader::new(&[253, 255, 255, 255, 255, 255, 255, 255, 255]).bytes(),
            None
        );
        assert_eq!(Reader::new(&[2, 0xFF, 0xFE]).str(), None);
    }
}
