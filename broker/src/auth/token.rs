//! Service tokens: 256 random bits, shown once, kept by the broker only as SHA-256 hashes.

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Prefix of every service token, so that one is recognised where it leaks.
pub const TOKEN_PREFIX: &str = "bct_";

/// A new service token: the prefix and 32 random bytes in URL-safe base64.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A token's SHA-256 hash.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A hash as 64 lowercase hex digits, as the config file holds it.
pub fn to_hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// A hash from 64 hex digits.
///
/// # Errors
/// When the text is not 64 hex digits.
pub fn from_hex(text: &str) -> Result<[u8; 32], String> {
    let bad = || format!("{text:?} is not a SHA-256 hash (64 hex digits)");
    if text.len() != 64 || !text.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_their_hashes_read_back() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        // 32 bytes in base64 without padding: 43 characters.
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43);
        let h = hash(&a);
        assert_eq!(from_hex(&to_hex(&h)).unwrap(), h);
        assert_eq!(
            to_hex(&hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(from_hex("xyz").is_err());
        assert!(from_hex(&"g".repeat(64)).is_err());
    }
}
