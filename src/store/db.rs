//! One open fjall database of the current format, its lock, and the
//! flusher thread that is its only writer: what [`crate::store::Store`]
//! holds, and reopens after an I/O failure.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fjall::Database;

use crate::domain::clock::Clock;
use crate::domain::token::TokenHash;
use crate::domain::user::UserId;
use crate::store::audit::{
    self, decode_event, event_key_of_user_key, user_prefix, Audit, AuditEvent,
};
use crate::store::durability::{DurabilityError, Flusher};
use crate::store::error::StoreError;
use crate::store::generation;
use crate::store::keyspaces::{open_db, Keyspaces};
use crate::store::layout::{self, Current};
use crate::store::mutation::{
    Apply, Create, ExpireGrace, Mutation, Probe, Queued, Revoke, RevokeToken, Rotate, Stamp,
    StoreCommitter, SweepAudit, TokenRevoked,
};
use crate::store::records::{
    decode_index, decode_user, encode_index, encode_user, grace_key, ChangeListener, GetOrCreate,
    IndexEntry, NewToken, UserRecord,
};
use crate::store::schema::check_schema;

pub struct Db {
    // Dropped first: the flusher thread holds the database and is joined.
    flusher: Flusher<Box<dyn Mutation>>,
    pub(crate) keyspaces: Keyspaces,
    path: PathBuf,
    db: Database,
    // Dropped last: no other process may open the store before it is closed.
    _lock: layout::Lock,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

/// An open database of the current format and schema, its keyspaces, and
/// the lock that makes it ours.
pub(crate) struct Opened {
    pub db: Database,
    pub keyspaces: Keyspaces,
    pub lock: layout::Lock,
}

/// Takes the store's lock and opens its current copy: creates a new store
/// in an empty place, migrates one of an earlier release (sled), and
/// refuses a schema this binary does not know. Copies that are not current
/// (an interrupted creation or migration, a migrated sled store) are removed.
pub(crate) fn open_current(path: &Path, cache_mb: u64) -> Result<Opened, StoreError> {
    std::fs::create_dir_all(path).map_err(StoreError::layout(path))?;
    let lock = layout::lock(path)
        .map_err(StoreError::layout(path))?
        .ok_or_else(|| StoreError::InUse {
            path: path.to_owned(),
        })?;
    let current = layout::current(path).map_err(StoreError::layout(path))?;
    // Ours alone now (the lock): what is not current can go, before a new
    // copy is written where an interrupted one may have been.
    remove_old_copies(path);
    let db = match current {
        Current::Lsm(dir) => open_db(path, &dir, cache_mb)?,
        new_copy => {
            let made = match new_copy {
                Current::Sled(old) => crate::store::legacy::migrate(path, &old, cache_mb)?,
                _ => create(path, cache_mb)?,
            };
            // The copy it replaced (a migrated sled store) goes now.
            remove_old_copies(path);
            made.0
        }
    };
    let keyspaces = Keyspaces::open(&db)?;
    check_schema(path, &keyspaces)?;
    Ok(Opened {
        db,
        keyspaces,
        lock,
    })
}

/// Removes every copy of the store but the current one; the caller holds
/// the lock. A copy left behind only takes disk space: it is logged.
pub(crate) fn remove_old_copies(path: &Path) {
    if let Err(e) = layout::remove_stale(path) {
        log::warn!(
            "cannot remove old copies of the store in {}: {e}",
            path.display()
        );
    }
}

/// Writes a new, empty store into the next generation and makes it current.
fn create(path: &Path, cache_mb: u64) -> Result<(Database, PathBuf), StoreError> {
    let (db, dir, ()) = generation::write(path, cache_mb, |_| Ok(()))?;
    Ok((db, dir))
}

impl Db {
    /// Opens (or creates) the store, migrates older ones, and starts the flusher.
    #[cfg(test)]
    pub fn open(path: &Path, cache_mb: u64) -> Result<Self, StoreError> {
        Self::open_with_listener(path, cache_mb, Arc::new(crate::store::records::NoListener))
    }

    /// [`Db::open`], telling `listener` about every write from then on.
    pub fn open_with_listener(
        path: &Path,
        cache_mb: u64,
        listener: Arc<dyn ChangeListener>,
    ) -> Result<Self, StoreError> {
        let Opened {
            db,
            keyspaces,
            lock,
        } = open_current(path, cache_mb)?;
        let committer = StoreCommitter {
            db: db.clone(),
            users: keyspaces.users.clone(),
            index: keyspaces.index.clone(),
            grace: keyspaces.grace.clone(),
            meta: keyspaces.meta.clone(),
            events: keyspaces.events.clone(),
            event_users: keyspaces.event_users.clone(),
            next_seq: std::cell::Cell::new(audit::first_seq(&keyspaces.events)?),
            listener,
        };
        let flusher = Flusher::start(db.clone(), committer)?;
        Ok(Self {
            flusher,
            keyspaces,
            path: path.to_owned(),
            db,
            _lock: lock,
        })
    }

    /// See [`Keyspaces::flush_memtables`]: at a stop, so the next start
    /// replays little.
    pub fn flush_memtables(&self, timeout: std::time::Duration) -> Result<bool, StoreError> {
        self.keyspaces.flush_memtables(&self.db, timeout)
    }

    /// Every keyspace as it is now (see [`crate::store::snapshot`]).
    pub fn snapshot(&self) -> crate::store::snapshot::Snapshot {
        crate::store::snapshot::Snapshot {
            snapshot: self.db.snapshot(),
            users: self.keyspaces.users.clone(),
            index: self.keyspaces.index.clone(),
            events: self.keyspaces.events.clone(),
            event_users: self.keyspaces.event_users.clone(),
        }
    }

    /// Memtable flushes waiting and table merges running.
    pub fn background_jobs(&self) -> usize {
        self.db.outstanding_flushes() + self.db.active_compactions()
    }

    /// What the store takes on disk: its tables and journals.
    pub fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    #[cfg(test)]
    pub fn flush_stats(&self) -> &crate::store::durability::FlushStats {
        self.flusher.stats()
    }

    /// Reads a user's record. Not a mutation: no durability wait.
    pub fn get(&self, user: &UserId) -> Result<Option<UserRecord>, StoreError> {
        self.keyspaces
            .users
            .get(user.as_str().as_bytes())?
            .map(|v| decode_user(&v))
            .transpose()
    }

    /// Reads the index entry for a token hash: one read, the verify path.
    pub fn lookup(&self, hash: &TokenHash) -> Result<Option<IndexEntry>, StoreError> {
        self.keyspaces
            .index
            .get(hash.as_bytes())?
            .map(|v| decode_index(&v))
            .transpose()
    }

    /// How many index entries (current and grace tokens) `counts` picks: a
    /// read of the whole index, for background passes, never a request.
    pub fn count_tokens(&self, counts: impl Fn(&IndexEntry) -> bool) -> Result<u64, StoreError> {
        let mut n = 0;
        for item in self.keyspaces.index.iter() {
            let (_, value) = item.into_inner()?;
            n += u64::from(counts(&decode_index(&value)?));
        }
        Ok(n)
    }

    /// How many rotated-out tokens' grace windows end in `[from, until)`:
    /// a range read of the grace-expiry keyspace.
    pub fn grace_ending(&self, from: u64, until: u64) -> Result<u64, StoreError> {
        let range = grace_key(from, &[0; 32])..grace_key(until, &[0; 32]);
        let mut n = 0;
        for item in self.keyspaces.grace.range(range) {
            item.key()?;
            n += 1;
        }
        Ok(n)
    }

    /// Queues a mutation for the flusher thread and waits for its answer.
    pub(crate) async fn run<A: Apply>(&self, args: A) -> Result<A::Output, StoreError> {
        let (op, answer) = Queued::queue(args);
        self.flusher.submit(op);
        answer.await.map_err(|_| DurabilityError::Stopped)?
    }

    /// [`Db::run`] for plain threads (not on an async runtime).
    fn run_blocking<A: Apply>(&self, args: A) -> Result<A::Output, StoreError> {
        let (op, answer) = Queued::queue(args);
        self.flusher.submit(op);
        answer
            .blocking_recv()
            .map_err(|_| DurabilityError::Stopped)?
    }

    /// Replaces the user's token with `new` (or creates it): atomic across the
    /// keyspaces, durable when it returns. With `grace_secs` 0 the previous
    /// token stops verifying at once; otherwise it verifies until
    /// `now + grace_secs`. A token already in its grace window ends when the
    /// next rotation happens. Returns the new record and whether it replaced
    /// a token.
    #[cfg(test)]
    pub async fn rotate(
        &self,
        user: &UserId,
        new: &NewToken,
        now: u64,
        grace_secs: u64,
    ) -> Result<(UserRecord, bool), StoreError> {
        self.rotate_as(user, new, now, grace_secs, &Audit::by(audit::Actor::User))
            .await
    }

    /// [`Db::rotate`], its audit event recording `audit`.
    pub async fn rotate_as(
        &self,
        user: &UserId,
        new: &NewToken,
        now: u64,
        grace_secs: u64,
        audit: &Audit,
    ) -> Result<(UserRecord, bool), StoreError> {
        let fresh_index = encode_index(&IndexEntry::fresh(user.as_str(), &new.prefix, now))?;
        self.run(Rotate {
            user: user.as_str().to_owned(),
            hash: *new.hash.as_bytes(),
            prefix: new.prefix.clone(),
            now,
            grace_secs,
            fresh_index,
            audit: audit.clone(),
        })
        .await
    }

    /// Returns the user's record, creating it from `candidate` if there is
    /// none: atomic (concurrent callers see exactly one `Created`), and the
    /// answer is durable when it returns.
    pub async fn get_or_create_as(
        &self,
        user: &UserId,
        candidate: &NewToken,
        now: u64,
        audit: &Audit,
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
            audit: audit.clone(),
        })
        .await
    }

    /// Removes the user's token, and any rotated-out token still in grace:
    /// atomic, durable when it returns. Returns whether a token existed.
    /// Idempotent; "nothing to remove" also waits until everything before
    /// it is durable, since a concurrent revoke may still be on its way to
    /// disk and answering "gone" before it lands could let a crash
    /// resurrect the token.
    #[cfg(test)]
    pub async fn revoke(&self, user: &UserId) -> Result<bool, StoreError> {
        self.revoke_as(user, Clock::system().now(), &Audit::by(audit::Actor::User))
            .await
    }

    /// [`Db::revoke`] at `now`, its audit event recording `audit`.
    pub async fn revoke_as(
        &self,
        user: &UserId,
        now: u64,
        audit: &Audit,
    ) -> Result<bool, StoreError> {
        self.run(Revoke {
            user: user.as_str().to_owned(),
            now,
            audit: audit.clone(),
        })
        .await
    }

    /// Revokes the token with this hash, whoever it belongs to: the user's
    /// current token goes with any of their tokens in grace (whoever holds
    /// a leaked token must not keep an older live one); a token in grace
    /// ends alone. Atomic, durable when it returns (an unknown hash too,
    /// as with [`Db::revoke`]).
    pub async fn revoke_token(
        &self,
        hash: &TokenHash,
        now: u64,
        audit: &Audit,
    ) -> Result<TokenRevoked, StoreError> {
        self.run(RevokeToken {
            hash: *hash.as_bytes(),
            now,
            audit: audit.clone(),
        })
        .await
    }

    /// Writes last-used stamps (token hash, time): the index entry, and the
    /// user record while it is the user's current token. Skips tokens that
    /// are gone and times older than the stored one. Returns how many were
    /// written, once readers see them. Verify does not call this: it
    /// records uses in memory ([`crate::store::stamps`]) and the stamp
    /// writer's thread calls this.
    pub fn stamp_blocking(&self, stamps: Vec<([u8; 32], u64)>) -> Result<usize, StoreError> {
        self.run_blocking(Stamp { stamps })
    }

    /// Stamps one token as used at `now`; see [`Db::stamp_blocking`].
    #[cfg(test)]
    pub async fn touch(&self, hash: &TokenHash, now: u64) -> Result<(), StoreError> {
        let stamps = vec![(*hash.as_bytes(), now)];
        self.run(Stamp { stamps }).await.map(drop)
    }

    /// Removes every rotated-out token whose grace window ended at or before
    /// `now`, through the flusher like every other change. Returns how many
    /// were removed. Verify already refuses them by time.
    pub async fn expire_grace(&self, now: u64) -> Result<usize, StoreError> {
        self.run(ExpireGrace { now }).await
    }

    /// Writes a probe key through the flusher and waits for its batch to
    /// be synced: proves the store accepts a write and a sync right now
    /// (for `/readyz`).
    pub async fn probe_write(&self, now: u64) -> Result<(), StoreError> {
        self.run(Probe { now }).await
    }

    /// [`Db::probe_write`] for plain threads (not on an async runtime).
    pub fn probe_write_blocking(&self) -> Result<(), StoreError> {
        self.run_blocking(Probe {
            now: Clock::system().now(),
        })
    }

    /// Waits until every mutation applied so far is durable; for answers
    /// that report state another request may still be committing.
    pub async fn wait_until_durable(&self) -> Result<(), StoreError> {
        Ok(self.flusher.wait_for_all_writes().await?)
    }
}

/// Events swept per queued operation.
const SWEEP_BATCH: usize = 4096;

impl Db {
    /// The user's events, newest first, at most `limit`. Reads only.
    pub fn events_of(&self, user: &UserId, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let mut events = Vec::new();
        for item in self
            .keyspaces
            .event_users
            .prefix(user_prefix(user.as_str()))
            .rev()
            .take(limit)
        {
            let key = event_key_of_user_key(&item.key()?)?;
            // The index entry and its event are written and swept together.
            if let Some(bytes) = self.keyspaces.events.get(key)? {
                events.push(decode_event(&bytes)?);
            }
        }
        Ok(events)
    }

    /// Removes every event older than `before`, through the flusher in
    /// bounded steps. Returns how many were removed.
    pub async fn sweep_audit(&self, before: u64) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let removed = self
                .run(SweepAudit {
                    before,
                    max: SWEEP_BATCH,
                })
                .await?;
            total += removed;
            if removed < SWEEP_BATCH {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_store_of_the_previous_release_opens_with_an_empty_trail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let rng = ring::rand::SystemRandom::new();
        let alice = UserId::parse("alice").unwrap();
        let new = || {
            crate::store::NewToken::of(&crate::domain::token::PlainToken::generate(&rng).unwrap())
        };
        {
            let store = Db::open(&path, 8).unwrap();
            store.rotate(&alice, &new(), 1_000, 0).await.unwrap();
        }
        // What 0.2 wrote: the same store without the two audit keyspaces.
        {
            let opened = crate::store::db::open_current(&path, 8).unwrap();
            for name in [
                crate::store::keyspaces::AUDIT_EVENT,
                crate::store::keyspaces::AUDIT_USER,
            ] {
                let ks = opened
                    .db
                    .keyspace(name, fjall::KeyspaceCreateOptions::default)
                    .unwrap();
                opened.db.delete_keyspace(ks).unwrap();
            }
            opened.db.persist(fjall::PersistMode::SyncAll).unwrap();
        }
        let store = Db::open(&path, 8).unwrap();
        assert!(store.get(&alice).unwrap().is_some());
        assert!(store.events_of(&alice, 10).unwrap().is_empty());
        store.rotate(&alice, &new(), 2_000, 0).await.unwrap();
        let events = store.events_of(&alice, 10).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, audit::EventKind::Rotated);
        drop(store);
        let report = crate::ops::check::check_store(&path).unwrap();
        assert!(report.is_consistent(), "{report}");
        assert_eq!(report.audit_events, 1);
    }
}
