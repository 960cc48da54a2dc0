//! The token store, on sled.
//!
//! Trees (named `key_value`):
//! - `user_token`: user id → [`UserRecord`] (hash, display prefix, created at);
//! - `tokenhash_user`: SHA-256 of a token → [`IndexEntry`] (what verify needs);
//! - `meta`: `schema_version` → u32 big-endian.
//!
//! Guarantees: get-or-create, rotate and revoke are each one sled transaction
//! over both trees, so the trees never disagree and a user has at most one
//! live token. Every mutating method returns only once the change is on
//! stable storage (see [`crate::durability`]). Values are bincode with a
//! leading format-version byte. Raw tokens never reach this module: it sees
//! only [`TokenHash`]es and display prefixes.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Db, Transactional, Tree};

use crate::durability::{DurabilityError, Flusher};
use crate::token::TokenHash;
use crate::user::UserId;

/// The on-disk layout this binary writes. Bump it with a migration in [`Store::open`].
pub const SCHEMA_VERSION: u32 = 1;
const SCHEMA_KEY: &[u8] = b"schema_version";
const RECORD_FORMAT: u8 = 1;
const INDEX_FORMAT: u8 = 1;

pub const USER_TREE: &str = "user_token";
pub const INDEX_TREE: &str = "tokenhash_user";
pub const META_TREE: &str = "meta";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored data cannot be decoded ({what}); the database may be damaged")]
    Corrupt { what: &'static str },
    #[error("the store at {path} has schema version {found}, but this binary knows versions up to {SCHEMA_VERSION}")]
    UnknownSchema { path: PathBuf, found: u32 },
    #[error(
        "the store at {path} holds data but no schema version; it was not written by agent-tokens"
    )]
    MissingSchema { path: PathBuf },
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error(transparent)]
    Durability(#[from] DurabilityError),
    #[error("cannot encode a record: {0}")]
    Encode(String),
}

/// What the store keeps per user. Never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub hash: [u8; 32],
    pub prefix: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

/// What the token index keeps per token hash: enough to answer verify in one read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub user_id: String,
    pub prefix: String,
    pub created_at: u64,
}

/// The outcome of [`Store::get_or_create`].
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

pub struct Store {
    users: Tree,
    index: Tree,
    flusher: Flusher,
    path: PathBuf,
    // Dropped last: the flusher holds its own handle and is joined first.
    _db: Db,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn encode<T: Serialize>(format: u8, value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![format];
    let body = bincode::serde::encode_to_vec(value, bincode_config())
        .map_err(|e| StoreError::Encode(e.to_string()))?;
    out.extend_from_slice(&body);
    Ok(out)
}

fn decode<T: for<'de> Deserialize<'de>>(
    format: u8,
    bytes: &[u8],
    what: &'static str,
) -> Result<T, StoreError> {
    let corrupt = StoreError::Corrupt { what };
    match bytes.split_first() {
        Some((v, body)) if *v == format => {
            match bincode::serde::decode_from_slice::<T, _>(body, bincode_config()) {
                Ok((value, used)) if used == body.len() => Ok(value),
                _ => Err(corrupt),
            }
        }
        _ => Err(corrupt),
    }
}

pub(crate) fn decode_user(bytes: &[u8]) -> Result<UserRecord, StoreError> {
    decode(RECORD_FORMAT, bytes, "user record")
}

pub(crate) fn decode_index(bytes: &[u8]) -> Result<IndexEntry, StoreError> {
    decode(INDEX_FORMAT, bytes, "token index entry")
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort<T>(err: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(err))
}

fn from_tx(err: TransactionError<StoreError>) -> StoreError {
    match err {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    }
}

impl Store {
    /// Opens (or creates) the store, checks the schema version and starts the flusher.
    pub fn open(path: &Path, cache_mb: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_mb.saturating_mul(1024 * 1024))
            // Our flusher is the only one: sled's own background flush would
            // race it (and concurrent flushes deadlock sled 0.34.7).
            .flush_every_ms(None)
            .open()
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        let users = db.open_tree(USER_TREE)?;
        let index = db.open_tree(INDEX_TREE)?;
        let meta = db.open_tree(META_TREE)?;
        match meta.get(SCHEMA_KEY)? {
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        what: "schema version",
                    })?;
                if found != SCHEMA_VERSION {
                    return Err(StoreError::UnknownSchema {
                        path: path.to_owned(),
                        found,
                    });
                }
            }
            None if users.is_empty() && index.is_empty() => {
                meta.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
            }
            None => {
                return Err(StoreError::MissingSchema {
                    path: path.to_owned(),
                })
            }
        }
        let flusher = Flusher::start(db.clone(), path)?;
        Ok(Self {
            users,
            index,
            flusher,
            path: path.to_owned(),
            _db: db,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads a user's record. Not a mutation: no durability wait.
    pub fn get(&self, user: &UserId) -> Result<Option<UserRecord>, StoreError> {
        self.users
            .get(user.as_str().as_bytes())?
            .map(|v| decode_user(&v))
            .transpose()
    }

    /// Reads the index entry for a token hash (one read; the verify path).
    pub fn lookup(&self, hash: &TokenHash) -> Result<Option<IndexEntry>, StoreError> {
        self.index
            .get(hash.as_bytes())?
            .map(|v| decode_index(&v))
            .transpose()
    }

    /// Replaces the user's token with `new` (or creates it): atomic across both
    /// trees, durable when it returns. The previous token stops verifying at once.
    pub async fn rotate(&self, user: &UserId, new: &NewToken) -> Result<UserRecord, StoreError> {
        let (record, index_entry) = Self::records_for(user, new);
        let record_bytes = encode(RECORD_FORMAT, &record)?;
        let index_bytes = encode(INDEX_FORMAT, &index_entry)?;
        let key = user.as_str().as_bytes();
        (&self.users, &self.index)
            .transaction(|(users, index)| {
                if let Some(old) = users.get(key)? {
                    remove_index_of(index, &old)?;
                }
                users.insert(key, record_bytes.as_slice())?;
                index.insert(new.hash.as_bytes(), index_bytes.as_slice())?;
                Ok(())
            })
            .map_err(from_tx)?;
        self.flusher.wrote_and_wait().await?;
        Ok(record)
    }

    /// Returns the user's record, creating it from `candidate` if there is
    /// none: atomic (concurrent callers see exactly one `Created`), and the
    /// answer is durable when it returns.
    pub async fn get_or_create(
        &self,
        user: &UserId,
        candidate: &NewToken,
    ) -> Result<GetOrCreate, StoreError> {
        let (record, index_entry) = Self::records_for(user, candidate);
        let record_bytes = encode(RECORD_FORMAT, &record)?;
        let index_bytes = encode(INDEX_FORMAT, &index_entry)?;
        let key = user.as_str().as_bytes();
        let outcome = (&self.users, &self.index)
            .transaction(|(users, index)| {
                if let Some(existing) = users.get(key)? {
                    return match decode_user(&existing) {
                        Ok(r) => Ok(GetOrCreate::Existing(r)),
                        Err(e) => abort(e),
                    };
                }
                users.insert(key, record_bytes.as_slice())?;
                index.insert(candidate.hash.as_bytes(), index_bytes.as_slice())?;
                Ok(GetOrCreate::Created(record.clone()))
            })
            .map_err(from_tx)?;
        match outcome {
            GetOrCreate::Created(_) => self.flusher.wrote_and_wait().await?,
            // The existing record may come from a concurrent call that has not
            // reached the disk yet; never report what a crash could undo.
            GetOrCreate::Existing(_) => self.flusher.wait_for_all_writes().await?,
        }
        Ok(outcome)
    }

    /// Removes the user's token: atomic across both trees, durable when it
    /// returns. Returns whether a token existed. Idempotent.
    pub async fn revoke(&self, user: &UserId) -> Result<bool, StoreError> {
        let key = user.as_str().as_bytes();
        let removed = (&self.users, &self.index)
            .transaction(|(users, index)| match users.remove(key)? {
                Some(old) => {
                    remove_index_of(index, &old)?;
                    Ok(true)
                }
                None => Ok(false),
            })
            .map_err(from_tx)?;
        if removed {
            self.flusher.wrote_and_wait().await?;
        } else {
            // A concurrent revoke may still be on its way to disk: answering
            // "gone" before it lands could let a crash resurrect the token.
            self.flusher.wait_for_all_writes().await?;
        }
        Ok(removed)
    }

    /// Waits until every mutation applied so far is durable; for answers
    /// that report state another request may still be committing.
    pub async fn wait_until_durable(&self) -> Result<(), StoreError> {
        Ok(self.flusher.wait_for_all_writes().await?)
    }

    /// Every user record, for checks and tests. Reads only.
    pub fn users(&self) -> impl Iterator<Item = Result<(String, UserRecord), StoreError>> + '_ {
        self.users.iter().map(|item| {
            let (k, v) = item?;
            let user = String::from_utf8(k.to_vec())
                .map_err(|_| StoreError::Corrupt { what: "user key" })?;
            Ok((user, decode_user(&v)?))
        })
    }

    /// Every index entry, for checks and tests. Reads only.
    pub fn index_entries(
        &self,
    ) -> impl Iterator<Item = Result<(TokenHash, IndexEntry), StoreError>> + '_ {
        self.index.iter().map(|item| {
            let (k, v) = item?;
            let hash = <[u8; 32]>::try_from(k.as_ref())
                .map(TokenHash::from_bytes)
                .map_err(|_| StoreError::Corrupt { what: "index key" })?;
            Ok((hash, decode_index(&v)?))
        })
    }

    fn records_for(user: &UserId, new: &NewToken) -> (UserRecord, IndexEntry) {
        let created_at = now_secs();
        (
            UserRecord {
                hash: *new.hash.as_bytes(),
                prefix: new.prefix.clone(),
                created_at,
            },
            IndexEntry {
                user_id: user.as_str().to_owned(),
                prefix: new.prefix.clone(),
                created_at,
            },
        )
    }
}

fn remove_index_of(index: &TransactionalTree, old_record: &[u8]) -> TxResult<()> {
    match decode_user(old_record) {
        Ok(old) => {
            index.remove(&old.hash[..])?;
            Ok(())
        }
        Err(e) => abort(e),
    }
}
