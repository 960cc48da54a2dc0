//! The seam between [`crate::store::Store`] and a storage engine: an enum
//! with one variant per engine, today only the embedded fjall database.
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
use crate::store::records::{ChangeListener, GetOrCreate, IndexEntry, NewToken, UserRecord};

#[derive(Debug)]
pub enum Backend {
    /// fjall, in `storage.path` (see [`crate::store::db`]).
    Embedded(Db),
}

impl Backend {
    pub fn open(
        path: &Path,
        cache_mb: u64,
        listener: Arc<dyn ChangeListener>,
    ) -> Result<Self, StoreError> {
        Db::open_with_listener(path, cache_mb, listener).map(Backend::Embedded)
    }

    pub fn get(&self, user: &UserId) -> Result<Option<UserRecord>, StoreError> {
        let Backend::Embedded(db) = self;
        db.get(user)
    }

    pub fn lookup(&self, hash: &TokenHash) -> Result<Option<IndexEntry>, StoreError> {
        let Backend::Embedded(db) = self;
        db.lookup(hash)
    }

    pub fn count_tokens(&self, counts: impl Fn(&IndexEntry) -> bool) -> Result<u64, StoreError> {
        let Backend::Embedded(db) = self;
        db.count_tokens(counts)
    }

    pub fn grace_ending(&self, from: u64, until: u64) -> Result<u64, StoreError> {
        let Backend::Embedded(db) = self;
        db.grace_ending(from, until)
    }

    pub async fn rotate_as(
        &self,
        user: &UserId,
        new: &NewToken,
        now: u64,
        grace_secs: u64,
        audit: &Audit,
    ) -> Result<(UserRecord, bool), StoreError> {
        let Backend::Embedded(db) = self;
        db.rotate_as(user, new, now, grace_secs, audit).await
    }

    pub async fn get_or_create_as(
        &self,
        user: &UserId,
        candidate: &NewToken,
        now: u64,
        audit: &Audit,
    ) -> Result<GetOrCreate, StoreError> {
        let Backend::Embedded(db) = self;
        db.get_or_create_as(user, candidate, now, audit).await
    }

    pub async fn revoke_as(
        &self,
        user: &UserId,
        now: u64,
        audit: &Audit,
    ) -> Result<bool, StoreError> {
        let Backend::Embedded(db) = self;
        db.revoke_as(user, now, audit).await
    }

    pub fn events_of(&self, user: &UserId, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let Backend::Embedded(db) = self;
        db.events_of(user, limit)
    }

    pub fn snapshot(&self) -> crate::store::snapshot::Snapshot {
        let Backend::Embedded(db) = self;
        db.snapshot()
    }

    pub async fn revoke_all(
        &self,
        before: Option<u64>,
        now: u64,
        audit: &Audit,
    ) -> Result<usize, StoreError> {
        let Backend::Embedded(db) = self;
        db.revoke_all(before, now, audit).await
    }

    pub async fn note(&self, event: AuditEvent) -> Result<(), StoreError> {
        let Backend::Embedded(db) = self;
        db.note(event).await
    }

    pub async fn sweep_audit(&self, before: u64) -> Result<usize, StoreError> {
        let Backend::Embedded(db) = self;
        db.sweep_audit(before).await
    }

    pub async fn revoke_token(
        &self,
        hash: &TokenHash,
        now: u64,
        audit: &Audit,
    ) -> Result<crate::store::TokenRevoked, StoreError> {
        let Backend::Embedded(db) = self;
        db.revoke_token(hash, now, audit).await
    }

    pub fn stamp_blocking(&self, stamps: Vec<([u8; 32], u64)>) -> Result<usize, StoreError> {
        let Backend::Embedded(db) = self;
        db.stamp_blocking(stamps)
    }

    pub async fn expire_grace(&self, now: u64) -> Result<usize, StoreError> {
        let Backend::Embedded(db) = self;
        db.expire_grace(now).await
    }

    pub async fn probe_write(&self, now: u64) -> Result<(), StoreError> {
        let Backend::Embedded(db) = self;
        db.probe_write(now).await
    }

    pub fn probe_write_blocking(&self) -> Result<(), StoreError> {
        let Backend::Embedded(db) = self;
        db.probe_write_blocking()
    }

    pub async fn wait_until_durable(&self) -> Result<(), StoreError> {
        let Backend::Embedded(db) = self;
        db.wait_until_durable().await
    }

    /// What the store takes on disk in bytes, and its background jobs.
    pub fn storage_state(&self) -> (u64, usize) {
        let Backend::Embedded(db) = self;
        (db.disk_bytes(), db.background_jobs())
    }

    #[cfg(test)]
    pub fn flush_stats(&self) -> &crate::store::durability::FlushStats {
        let Backend::Embedded(db) = self;
        db.flush_stats()
    }

    /// Before a graceful stop: makes the next start quick (for fjall, the
    /// memtables are written out so no journal is replayed). Returns whether
    /// that finished within `timeout`; nothing is lost either way.
    pub fn prepare_stop(&self, timeout: Duration) -> Result<bool, StoreError> {
        let Backend::Embedded(db) = self;
        db.flush_memtables(timeout)
    }
}
