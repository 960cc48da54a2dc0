//! The token store. The rest of the program reaches it two ways only:
//! the server holds a [`Store`]; the offline commands (export, import,
//! compact, check) open a stopped one through [`offline`]. Nothing outside
//! this module touches the storage engine or names its keyspaces.
//!
//! # Guarantees
//!
//! Every engine behind [`Store`] keeps these (the seam is
//! `Backend` in `store/backend.rs`, an enum; why an enum is said there):
//!
//! - **Durable before visible.** A change is visible to readers, and
//!   answered, only once it is on stable storage, so no reader ever sees a
//!   change a crash could undo.
//! - **One writer while serving.** Every write (changes, last-used stamps,
//!   grace expiry, the readiness probe) is queued for the flusher thread,
//!   which applies a cycle's changes in arrival order and writes them as
//!   one atomic batch (`mutation.rs`, [`durability`]). A change that fails
//!   on its own is answered with its error and leaves nothing behind.
//! - **Records agree.** User records, the token index and the grace-expiry
//!   entries never disagree: a user has at most one current token, plus at
//!   most one rotated-out token in its grace window.
//! - **No secrets.** Raw tokens never reach the store: it sees
//!   [`TokenHash`]es and display prefixes.
//! - **Formats are versioned.** Each value starts with a format byte and
//!   the store carries a schema version; a newer one is refused, never
//!   misread, and older ones are migrated ([`legacy`], [`schema`]).
//! - **One process.** A lock file makes the store the server's or one
//!   offline command's alone.
//!
//! # The embedded engine
//!
//! fjall, an LSM tree (`db.rs`; [`layout`] for where its files are).
//! Keyspaces ([`keyspaces`]):
//! - `user_token`: user id → [`UserRecord`] (current token hash, prefix,
//!   timestamps, and the rotated-out token still in its grace window);
//! - `tokenhash_user`: SHA-256 of a token → [`IndexEntry`] (what verify needs,
//!   in one read);
//! - `grace_expiry`: grace end (u64 BE) ++ token hash → user id, so expired
//!   grace entries are found without scanning every user;
//! - `meta`: the schema version and the readiness probe's key.
//!
//! # Recovery
//!
//! fjall refuses every write after a failed journal write or sync (it is
//! "poisoned": what reached the disk is unknown) until the database is
//! reopened, which replays the journal up to its last whole batch. So
//! after a failed write or sync [`Store`] refuses further writes at once
//! (500 with the page's message), keeps serving reads from the open
//! database, and a recovery thread reopens it (dropping every handle first,
//! which releases the store's lock) as soon as the disk has room again,
//! backing off between attempts. No operator and no restart: exiting would
//! let systemd's restart loop take reads down too.
//!
//! # Last-used stamps
//!
//! [`Store`] also owns the last-used stamps verify records in memory
//! ([`stamps`]): a second thread writes them every [`STAMP_INTERVAL`], and
//! a stop writes what is left before it closes the store. While writes are
//! refused the stamps wait (in memory) for the reopen.

pub mod audit;
pub(crate) mod backend;
mod codec;
pub(crate) mod db;
pub mod durability;
pub mod error;
mod generation;
pub mod keyspaces;
pub mod kill_switch;
pub mod layout;
pub mod legacy;
pub(crate) mod mutation;
pub mod offline;
pub mod postgres;
pub mod records;
pub mod schema;
pub mod snapshot;
pub mod stamps;
pub mod view;

pub use error::StoreError;
pub use keyspaces::{GRACE_EXPIRY, META, TOKENHASH_USER, USER_TOKEN};
pub use mutation::TokenRevoked;
#[cfg(any(test, feature = "test-support"))]
pub use offline::raw;
pub use records::{
    decode_index, decode_user, ChangeListener, Changes, GetOrCreate, GraceToken, IndexEntry,
    NewToken, NoListener, UserRecord,
};
pub use schema::SCHEMA_VERSION;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use crate::domain::token::TokenHash;
use crate::domain::user::UserId;
use crate::store::audit::{Actor, Audit, AuditEvent};
use crate::store::backend::Backend;
use crate::store::durability::DurabilityError;
use crate::store::stamps::{PendingStamps, STAMP_INTERVAL};

/// Free space needed before a reopen is tried: the reopen writes a new
/// journal and may flush memtables into tables.
const MIN_FREE_BYTES: u64 = 4 * 1024 * 1024;
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(10);
/// How long a stop waits for the memtables to be written out.
const STOP_FLUSH_WAIT: Duration = Duration::from_secs(5);
/// How long a reopen waits for in-flight operations to let go of the old database.
const DRAIN_WAIT: Duration = Duration::from_secs(10);
/// Stamps per queued operation: a rotation waits behind at most this many.
const STAMPS_PER_BATCH: usize = 2048;

struct Shared {
    backend: ArcSwapOption<Backend>,
    refusing_writes: AtomicBool,
    path: PathBuf,
    cache_mb: u64,
    listener: Arc<dyn ChangeListener>,
    wake: Condvar,
    shutdown: Mutex<bool>,
    stamps: PendingStamps,
    /// Wakes the stamp writer early (a stop).
    stamp_wake: Condvar,
}

pub struct Store {
    shared: Arc<Shared>,
    recovery: Option<JoinHandle<()>>,
    stamp_writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.shared.path)
            .field(
                "failed",
                &self.shared.refusing_writes.load(Ordering::Relaxed),
            )
            .finish()
    }
}

/// Whether an error means the database must be reopened before writes can
/// work again (I/O), as opposed to bad data or a conflict.
fn needs_reopen(err: &StoreError) -> bool {
    matches!(
        err,
        StoreError::Engine(fjall::Error::Io(_) | fjall::Error::Poisoned | fjall::Error::Storage(_))
            | StoreError::Durability(DurabilityError::Flush(_))
            | StoreError::Durability(DurabilityError::Stopped)
    )
}

impl Store {
    /// Opens the store and starts the recovery thread; `listener` hears
    /// about every write (see [`ChangeListener`]), across reopens too.
    pub fn open(
        path: &Path,
        cache_mb: u64,
        listener: Arc<dyn ChangeListener>,
    ) -> Result<Self, StoreError> {
        Self::open_with_stamp_interval(path, cache_mb, listener, STAMP_INTERVAL)
    }

    /// Opens PostgreSQL (`storage.backend = "postgres"`): connects,
    /// migrates its schema, and starts the stamp writer.
    pub fn open_postgres(
        settings: &postgres::PgSettings,
        listener: Arc<dyn ChangeListener>,
    ) -> Result<Self, StoreError> {
        let pg = postgres::Pg::open(settings, Arc::clone(&listener))?;
        // No path: PostgreSQL is never reopened by this process.
        Self::start(
            Backend::Postgres(pg),
            Path::new(""),
            0,
            listener,
            STAMP_INTERVAL,
        )
    }

    /// Whether other processes may change the store (PostgreSQL's
    /// replicas): then no answer may be remembered in memory, since no
    /// write of another replica is ever heard here.
    pub fn is_shared(&self) -> bool {
        matches!(
            self.shared.backend.load().as_deref(),
            Some(Backend::Postgres(_))
        )
    }

    fn open_with_stamp_interval(
        path: &Path,
        cache_mb: u64,
        listener: Arc<dyn ChangeListener>,
        stamp_interval: Duration,
    ) -> Result<Self, StoreError> {
        let store = Backend::open(path, cache_mb, Arc::clone(&listener))?;
        Self::start(store, path, cache_mb, listener, stamp_interval)
    }

    fn start(
        store: Backend,
        path: &Path,
        cache_mb: u64,
        listener: Arc<dyn ChangeListener>,
        stamp_interval: Duration,
    ) -> Result<Self, StoreError> {
        let shared = Arc::new(Shared {
            backend: ArcSwapOption::from_pointee(store),
            refusing_writes: AtomicBool::new(false),
            path: path.to_owned(),
            cache_mb,
            listener,
            wake: Condvar::new(),
            shutdown: Mutex::new(false),
            stamps: PendingStamps::default(),
            stamp_wake: Condvar::new(),
        });
        let spawn_error = |e: std::io::Error| {
            StoreError::Durability(DurabilityError::Flush(e.to_string().into()))
        };
        let thread_shared = Arc::clone(&shared);
        let recovery = std::thread::Builder::new()
            .name("agent-tokens-recovery".into())
            .spawn(move || reopen_after_io_failures(&thread_shared))
            .map_err(spawn_error)?;
        let mut live = Self {
            shared,
            recovery: Some(recovery),
            stamp_writer: None,
        };
        let thread_shared = Arc::clone(&live.shared);
        live.stamp_writer = Some(
            std::thread::Builder::new()
                .name("agent-tokens-stamps".into())
                .spawn(move || write_stamps_periodically(&thread_shared, stamp_interval))
                .map_err(spawn_error)?,
        );
        Ok(live)
    }

    /// What the store takes on disk in bytes, and its background jobs
    /// (memtable flushes waiting, table merges running); zeros while it reopens.
    pub fn storage_state(&self) -> (u64, usize) {
        self.shared
            .backend
            .load()
            .as_ref()
            .map_or((0, 0), |backend| backend.storage_state())
    }

    /// Whether writes are currently refused while the store recovers.
    pub fn refuses_writes(&self) -> bool {
        self.shared.refusing_writes.load(Ordering::SeqCst)
    }

    fn backend(&self) -> Result<Arc<Backend>, StoreError> {
        self.shared
            .backend
            .load_full()
            .ok_or(StoreError::Recovering)
    }

    fn backend_for_writes(&self) -> Result<Arc<Backend>, StoreError> {
        if self.refuses_writes() {
            return Err(StoreError::Recovering);
        }
        self.backend()
    }

    fn refuse_writes_on_io_failure<T>(
        &self,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.shared.refuse_writes_on_io_failure(result)
    }

    pub async fn get(&self, user: &UserId) -> Result<Option<UserRecord>, StoreError> {
        // A guard, not a clone: no shared reference count to bounce between cores.
        let store = match &*self.shared.backend.load() {
            Some(store) => match &**store {
                Backend::Embedded(db) => return db.get(user),
                Backend::Postgres(_) => Arc::clone(store),
            },
            None => return Err(StoreError::Recovering),
        };
        store.get(user).await
    }

    /// The verify path's one read.
    pub async fn lookup(&self, hash: &TokenHash) -> Result<Option<IndexEntry>, StoreError> {
        let store = match &*self.shared.backend.load() {
            Some(store) => match &**store {
                Backend::Embedded(db) => return db.lookup(hash),
                Backend::Postgres(_) => Arc::clone(store),
            },
            None => return Err(StoreError::Recovering),
        };
        store.lookup(hash).await
    }

    /// See [`Db::count_tokens`]; a whole-index read for background passes.
    pub fn count_tokens(&self, counts: impl Fn(&IndexEntry) -> bool) -> Result<u64, StoreError> {
        match &*self.shared.backend.load() {
            Some(store) => store.count_tokens(counts),
            None => Err(StoreError::Recovering),
        }
    }

    /// See [`Db::grace_ending`].
    pub fn grace_ending(&self, from: u64, until: u64) -> Result<u64, StoreError> {
        match &*self.shared.backend.load() {
            Some(store) => store.grace_ending(from, until),
            None => Err(StoreError::Recovering),
        }
    }

    pub async fn rotate(
        &self,
        user: &UserId,
        new: &NewToken,
        now: u64,
        grace_secs: u64,
    ) -> Result<(UserRecord, bool), StoreError> {
        self.rotate_as(user, new, now, grace_secs, &Audit::by(Actor::User))
            .await
    }

    pub async fn get_or_create(
        &self,
        user: &UserId,
        candidate: &NewToken,
        now: u64,
    ) -> Result<GetOrCreate, StoreError> {
        self.get_or_create_as(user, candidate, now, &Audit::by(Actor::User))
            .await
    }

    pub async fn revoke(&self, user: &UserId) -> Result<bool, StoreError> {
        let now = crate::domain::clock::Clock::system().now();
        self.revoke_as(user, now, &Audit::by(Actor::User)).await
    }

    pub async fn rotate_as(
        &self,
        user: &UserId,
        new: &NewToken,
        now: u64,
        grace_secs: u64,
        audit: &Audit,
    ) -> Result<(UserRecord, bool), StoreError> {
        let store = self.backend_for_writes()?;
        self.refuse_writes_on_io_failure(store.rotate_as(user, new, now, grace_secs, audit).await)
    }

    pub async fn get_or_create_as(
        &self,
        user: &UserId,
        candidate: &NewToken,
        now: u64,
        audit: &Audit,
    ) -> Result<GetOrCreate, StoreError> {
        let store = self.backend_for_writes()?;
        self.refuse_writes_on_io_failure(store.get_or_create_as(user, candidate, now, audit).await)
    }

    pub async fn revoke_as(
        &self,
        user: &UserId,
        now: u64,
        audit: &Audit,
    ) -> Result<bool, StoreError> {
        let store = self.backend_for_writes()?;
        self.refuse_writes_on_io_failure(store.revoke_as(user, now, audit).await)
    }

    /// Every token (and with `events`, every audit event) as one
    /// consistent state, while writes go on. Last-used times recorded in
    /// the last [`STAMP_INTERVAL`] are not in it yet: see
    /// [`Store::pending_last_use`].
    pub async fn view(&self, events: bool) -> Result<view::View, StoreError> {
        self.backend()?.view(events).await
    }

    /// The newest use of a token recorded in memory and not written yet.
    pub fn pending_last_use(&self, hash: &[u8; 32]) -> Option<u64> {
        self.shared.stamps.newest(hash)
    }

    /// Revokes every token created before `before` (all when `None`),
    /// current or in grace, while other changes go on; durable when it
    /// returns. Returns how many tokens were revoked.
    pub async fn revoke_all(
        &self,
        before: Option<u64>,
        now: u64,
        audit: &Audit,
    ) -> Result<usize, StoreError> {
        let store = self.backend_for_writes()?;
        self.refuse_writes_on_io_failure(store.revoke_all(before, now, audit).await)
    }

    /// Stores an admin action's event that concerns no user.
    pub async fn note(&self, event: AuditEvent) -> Result<(), StoreError> {
        let store = self.backend_for_writes()?;
        self.refuse_writes_on_io_failure(store.note(event).await)
    }

    /// The user's audit events, newest first, at most `limit`.
    pub async fn events_of(
        &self,
        user: &UserId,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        self.backend()?.events_of(user, limit).await
    }

    /// Removes audit events older than `before`; skipped (0) while the store recovers.
    pub async fn sweep_audit(&self, before: u64) -> Result<usize, StoreError> {
        if self.refuses_writes() {
            return Ok(0);
        }
        let store = self.backend()?;
        self.refuse_writes_on_io_failure(store.sweep_audit(before).await)
    }

    /// Revokes the token with this hash, whoever it belongs to: the user's
    /// current token goes with any of their tokens in grace (whoever holds
    /// a leaked token must not keep an older live one); a token in grace
    /// ends alone. Atomic, durable when it returns (an unknown hash too).
    pub async fn revoke_token(
        &self,
        hash: &TokenHash,
        now: u64,
        audit: &Audit,
    ) -> Result<TokenRevoked, StoreError> {
        let store = self.backend_for_writes()?;
        self.refuse_writes_on_io_failure(store.revoke_token(hash, now, audit).await)
    }

    /// Records a use of the token at `now`, in memory: written within
    /// [`STAMP_INTERVAL`], never waited for. Returns whether a new stamp
    /// was recorded (at most once a minute per token), which changes the
    /// user's `GET /me` answer.
    pub fn record_use(&self, hash: &TokenHash, now: u64) -> bool {
        self.shared.stamps.record(hash.as_bytes(), now)
    }

    /// The user's record with its current token's newest last-used stamp,
    /// written or not.
    pub async fn get_with_last_use(&self, user: &UserId) -> Result<Option<UserRecord>, StoreError> {
        Ok(self.get(user).await?.map(|mut record| {
            // Read after the record: a stamp written since is still here.
            let pending = self.shared.stamps.newest(&record.hash);
            record.last_used_at = record.last_used_at.max(pending);
            record
        }))
    }

    /// Writes the stamps recorded so far now, instead of at the next interval.
    pub fn write_stamps(&self) {
        write_stamps(&self.shared);
    }

    /// Skipped (0 removed) while the store recovers.
    pub async fn expire_grace(&self, now: u64) -> Result<usize, StoreError> {
        if self.refuses_writes() {
            return Ok(0);
        }
        let store = self.backend()?;
        self.refuse_writes_on_io_failure(store.expire_grace(now).await)
    }

    pub async fn wait_until_durable(&self) -> Result<(), StoreError> {
        let store = self.backend_for_writes()?;
        self.refuse_writes_on_io_failure(store.wait_until_durable().await)
    }

    pub async fn probe_write(&self, now: u64) -> Result<(), StoreError> {
        let store = self.backend_for_writes()?;
        self.refuse_writes_on_io_failure(store.probe_write(now).await)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        *self
            .shared
            .shutdown
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.shared.wake.notify_all();
        self.shared.stamp_wake.notify_all();
        // It writes what is pending before it ends.
        if let Some(thread) = self.stamp_writer.take() {
            let _ = thread.join();
        }
        if let Some(thread) = self.recovery.take() {
            let _ = thread.join();
        }
        // Close the database here, not in whichever thread lets go last.
        if let Some(store) = self.shared.backend.swap(None) {
            // A failed store is dropped as it is: its journal writer already
            // discarded what it could not write (third_party/fjall/PATCHED.md).
            if !self.refuses_writes() {
                // Only the next start's speed depends on it: the journal has it all.
                match store.prepare_stop(STOP_FLUSH_WAIT) {
                    Ok(true) => {}
                    Ok(false) => log::warn!(
                        "the store's memtables were not flushed within {STOP_FLUSH_WAIT:?}; the next start replays the journal"
                    ),
                    Err(e) => log::warn!("cannot flush the store's memtables before stopping: {e}"),
                }
            }
            drop(store);
        }
    }
}

impl Shared {
    /// Notes an error; an I/O failure stops writes and wakes the recovery thread.
    fn refuse_writes_on_io_failure<T>(
        &self,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if let Err(e) = &result {
            if needs_reopen(e) && !self.refusing_writes.swap(true, Ordering::SeqCst) {
                log::error!(
                    "storage write failed ({e}); refusing writes, serving reads, and reopening the store once the disk has room"
                );
                self.wake.notify_all();
            }
        }
        result
    }

    fn is_shut_down(&self) -> bool {
        *self.shutdown.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Writes the pending stamps through the flusher; what cannot be written
/// now (the store recovers, a write failed) stays pending.
fn write_stamps(shared: &Shared) {
    let stamps = shared.stamps.hand_over();
    if stamps.is_empty() {
        return;
    }
    let store = match shared.backend.load_full() {
        Some(store) if !shared.refusing_writes.load(Ordering::SeqCst) => store,
        _ => {
            shared.stamps.give_back(&stamps);
            return;
        }
    };
    for (n, chunk) in stamps.chunks(STAMPS_PER_BATCH).enumerate() {
        if let Err(e) = shared.refuse_writes_on_io_failure(store.stamp_blocking(chunk.to_vec())) {
            log::warn!("cannot write last-used stamps ({e}); keeping them for the next try");
            shared.stamps.give_back(&stamps[n * STAMPS_PER_BATCH..]);
            return;
        }
    }
}

/// The stamp writer's thread: every `interval`, and once more at a stop.
fn write_stamps_periodically(shared: &Shared, interval: Duration) {
    loop {
        {
            let guard = shared
                .shutdown
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !*guard {
                let _ = shared
                    .stamp_wake
                    .wait_timeout(guard, interval)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
        let stopping = shared.is_shut_down();
        write_stamps(shared);
        if stopping {
            if !shared.stamps.is_empty() {
                log::warn!(
                    "the store refuses writes: the last-used times recorded since the last write are lost"
                );
            }
            return;
        }
    }
}

fn free_bytes(path: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// The recovery thread: sleeps until a failure, then reopens when possible.
fn reopen_after_io_failures(shared: &Shared) {
    let mut retry = FIRST_RETRY;
    loop {
        {
            let guard = shared
                .shutdown
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // A stop asked for while this thread was busy (reopening) was
            // notified when nobody waited: look before sleeping.
            if *guard {
                return;
            }
            let timeout = if shared.refusing_writes.load(Ordering::SeqCst) {
                retry
            } else {
                Duration::from_secs(3600)
            };
            let (guard, _) = shared
                .wake
                .wait_timeout(guard, timeout)
                .unwrap_or_else(PoisonError::into_inner);
            if *guard {
                return;
            }
        }
        if !shared.refusing_writes.load(Ordering::SeqCst) {
            retry = FIRST_RETRY;
            continue;
        }
        // Reopening drops the database reads are served from: only try when
        // it can succeed. Unknown free space (statvfs failed) counts as room.
        if free_bytes(&shared.path).is_some_and(|free| free < MIN_FREE_BYTES) {
            continue;
        }
        match reopen_db(shared) {
            Ok(()) => {
                shared.refusing_writes.store(false, Ordering::SeqCst);
                retry = FIRST_RETRY;
                log::info!("storage recovered: the store was reopened and accepts writes again");
            }
            Err(e) => {
                log::error!("reopening the store failed ({e}); retrying in {retry:?}");
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

fn reopen_db(shared: &Shared) -> Result<(), StoreError> {
    // After the swap no new read reaches the old database; reads still in
    // flight on it took their ticket before this, so none of them can
    // remember what they read.
    let old = shared.backend.swap(None);
    shared.listener.reopening();
    if let Some(old) = old {
        // In-flight operations hold their own reference; let them finish.
        let deadline = Instant::now() + DRAIN_WAIT;
        while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        match Arc::try_unwrap(old) {
            Ok(store) => drop(store),
            Err(old) => {
                shared.backend.store(Some(old));
                return Err(StoreError::Recovering);
            }
        }
    }
    let store = Backend::open(&shared.path, shared.cache_mb, Arc::clone(&shared.listener))?;
    // Prove writes work before declaring victory.
    store.probe_write_blocking()?;
    shared.backend.store(Some(Arc::new(store)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use ring::rand::SystemRandom;

    use super::*;
    use crate::domain::token::{PlainToken, TokenHash};
    use crate::store::records::NoListener;

    fn new_token(rng: &SystemRandom) -> NewToken {
        NewToken::of(&PlainToken::generate(rng).unwrap())
    }

    fn user(n: usize) -> UserId {
        UserId::parse(&format!("user-{n:05}")).unwrap()
    }

    /// What a client was last told about a user: its current token, or revoked.
    type Acknowledged = HashMap<usize, Option<TokenHash>>;

    fn assert_holds(store: &Backend, expected: &Acknowledged) {
        for (&n, hash) in expected {
            let record = futures::executor::block_on(store.get(&user(n))).unwrap();
            assert_eq!(
                record.as_ref().map(|r| r.hash),
                hash.map(|h| *h.as_bytes()),
                "user {n}"
            );
            if let Some(hash) = hash {
                let entry = futures::executor::block_on(store.lookup(hash))
                    .unwrap()
                    .expect("the current token is indexed");
                assert_eq!(entry.user_id, user(n).as_str());
            }
        }
    }

    fn issued(live: &Store, rng: &SystemRandom, n: usize) -> TokenHash {
        let token = new_token(rng);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime
            .block_on(live.rotate(&user(n), &token, 1_000, 0))
            .unwrap();
        token.hash
    }

    fn flushes(live: &Store) -> u64 {
        live.backend()
            .unwrap()
            .flush_stats()
            .flushes
            .load(Ordering::SeqCst)
    }

    #[test]
    fn a_recorded_use_writes_nothing_until_the_interval_and_shows_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let live = Store::open_with_stamp_interval(
            &dir.path().join("db"),
            8,
            Arc::new(NoListener),
            // Long enough that the background write cannot fall between the
            // three uses below on a busy host (a split gave two batches).
            Duration::from_secs(3),
        )
        .unwrap();
        let rng = SystemRandom::new();
        let hash = issued(&live, &rng, 1);
        let before = flushes(&live);
        for now in [2_000, 2_001, 2_030] {
            live.record_use(&hash, now);
        }
        assert_eq!(flushes(&live), before, "no write, no sync");
        let record = futures::executor::block_on(live.get_with_last_use(&user(1)))
            .unwrap()
            .unwrap();
        assert_eq!(
            record.last_used_at,
            Some(2_000),
            "shown before it is written"
        );
        assert_eq!(
            futures::executor::block_on(live.get(&user(1)))
                .unwrap()
                .unwrap()
                .last_used_at,
            None
        );
        // Written in the background within the interval, once.
        let deadline = Instant::now() + Duration::from_secs(10);
        while futures::executor::block_on(live.get(&user(1)))
            .unwrap()
            .unwrap()
            .last_used_at
            .is_none()
        {
            assert!(Instant::now() < deadline, "the stamp was never written");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            futures::executor::block_on(live.lookup(&hash))
                .unwrap()
                .unwrap()
                .last_used_at,
            Some(2_000)
        );
        assert_eq!(flushes(&live), before + 1, "one batch for the three uses");
    }

    #[test]
    fn a_revoke_or_rotation_racing_a_pending_stamp_is_not_undone() {
        let dir = tempfile::tempdir().unwrap();
        let live = Store::open(&dir.path().join("db"), 8, Arc::new(NoListener)).unwrap();
        let rng = SystemRandom::new();
        let revoked = issued(&live, &rng, 1);
        let rotated_out = issued(&live, &rng, 2);
        live.record_use(&revoked, 2_000);
        live.record_use(&rotated_out, 2_000);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(runtime.block_on(live.revoke(&user(1))).unwrap());
        let current = new_token(&rng);
        runtime
            .block_on(live.rotate(&user(2), &current, 1_500, 0))
            .unwrap();
        live.write_stamps();
        assert_eq!(
            futures::executor::block_on(live.get(&user(1))).unwrap(),
            None
        );
        assert_eq!(
            futures::executor::block_on(live.lookup(&revoked)).unwrap(),
            None
        );
        assert_eq!(
            futures::executor::block_on(live.lookup(&rotated_out)).unwrap(),
            None
        );
        let record = futures::executor::block_on(live.get_with_last_use(&user(2)))
            .unwrap()
            .unwrap();
        assert_eq!(record.hash, *current.hash.as_bytes());
        assert_eq!(
            record.last_used_at, None,
            "the old token's use is not the new one's"
        );
    }

    #[test]
    fn pending_stamps_are_written_by_a_graceful_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let live = Store::open(&path, 8, Arc::new(NoListener)).unwrap();
        let rng = SystemRandom::new();
        let hash = issued(&live, &rng, 1);
        live.record_use(&hash, 2_000);
        drop(live);
        let store = db::Db::open(&path, 8).unwrap();
        assert_eq!(
            store.get(&user(1)).unwrap().unwrap().last_used_at,
            Some(2_000)
        );
        assert_eq!(
            store.lookup(&hash).unwrap().unwrap().last_used_at,
            Some(2_000)
        );
    }

    #[test]
    fn concurrent_acknowledged_writes_all_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let live = Arc::new(Store::open(&path, 8, Arc::new(NoListener)).unwrap());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        const USERS: usize = 2000;
        const WRITERS: usize = 8;
        // Writers rotate (half of them with a grace window, so grace entries
        // come and go) and revoke their own users, remembering what each
        // acknowledgement said; many share each batch.
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let live = Arc::clone(&live);
                runtime.spawn(async move {
                    let rng = SystemRandom::new();
                    let mut last = Acknowledged::new();
                    for i in 0..1500usize {
                        let n = (i * WRITERS + w) % USERS;
                        if i % 7 == 3 {
                            live.revoke(&user(n)).await.unwrap();
                            last.insert(n, None);
                        } else {
                            let token = new_token(&rng);
                            let grace = if i % 2 == 0 { 3_600 } else { 0 };
                            live.rotate(&user(n), &token, 2_000 + i as u64, grace)
                                .await
                                .unwrap();
                            last.insert(n, Some(token.hash));
                        }
                    }
                    last
                })
            })
            .collect();
        let mut expected = Acknowledged::new();
        runtime.block_on(async {
            for writer in writers {
                expected.extend(writer.await.unwrap());
            }
        });
        assert_holds(&live.backend().unwrap(), &expected);
        drop(live);
        drop(runtime);
        let report = crate::ops::check::check_store(&path).unwrap();
        assert!(report.is_consistent(), "{report}");
        let store = Backend::Embedded(db::Db::open(&path, 8).unwrap());
        assert_holds(&store, &expected);
    }
}
