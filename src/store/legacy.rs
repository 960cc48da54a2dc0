//! Stores written by releases before 0.2, on sled 0.34.7: read once and
//! copied into the current format at the first open.
//!
//! Why the move: sled's transactions read every key they write, so a large
//! store pages random leaves in for each rotation and rotations slow down
//! as it grows, and its log only shrank by copying the whole store. An LSM
//! tree writes blindly and compacts itself. Figures: docs/benchmarks.md
//! ("Storage engine").
//!
//! How: the sled store is opened (its own lock too), records of schemas 1
//! and 2 are upgraded in place as earlier releases did, then every tree is
//! written in key order into a new fjall database in the next generation
//! directory, which is synced and named current with one atomic rename
//! ([`crate::store::layout::commit`]). A crash before the rename leaves the sled store
//! current (the next open starts over); after it the new copy holds every
//! record. The sled files are removed once the new copy is current.

use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace};
use sled::Tree;

use crate::store::codec::decode_body;
use crate::store::error::StoreError;
use crate::store::keyspaces::{GRACE_EXPIRY, META, TOKENHASH_USER, USER_TOKEN};
use crate::store::records::{
    decode_index, decode_user, encode_index, encode_user, IndexEntry, UserRecord, FORMAT_V1,
    FORMAT_V2,
};
use crate::store::schema::{decode_schema, SCHEMA_KEY, SCHEMA_VERSION};

/// Whether opening failed because another process (or handle) holds sled's
/// directory lock. sled wraps the `WouldBlock` from `flock` in its own error.
fn is_lock_error(err: &sled::Error) -> bool {
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

/// Opens the sled store in `dir` (a process of an earlier release may still
/// hold it: then it is in use).
pub(crate) fn open_sled(path: &Path, dir: &Path, cache_mb: u64) -> Result<sled::Db, StoreError> {
    sled::Config::new()
        .path(dir)
        .cache_capacity(cache_mb.saturating_mul(1024 * 1024))
        .flush_every_ms(None)
        .open()
        .map_err(|e| {
            if is_lock_error(&e) {
                StoreError::InUse {
                    path: path.to_owned(),
                }
            } else {
                StoreError::Legacy(e)
            }
        })
}

/// Copies the sled store in `old` into a new current copy of `path` and
/// returns it, open.
pub(crate) fn migrate(
    path: &Path,
    old: &Path,
    cache_mb: u64,
) -> Result<(Database, PathBuf), StoreError> {
    log::info!(
        "the store at {} is in the format of an earlier release (sled); copying it into the current one",
        path.display()
    );
    let started = std::time::Instant::now();
    let sled_db = open_sled(path, old, cache_mb)?;
    let users = sled_db.open_tree(USER_TOKEN)?;
    let index = sled_db.open_tree(TOKENHASH_USER)?;
    let grace = sled_db.open_tree(GRACE_EXPIRY)?;
    let meta = sled_db.open_tree(META)?;
    match meta.get(SCHEMA_KEY)? {
        Some(v) => {
            let found = decode_schema(&v)?;
            match found {
                SCHEMA_VERSION => {}
                1 | 2 => migrate_schema(&users, &index, &meta, found)?,
                _ => {
                    return Err(StoreError::UnknownSchema {
                        path: path.to_owned(),
                        found,
                        known: SCHEMA_VERSION,
                    })
                }
            }
        }
        None if users.is_empty() && index.is_empty() => {}
        None => {
            return Err(StoreError::MissingSchema {
                path: path.to_owned(),
            })
        }
    }

    let (db, dir, copied) = crate::store::generation::write(path, cache_mb, |keyspaces| {
        let copied = copy_tree(&users, &keyspaces.users)?;
        copy_tree(&index, &keyspaces.index)?;
        copy_tree(&grace, &keyspaces.grace)?;
        Ok(copied)
    })?;
    drop((users, index, grace, meta, sled_db));
    log::info!(
        "copied the store into the current format: {copied} users in {:?}",
        started.elapsed()
    );
    Ok((db, dir))
}

/// Writes every pair of `tree` (in key order, as sled iterates) into the
/// empty keyspace `to` as sorted tables.
fn copy_tree(tree: &Tree, to: &Keyspace) -> Result<usize, StoreError> {
    let mut ingestion = to.start_ingestion()?;
    let mut copied = 0;
    for item in tree.iter() {
        let (key, value) = item?;
        ingestion.write(key.as_ref(), value.as_ref())?;
        copied += 1;
    }
    ingestion.finish()?;
    Ok(copied)
}

/// Migrates schema 1 or 2 to the current one. Schema 1 → 2 added last-used
/// and grace fields; 2 → 3 stores prefixes compactly. Each record is
/// rewritten by its own format byte, so a migration interrupted by a crash
/// simply continues at the next start; the version is bumped last.
fn migrate_schema(users: &Tree, index: &Tree, meta: &Tree, from: u32) -> Result<(), StoreError> {
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

    impl From<UserRecord> for crate::store::records::UserRecord {
        fn from(old: UserRecord) -> Self {
            Self {
                hash: old.hash,
                prefix: old.prefix,
                created_at: old.created_at,
                last_used_at: old.last_used_at,
                previous: old.previous.map(|p| crate::store::records::GraceToken {
                    hash: p.hash,
                    prefix: p.prefix,
                    until: p.until,
                }),
            }
        }
    }

    impl From<IndexEntry> for crate::store::records::IndexEntry {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::token::TokenHash;
    use crate::domain::user::UserId;
    use crate::store::db::Db;
    use crate::store::offline::Offline;
    use crate::store::records::{grace_key, GraceToken};

    fn names(path: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// A 0.1 store after one of its compactions: sled files in `gen-2`.
    fn write_compacted_sled_store(path: &Path) -> (UserRecord, IndexEntry) {
        std::fs::create_dir_all(path.join("gen-2")).unwrap();
        let previous = GraceToken {
            hash: [7; 32],
            prefix: "sk_agt_07070707...".into(),
            until: 4_000_000_000,
        };
        let record = UserRecord {
            hash: [9; 32],
            prefix: "sk_agt_09090909...".into(),
            created_at: 1_790_000_000,
            last_used_at: Some(1_790_000_100),
            previous: Some(previous.clone()),
        };
        let entry = IndexEntry::fresh("alice", &record.prefix, record.created_at);
        let db = sled::Config::new().path(path.join("gen-2")).open().unwrap();
        let tree = |name| db.open_tree(name).unwrap();
        tree(META)
            .insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())
            .unwrap();
        tree(USER_TOKEN)
            .insert("alice", encode_user(&record).unwrap())
            .unwrap();
        tree(TOKENHASH_USER)
            .insert(record.hash, encode_index(&entry).unwrap())
            .unwrap();
        let grace_entry = IndexEntry {
            grace_until: Some(previous.until),
            ..IndexEntry::fresh("alice", &previous.prefix, 1_780_000_000)
        };
        tree(TOKENHASH_USER)
            .insert(previous.hash, encode_index(&grace_entry).unwrap())
            .unwrap();
        tree(GRACE_EXPIRY)
            .insert(grace_key(previous.until, &previous.hash), "alice")
            .unwrap();
        db.flush().unwrap();
        drop(db);
        crate::store::layout::commit(path, 2).unwrap();
        (record, entry)
    }

    #[test]
    fn a_compacted_sled_store_is_copied_into_the_next_generation_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let (record, entry) = write_compacted_sled_store(&path);
        // A copy an earlier attempt left half-written where the new one goes.
        std::fs::create_dir_all(path.join("gen-3/keyspaces")).unwrap();
        std::fs::write(path.join("gen-3/junk"), b"half a copy").unwrap();

        let store = Offline::open(&path, 4).unwrap();
        let users: Vec<_> = store.users().map(Result::unwrap).collect();
        assert_eq!(users, [("alice".to_owned(), record.clone())]);
        assert_eq!(
            store
                .lookup(&TokenHash::from_bytes(record.hash))
                .unwrap()
                .unwrap(),
            entry
        );
        assert_eq!(store.grace_entries().unwrap(), 1);
        assert_eq!(names(&path), ["CURRENT", "LOCK", "gen-3"]);
        assert!(!path.join("gen-3/junk").exists());
        drop(store);

        let report = crate::ops::check::check_store(&path).unwrap();
        assert!(report.is_consistent(), "{report}");
        assert_eq!((report.users, report.in_grace), (1, 1));
        // Opened again: the copy is the store, nothing is migrated twice.
        let store = Db::open(&path, 4).unwrap();
        let alice = UserId::parse("alice").unwrap();
        assert_eq!(store.get(&alice).unwrap().unwrap(), record);
        assert_eq!(names(&path), ["CURRENT", "LOCK", "gen-3"]);
    }

    #[test]
    fn check_reads_a_sled_store_as_it_is_without_migrating_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        write_compacted_sled_store(&path);
        let report = crate::ops::check::check_store(&path).unwrap();
        assert!(report.is_consistent(), "{report}");
        assert_eq!(
            (report.users, report.index_entries, report.in_grace),
            (1, 2, 1)
        );
        assert_eq!(names(&path), ["CURRENT", "LOCK", "gen-2"]);
    }
}
