//! The store for the offline commands (`export`, `import`, `compact`,
//! `check`): what they read and write, and the only way they reach the
//! store, so no tool touches fjall or names a keyspace.
//!
//! Every handle here holds the store's lock while it is open: the server
//! cannot start meanwhile, and a store the server holds is refused
//! ([`StoreError::InUse`]). No flusher runs, so these writes are not the
//! server's: an import writes a whole new copy of the store and makes it
//! current in one rename, and a compaction rewrites tables fjall already
//! owns.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fjall::{Database, PersistMode};

use crate::domain::token::TokenHash;
use crate::store::db::{open_current, remove_old_copies, Opened};
use crate::store::error::StoreError;
use crate::store::generation;
use crate::store::keyspaces::{open_db, Keyspaces, Part};
use crate::store::layout::{self, Current};
use crate::store::records::{
    decode_index, decode_user, encode_index, encode_user, grace_key, IndexEntry, UserRecord,
};
use crate::store::snapshot::Records;

/// How long a compaction waits for the memtables to be written out first.
const COMPACT_FLUSH_WAIT: Duration = Duration::from_secs(600);

/// A stopped store, opened as a start would open it (a new store is
/// created, one of an earlier release migrated).
pub struct Offline {
    // Dropped before the database they belong to.
    keyspaces: Keyspaces,
    db: Database,
    path: PathBuf,
    cache_mb: u64,
    // Dropped last: no other process may open the store before it is closed.
    _lock: layout::Lock,
}

impl std::fmt::Debug for Offline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offline").field("path", &self.path).finish()
    }
}

/// One user as an import writes it.
#[derive(Debug, Clone, Copy)]
pub struct ImportedUser<'a> {
    pub user_id: &'a str,
    pub record: &'a UserRecord,
    /// When the rotated-out token in `record.previous` (if any) was created
    /// and last used: its own index entry's times.
    pub grace_token_times: Option<(u64, Option<u64>)>,
}

impl Offline {
    /// Whether `path` holds a store (of this release or an earlier one).
    pub fn exists(path: &Path) -> bool {
        layout::holds_store(path)
    }

    /// Opens (or creates) the store at `path`, which the server must not hold.
    pub fn open(path: &Path, cache_mb: u64) -> Result<Self, StoreError> {
        let Opened {
            db,
            keyspaces,
            lock,
        } = open_current(path, cache_mb)?;
        Ok(Self {
            keyspaces,
            db,
            path: path.to_owned(),
            cache_mb,
            _lock: lock,
        })
    }

    /// The storage path (`storage.path`), not necessarily fjall's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn user_count(&self) -> Result<usize, StoreError> {
        Ok(self.keyspaces.users.len()?)
    }

    /// Whether any token is stored: a user, an index entry or a grace entry.
    pub fn holds_tokens(&self) -> Result<bool, StoreError> {
        for part in [Part::Users, Part::Index, Part::Grace] {
            if !self.keyspaces.get(part).is_empty()? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Every user record, in key order.
    pub fn users(&self) -> impl Iterator<Item = Result<(String, UserRecord), StoreError>> + '_ {
        self.keyspaces.users.iter().map(|item| {
            let (k, v) = item.into_inner()?;
            let user = String::from_utf8(k.to_vec())
                .map_err(|_| StoreError::Corrupt { what: "user key" })?;
            Ok((user, decode_user(&v)?))
        })
    }

    /// The index entry of a token hash.
    pub fn lookup(&self, hash: &TokenHash) -> Result<Option<IndexEntry>, StoreError> {
        self.keyspaces
            .index
            .get(hash.as_bytes())?
            .map(|v| decode_index(&v))
            .transpose()
    }

    /// Every index entry, in key order.
    pub fn index_entries(
        &self,
    ) -> impl Iterator<Item = Result<(TokenHash, IndexEntry), StoreError>> + '_ {
        self.keyspaces.index.iter().map(|item| {
            let (k, v) = item.into_inner()?;
            let hash = <[u8; 32]>::try_from(k.as_ref())
                .map(TokenHash::from_bytes)
                .map_err(|_| StoreError::Corrupt { what: "index key" })?;
            Ok((hash, decode_index(&v)?))
        })
    }

    /// How many grace-expiry entries exist.
    pub fn grace_entries(&self) -> Result<usize, StoreError> {
        Ok(self.keyspaces.grace.len()?)
    }

    /// What the store takes on disk: its tables and journals.
    pub fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    /// Replaces everything stored with `users`: writes them into a new copy
    /// of the store (index and grace-expiry entries derived from the user
    /// records) and makes it current in one rename. A failure leaves the
    /// store as it was. User ids and token hashes must be unique.
    pub fn replace_with(&mut self, users: &[ImportedUser<'_>]) -> Result<(), StoreError> {
        let (db, _, ()) = generation::write(&self.path, self.cache_mb, |keyspaces| {
            ingest(keyspaces, users)
        })?;
        // The old copy's handles go before its directory does.
        self.keyspaces = Keyspaces::open(&db)?;
        self.db = db;
        remove_old_copies(&self.path);
        Ok(())
    }

    /// Merges every keyspace into one sorted run, dropping what was removed
    /// or overwritten, and syncs it. Returns the size on disk before and
    /// after, in bytes.
    pub fn compact(&self) -> Result<(u64, u64), StoreError> {
        let before = self.disk_bytes();
        // Memtables first, so what only the journal held is compacted too.
        if !self
            .keyspaces
            .flush_memtables(&self.db, COMPACT_FLUSH_WAIT)?
        {
            log::warn!(
                "the memtables were not flushed within {COMPACT_FLUSH_WAIT:?}; compacting the tables only"
            );
        }
        for part in Part::ALL {
            self.keyspaces.get(part).major_compact()?;
        }
        self.db.persist(PersistMode::SyncAll)?;
        Ok((before, self.disk_bytes()))
    }
}

/// Writes `users` into the empty keyspaces of a new copy, each keyspace in
/// key order as sorted tables (fjall's ingestion: no journal, no
/// memtables, no compaction after).
fn ingest(keyspaces: &Keyspaces, users: &[ImportedUser<'_>]) -> Result<(), StoreError> {
    let mut by_user: Vec<&ImportedUser<'_>> = users.iter().collect();
    by_user.sort_unstable_by(|a, b| a.user_id.cmp(b.user_id));
    let mut ingestion = keyspaces.users.start_ingestion()?;
    for user in &by_user {
        ingestion.write(user.user_id.as_bytes(), encode_user(user.record)?)?;
    }
    ingestion.finish()?;

    // Every hash with the index entry it gets: the current token's, and
    // the rotated-out one's (with its own times and grace end).
    let mut by_hash: Vec<(&[u8; 32], IndexEntry)> = Vec::with_capacity(by_user.len());
    let mut grace = Vec::new();
    for user in by_user {
        let record = user.record;
        by_hash.push((
            &record.hash,
            IndexEntry {
                user_id: user.user_id.to_owned(),
                prefix: record.prefix.clone(),
                created_at: record.created_at,
                last_used_at: record.last_used_at,
                grace_until: None,
            },
        ));
        if let Some(prev) = &record.previous {
            let (created_at, last_used_at) = user.grace_token_times.unwrap_or_default();
            by_hash.push((
                &prev.hash,
                IndexEntry {
                    user_id: user.user_id.to_owned(),
                    prefix: prev.prefix.clone(),
                    created_at,
                    last_used_at,
                    grace_until: Some(prev.until),
                },
            ));
            grace.push((grace_key(prev.until, &prev.hash), user.user_id));
        }
    }
    by_hash.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut ingestion = keyspaces.index.start_ingestion()?;
    for (hash, entry) in by_hash {
        ingestion.write(&hash[..], encode_index(&entry)?)?;
    }
    ingestion.finish()?;

    grace.sort_unstable();
    let mut ingestion = keyspaces.grace.start_ingestion()?;
    for (key, user_id) in grace {
        ingestion.write(&key[..], user_id.as_bytes())?;
    }
    ingestion.finish()?;
    Ok(())
}

/// Key and value of one stored pair, as bytes.
pub type Pair = (Vec<u8>, Vec<u8>);

/// A stopped store's keyspaces exactly as stored, in the current format or
/// an earlier release's (sled): never migrated, never written. What
/// `check` reads, so it can report records that do not decode.
pub struct AsStored {
    source: Source,
    _lock: layout::Lock,
}

// Each holds its database open for as long as it is read.
enum Source {
    Lsm(Keyspaces, #[allow(dead_code)] Database),
    Sled([sled::Tree; 4], #[allow(dead_code)] sled::Db),
}

impl AsStored {
    /// Opens the store at `path` to read it; `None` when there is none.
    pub fn open(path: &Path, cache_mb: u64) -> Result<Option<Self>, StoreError> {
        if !layout::holds_store(path) {
            return Ok(None);
        }
        let lock = layout::lock(path)
            .map_err(StoreError::layout(path))?
            .ok_or_else(|| StoreError::InUse {
                path: path.to_owned(),
            })?;
        let source = match layout::current(path).map_err(StoreError::layout(path))? {
            Current::Empty => return Ok(None),
            Current::Lsm(dir) => {
                let db = open_db(path, &dir, cache_mb)?;
                Source::Lsm(Keyspaces::open(&db)?, db)
            }
            Current::Sled(dir) => {
                let db = crate::store::legacy::open_sled(path, &dir, cache_mb)?;
                let [users, index, grace, meta] = Part::SLED.map(|part| db.open_tree(part.name()));
                Source::Sled([users?, index?, grace?, meta?], db)
            }
        };
        Ok(Some(Self {
            source,
            _lock: lock,
        }))
    }

    /// Every pair of one keyspace, in key order.
    pub fn pairs(&self, part: Part) -> Box<dyn Iterator<Item = Result<Pair, StoreError>> + '_> {
        match &self.source {
            Source::Lsm(keyspaces, _) => Box::new(keyspaces.get(part).iter().map(|item| {
                let (key, value) = item.into_inner()?;
                Ok((key.to_vec(), value.to_vec()))
            })),
            Source::Sled(trees, _) => match trees.get(part as usize) {
                Some(tree) => Box::new(tree.iter().map(|item| {
                    let (key, value) = item?;
                    Ok((key.to_vec(), value.to_vec()))
                })),
                // 0.1 kept no audit trail.
                None => Box::new(std::iter::empty()),
            },
        }
    }

    pub fn get(&self, part: Part, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(match &self.source {
            Source::Lsm(keyspaces, _) => keyspaces.get(part).get(key)?.map(|v| v.to_vec()),
            Source::Sled(trees, _) => match trees.get(part as usize) {
                Some(tree) => tree.get(key)?.map(|v| v.to_vec()),
                None => None,
            },
        })
    }

    pub fn is_empty(&self, part: Part) -> Result<bool, StoreError> {
        Ok(self.pairs(part).next().transpose()?.is_none())
    }

    pub fn count(&self, part: Part) -> Result<usize, StoreError> {
        let mut count = 0;
        for pair in self.pairs(part) {
            pair?;
            count += 1;
        }
        Ok(count)
    }
}

/// Stored values as they are, around every rule of the store: for tests
/// that fabricate damage in a stopped store of the current format (the
/// `test-support` feature, on only for tests).
#[cfg(any(test, feature = "test-support"))]
pub mod raw {
    use super::*;

    /// Runs `f` on keyspace `name` of the stopped store at `path`, then syncs.
    fn with<T>(
        path: &Path,
        name: &str,
        f: impl FnOnce(&fjall::Keyspace) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let corrupt = |what| StoreError::Corrupt { what };
        let part = Part::named(name).ok_or(corrupt("keyspace name"))?;
        let stored = AsStored::open(path, 8)?.ok_or(corrupt("no store"))?;
        let Source::Lsm(keyspaces, db) = &stored.source else {
            return Err(corrupt("a store of an earlier release"));
        };
        let out = f(keyspaces.get(part))?;
        db.persist(PersistMode::SyncAll)?;
        Ok(out)
    }

    pub fn get(path: &Path, name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        with(path, name, |ks| Ok(ks.get(key)?.map(|v| v.to_vec())))
    }

    /// Writes `value` under `key`, durably.
    pub fn put(path: &Path, name: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        with(path, name, |ks| Ok(ks.insert(key, value)?))
    }

    /// Removes `key`, durably.
    pub fn remove(path: &Path, name: &str, key: &[u8]) -> Result<(), StoreError> {
        with(path, name, |ks| Ok(ks.remove(key)?))
    }

    pub fn len(path: &Path, name: &str) -> Result<usize, StoreError> {
        with(path, name, |ks| Ok(ks.len()?))
    }
}

impl Records for Offline {
    fn user_count(&self) -> Result<usize, StoreError> {
        Offline::user_count(self)
    }

    fn each_user(&self) -> Box<dyn Iterator<Item = Result<(String, UserRecord), StoreError>> + '_> {
        Box::new(self.users())
    }

    fn index_entry(&self, hash: &TokenHash) -> Result<Option<IndexEntry>, StoreError> {
        self.lookup(hash)
    }
}
