//! The user id: the one identity a token belongs to, taken from a verified
//! user JWT. Parse, don't validate: holding a `UserId` means it is non-empty,
//! at most 255 bytes and free of control characters, so it is safe as a store
//! key, in a log line and in an HTTP header (`X-Agent-User-Id`).

use std::fmt;

/// Longest accepted user id, in bytes.
pub const MAX_USER_ID_LEN: usize = 255;

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UserId(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UserIdError {
    #[error("the user id is empty")]
    Empty,
    #[error("the user id is longer than 255 bytes")]
    TooLong,
    #[error("the user id contains control characters")]
    ControlCharacter,
}

impl UserId {
    pub fn parse(raw: &str) -> Result<Self, UserIdError> {
        if raw.is_empty() {
            return Err(UserIdError::Empty);
        }
        if raw.len() > MAX_USER_ID_LEN {
            return Err(UserIdError::TooLong);
        }
        if raw.chars().any(char::is_control) {
            return Err(UserIdError::ControlCharacter);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({:?})", self.0)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids_up_to_255_bytes() {
        assert_eq!(UserId::parse("user-42").unwrap().as_str(), "user-42");
        assert!(UserId::parse(&"x".repeat(255)).is_ok());
        assert!(UserId::parse("ünïcødé@example.com").is_ok());
    }

    #[test]
    fn rejects_empty_overlong_and_control_characters() {
        assert_eq!(UserId::parse("").unwrap_err(), UserIdError::Empty);
        assert_eq!(
            UserId::parse(&"x".repeat(256)).unwrap_err(),
            UserIdError::TooLong
        );
        assert_eq!(
            UserId::parse("a\r\nX-Injected: 1").unwrap_err(),
            UserIdError::ControlCharacter
        );
        assert_eq!(
            UserId::parse("a\0b").unwrap_err(),
            UserIdError::ControlCharacter
        );
    }
}
