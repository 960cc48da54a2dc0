//! The seam between [`crate::store::Store`] and a storage engine: an enum
//! with one variant per engine: the embedded fjall database, PostgreSQL.
//!
//! An enum, not a trait object: the operations are async, and a `dyn`
//! trait would box every future, the verify path's read included; the
//! engines are few and known when the binary is built; and a new variant
//! makes the compiler name every operation it must answer (each one below
//! destructures `self`). Every variant keeps the guarantees stated in
//! [`crate::store`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::domain::token::TokenHash;
use crate::domain::user::UserId;
use crate::store::audit::{Audit, AuditEvent};
use crate::store::db::Db;
use crate::store::error::StoreError;
use crate::store::postgres::Pg;
use crate::store::records::{ChangeListener, GetOrCreate, IndexEntry, NewToken, UserRecord};

#[derive(Debug)]
pub enum Backend {
    /// fjall, in `storage.path` (see [`crate::store::db`]).
    Embedded(Db),
    /// PostgreSQL, shared by replicas (see [`crate::store::postgres`]).
    Postgres(Pg),
}

impl Backend {
    pub fn open(
        path: &Path,
        cache_mb: u64,
        listener: Arc<dyn ChangeListener>,
    ) -> Result<Self, StoreError> {
        Db::open_with_listener(path, cache_mb, listener).map(Backend::Embedded)
    }

    pub async fn get(&self, user: &UserId) -> Result<Option<UserRecord>, StoreError> {
        match self {
            Backend::Embedded(db) => db.get(user),
            Backend::Postgres(pg) => pg.get(user).await,
        }
    }

    pub async fn lookup(&self, hash: &TokenHash) -> Result<Option<IndexEntry>, StoreError> {
        match self {
            Backend::Embedded(db) => db.lookup(hash),
            Backend::Postgres(pg) => pg.lookup(hash).await,
        }
    }

    pub fn count_tokens(&self, counts: impl Fn(&IndexEntry) -> bool) -> Result<u64, StoreError> {
        match self {
            Backend::Embedded(db) => db.count_tokens(counts),
            Backend::Postgres(pg) => pg.count_tokens_blocking(counts),
        }
    }

    pub fn grace_ending(&self, from: u64, until: u64) -> Result<u64, StoreError> {
        match self {
            Backend::Embedded(db) => db.grace_ending(from, until),
            Backend::Postgres(pg) => pg.grace_ending_blocking(from, until),
        }
    }

    pub async fn rotate_as(
        &self,
        user: &UserId,
        new: &NewToken,
        now: u64,
        grace_secs: u64,
        audit: &Audit,
    ) -> Result<(UserRecord, bool), StoreError> {
        match self {
            Backend::Embedded(db) => db.rotate_as(user, new, now, grace_secs, audit).await,
            Backend::Postgres(pg) => pg.rotate_as(user, new, now, grace_secs, audit).await,
        }
    }

    pub async fn get_or_create_as(
        &self,
        user: &UserId,
        candidate: &NewToken,
        now: u64,
        audit: &Audit,
    ) -> Result<GetOrCreate, StoreError> {
        match self {
            Backend::Embedded(db) => db.get_or_create_as(user, candidate, now, audit).await,
            Backend::Postgres(pg) => pg.get_or_create_as(user, candidate, now, audit).await,
        }
    }

    pub async fn revoke_as(
        &self,
        user: &UserId,
        now: u64,
        audit: &Audit,
    ) -> Result<bool, StoreError> {
        match self {
            Backend::Embedded(db) => db.revoke_as(user, now, audit).await,
            Backend::Postgres(pg) => pg.revoke_as(user, now, audit).await,
        }
    }

    pub async fn events_of(
        &self,
        user: &UserId,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        match self {
            Backend::Embedded(db) => db.events_of(user, limit),
            Backend::Postgres(pg) => pg.events_of(user, limit).await,
        }
    }

    /// Every token (and with `events`, every audit event) at one moment.
    pub async fn view(&self, events: bool) -> Result<crate::store::view::View, StoreError> {
        use crate::store::view::View;
        match self {
            Backend::Embedded(db) => Ok(View::Embedded(db.snapshot())),
            Backend::Postgres(pg) => pg.snapshot(events).await.map(View::Postgres),
        }
    }

    pub async fn revoke_all(
        &self,
        before: Option<u64>,
        now: u64,
        audit: &Audit,
    ) -> Result<usize, StoreError> {
        match self {
            Backend::Embedded(db) => db.revoke_all(before, now, audit).await,
            Backend::Postgres(pg) => pg.revoke_all(before, now, audit).await,
        }
    }

    pub async fn note(&self, event: AuditEvent) -> Result<(), StoreError> {
        match self {
            Backend::Embedded(db) => db.note(event).await,
            Backend::Postgres(pg) => pg.note(event).await,
        }
    }

    pub async fn sweep_audit(&self, before: u64) -> Result<usize, StoreError> {
        match self {
            Backend::Embedded(db) => db.sweep_audit(before).await,
            Backend::Postgres(pg) => pg.sweep_audit(before).await,
        }
    }

    pub async fn revoke_token(
        &self,
        hash: &TokenHash,
        now: u64,
        audit: &Audit,
    ) -> Result<crate::store::TokenRevoked, StoreError> {
        match self {
            Backend::Embedded(db) => db.revoke_token(hash, now, audit).await,
            Backend::Postgres(pg) => pg.revoke_token(hash, now, audit).await,
        }
    }

    pub fn stamp_blocking(&self, stamps: Vec<([u8; 32], u64)>) -> Result<usize, StoreError> {
        match self {
            Backend::Embedded(db) => db.stamp_blocking(stamps),
            Backend::Postgres(pg) => pg.stamp_blocking(stamps),
        }
    }

    pub async fn expire_grace(&self, now: u64) -> Result<usize, StoreError> {
        match self {
            Backend::Embedded(db) => db.expire_grace(now).await,
            Backend::Postgres(pg) => pg.expire_grace(now).await,
        }
    }

    pub async fn probe_write(&self, now: u64) -> Result<(), StoreError> {
        match self {
            Backend::Embedded(db) => db.probe_write(now).await,
            Backend::Postgres(pg) => pg.probe_write(now).await,
        }
    }

    pub fn probe_write_blocking(&self) -> Result<(), StoreError> {
        match self {
            Backend::Embedded(db) => db.probe_write_blocking(),
            Backend::Postgres(pg) => pg.probe_write_blocking(),
        }
    }

    pub async fn wait_until_durable(&self) -> Result<(), StoreError> {
        match self {
            Backend::Embedded(db) => db.wait_until_durable().await,
            // Every change committed (synchronously) before it was answered.
            Backend::Postgres(_) => Ok(()),
        }
    }

    /// What the store takes on disk in bytes, and its background jobs
    /// (zeros for PostgreSQL: its server reports its own).
    pub fn storage_state(&self) -> (u64, usize) {
        match self {
            Backend::Embedded(db) => (db.disk_bytes(), db.background_jobs()),
            Backend::Postgres(_) => (0, 0),
        }
    }

    #[cfg(test)]
    pub fn flush_stats(&self) -> &crate::store::durability::FlushStats {
        match self {
            Backend::Embedded(db) => db.flush_stats(),
            Backend::Postgres(_) => panic!("PostgreSQL has no flusher"),
        }
    }

    /// Before a graceful stop: makes the next start quick (for fjall, the
    /// memtables are written out so no journal is replayed). Returns whether
    /// that finished within `timeout`; nothing is lost either way.
    pub fn prepare_stop(&self, timeout: Duration) -> Result<bool, StoreError> {
        match self {
            Backend::Embedded(db) => db.flush_memtables(timeout),
            Backend::Postgres(_) => Ok(true),
        }
    }
}
