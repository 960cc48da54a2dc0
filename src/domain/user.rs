//! The user id: the one identity a token belongs to, taken from a verified
//! user JWT. Parse, don't validate: holding a `UserId` means it is non-empty,
//! at most 255 bytes and free of control characters, so it is safe as a store
//! key, in a log line and in an HTTP header (`X-Agent-User-Id`).
//!
//! Ids arriving in a JWT ([`UserId::from_claim`]) must also survive that
//! header unchanged and look like what they are: nginx and Caddy strip
//! surrounding whitespace from header values, so `" alice"` would reach the
//! application as `alice`, and an invisible character (zero-width, bidi
//! override) makes two different ids look the same to a person. Ids already
//! stored by earlier releases keep the older rule ([`UserId::parse`]), so
//! `check`, export and import still accept them.

use std::fmt;

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

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
    #[error("the user id starts or ends with whitespace")]
    SurroundingWhitespace,
    #[error("the user id contains an invisible or non-printing character ({})", codepoint(*.0))]
    NonPrinting(char),
}

fn codepoint(c: char) -> String {
    format!("U+{:04X}", u32::from(c))
}

/// Whether `c` prints nothing a person can see or tell apart: general
/// categories Cc, Cf, Zl, Zp, Co, Cs and Cn (format and bidi controls,
/// line and paragraph separators, private use, unassigned), and the other
/// default-ignorable code points (fillers, variation selectors).
pub fn is_non_printing(c: char) -> bool {
    use GeneralCategory as G;
    if matches!(
        c.general_category(),
        G::Control
            | G::Format
            | G::LineSeparator
            | G::ParagraphSeparator
            | G::PrivateUse
            | G::Surrogate
            | G::Unassigned
    ) {
        return true;
    }
    // Default_Ignorable_Code_Point (Unicode DerivedCoreProperties.txt)
    // outside Cf and Cn: rendered as nothing at all.
    matches!(
        u32::from(c),
        0x034F
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFFA0
            | 0xE0100..=0xE01EF
    )
}

impl UserId {
    /// The rule for any id the store may hold: non-empty, at most 255
    /// bytes, no control characters.
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

    /// The rule for a user id taken from a JWT: [`UserId::parse`], and no
    /// surrounding whitespace and no non-printing character
    /// ([`is_non_printing`]) anywhere.
    pub fn from_claim(raw: &str) -> Result<Self, UserIdError> {
        let id = Self::parse(raw)?;
        if raw.starts_with(char::is_whitespace) || raw.ends_with(char::is_whitespace) {
            return Err(UserIdError::SurroundingWhitespace);
        }
        if let Some(c) = raw.chars().find(|c| is_non_printing(*c)) {
            return Err(UserIdError::NonPrinting(c));
        }
        Ok(id)
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
    use proptest::prelude::*;

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

    #[test]
    fn claims_with_surrounding_whitespace_are_refused() {
        for raw in [
            " alice",
            "alice ",
            " ",
            "\u{a0}alice",
            "alice\u{3000}",
            "\u{2003}x",
        ] {
            assert_eq!(
                UserId::from_claim(raw).unwrap_err(),
                UserIdError::SurroundingWhitespace,
                "{raw:?}"
            );
        }
        assert_eq!(
            UserId::from_claim("alice smith").unwrap().as_str(),
            "alice smith"
        );
    }

    #[test]
    fn claims_with_invisible_or_non_printing_characters_are_refused() {
        let cases = [
            '\u{200B}',   // zero-width space (Cf)
            '\u{200D}',   // zero-width joiner
            '\u{200E}',   // left-to-right mark
            '\u{202E}',   // right-to-left override
            '\u{2066}',   // left-to-right isolate
            '\u{FEFF}',   // byte-order mark
            '\u{00AD}',   // soft hyphen
            '\u{2028}',   // line separator (Zl)
            '\u{2029}',   // paragraph separator (Zp)
            '\u{E000}',   // private use (Co)
            '\u{10FFFD}', // private use, plane 16
            '\u{0378}',   // unassigned (Cn)
            '\u{E0041}',  // tag latin capital A (Cf)
            '\u{FE0F}',   // variation selector (default ignorable, Mn)
            '\u{3164}',   // Hangul filler (default ignorable, Lo)
            '\u{034F}',   // combining grapheme joiner
        ];
        for c in cases {
            let raw = format!("ali{c}ce");
            assert_eq!(
                UserId::from_claim(&raw).unwrap_err(),
                UserIdError::NonPrinting(c),
                "{raw:?}"
            );
        }
        assert_eq!(
            UserId::from_claim("a\u{202E}b").unwrap_err().to_string(),
            "the user id contains an invisible or non-printing character (U+202E)"
        );
        assert_eq!(
            UserId::from_claim("a\tb").unwrap_err(),
            UserIdError::ControlCharacter
        );
    }

    #[test]
    fn claims_in_any_script_are_accepted() {
        for raw in [
            "user-42",
            "ünïcødé@example.com",
            "Дмитрий",
            "山田太郎",
            "محمد",
            "שלום",
            "नमस्ते",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "auth0|5f7c8ec7c33c6c004bbafe82",
        ] {
            assert_eq!(UserId::from_claim(raw).unwrap().as_str(), raw);
        }
    }

    #[test]
    fn stored_ids_keep_the_older_rule() {
        assert!(UserId::parse(" alice").is_ok());
        assert!(UserId::parse("a\u{202E}b").is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn an_accepted_claim_survives_a_gateway_header_unchanged(raw in "\\PC{0,40}") {
            if let Ok(id) = UserId::from_claim(&raw) {
                let s = id.as_str();
                // What nginx and Caddy do to a header value.
                prop_assert_eq!(s.trim_matches([' ', '\t']), s);
                prop_assert_eq!(s.trim(), s);
                prop_assert!(s.chars().all(|c| !is_non_printing(c)));
                prop_assert!(actix_web::http::header::HeaderValue::from_str(s).is_ok());
            }
        }

        #[test]
        fn one_invisible_character_anywhere_is_refused(
            before in "[a-z0-9@.]{0,10}",
            after in "[a-z0-9@.]{0,10}",
            c in any::<char>().prop_filter("non-printing", |c| is_non_printing(*c)),
        ) {
            let raw = format!("{before}{c}{after}");
            prop_assert!(UserId::from_claim(&raw).is_err());
        }

        #[test]
        fn surrounding_whitespace_is_refused(
            core in "[a-zA-Z0-9@._-]{1,20}",
            ws in any::<char>().prop_filter("whitespace", |c| c.is_whitespace()),
            leading in any::<bool>(),
        ) {
            let raw = if leading { format!("{ws}{core}") } else { format!("{core}{ws}") };
            prop_assert!(UserId::from_claim(&raw).is_err());
            prop_assert!(UserId::from_claim(&core).is_ok());
        }
    }
}
