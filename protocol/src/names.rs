//! Validation of the strings that name clients, channels and messages.

use thiserror::Error;

/// Longest client name, channel name or message id, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Length of the ids made by [`new_message_id`].
pub const MESSAGE_ID_LEN: usize = 21;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// The name is empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// What was being named ("client name", "channel", "message id").
        kind: &'static str,
    },
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("{kind} is {len} bytes long, the limit is {MAX_NAME_LEN}")]
    TooLong {
        /// What was being named.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The name holds a control character or white space.
    #[error("{kind} {name:?} holds a control character or white space")]
    BadCharacter {
        /// What was being named.
        kind: &'static str,
        /// The refused name.
        name: String,
    },
    /// The name starts with `$`, which is reserved for the broker itself.
    #[error("{kind} {name:?} starts with '$', which is reserved for the broker")]
    Reserved {
        /// What was being named.
        kind: &'static str,
        /// The refused name.
        name: String,
    },
}

fn check(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            kind,
            len: name.len(),
        });
    }
    // Names are checked for every message: take the quick way when every byte is printable
    // ASCII (one pass without branches, which the compiler vectorises); anything else, bad
    // bytes or other characters, is looked at character by character.
    let printable = name
        .bytes()
        .fold(true, |ok, b| ok & (b > b' ') & (b < 0x7f));
    let bad = !printable && name.chars().any(|c| c.is_control() || c.is_whitespace());
    if bad {
        return Err(NameError::BadCharacter {
            kind,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Checks a client name: 1 to 256 bytes, no control characters or white space, not starting
/// with `$` (names starting with `$` belong to the broker).
///
/// # Errors
/// Returns the [`NameError`] that says what is wrong.
pub fn validate_client_name(name: &str) -> Result<(), NameError> {
    check("client name", name)?;
    if name.starts_with('$') {
        return Err(NameError::Reserved {
            kind: "client name",
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Checks a channel name: 1 to 256 bytes, no control characters or white space.
///
/// # Errors
/// Returns the [`NameError`] that says what is wrong.
pub fn validate_channel(name: &str) -> Result<(), NameError> {
    check("channel", name)
}

/// Checks a message id: 1 to 256 bytes, no control characters or white space.
///
/// # Errors
/// Returns the [`NameError`] that says what is wrong.
pub fn validate_id(id: &str) -> Result<(), NameError> {
    check("message id", id)
}

/// Makes a new message id: a 21-character nanoid (126 random bits, in nanoid's URL-safe
/// alphabet).
///
/// The random bits come from a per-thread generator seeded from the system, not from a
/// system call per id, and each character takes six bits of one 128-bit draw: ids are made
/// for every message.
pub fn new_message_id() -> String {
    let alphabet = &nanoid::alphabet::SAFE;
    let mut bits = fastrand::u128(..);
    let mut id = [0u8; MESSAGE_ID_LEN];
    for b in &mut id {
        // SAFE has 64 characters, all ASCII, so six bits pick one uniformly and it fits a byte.
        *b = alphabet[(bits & 63) as usize] as u8;
        bits >>= 6;
    }
    // ASCII is UTF-8: the conversion cannot fail (the test below checks every character).
    String::from_utf8(id.to_vec()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        assert_eq!(validate_client_name("alice"), Ok(()));
        assert_eq!(validate_channel("jobs.high-priority"), Ok(()));
        assert_eq!(new_message_id().len(), MESSAGE_ID_LEN);
        assert_eq!(validate_id(&new_message_id()), Ok(()));
    }

    #[test]
    fn ids_differ() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_message_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(
            ids.iter()
                .all(|id| validate_id(id).is_ok() && id.len() == MESSAGE_ID_LEN)
        );
        // Every character is from nanoid's URL-safe alphabet, and every one of them occurs.
        let used: std::collections::HashSet<char> = ids.iter().flat_map(|id| id.chars()).collect();
        assert!(used.iter().all(|c| nanoid::alphabet::SAFE.contains(c)));
        assert_eq!(used.len(), nanoid::alphabet::SAFE.len());
    }

    proptest::proptest! {
        #[test]
        fn the_quick_check_agrees_with_the_character_rule(name in "(.|[\\x00-\\x7f]){1,40}") {
            let by_chars = !name.chars().any(|c| c.is_control() || c.is_whitespace());
            proptest::prop_assert_eq!(validate_id(&name).is_ok(), by_chars);
        }
    }

    #[test]
    fn refuses_bad_names() {
        assert!(matches!(
            validate_client_name("a\u{7f}"),
            Err(NameError::BadCharacter { .. })
        ));
        assert!(matches!(
            validate_client_name("a\u{2003}b"),
            Err(NameError::BadCharacter { .. })
        ));
        assert_eq!(validate_client_name("zoë"), Ok(()));
        assert!(matches!(
            validate_client_name(""),
            Err(NameError::Empty { .. })
        ));
        assert!(matches!(
            validate_client_name("a b"),
            Err(NameError::BadCharacter { .. })
        ));
        assert!(matches!(
            validate_client_name("$broker"),
            Err(NameError::Reserved { .. })
        ));
        assert!(matches!(
            validate_channel(&"x".repeat(257)),
            Err(NameError::TooLong { .. })
        ));
        assert!(matches!(
            validate_id("a\nb"),
            Err(NameError::BadCharacter { .. })
        ));
    }
}
