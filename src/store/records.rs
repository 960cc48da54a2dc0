//! What the store keeps, and how it is encoded: the records of the three
//! data keyspaces, bincode with a leading format byte, and the changes a
//! write reports to listeners.

use serde::{Deserialize, Serialize};

use crate::domain::token::TokenHash;
use crate::store::codec::{decode, encode};
use crate::store::error::StoreError;

/// Format bytes of user records and index entries written by schemas 1 and 2.
pub(crate) const FORMAT_V1: u8 = 1;
pub(crate) const FORMAT_V2: u8 = 2;
const RECORD_FORMAT: u8 = 3;
const INDEX_FORMAT: u8 = 3;

/// A rotated-out token that keeps verifying until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraceToken {
    pub hash: [u8; 32],
    #[serde(with = "compact_prefix")]
    pub prefix: String,
    pub until: u64,
}

/// What the store keeps per user. Never the token itself. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub hash: [u8; 32],
    #[serde(with = "compact_prefix")]
    pub prefix: String,
    pub created_at: u64,
    pub last_used_at: Option<u64>,
    pub previous: Option<GraceToken>,
}

/// What the token index keeps per token hash: enough to answer verify in one read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub user_id: String,
    #[serde(with = "compact_prefix")]
    pub prefix: String,
    pub created_at: u64,
    pub last_used_at: Option<u64>,
    /// Set when the token was rotated out: it verifies until then.
    pub grace_until: Option<u64>,
}

impl IndexEntry {
    /// The entry of a token just issued to `user_id`: never used, not in grace.
    pub fn fresh(user_id: &str, prefix: &str, created_at: u64) -> Self {
        Self {
            user_id: user_id.to_owned(),
            prefix: prefix.to_owned(),
            created_at,
            last_used_at: None,
            grace_until: None,
        }
    }
}

/// Display prefixes on disk (schema 3): a tag and the 4 bytes behind the 8
/// hex characters of `sk_agt_xxxxxxxx...` instead of the length and the
/// 18-character text, 14 bytes less per prefix (~28 MB over a million
/// tokens, and smaller sled pages to read, cache and rewrite). Anything else
/// (no code path makes one) keeps its text, so encoding never fails and
/// nothing is lost.
mod compact_prefix {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::domain::token::{display_prefix_bytes, display_prefix_from_bytes};

    #[derive(Serialize)]
    enum Stored<'a> {
        Hex([u8; 4]),
        Text(&'a str),
    }

    #[derive(Deserialize)]
    enum Loaded {
        Hex([u8; 4]),
        Text(String),
    }

    pub fn serialize<S: Serializer>(prefix: &str, serializer: S) -> Result<S::Ok, S::Error> {
        match display_prefix_bytes(prefix) {
            Some(bytes) => Stored::Hex(bytes),
            None => Stored::Text(prefix),
        }
        .serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
        Ok(match Loaded::deserialize(deserializer)? {
            Loaded::Hex(bytes) => display_prefix_from_bytes(bytes),
            Loaded::Text(text) => text,
        })
    }
}

/// What one committed write changed: the keys it wrote or removed in the
/// user records, the token index (token hashes) and the grace expiries,
/// and apart from those the index entries whose only change is a new
/// last-used time.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub users: Vec<Vec<u8>>,
    pub tokens: Vec<Vec<u8>>,
    pub grace: Vec<Vec<u8>>,
    pub stamped_tokens: Vec<([u8; 32], u64)>,
    /// The audit events the write stored, in order.
    pub events: Vec<crate::store::audit::AuditEvent>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
            && self.tokens.is_empty()
            && self.grace.is_empty()
            && self.stamped_tokens.is_empty()
    }
}

/// Hears about every write to user records and the token index, from the
/// thread that made it, once readers can see it and before any operation
/// in it is answered. This is what keeps remembered answers exact.
pub trait ChangeListener: Send + Sync {
    fn committed(&self, changes: &Changes);
    /// The store is being reopened: what it holds afterwards is what was
    /// durable, which may differ from anything heard before.
    fn reopening(&self);
}

/// For stores nobody remembers answers from (tools, tests).
pub struct NoListener;

impl ChangeListener for NoListener {
    fn committed(&self, _: &Changes) {}
    fn reopening(&self) {}
}

/// The outcome of [`crate::store::Store::get_or_create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetOrCreate {
    Created(UserRecord),
    Existing(UserRecord),
}

/// A new token's stored form, made by the caller from a fresh `PlainToken`.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub hash: TokenHash,
    pub prefix: String,
}

impl NewToken {
    /// What is stored of `token`: its hash and display prefix.
    pub fn of(token: &crate::domain::token::PlainToken) -> Self {
        Self {
            hash: token.hash(),
            prefix: token.display_prefix(),
        }
    }
}

pub fn decode_user(bytes: &[u8]) -> Result<UserRecord, StoreError> {
    decode(RECORD_FORMAT, bytes, "user record")
}

pub fn decode_index(bytes: &[u8]) -> Result<IndexEntry, StoreError> {
    decode(INDEX_FORMAT, bytes, "token index entry")
}

pub(crate) fn encode_user(record: &UserRecord) -> Result<Vec<u8>, StoreError> {
    encode(RECORD_FORMAT, record)
}

pub(crate) fn encode_index(entry: &IndexEntry) -> Result<Vec<u8>, StoreError> {
    encode(INDEX_FORMAT, entry)
}

/// Key of a `grace_expiry` entry: ordered by time, so expired ones come first.
pub(crate) fn grace_key(until: u64, hash: &[u8; 32]) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..8].copy_from_slice(&until.to_be_bytes());
    key[8..].copy_from_slice(hash);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(prefix: &str) -> IndexEntry {
        IndexEntry::fresh("alice", prefix, 1_790_000_000)
    }

    #[test]
    fn display_prefixes_round_trip_compactly_and_anything_else_as_text() {
        let compact = encode_index(&entry("sk_agt_0a1b2c3d...")).unwrap();
        assert_eq!(decode_index(&compact).unwrap(), entry("sk_agt_0a1b2c3d..."));
        for odd in ["sk_agt_0A1B2C3D...", "sk_agt_0a1b2c3...", "other", ""] {
            let bytes = encode_index(&entry(odd)).unwrap();
            assert_eq!(decode_index(&bytes).unwrap(), entry(odd), "{odd:?}");
            assert!(bytes.len() > compact.len() || odd.is_empty(), "{odd:?}");
        }
    }

    #[test]
    fn records_of_another_format_are_refused_not_misread() {
        let mut bytes = encode_index(&entry("sk_agt_0a1b2c3d...")).unwrap();
        bytes[0] = FORMAT_V2;
        assert!(matches!(
            decode_index(&bytes),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
