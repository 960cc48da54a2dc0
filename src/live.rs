//! The store as the server uses it: one open sled database that is reopened
//! in-process after an I/O failure.
//!
//! sled 0.34 keeps returning the first I/O error (seen: disk full) for
//! every write and flush until the database is reopened, even once space is
//! free. So after a failed write or flush this wrapper refuses further
//! writes at once (500 with the page's message), keeps serving reads from
//! the open database, and a recovery thread reopens it (dropping every
//! handle first, which releases sled's directory lock) as soon as the disk
//! has room again, backing off between attempts. No operator and no
//! restart: exiting would let systemd's restart loop take reads down too.
//!
//! The same thread compacts the store when its data file has grown enough
//! (see [`crate::compact`]): it copies the store while it serves (every
//! write is mirrored into the copy as it commits), then pauses writes
//! (they wait on `Shared::writes`, they never fail) for the switch.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::RwLock;

use crate::compact::{CompactPolicy, NewCopy};
use crate::durability::DurabilityError;
use crate::layout;
use crate::store::{
    ChangeListener, Changes, GetOrCreate, IndexEntry, NewToken, Store, StoreError, UserRecord,
};
use crate::token::TokenHash;
use crate::user::UserId;

/// Free space needed before a reopen is tried: sled appends in segments of
/// 512 KiB and rewrites on recovery, so leave it a few.
const MIN_FREE_BYTES: u64 = 4 * 1024 * 1024;
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(10);
/// How long a reopen waits for in-flight operations to let go of the old database.
const DRAIN_WAIT: Duration = Duration::from_secs(10);
/// After a failed compaction (or too little free space for one).
const COMPACT_RETRY: Duration = Duration::from_secs(600);

struct Shared {
    current: ArcSwapOption<Store>,
    failed: AtomicBool,
    path: PathBuf,
    cache_mb: u64,
    listener: Arc<Tracker>,
    /// Every write holds it shared; a compaction's switch holds it alone.
    writes: RwLock<()>,
    policy: CompactPolicy,
    /// The data file's size after the last compaction (or at open).
    baseline: AtomicU64,
    /// Set when the server stops: a compaction in progress gives up.
    stopping: AtomicBool,
    /// One compaction at a time (the recovery thread's, or [`LiveStore::compact_now`]).
    compacting: Mutex<()>,
    wake: Condvar,
    shutdown: Mutex<bool>,
}

/// Passes the store's change reports on and, while a compaction copies the
/// store, mirrors every committed write into the copy.
struct Tracker {
    inner: Arc<dyn ChangeListener>,
    mirror: ArcSwapOption<NewCopy>,
}

impl ChangeListener for Tracker {
    fn committed(&self, changes: &Changes) {
        if let Some(copy) = &*self.mirror.load() {
            copy.mirror(changes);
        }
        self.inner.committed(changes);
    }

    fn reopening(&self) {
        self.inner.reopening();
    }
}

pub struct LiveStore {
    shared: Arc<Shared>,
    recovery: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LiveStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveStore")
            .field("path", &self.shared.path)
            .field("failed", &self.shared.failed.load(Ordering::Relaxed))
            .finish()
    }
}

/// Whether an error means the database must be reopened before writes can
/// work again (I/O), as opposed to bad data or a conflict.
fn needs_reopen(err: &StoreError) -> bool {
    matches!(
        err,
        StoreError::Sled(sled::Error::Io(_))
            | StoreError::Durability(DurabilityError::Flush(_))
            | StoreError::Durability(DurabilityError::Stopped)
    )
}

impl LiveStore {
    /// Opens the store and starts the recovery thread; `listener` hears
    /// about every write (see [`ChangeListener`]), across reopens too.
    pub fn open(
        path: &Path,
        cache_mb: u64,
        listener: Arc<dyn ChangeListener>,
        policy: CompactPolicy,
    ) -> Result<Self, StoreError> {
        let listener = Arc::new(Tracker {
            inner: listener,
            mirror: ArcSwapOption::empty(),
        });
        let store = Store::open_with_listener(path, cache_mb, Arc::clone(&listener) as _)?;
        let baseline = store.data_file_bytes().unwrap_or(0);
        let shared = Arc::new(Shared {
            current: ArcSwapOption::from_pointee(store),
            failed: AtomicBool::new(false),
            path: path.to_owned(),
            cache_mb,
            listener,
            writes: RwLock::new(()),
            policy,
            baseline: AtomicU64::new(baseline),
            stopping: AtomicBool::new(false),
            compacting: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: Mutex::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let recovery = std::thread::Builder::new()
            .name("agent-tokens-recovery".into())
            .spawn(move || recover(&thread_shared))
            .map_err(|e| StoreError::Durability(DurabilityError::Flush(e.to_string().into())))?;
        Ok(Self {
            shared,
            recovery: Some(recovery),
        })
    }

    /// Compacts the store now, whatever its growth, while it serves; returns
    /// the data file's size before and after. Blocks: not for an async thread.
    pub fn compact_now(&self) -> Result<(u64, u64), StoreError> {
        let store = self.current()?;
        let before = store.data_file_bytes().unwrap_or(0);
        let (after, _) = compact(&self.shared, store)?;
        Ok((before, after))
    }

    /// Whether writes are currently refused while the store recovers.
    pub fn is_failed(&self) -> bool {
        self.shared.failed.load(Ordering::SeqCst)
    }

    fn current(&self) -> Result<Arc<Store>, StoreError> {
        self.shared
            .current
            .load_full()
            .ok_or(StoreError::Recovering)
    }

    fn writable(&self) -> Result<Arc<Store>, StoreError> {
        if self.is_failed() {
            return Err(StoreError::Recovering);
        }
        self.current()
    }

    /// Notes an error; an I/O failure stops writes and wakes the recovery thread.
    fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &result {
            if needs_reopen(e) && !self.shared.failed.swap(true, Ordering::SeqCst) {
                log::error!(
                    "storage write failed ({e}); refusing writes, serving reads, and reopening the store once the disk has room"
                );
                self.shared.wake.notify_all();
            }
        }
        result
    }

    pub fn get(&self, user: &UserId) -> Result<Option<UserRecord>, StoreError> {
        // A guard, not a clone: no shared reference count to bounce between cores.
        match &*self.shared.current.load() {
            Some(store) => store.get(user),
            None => Err(StoreError::Recovering),
        }
    }

    /// The verify path's one read.
    pub fn lookup(&self, hash: &TokenHash) -> Result<Option<IndexEntry>, StoreError> {
        match &*self.shared.current.load() {
            Some(store) => store.lookup(hash),
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
        let _writing = self.shared.writes.read().await;
        let store = self.writable()?;
        self.note(store.rotate(user, new, now, grace_secs).await)
    }

    pub async fn get_or_create(
        &self,
        user: &UserId,
        candidate: &NewToken,
        now: u64,
    ) -> Result<GetOrCreate, StoreError> {
        let _writing = self.shared.writes.read().await;
        let store = self.writable()?;
        self.note(store.get_or_create(user, candidate, now).await)
    }

    pub async fn revoke(&self, user: &UserId) -> Result<bool, StoreError> {
        let _writing = self.shared.writes.read().await;
        let store = self.writable()?;
        self.note(store.revoke(user).await)
    }

    /// Stamps last use; skipped (not an error) while the store recovers.
    pub async fn touch(&self, hash: &TokenHash, now: u64) -> Result<(), StoreError> {
        if self.is_failed() {
            return Ok(());
        }
        let _writing = self.shared.writes.read().await;
        let store = self.current()?;
        self.note(store.touch(hash, now).await)
    }

    /// Skipped (0 removed) while the store recovers or a compaction switches.
    pub fn expire_grace(&self, now: u64) -> Result<usize, StoreError> {
        if self.is_failed() {
            return Ok(0);
        }
        let Ok(_writing) = self.shared.writes.try_read() else {
            return Ok(0);
        };
        let store = self.current()?;
        self.note(store.expire_grace(now))
    }

    pub async fn wait_until_durable(&self) -> Result<(), StoreError> {
        let _writing = self.shared.writes.read().await;
        let store = self.writable()?;
        self.note(store.wait_until_durable().await)
    }

    pub async fn probe_write(&self, now: u64) -> Result<(), StoreError> {
        let _writing = self.shared.writes.read().await;
        let store = self.writable()?;
        self.note(store.probe_write(now).await)
    }
}

impl Drop for LiveStore {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        *self
            .shared
            .shutdown
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.recovery.take() {
            let _ = thread.join();
        }
        // Close the database here, not in whichever thread lets go last.
        drop(self.shared.current.swap(None));
    }
}

fn free_bytes(path: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// The recovery thread: sleeps until a failure, then reopens when possible.
fn recover(shared: &Shared) {
    let mut retry = FIRST_RETRY;
    let mut compact_not_before = Instant::now();
    loop {
        {
            let guard = shared
                .shutdown
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // A stop asked for while this thread was busy (compacting) was
            // notified when nobody waited: look before sleeping.
            if *guard {
                return;
            }
            let timeout = if shared.failed.load(Ordering::SeqCst) {
                retry
            } else if shared.policy.enabled() {
                shared.policy.check_every
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
        if !shared.failed.load(Ordering::SeqCst) {
            retry = FIRST_RETRY;
            maybe_compact(shared, &mut compact_not_before);
            continue;
        }
        // Reopening drops the database reads are served from: only try when
        // it can succeed. Unknown free space (statvfs failed) counts as room.
        if free_bytes(&shared.path).is_some_and(|free| free < MIN_FREE_BYTES) {
            continue;
        }
        match reopen(shared) {
            Ok(()) => {
                shared.failed.store(false, Ordering::SeqCst);
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

fn reopen(shared: &Shared) -> Result<(), StoreError> {
    // After the swap no new read reaches the old database; reads still in
    // flight on it took their ticket before this, so none of them can
    // remember what they read.
    let old = shared.current.swap(None);
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
                shared.current.store(Some(old));
                return Err(StoreError::Recovering);
            }
        }
    }
    let store = Store::open_with_listener(
        &shared.path,
        shared.cache_mb,
        Arc::clone(&shared.listener) as _,
    )?;
    // Prove writes work before declaring victory.
    store.probe_write_blocking()?;
    shared
        .baseline
        .store(store.data_file_bytes().unwrap_or(0), Ordering::SeqCst);
    shared.current.store(Some(Arc::new(store)));
    Ok(())
}

/// Compacts the store if its data file has grown enough since the last time.
fn maybe_compact(shared: &Shared, not_before: &mut Instant) {
    if !shared.policy.enabled() || Instant::now() < *not_before {
        return;
    }
    let Some(store) = shared.current.load_full() else {
        return;
    };
    let Ok(size) = store.data_file_bytes() else {
        return;
    };
    let baseline = shared.baseline.load(Ordering::SeqCst);
    if !shared.policy.due(baseline, size) {
        return;
    }
    // The copy needs at most the live data, which is at most the file.
    if free_bytes(&shared.path).is_some_and(|free| free < size.saturating_add(MIN_FREE_BYTES)) {
        log::warn!(
            "the store's data file grew from {baseline} to {size} bytes, but the disk has too little free space to compact it (up to {size} bytes); trying again in {COMPACT_RETRY:?}"
        );
        *not_before = Instant::now() + COMPACT_RETRY;
        return;
    }
    log::info!("compacting the store: its data file grew from {baseline} to {size} bytes");
    let started = Instant::now();
    match compact(shared, store) {
        Ok((compacted, paused)) => {
            log::info!(
                "compacted the store: data file {size} -> {compacted} bytes in {:?} (writes waited {paused:?})",
                started.elapsed()
            );
        }
        Err(e) => {
            *not_before = Instant::now() + COMPACT_RETRY;
            if !shared.stopping.load(Ordering::SeqCst) {
                log::error!(
                    "compacting the store failed ({e}); it is unchanged and serving; trying again in {COMPACT_RETRY:?}"
                );
            }
        }
    }
}

/// Copies `old` into a new generation, switches to it, deletes the old one,
/// and measures growth from the new size on. Returns that size and how long
/// writes waited.
fn compact(shared: &Shared, old: Arc<Store>) -> Result<(u64, Duration), StoreError> {
    let _one = shared
        .compacting
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    crate::metrics::METRICS.compacting(true);
    let switched = copy_and_switch(shared, &old);
    // (Already done on success, before the new copy took its first write.)
    shared.listener.mirror.store(None);
    crate::metrics::METRICS.compacting(false);
    let switched = switched.inspect_err(|_| release_freed_memory())?;
    shared.baseline.store(switched.0, Ordering::SeqCst);
    crate::metrics::METRICS.compacted();
    // Reads in flight on the old copy finish; then it is closed and removed.
    let deadline = Instant::now() + DRAIN_WAIT;
    while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(old);
    if let Err(e) = layout::remove_stale(&shared.path) {
        log::warn!(
            "cannot remove the store's old copy in {}: {e}",
            shared.path.display()
        );
    }
    release_freed_memory();
    Ok(switched)
}

/// Hands the memory the closed copy freed back to the system. glibc keeps
/// freed memory in its heap (one arena, see `main.rs`), so without this the
/// process would stay at its peak of two open copies until it restarts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_freed_memory() {
    let started = Instant::now();
    // SAFETY: malloc_trim is thread-safe and only returns free pages of
    // the allocator's heap to the kernel; no live allocation is touched.
    unsafe {
        libc::malloc_trim(0);
    }
    log::debug!(
        "returned freed memory to the system in {:?}",
        started.elapsed()
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}

fn copy_and_switch(shared: &Shared, old: &Store) -> Result<(u64, Duration), StoreError> {
    let copy = Arc::new(NewCopy::create(old, shared.cache_mb)?);
    shared.listener.mirror.store(Some(Arc::clone(&copy)));
    copy.copy_all(&shared.stopping)?;
    // New writes wait from here; those in flight finish (mirrored) first.
    let _paused = shared.writes.blocking_write();
    let paused_at = Instant::now();
    if shared.failed.load(Ordering::SeqCst) || shared.stopping.load(Ordering::SeqCst) {
        return Err(StoreError::Recovering);
    }
    let new = copy.switch(old, Arc::clone(&shared.listener) as _)?;
    // The new store's writes must not be "mirrored" from the old one.
    shared.listener.mirror.store(None);
    let compacted = new.data_file_bytes().unwrap_or(0);
    shared.current.store(Some(Arc::new(new)));
    Ok((compacted, paused_at.elapsed()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use ring::rand::SystemRandom;

    use super::*;
    use crate::store::NoListener;
    use crate::token::{PlainToken, TokenHash};

    fn new_token(rng: &SystemRandom) -> NewToken {
        NewToken::of(&PlainToken::generate(rng).unwrap())
    }

    fn user(n: usize) -> UserId {
        UserId::parse(&format!("user-{n:05}")).unwrap()
    }

    /// What a client was last told about a user: its current token, or revoked.
    type Acknowledged = HashMap<usize, Option<TokenHash>>;

    fn assert_holds(store: &Store, expected: &Acknowledged) {
        for (&n, hash) in expected {
            let record = store.get(&user(n)).unwrap();
            assert_eq!(
                record.as_ref().map(|r| r.hash),
                hash.map(|h| *h.as_bytes()),
                "user {n}"
            );
            if let Some(hash) = hash {
                let entry = store
                    .lookup(hash)
                    .unwrap()
                    .expect("the current token is indexed");
                assert_eq!(entry.user_id, user(n).as_str());
            }
        }
    }

    #[test]
    fn online_compaction_keeps_every_acknowledged_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let live = Arc::new(
            LiveStore::open(&path, 8, Arc::new(NoListener), CompactPolicy::off()).unwrap(),
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        const USERS: usize = 4000;
        const WRITERS: usize = 4;
        let rng = SystemRandom::new();
        // A store with a few rotations behind it (so a grown log to compact).
        runtime.block_on(async {
            for _ in 0..3 {
                let rotations = (0..USERS).map(|n| {
                    let (live, token) = (Arc::clone(&live), new_token(&rng));
                    async move { live.rotate(&user(n), &token, 1_000, 0).await.unwrap() }
                });
                futures::future::join_all(rotations).await;
            }
        });

        // Writers rotate (half of them with a grace window, so grace entries
        // come and go) and revoke their own users, remembering what each
        // acknowledgement said, while the store is compacted twice.
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (live, stop, acknowledged) = (
                    Arc::clone(&live),
                    Arc::clone(&stop),
                    Arc::clone(&acknowledged),
                );
                runtime.spawn(async move {
                    let rng = SystemRandom::new();
                    let mut last = Acknowledged::new();
                    let mut i = 0usize;
                    while !stop.load(Ordering::SeqCst) {
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
                        acknowledged.fetch_add(1, Ordering::SeqCst);
                        i += 1;
                    }
                    last
                })
            })
            .collect();
        while acknowledged.load(Ordering::SeqCst) < 50 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut during = 0;
        for generation in 1..=2 {
            let before = acknowledged.load(Ordering::SeqCst);
            let (_, after) = live.compact_now().unwrap();
            during += acknowledged.load(Ordering::SeqCst) - before;
            assert!(after > 0);
            assert_eq!(layout::current_generation(&path).unwrap(), Some(generation));
        }
        stop.store(true, Ordering::SeqCst);
        let mut expected = Acknowledged::new();
        runtime.block_on(async {
            for writer in writers {
                expected.extend(writer.await.unwrap());
            }
        });
        assert!(during > 0, "no write overlapped the compactions");

        let store = live.current().unwrap();
        assert_holds(&store, &expected);
        drop(store);
        drop(live);
        drop(runtime);
        // Only the current copy is left, and it is whole after a restart.
        let mut left: Vec<String> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["CURRENT", "gen-2"]);
        let report = crate::check::check_store(&path).unwrap();
        assert!(report.is_consistent(), "{report}");
        let store = Store::open(&path, 8).unwrap();
        assert_holds(&store, &expected);
    }
}
