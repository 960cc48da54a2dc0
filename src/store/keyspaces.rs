//! The store's keyspaces, their names, and how the database holding
//! them is opened and sized.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjall::compaction::Leveled;
use fjall::{Database, Keyspace, KeyspaceCreateOptions};

use crate::store::error::StoreError;

pub const USER_TOKEN: &str = "user_token";
pub const TOKENHASH_USER: &str = "tokenhash_user";
pub const GRACE_EXPIRY: &str = "grace_expiry";
pub const META: &str = "meta";
pub const AUDIT_EVENT: &str = "audit_event";
pub const AUDIT_USER: &str = "audit_user";

/// One of the store's keyspaces: the one list of them, in one order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Users,
    Index,
    Grace,
    Meta,
    /// The audit trail (see [`crate::store::audit`]); created empty in
    /// stores of earlier releases.
    AuditEvents,
    AuditUsers,
}

impl Part {
    pub const ALL: [Part; 6] = [
        Part::Users,
        Part::Index,
        Part::Grace,
        Part::Meta,
        Part::AuditEvents,
        Part::AuditUsers,
    ];
    /// The keyspaces of 0.1 (sled trees), in the order of [`Part::ALL`].
    pub const SLED: [Part; 4] = [Part::Users, Part::Index, Part::Grace, Part::Meta];

    /// Its name on disk (a fjall keyspace, or a sled tree of an earlier release).
    pub const fn name(self) -> &'static str {
        match self {
            Part::Users => USER_TOKEN,
            Part::Index => TOKENHASH_USER,
            Part::Grace => GRACE_EXPIRY,
            Part::Meta => META,
            Part::AuditEvents => AUDIT_EVENT,
            Part::AuditUsers => AUDIT_USER,
        }
    }

    pub fn named(name: &str) -> Option<Part> {
        Part::ALL.into_iter().find(|part| part.name() == name)
    }

    fn memtable_bytes(self) -> u64 {
        match self {
            Part::Users | Part::Index => MEMTABLE_BYTES,
            Part::Grace | Part::Meta => SMALL_MEMTABLE_BYTES,
            Part::AuditEvents | Part::AuditUsers => AUDIT_MEMTABLE_BYTES,
        }
    }
}

const MIB: u64 = 1024 * 1024;
/// Memtable of the user records and of the token index each: a rotation
/// writes both. Measured (tools/engine-compare) against the 128 MiB RSS
/// budget at a million tokens; see README's "Memory".
const MEMTABLE_BYTES: u64 = 8 * MIB;
/// The grace and meta keyspaces see a few writes.
const SMALL_MEMTABLE_BYTES: u64 = MIB;
/// The audit keyspaces take an event per change, smaller than a record.
const AUDIT_MEMTABLE_BYTES: u64 = 4 * MIB;
/// Tables in level 0 before they are merged into level 1 (fjall's default:
/// 4). Rotations change keys spread over the whole key space (user ids,
/// random token hashes), so every merge rewrites all of level 1: merging
/// twice as many tables at a time halves that rewriting. Measured at a
/// million tokens under sustained rotations (three runs each): 13.7-13.8k
/// rotations/s with 4, 14.6-15.9k with 8; the directory's peak during two
/// minutes of them 287 vs 292 MiB. Costs: reads probe up to 8 bloom
/// filters in level 0; lsm-tree sizes level 1 as table size x this (512
/// instead of 256 MiB, all of a million tokens fits either way); fjall
/// stalls writers at 20 level-0 tables, so 12 flushes of headroom instead
/// of 16 while a merge runs (none seen at a million). fjall keeps it per
/// keyspace from its creation, so it applies to stores created from this
/// release on.
const L0_TABLES_BEFORE_MERGE: u8 = 8;
/// Journal kept before memtables are flushed to tables: bounds the disk
/// it takes and what a restart replays (fjall's smallest).
const JOURNAL_BYTES: u64 = 64 * MIB;

/// The store's keyspaces in one database.
pub(crate) struct Keyspaces {
    pub users: Keyspace,
    pub index: Keyspace,
    pub grace: Keyspace,
    pub meta: Keyspace,
    pub events: Keyspace,
    pub event_users: Keyspace,
}

impl Keyspaces {
    pub fn open(db: &Database) -> Result<Self, StoreError> {
        let open = |part: Part| {
            db.keyspace(part.name(), || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(part.memtable_bytes())
                    .compaction_strategy(Arc::new(
                        Leveled::default().with_l0_threshold(L0_TABLES_BEFORE_MERGE),
                    ))
            })
        };
        Ok(Self {
            users: open(Part::Users)?,
            index: open(Part::Index)?,
            grace: open(Part::Grace)?,
            meta: open(Part::Meta)?,
            events: open(Part::AuditEvents)?,
            event_users: open(Part::AuditUsers)?,
        })
    }

    pub fn get(&self, part: Part) -> &Keyspace {
        match part {
            Part::Users => &self.users,
            Part::Index => &self.index,
            Part::Grace => &self.grace,
            Part::Meta => &self.meta,
            Part::AuditEvents => &self.events,
            Part::AuditUsers => &self.event_users,
        }
    }

    /// Writes every memtable out as a table and waits (up to `timeout`)
    /// until that is done, so the journal holds nothing the next start
    /// must replay. Returns whether it finished in time; if not, the
    /// journal still holds everything and the next start replays it.
    ///
    /// (fjall's own `rotate_memtable_and_wait`, a test helper, was seen
    /// waiting forever at a stop: this polls with a deadline instead.)
    pub fn flush_memtables(&self, db: &Database, timeout: Duration) -> Result<bool, StoreError> {
        for part in Part::ALL {
            self.get(part).rotate_memtable()?;
        }
        let deadline = Instant::now() + timeout;
        // Flushed journals are deleted after their flush: wait for that too,
        // or the next start still reads them.
        while db.outstanding_flushes() > 0
            || Part::ALL
                .iter()
                .any(|&part| self.get(part).sealed_memtable_count() > 0)
            || db.journal_count() > 1
        {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(true)
    }
}

/// Opens (or creates) the fjall database in `dir`, with its memory sized
/// from `cache_mb` (the block cache) and the constants above.
pub(crate) fn open_db(path: &Path, dir: &Path, cache_mb: u64) -> Result<Database, StoreError> {
    Database::builder(dir)
        .cache_size(cache_mb.saturating_mul(MIB))
        .max_journaling_size(JOURNAL_BYTES)
        .open()
        .map_err(|source| match source {
            fjall::Error::Locked => StoreError::InUse {
                path: path.to_owned(),
            },
            source => StoreError::Open {
                path: path.to_owned(),
                source,
            },
        })
}
