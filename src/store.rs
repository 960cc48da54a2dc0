//! The token store, on sled.
//!
//! Trees (named `key_value`):
//! - `user_token`: user id → [`UserRecord`] (current token hash, prefix,
//!   timestamps, and the rotated-out token still in its grace window);
//! - `tokenhash_user`: SHA-256 of a token → [`IndexEntry`] (what verify needs,
//!   in one read);
//! - `grace_expiry`: grace end (u64 BE) ++ token hash → user id, so expired
//!   grace entries are found without scanning every user;
//! - `meta`: `schema_version` → u32 BE.
//!
//! Guarantees: get-or-create, rotate and revoke are each applied inside one
//! sled transaction over the trees (the flusher thread applies everything
//! queued in a cycle in one transaction, in order; see [`crate::mutation`]),
//! so the trees never disagree and a user has at most one current token
//! (plus at most one rotated-out token in its grace window). Those methods
//! return only once the change is on stable storage (see
//! [`crate::durability`]). Last-used stamps return once visible and grace
//! clean-up without waiting; the flusher makes them durable within a second.
//! Values are bincode with a leading format-version byte. Raw tokens never
//! reach this module: it sees only [`TokenHash`]es and display prefixes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sled::transaction::TransactionError;
use sled::{Db, Transactional, Tree};

use crate::durability::{DurabilityError, FlushStats, Flusher};
use crate::layout;
use crate::mutation::{
    tx_decode, Apply, Create, Mutation, PendingTouches, Queued, Revoke, Rotate, Touch,
    TreeCommitter, Written,
};
use crate::token::TokenHash;
use crate::user::UserId;

/// The on-disk layout this binary writes. Older layouts are migrated in
/// [`Store::open`]; newer ones are refused.
pub const SCHEMA_VERSION: u32 = 3;
pub(crate) const SCHEMA_KEY: &[u8] = b"schema_version";
/// Rewritten by every readiness probe.
const PROBE_KEY: &[u8] = b"readyz_probe";
/// Format bytes of user records and index entries written by schemas 1 and 2.
const FORMAT_V1: u8 = 1;
const FORMAT_V2: u8 = 2;
const RECORD_FORMAT: u8 = 3;
const INDEX_FORMAT: u8 = 3;

pub const USER_TREE: &str = "user_token";
pub const INDEX_TREE: &str = "tokenhash_user";
pub const GRACE_TREE: &str = "grace_expiry";
pub const META_TREE: &str = "meta";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored data cannot be decoded ({what}); the database may be damaged")]
    Corrupt { what: &'static str },
    #[error("the store at {path} has schema version {found}, but this binary knows versions up to {SCHEMA_VERSION}; use a newer release")]
    UnknownSchema { path: PathBuf, found: u32 },
    #[error(
        "the store at {path} holds data but no schema version; it was not written by agent-tokens"
    )]
    MissingSchema { path: PathBuf },
    #[error("cannot find the store's current copy in {path}: {source}")]
    Layout {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another process (or handle) holds sled's directory lock.
    #[error("the store at {} is in use by another process", path.display())]
    InUse { path: PathBuf },
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
    /// Cannot happen: a batch committed without running one of its operations.
    #[error("a queued change was not applied")]
    NotApplied,
    /// Writes are refused while the store reopens after an I/O failure.
    #[error("the store is recovering from an I/O failure and refuses writes for now")]
    Recovering,
}

/// Whether opening failed because another process (or handle) holds sled's
/// directory lock. sled wraps the `WouldBlock` from `flock` in its own error.
pub fn is_lock_error(err: &sled::Error) -> bool {
    match err {
        sled::Error::Io(e) => {
            e.kind() == std::io::ErrorKind::WouldBlock
                || e.to_string().contains("could not acquire lock")
                || e.get_ref()
                    .and_then(|inner| inner.downcast_ref::<std::io::Error>())
                    .is_some_and(|inner| inner.kind() == std::io::ErrorKind::WouldBlock)
        }
        _ => false,
    }
}

/// How long an open waits for a lock that the same process just let go of.
const LOCK_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens a sled database, waiting briefly while its directory lock is held.
///
/// sled 0.34.7 releases the lock only when its background I/O threads finish
/// the last segment writes of a dropped database, so a reopen in the same
/// process right after a drop (a test, the disk-full recovery) can find it
/// still held for a moment. Another live process holding it still fails,
/// after the wait, with the lock error.
pub fn open_sled(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_RELEASE_WAIT;
    loop {
        match config.open() {
            Err(e) if is_lock_error(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

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

    use crate::token::{display_prefix_bytes, display_prefix_from_bytes};

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

/// Schema 2 layouts (prefixes as text), kept only to migrate them.
mod v2 {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct GraceToken {
        pub hash: [u8; 32],
        pub prefix: String,
        pub until: u64,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct UserRecord {
        pub hash: [u8; 32],
        pub prefix: String,
        pub created_at: u64,
        pub last_used_at: Option<u64>,
        pub previous: Option<GraceToken>,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct IndexEntry {
        pub user_id: String,
        pub prefix: String,
        pub created_at: u64,
        pub last_used_at: Option<u64>,
        pub grace_until: Option<u64>,
    }

    impl From<UserRecord> for super::UserRecord {
        fn from(old: UserRecord) -> Self {
            Self {
                hash: old.hash,
                prefix: old.prefix,
                created_at: old.created_at,
                last_used_at: old.last_used_at,
                previous: old.previous.map(|p| super::GraceToken {
                    hash: p.hash,
                    prefix: p.prefix,
                    until: p.until,
                }),
            }
        }
    }

    impl From<IndexEntry> for super::IndexEntry {
        fn from(old: IndexEntry) -> Self {
            Self {
                user_id: old.user_id,
                prefix: old.prefix,
                created_at: old.created_at,
                last_used_at: old.last_used_at,
                grace_until: old.grace_until,
            }
        }
    }
}

/// Schema 1 layouts, kept only to migrate them.
mod v1 {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct UserRecord {
        pub hash: [u8; 32],
        pub prefix: String,
        pub created_at: u64,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct IndexEntry {
        pub user_id: String,
        pub prefix: String,
        pub created_at: u64,
    }
}

/// What one committed write changed: the keys it wrote or removed in the
/// user records, the token index (token hashes) and the grace expiries.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub users: Vec<Vec<u8>>,
    pub tokens: Vec<Vec<u8>>,
    pub grace: Vec<Vec<u8>>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.tokens.is_empty() && self.grace.is_empty()
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

impl NewToken {
    /// What is stored of `token`: its hash and display prefix.
    pub fn of(token: &crate::token::PlainToken) -> Self {
        Self {
            hash: token.hash(),
            prefix: token.display_prefix(),
        }
    }
}

pub struct Store {
    pub(crate) users: Tree,
    pub(crate) index: Tree,
    pub(crate) grace: Tree,
    pub(crate) meta: Tree,
    pub(crate) flusher: Flusher<Box<dyn Mutation>>,
    pending_touches: PendingTouches,
    listener: Arc<dyn ChangeListener>,
    path: PathBuf,
    /// Where sled's files are: `path` or one of its generations.
    pub(crate) dir: PathBuf,
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

fn decode_body<T: for<'de> Deserialize<'de>>(
    body: &[u8],
    what: &'static str,
) -> Result<T, StoreError> {
    match bincode::serde::decode_from_slice::<T, _>(body, bincode_config()) {
        Ok((value, used)) if used == body.len() => Ok(value),
        _ => Err(StoreError::Corrupt { what }),
    }
}

fn decode<T: for<'de> Deserialize<'de>>(
    format: u8,
    bytes: &[u8],
    what: &'static str,
) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((v, body)) if *v == format => decode_body(body, what),
        _ => Err(StoreError::Corrupt { what }),
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
pub(crate) fn now_secs_for_tests() -> u64 {
    now_secs()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn from_tx(err: TransactionError<StoreError>) -> StoreError {
    match err {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    }
}

/// sled's settings for a store at `dir`.
pub(crate) fn sled_config(dir: &Path, cache_mb: u64) -> sled::Config {
    sled::Config::new()
        .path(dir)
        .cache_capacity(cache_mb.saturating_mul(1024 * 1024))
        // Our flusher is the only one: sled's own background flush would
        // race it (and concurrent flushes deadlock sled 0.34.7).
        .flush_every_ms(None)
}

/// Opens the store's current copy (see [`crate::layout`]). Should a
/// compaction in another process switch copies between reading the pointer
/// and taking the lock, the pointer is read again: a stale copy is never
/// served.
pub(crate) fn open_current(path: &Path, cache_mb: u64) -> Result<(Db, PathBuf), StoreError> {
    let layout_error = |source| StoreError::Layout {
        path: path.to_owned(),
        source,
    };
    for _ in 0..3 {
        let dir = layout::sled_dir(path).map_err(layout_error)?;
        let db = open_sled(&sled_config(&dir, cache_mb)).map_err(|source| {
            if is_lock_error(&source) {
                StoreError::InUse {
                    path: path.to_owned(),
                }
            } else {
                StoreError::Open {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        if layout::sled_dir(path).map_err(layout_error)? == dir {
            return Ok((db, dir));
        }
    }
    Err(layout_error(std::io::Error::other(
        "its current copy changed while opening it three times; is another process compacting it?",
    )))
}

impl Store {
    /// Opens (or creates) the store, migrates older schemas, and starts the flusher.
    pub fn open(path: &Path, cache_mb: u64) -> Result<Self, StoreError> {
        Self::open_with_listener(path, cache_mb, Arc::new(NoListener))
    }

    /// [`Store::open`], telling `listener` about every write from then on.
    pub fn open_with_listener(
        path: &Path,
        cache_mb: u64,
        listener: Arc<dyn ChangeListener>,
    ) -> Result<Self, StoreError> {
        let (db, dir) = open_current(path, cache_mb)?;
        // This process holds the current copy's lock now, so no other one
        // uses this store: copies a compaction left behind can go.
        if let Err(e) = layout::remove_stale(path) {
            log::warn!(
                "cannot remove old copies of the store in {}: {e}",
                path.display()
            );
        }
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
                match found {
                    SCHEMA_VERSION => {}
                    1 | 2 => migrate(&users, &index, &meta, found)?,
                    _ => {
                        return Err(StoreError::UnknownSchema {
                            path: path.to_owned(),
                            found,
                        })
                    }
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
        Self::from_db(db, path, dir, listener)
    }

    /// Serves an open, current-schema database whose files are in `dir`;
    /// its start-up writes are durable when this returns.
    pub(crate) fn from_db(
        db: Db,
        path: &Path,
        dir: PathBuf,
        listener: Arc<dyn ChangeListener>,
    ) -> Result<Self, StoreError> {
        let users = db.open_tree(USER_TREE)?;
        let index = db.open_tree(INDEX_TREE)?;
        let grace = db.open_tree(GRACE_TREE)?;
        let meta = db.open_tree(META_TREE)?;
        let committer = TreeCommitter {
            users: users.clone(),
            index: index.clone(),
            grace: grace.clone(),
            listener: Arc::clone(&listener),
        };
        let flusher = Flusher::start(db.clone(), &dir, committer)?;
        Ok(Self {
            pending_touches: PendingTouches::default(),
            listener,
            users,
            index,
            grace,
            meta,
            flusher,
            path: path.to_owned(),
            dir,
            _db: db,
        })
    }

    /// The storage path (`storage.path`), not necessarily sled's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size of sled's data file (the log, which compaction shrinks).
    pub fn data_file_bytes(&self) -> std::io::Result<u64> {
        Ok(std::fs::metadata(self.dir.join("db"))?.len())
    }

    pub fn flush_stats(&self) -> &FlushStats {
        self.flusher.stats()
    }

    /// Reads a user's record. Not a mutation: no durability wait.
    pub fn get(&self, user: &UserId) -> Result<Option<UserRecord>, StoreError> {
        self.users
            .get(user.as_str().as_bytes())?
            .map(|v| decode_user(&v))
            .transpose()
    }

    /// Reads the index entry for a token hash: one read, the verify path.
    pub fn lookup(&self, hash: &TokenHash) -> Result<Option<IndexEntry>, StoreError> {
        self.index
            .get(hash.as_bytes())?
            .map(|v| decode_index(&v))
            .transpose()
    }

    /// Queues a mutation for the flusher thread and waits for its answer.
    async fn run<A: Apply>(&self, args: A) -> Result<A::Output, StoreError> {
        let (op, answer) = Queued::queue(args);
        self.flusher.submit(op);
        answer.await.map_err(|_| DurabilityError::Stopped)?
    }

    /// Replaces the user's token with `new` (or creates it): atomic across the
    /// trees, durable when it returns. With `grace_secs` 0 the previous token
    /// stops verifying at once; otherwise it verifies until `now + grace_secs`.
    /// A token already in its grace window ends when the next rotation happens.
    /// Returns the new record and whether it replaced a token.
    pub async fn rotate(
        &self,
        user: &UserId,
        new: &NewToken,
        now: u64,
        grace_secs: u64,
    ) -> Result<(UserRecord, bool), StoreError> {
        let fresh_index = encode_index(&IndexEntry::fresh(user.as_str(), &new.prefix, now))?;
        self.run(Rotate {
            user: user.as_str().to_owned(),
            hash: *new.hash.as_bytes(),
            prefix: new.prefix.clone(),
            now,
            grace_secs,
            fresh_index,
        })
        .await
    }

    /// Returns the user's record, creating it from `candidate` if there is
    /// none: atomic (concurrent callers see exactly one `Created`), and the
    /// answer is durable when it returns (an existing record too: it may
    /// come from a concurrent call that has not reached the disk yet).
    pub async fn get_or_create(
        &self,
        user: &UserId,
        candidate: &NewToken,
        now: u64,
    ) -> Result<GetOrCreate, StoreError> {
        let record = UserRecord {
            hash: *candidate.hash.as_bytes(),
            prefix: candidate.prefix.clone(),
            created_at: now,
            last_used_at: None,
            previous: None,
        };
        let record_bytes = encode_user(&record)?;
        let index_bytes = encode_index(&IndexEntry::fresh(user.as_str(), &candidate.prefix, now))?;
        self.run(Create {
            user: user.as_str().to_owned(),
            record,
            record_bytes,
            index_bytes,
        })
        .await
    }

    /// Removes the user's token, and any rotated-out token still in grace:
    /// atomic, durable when it returns. Returns whether a token existed.
    /// Idempotent; "nothing to remove" also waits for the flush, since a
    /// concurrent revoke may still be on its way to disk and answering
    /// "gone" before it lands could let a crash resurrect the token.
    pub async fn revoke(&self, user: &UserId) -> Result<bool, StoreError> {
        self.run(Revoke {
            user: user.as_str().to_owned(),
        })
        .await
    }

    /// Stamps a token as used at `now` (the index entry, and the user record
    /// when it is the current token). Changes nothing if the token is gone.
    /// Returns once readers see the stamp; it is durable within the
    /// flusher's cycle (at most its idle interval). A token whose stamp is
    /// already queued is not queued again.
    pub async fn touch(&self, hash: &TokenHash, now: u64) -> Result<(), StoreError> {
        let hash = *hash.as_bytes();
        let queued = self
            .pending_touches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(hash);
        if queued {
            self.run(Touch {
                hash,
                now,
                pending: std::sync::Arc::clone(&self.pending_touches),
            })
            .await?;
        }
        Ok(())
    }

    /// Removes every rotated-out token whose grace window ended at or before
    /// `now`. Returns how many were removed. Not waited on: verify already
    /// refuses them by time, so a crash before the flush changes nothing visible.
    pub fn expire_grace(&self, now: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        let end = grace_key(now, &[0xff; 32]);
        let expired: Vec<sled::IVec> = self
            .grace
            .range(..=&end[..])
            .keys()
            .collect::<Result<_, _>>()?;
        for key in expired {
            let Ok(hash) = <[u8; 32]>::try_from(&key[8..]) else {
                return Err(StoreError::Corrupt {
                    what: "grace expiry key",
                });
            };
            let written = Written::default();
            let result =
                (&self.users, &self.index, &self.grace).transaction(|(users, index, grace)| {
                    written.restart();
                    let t = written.trees(users, index, grace);
                    let Some(user) = t.grace.remove(&key)? else {
                        return Ok(());
                    };
                    if let Some(bytes) = t.index.get(&hash[..])? {
                        // Only a grace entry: a current token is never removed here.
                        if tx_decode(decode_index(&bytes))?.grace_until.is_some() {
                            t.index.remove(&hash[..])?;
                        }
                    }
                    if let Some(bytes) = t.users.get(&user)? {
                        let record = tx_decode(decode_user(&bytes))?;
                        if record.previous.as_ref().is_some_and(|p| p.hash == hash) {
                            let record = UserRecord {
                                previous: None,
                                ..record
                            };
                            t.users.insert(&user, tx_decode(encode_user(&record))?)?;
                        }
                    }
                    Ok(())
                });
            if !matches!(result, Err(TransactionError::Abort(_))) {
                written.report(&*self.listener);
            }
            result.map_err(from_tx)?;
            removed += 1;
        }
        if removed > 0 {
            self.flusher.wrote();
        }
        Ok(removed)
    }

    /// Writes a probe key and waits for it to be durable: proves the store
    /// accepts a write and a flush right now (for `/readyz`).
    pub async fn probe_write(&self, now: u64) -> Result<(), StoreError> {
        self.meta.insert(PROBE_KEY, &now.to_be_bytes())?;
        self.flusher.wrote_and_wait().await?;
        Ok(())
    }

    /// [`Store::probe_write`] for plain threads (not on an async runtime).
    pub fn probe_write_blocking(&self) -> Result<(), StoreError> {
        self.meta.insert(PROBE_KEY, &now_secs().to_be_bytes())?;
        self.flusher.wrote_and_wait_blocking()?;
        Ok(())
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

    /// How many grace-expiry entries exist; for checks and tests.
    pub fn grace_entries(&self) -> usize {
        self.grace.len()
    }
}

/// Migrates schema 1 or 2 to the current one. Schema 1 → 2 added last-used
/// and grace fields; 2 → 3 stores prefixes compactly. Each record is
/// rewritten by its own format byte, so a migration interrupted by a crash
/// simply continues at the next start; the version is bumped last.
fn migrate(users: &Tree, index: &Tree, meta: &Tree, from: u32) -> Result<(), StoreError> {
    log::info!("migrating the store from schema {from} to {SCHEMA_VERSION}");
    let migrated = migrate_tree(users, |value| {
        let record = match value.first() {
            Some(&FORMAT_V1) => {
                let old: v1::UserRecord = decode_body(&value[1..], "schema 1 user record")?;
                UserRecord {
                    hash: old.hash,
                    prefix: old.prefix,
                    created_at: old.created_at,
                    last_used_at: None,
                    previous: None,
                }
            }
            Some(&FORMAT_V2) => {
                decode_body::<v2::UserRecord>(&value[1..], "schema 2 user record")?.into()
            }
            _ => return decode_user(value).map(|_| None),
        };
        encode_user(&record).map(Some)
    })?;
    migrate_tree(index, |value| {
        let entry = match value.first() {
            Some(&FORMAT_V1) => {
                let old: v1::IndexEntry = decode_body(&value[1..], "schema 1 index entry")?;
                IndexEntry {
                    user_id: old.user_id,
                    prefix: old.prefix,
                    created_at: old.created_at,
                    last_used_at: None,
                    grace_until: None,
                }
            }
            Some(&FORMAT_V2) => {
                decode_body::<v2::IndexEntry>(&value[1..], "schema 2 index entry")?.into()
            }
            _ => return decode_index(value).map(|_| None),
        };
        encode_index(&entry).map(Some)
    })?;
    meta.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
    log::info!(
        "migrated the store from schema {from} to {SCHEMA_VERSION} ({migrated} user records)"
    );
    Ok(())
}

/// Rewrites every value `upgrade` returns a new encoding for (`None`: the
/// value is current, and checked). Returns how many were rewritten.
fn migrate_tree(
    tree: &Tree,
    upgrade: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, StoreError>,
) -> Result<usize, StoreError> {
    let mut rewritten = 0;
    for item in tree.iter() {
        let (key, value) = item?;
        if let Some(new) = upgrade(&value)? {
            tree.insert(key, new)?;
            rewritten += 1;
        }
    }
    Ok(rewritten)
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
