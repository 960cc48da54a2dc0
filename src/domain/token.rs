//! Agent tokens: `sk_agt_` + 64 lowercase hex characters, encoding 28 random
//! bytes followed by a 4-byte checksum (the first 4 bytes of SHA-256 of the
//! 28 random bytes).
//!
//! The checksum lets the verify path and secret scanners reject typos and
//! garbage without a storage lookup. Only [`TokenHash`] (SHA-256 of the whole
//! token string) and the display prefix are ever stored. A [`PlainToken`]
//! never prints itself: its `Debug` shows the display prefix only, and its
//! memory is wiped on drop.

use std::fmt;

use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::zeroize::Zeroize;

/// Every agent token starts with this. It is part of the public format:
/// changing it would invalidate every issued token and every secret scanner rule.
pub const TOKEN_PREFIX: &str = "sk_agt_";
const RANDOM_LEN: usize = 28;
const CHECKSUM_LEN: usize = 4;
const BODY_HEX_LEN: usize = (RANDOM_LEN + CHECKSUM_LEN) * 2;
/// Length of a whole token string.
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + BODY_HEX_LEN;
/// Hex characters of the body shown in the display prefix.
const DISPLAY_HEX_LEN: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token does not start with sk_agt_")]
    WrongPrefix,
    #[error("the token is not 71 characters long")]
    WrongLength,
    #[error("the token body is not lowercase hex")]
    NotHex,
    #[error("the token checksum does not match")]
    BadChecksum,
    #[error("the system random number generator failed")]
    Rng,
}

/// A well-formed agent token with a valid checksum. Holding one means the
/// format is right; whether it is live is the store's business.
pub struct PlainToken(String);

impl PlainToken {
    /// Generates a fresh token from the system CSPRNG.
    pub fn generate(rng: &SystemRandom) -> Result<Self, TokenError> {
        let mut bytes = [0u8; RANDOM_LEN + CHECKSUM_LEN];
        rng.fill(&mut bytes[..RANDOM_LEN])
            .map_err(|_| TokenError::Rng)?;
        let sum = checksum(&bytes[..RANDOM_LEN]);
        bytes[RANDOM_LEN..].copy_from_slice(&sum);
        let mut s = String::with_capacity(TOKEN_LEN);
        s.push_str(TOKEN_PREFIX);
        s.push_str(&hex::encode(bytes));
        bytes.zeroize();
        Ok(Self(s))
    }

    /// Parses a presented token: prefix, length, lowercase hex, checksum.
    /// No storage access; a typo fails here.
    pub fn parse(candidate: &str) -> Result<Self, TokenError> {
        check_format(candidate)?;
        Ok(Self(candidate.to_owned()))
    }

    /// The full secret. Call only to hand it to the user once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the whole token string: the only form that is stored.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }

    /// `sk_agt_` + the first 8 hex characters + `...`. Safe to store and show:
    /// it carries 32 of the 224 random bits.
    pub fn display_prefix(&self) -> String {
        let end = TOKEN_PREFIX.len() + DISPLAY_HEX_LEN;
        format!("{}{DISPLAY_ELLIPSIS}", &self.0[..end])
    }
}

impl fmt::Debug for PlainToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlainToken({})", self.display_prefix())
    }
}

impl Drop for PlainToken {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Whether a presented credential looks like an agent token rather than a JWT,
/// so management routes can say "use a user JWT" instead of "invalid JWT".
pub fn looks_like_agent_token(credential: &str) -> bool {
    credential.starts_with(TOKEN_PREFIX)
}

/// Checks prefix, length, lowercase hex and checksum without copying the token.
fn check_format(candidate: &str) -> Result<(), TokenError> {
    check_body(shape_body(candidate)?)
}

/// The body of a candidate with the token's prefix and length.
fn shape_body(candidate: &str) -> Result<&str, TokenError> {
    let body = candidate
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(TokenError::WrongPrefix)?;
    if body.len() != BODY_HEX_LEN {
        return Err(TokenError::WrongLength);
    }
    Ok(body)
}

/// Lowercase hex and a checksum that matches the random part.
fn check_body(body: &str) -> Result<(), TokenError> {
    let mut bytes = [0u8; RANDOM_LEN + CHECKSUM_LEN];
    if !decode_lower_hex(body.as_bytes(), &mut bytes) {
        bytes.zeroize();
        return Err(TokenError::NotHex);
    }
    let ok = checksum(&bytes[..RANDOM_LEN]) == bytes[RANDOM_LEN..];
    bytes.zeroize();
    if ok {
        Ok(())
    } else {
        Err(TokenError::BadChecksum)
    }
}

/// What ends a display prefix.
const DISPLAY_ELLIPSIS: &str = "...";

/// The 4 bytes a display prefix (`sk_agt_` + 8 lowercase hex + `...`)
/// shows, or `None` when `prefix` is not one.
pub fn display_prefix_bytes(prefix: &str) -> Option<[u8; DISPLAY_HEX_LEN / 2]> {
    let hex = prefix
        .strip_prefix(TOKEN_PREFIX)?
        .strip_suffix(DISPLAY_ELLIPSIS)?;
    let mut bytes = [0u8; DISPLAY_HEX_LEN / 2];
    (hex.len() == DISPLAY_HEX_LEN && decode_lower_hex(hex.as_bytes(), &mut bytes)).then_some(bytes)
}

/// The display prefix showing `bytes` (the inverse of [`display_prefix_bytes`]).
pub fn display_prefix_from_bytes(bytes: [u8; DISPLAY_HEX_LEN / 2]) -> String {
    format!("{TOKEN_PREFIX}{}{DISPLAY_ELLIPSIS}", hex::encode(bytes))
}

/// Lowercase hex digit → its value; anything else → 0xff.
const LOWER_HEX_VALUE: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 16 {
        table[b"0123456789abcdef"[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Decodes lowercase hex into `out` (half its length), branch-free: the
/// format allows only `0-9a-f`, and random digits defeat the branch
/// predictor of a per-character match on every verify. Returns false on
/// any other byte.
fn decode_lower_hex(hex: &[u8], out: &mut [u8]) -> bool {
    let mut invalid = 0u8;
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let high = LOWER_HEX_VALUE[usize::from(pair[0])];
        let low = LOWER_HEX_VALUE[usize::from(pair[1])];
        invalid |= high | low;
        *byte = (high << 4) | (low & 0x0f);
    }
    hex.len() == out.len() * 2 && invalid & 0xf0 == 0
}

fn checksum(random: &[u8]) -> [u8; CHECKSUM_LEN] {
    let d = digest(&SHA256, random);
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&d.as_ref()[..CHECKSUM_LEN]);
    out
}

/// SHA-256 of a token string: the storage key of the token index.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    fn of(token: &str) -> Self {
        let d = digest(&SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// A presented credential of an agent token's shape (prefix and length),
/// hashed. Its body (lowercase hex and checksum) is checked by
/// [`PresentedToken::check`], which the verify path calls only before a
/// storage lookup: a hash already remembered as a live token's can only be
/// that of a token this service issued (SHA-256 has no known collisions), so
/// a hit needs no second hash. No `Debug`: it borrows the secret.
pub struct PresentedToken<'a> {
    /// The 64 hex characters after the prefix.
    body: &'a str,
    hash: TokenHash,
}

impl<'a> PresentedToken<'a> {
    /// Refuses a wrong prefix or length unhashed.
    pub fn new(candidate: &'a str) -> Result<Self, TokenError> {
        let body = shape_body(candidate)?;
        Ok(Self {
            body,
            hash: TokenHash::of(candidate),
        })
    }

    pub fn hash(&self) -> &TokenHash {
        &self.hash
    }

    /// Lowercase hex and a matching checksum: what a typo fails, offline.
    pub fn check(&self) -> Result<(), TokenError> {
        check_body(self.body)
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", hex::encode(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fresh() -> PlainToken {
        PlainToken::generate(&SystemRandom::new()).unwrap()
    }

    #[test]
    fn generated_tokens_have_the_pinned_shape() {
        let t = fresh();
        let s = t.expose();
        assert_eq!(s.len(), 71);
        assert!(s.starts_with("sk_agt_"));
        assert!(s[7..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    #[test]
    fn generated_tokens_parse_and_are_distinct() {
        let a = fresh();
        let b = fresh();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(PlainToken::parse(a.expose()).unwrap().expose(), a.expose());
    }

    #[test]
    fn the_checksum_is_the_first_four_bytes_of_sha256_of_the_random_part() {
        let t = fresh();
        let bytes = hex::decode(&t.expose()[7..]).unwrap();
        let d = digest(&SHA256, &bytes[..28]);
        assert_eq!(&bytes[28..], &d.as_ref()[..4]);
    }

    #[test]
    fn a_flipped_character_fails_the_checksum() {
        let t = fresh();
        let s = t.expose();
        for i in 7..s.len() {
            let mut chars: Vec<u8> = s.bytes().collect();
            chars[i] = if chars[i] == b'0' { b'1' } else { b'0' };
            let mutated = String::from_utf8(chars).unwrap();
            assert_eq!(
                PlainToken::parse(&mutated).unwrap_err(),
                TokenError::BadChecksum,
                "position {i}"
            );
        }
    }

    #[test]
    fn malformed_tokens_are_rejected_with_the_reason() {
        let t = fresh();
        let s = t.expose().to_owned();
        assert_eq!(
            PlainToken::parse(&s.replacen("sk_agt_", "sk_agx_", 1)).unwrap_err(),
            TokenError::WrongPrefix
        );
        assert_eq!(
            PlainToken::parse(&s[..70]).unwrap_err(),
            TokenError::WrongLength
        );
        assert_eq!(
            PlainToken::parse(&format!("{s}0")).unwrap_err(),
            TokenError::WrongLength
        );
        assert_eq!(
            PlainToken::parse(&s.to_uppercase().replacen("SK_AGT_", "sk_agt_", 1)).unwrap_err(),
            TokenError::NotHex
        );
        assert_eq!(
            PlainToken::parse(&format!("sk_agt_{}", "g".repeat(64))).unwrap_err(),
            TokenError::NotHex
        );
        assert_eq!(PlainToken::parse("").unwrap_err(), TokenError::WrongPrefix);
    }

    #[test]
    fn the_display_prefix_is_eight_hex_characters_and_an_ellipsis() {
        let t = fresh();
        let p = t.display_prefix();
        assert_eq!(p.len(), 7 + 8 + 3);
        assert!(p.ends_with("..."));
        assert_eq!(&p[..15], &t.expose()[..15]);
    }

    #[test]
    fn the_hash_is_sha256_of_the_token_string() {
        let t = fresh();
        let d = digest(&SHA256, t.expose().as_bytes());
        assert_eq!(&t.hash().as_bytes()[..], d.as_ref());
        assert_eq!(t.hash(), PlainToken::parse(t.expose()).unwrap().hash());
    }

    #[test]
    fn a_presented_token_is_hashed_by_its_shape_and_checked_on_demand() {
        let t = fresh();
        let presented = PresentedToken::new(t.expose()).unwrap();
        assert_eq!(*presented.hash(), t.hash());
        assert_eq!(presented.check(), Ok(()));
        let typo = format!("{}0", &t.expose()[..70]);
        let typo = if typo == t.expose() {
            format!("{}1", &t.expose()[..70])
        } else {
            typo
        };
        let presented = PresentedToken::new(&typo).unwrap();
        assert_eq!(*presented.hash(), TokenHash::of(&typo));
        assert_eq!(presented.check(), Err(TokenError::BadChecksum));
        let upper = format!("sk_agt_{}", "A".repeat(64));
        assert_eq!(
            PresentedToken::new(&upper).unwrap().check(),
            Err(TokenError::NotHex)
        );
        assert_eq!(
            PresentedToken::new(&t.expose()[..70]).err(),
            Some(TokenError::WrongLength)
        );
        assert_eq!(
            PresentedToken::new("Sk_agt_").err(),
            Some(TokenError::WrongPrefix)
        );
    }

    #[test]
    fn debug_output_never_contains_the_token() {
        let t = fresh();
        let debug = format!("{t:?}");
        assert!(!debug.contains(&t.expose()[15..]), "{debug}");
        assert!(debug.contains(&t.display_prefix()));
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_input(s in ".{0,200}") {
            let _ = PlainToken::parse(&s);
        }

        #[test]
        fn random_hex_bodies_almost_never_pass_the_checksum(body in "[0-9a-f]{64}") {
            let candidate = format!("sk_agt_{body}");
            let bytes = hex::decode(&body).unwrap();
            let expected = checksum(&bytes[..28]) == bytes[28..];
            prop_assert_eq!(PlainToken::parse(&candidate).is_ok(), expected);
        }

        #[test]
        fn the_hex_decoder_agrees_with_the_hex_crate_on_lowercase_and_refuses_the_rest(
            input in proptest::collection::vec(any::<u8>(), 0..8),
            lower in "[0-9a-f]{0,16}",
        ) {
            for hex_text in [input.as_slice(), lower.as_bytes()] {
                let mut out = vec![0u8; hex_text.len() / 2];
                let ours = decode_lower_hex(hex_text, &mut out);
                let strict = hex_text.len() % 2 == 0
                    && hex_text.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                prop_assert_eq!(ours, strict);
                if strict {
                    prop_assert_eq!(out, hex::decode(hex_text).unwrap());
                }
            }
        }

        #[test]
        fn display_prefixes_are_recognised_exactly(text in "sk_agt_[0-9a-fA-F]{7,9}\\.{2,3}|.{0,20}") {
            let expected = text.len() == 18
                && text.starts_with(TOKEN_PREFIX)
                && text.ends_with("...")
                && text[7..15].bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            let bytes = display_prefix_bytes(&text);
            prop_assert_eq!(bytes.is_some(), expected);
            if let Some(bytes) = bytes {
                prop_assert_eq!(display_prefix_from_bytes(bytes), text);
            }
        }

        #[test]
        fn every_generated_token_round_trips(_seed in 0u8..255) {
            let t = fresh();
            let parsed = PlainToken::parse(t.expose()).unwrap();
            prop_assert_eq!(parsed.hash(), t.hash());
            prop_assert_eq!(parsed.display_prefix(), t.display_prefix());
        }
    }
}
