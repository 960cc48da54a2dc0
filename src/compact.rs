//! Compaction: a fresh, dense copy of the store, made while it serves.
//!
//! Why: sled 0.34.7 appends every change to its log and reuses a log
//! segment only once at most half of it is live. In a large store written
//! at random places (with a million tokens each rotation or last-use stamp
//! touches two or three of ~180,000 small leaves) segments stay more than
//! half live for a very long time, and the data file grows without bound.
//! Measured on a million tokens: 200 MB after the import, 650 MB after 1.7
//! million rotations, the same with sled's own segment cleaning on.
//! Copying the live records into a new sled directory writes each once.
//!
//! How (driven by [`crate::live`]): every record is copied, tree by tree
//! in key order, while the store keeps serving reads and writes. Every
//! write the store commits meanwhile is mirrored into the copy at once (the
//! store's change reports name the keys), for the keys the copy has already
//! passed; the ones it has not reached yet it will read as they are then.
//! A write to a key inside the chunk being copied is copied again once the
//! chunk is in, so the copy never keeps an older value than the store.
//! When the copy is complete, writes pause (they wait; reads go on) only
//! for the switch:
//! the copy is flushed and synced, and [`layout::commit`] names it current
//! in one atomic rename. Until that rename the old copy is the store,
//! whole; after it the new one is, and it holds every acknowledged write.

use std::fs::{self, File};
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sled::{Db, IVec, Tree};

use crate::backup::insert_packed;
use crate::layout;
use crate::store::{
    open_sled, sled_config, ChangeListener, Changes, NoListener, Store, StoreError, GRACE_TREE,
    INDEX_TREE, META_TREE, USER_TREE,
};

/// Records copied per chunk: a whole number of [`insert_packed`]'s groups
/// of 15, and large, since each chunk's first leaf is packed less densely.
const CHUNK: usize = 15 * 1024;

/// How far the copy of one tree has come.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// Every key up to and including this one is in the copy (`None`:
    /// none yet), unless `all`.
    through: Option<IVec>,
    all: bool,
    /// While a chunk is copied, writes to keys not copied yet are
    /// remembered in `pending`; those the chunk covered are copied again
    /// after it.
    copying_chunk: bool,
    pending: Vec<Vec<u8>>,
}

impl Progress {
    fn copied(&self, key: &[u8]) -> bool {
        self.all
            || self
                .through
                .as_ref()
                .is_some_and(|last| key <= last.as_ref())
    }
}

/// The trees copied record by record and mirrored: users, index, grace.
const TREES: usize = 3;

/// A copy of the store being written into its next generation directory.
/// Dropped without [`NewCopy::switch`], it is deleted.
pub struct NewCopy {
    generation: u64,
    dir: PathBuf,
    from: [Tree; TREES],
    to: [Tree; TREES],
    from_meta: Tree,
    to_meta: Tree,
    db: Db,
    /// Held while a write is mirrored and while a chunk starts and ends.
    progress: Mutex<[Progress; TREES]>,
    /// The first failure to mirror a write: the copy is then unusable.
    mirror_failed: Mutex<Option<StoreError>>,
    switched: AtomicBool,
}

fn copy_key(from: &Tree, to: &Tree, key: &[u8]) -> Result<(), StoreError> {
    match from.get(key)? {
        Some(value) => to.insert(key, value)?,
        None => to.remove(key)?,
    };
    Ok(())
}

/// Reported as an I/O failure of the copy, never of the store it copies.
fn io_error(what: &str, dir: &std::path::Path, e: std::io::Error) -> StoreError {
    StoreError::Layout {
        path: dir.to_owned(),
        source: std::io::Error::new(e.kind(), format!("{what}: {e}")),
    }
}

fn cancelled() -> StoreError {
    StoreError::Layout {
        path: PathBuf::new(),
        source: std::io::Error::new(
            std::io::ErrorKind::Interrupted,
            "compaction cancelled: the server is stopping",
        ),
    }
}

impl NewCopy {
    /// Creates the next generation directory of `store`, empty.
    pub fn create(store: &Store, cache_mb: u64) -> Result<Self, StoreError> {
        let path = store.path();
        let current = layout::current_generation(path)
            .map_err(|e| io_error("reading the current generation", path, e))?;
        let generation = current.map_or(1, |n| n + 1);
        let dir = layout::generation_dir(path, generation);
        if dir.exists() {
            // Left by a copy that failed in this process; never the current one.
            fs::remove_dir_all(&dir)
                .map_err(|e| io_error("removing an unfinished copy", &dir, e))?;
        }
        let db = open_sled(&sled_config(&dir, cache_mb)).map_err(|source| StoreError::Open {
            path: dir.clone(),
            source,
        })?;
        Ok(Self {
            generation,
            from: [
                store.users.clone(),
                store.index.clone(),
                store.grace.clone(),
            ],
            to: [
                db.open_tree(USER_TREE)?,
                db.open_tree(INDEX_TREE)?,
                db.open_tree(GRACE_TREE)?,
            ],
            from_meta: store.meta.clone(),
            to_meta: db.open_tree(META_TREE)?,
            dir,
            db,
            progress: Mutex::new(Default::default()),
            mirror_failed: Mutex::new(None),
            switched: AtomicBool::new(false),
        })
    }

    fn progress(&self) -> MutexGuard<'_, [Progress; TREES]> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Copies every record, densely packed (see [`insert_packed`]: plain
    /// key-ordered inserts would leave a copy as large as the bloated
    /// original). Gives up when `cancel` is set.
    pub fn copy_all(&self, cancel: &AtomicBool) -> Result<(), StoreError> {
        for tree in 0..TREES {
            let (from, to) = (&self.from[tree], &self.to[tree]);
            loop {
                if cancel.load(Ordering::Relaxed) {
                    return Err(cancelled());
                }
                // Announced before the chunk is read: a write to any key not
                // copied yet is remembered from now on (where the chunk ends
                // is known only once it is read).
                let start = {
                    let mut progress = self.progress();
                    progress[tree].copying_chunk = true;
                    progress[tree]
                        .through
                        .clone()
                        .map_or(Bound::Unbounded, Bound::Excluded)
                };
                let chunk = from
                    .range::<IVec, _>((start, Bound::Unbounded))
                    .take(CHUNK)
                    .collect::<Result<Vec<_>, _>>()?;
                insert_packed(to, chunk.len(), |i| {
                    let (key, value) = &chunk[i];
                    Ok::<_, StoreError>((key.clone(), value.clone()))
                })?;
                // A short chunk is the rest of the tree.
                let end = (chunk.len() == CHUNK)
                    .then(|| chunk.last().map(|(key, _)| key.clone()))
                    .flatten();
                let mut progress = self.progress();
                let state = &mut progress[tree];
                for key in std::mem::take(&mut state.pending) {
                    // Keys past the chunk are read by a later one, as they are then.
                    if end
                        .as_ref()
                        .is_none_or(|end| key.as_slice() <= end.as_ref())
                    {
                        copy_key(from, to, &key)?;
                    }
                }
                state.copying_chunk = false;
                match end {
                    Some(end) => state.through = Some(end),
                    None => {
                        state.all = true;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Mirrors a committed write into the copy, for the keys it has passed.
    pub fn mirror(&self, changes: &Changes) {
        let mut progress = self.progress();
        for (tree, keys) in [&changes.users, &changes.tokens, &changes.grace]
            .into_iter()
            .enumerate()
        {
            let state = &mut progress[tree];
            for key in keys {
                if !state.copied(key) {
                    if state.copying_chunk {
                        state.pending.push(key.clone());
                    }
                    continue;
                }
                if let Err(e) = copy_key(&self.from[tree], &self.to[tree], key) {
                    let mut failed = self
                        .mirror_failed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    failed.get_or_insert(e);
                    return;
                }
            }
        }
    }

    /// With writes to `store` paused and the copy complete: makes the copy
    /// durable, names it current, and returns a store serving it. On an
    /// error before the switch, the old copy stays current.
    pub fn switch(
        &self,
        store: &Store,
        listener: Arc<dyn ChangeListener>,
    ) -> Result<Store, StoreError> {
        if let Some(e) = self
            .mirror_failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            return Err(e);
        }
        if !self.progress().iter().all(|p| p.all) {
            return Err(StoreError::NotApplied);
        }
        // The meta tree is a handful of keys (schema, readiness probe).
        for record in self.from_meta.iter() {
            let (key, value) = record?;
            self.to_meta.insert(key, value)?;
        }
        self.db.flush()?;
        for entry in
            fs::read_dir(&self.dir).map_err(|e| io_error("listing the copy", &self.dir, e))?
        {
            let entry = entry.map_err(|e| io_error("listing the copy", &self.dir, e))?;
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                File::open(entry.path())
                    .and_then(|f| f.sync_all())
                    .map_err(|e| io_error("syncing the copy", &entry.path(), e))?;
            }
        }
        layout::sync_dir(&self.dir).map_err(|e| io_error("syncing the copy", &self.dir, e))?;
        // Serving first, naming current second: a failure here leaves the
        // old copy current and this one deleted.
        let new = Store::from_db(self.db.clone(), store.path(), self.dir.clone(), listener)?;
        if let Err(e) = layout::commit(store.path(), self.generation) {
            match layout::current_generation(store.path()) {
                Ok(Some(n)) if n == self.generation => {}
                Ok(_) => return Err(io_error("switching to the copy", store.path(), e)),
                // The rename may have happened: the copy holds every write,
                // so it is served (and kept) rather than risk losing one.
                Err(_) => {}
            }
            log::error!("switching to the compacted copy could not be synced ({e}); serving it");
        }
        self.switched.store(true, Ordering::SeqCst);
        Ok(new)
    }
}

impl Drop for NewCopy {
    fn drop(&mut self) {
        if !self.switched.load(Ordering::SeqCst) {
            // Unlinking files sled still has open is fine on Linux; a
            // crash before this leaves the directory to the next open's
            // clean-up (layout::remove_stale).
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                log::warn!(
                    "cannot remove the unfinished copy {}: {e}",
                    self.dir.display()
                );
            }
        }
    }
}

/// Compacts a store no one else has open (the `compact` command); returns
/// the data file's size before and after.
pub fn compact_offline(store: Store, cache_mb: u64) -> Result<(u64, u64), StoreError> {
    let path = store.path().to_owned();
    let size = |store: &Store| {
        store
            .data_file_bytes()
            .map_err(|source| StoreError::Layout {
                path: path.clone(),
                source,
            })
    };
    let before = size(&store)?;
    let copy = NewCopy::create(&store, cache_mb)?;
    copy.copy_all(&AtomicBool::new(false))?;
    let new = copy.switch(&store, Arc::new(NoListener))?;
    drop(copy);
    let after = size(&new)?;
    drop(store);
    // Still holding the new copy open, so no other process uses the store.
    layout::remove_stale(&path).map_err(|source| StoreError::Layout {
        path: path.clone(),
        source,
    })?;
    drop(new);
    Ok((before, after))
}

/// When the server compacts on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactPolicy {
    /// Growth over the size after the last compaction, in percent; 0: never.
    pub growth_percent: u64,
    /// Growth needed in any case, in bytes.
    pub min_growth_bytes: u64,
    /// How often the growth is looked at.
    pub check_every: std::time::Duration,
}

impl CompactPolicy {
    pub fn from_settings(storage: &crate::config::StorageSettings) -> Self {
        Self {
            growth_percent: storage.compact_growth_percent,
            min_growth_bytes: storage.compact_min_growth_mb.saturating_mul(1024 * 1024),
            check_every: std::time::Duration::from_secs(storage.compact_check_secs),
        }
    }

    pub const fn off() -> Self {
        Self {
            growth_percent: 0,
            min_growth_bytes: 0,
            check_every: std::time::Duration::from_secs(3600),
        }
    }

    pub fn enabled(&self) -> bool {
        self.growth_percent > 0
    }

    /// Whether a data file of `size` bytes, `baseline` after the last
    /// compaction, is due for one.
    pub fn due(&self, baseline: u64, size: u64) -> bool {
        let growth = (baseline / 100)
            .saturating_mul(self.growth_percent)
            .max(self.min_growth_bytes);
        self.enabled() && size > baseline.saturating_add(growth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{IndexEntry, NewToken, UserRecord};
    use crate::token::PlainToken;
    use crate::user::UserId;
    use ring::rand::SystemRandom;

    type Content = (Vec<(String, UserRecord)>, Vec<IndexEntry>, usize);

    fn content(store: &Store) -> Content {
        let users = store.users().collect::<Result<Vec<_>, _>>().unwrap();
        let index = store.index_entries().map(|r| r.unwrap().1).collect();
        (users, index, store.grace_entries())
    }

    #[tokio::test]
    async fn an_offline_compaction_shrinks_the_file_and_keeps_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path, 8).unwrap();
        let rng = SystemRandom::new();
        for round in 0..12u64 {
            let rotations = (0..500).map(|n| {
                let token = NewToken::of(&PlainToken::generate(&rng).unwrap());
                let store = &store;
                async move {
                    let user = UserId::parse(&format!("user-{n:04}")).unwrap();
                    // Some grace windows, so the grace tree is copied too.
                    let grace = if n % 3 == 0 { 3_600 } else { 0 };
                    store
                        .rotate(&user, &token, 1_000 + round, grace)
                        .await
                        .unwrap();
                }
            });
            futures::future::join_all(rotations).await;
        }
        let before = content(&store);
        assert!(before.2 > 0);
        let (grown, compacted) = compact_offline(store, 8).unwrap();
        assert!(compacted < grown, "{compacted} !< {grown}");
        assert_eq!(layout::current_generation(&path).unwrap(), Some(1));
        assert!(!path.join("db").exists(), "the old copy is removed");
        let store = Store::open(&path, 8).unwrap();
        assert_eq!(content(&store), before);
        assert!(store.data_file_bytes().unwrap() < grown);
    }

    #[test]
    fn due_after_both_the_percentage_and_the_floor() {
        let policy = CompactPolicy {
            growth_percent: 40,
            min_growth_bytes: 32 << 20,
            check_every: std::time::Duration::from_secs(10),
        };
        let mb = 1 << 20;
        assert!(!policy.due(200 * mb, 280 * mb));
        assert!(policy.due(200 * mb, 281 * mb));
        // Small stores: the floor decides.
        assert!(!policy.due(mb, 30 * mb));
        assert!(policy.due(mb, 34 * mb));
        assert!(!CompactPolicy::off().due(mb, u64::MAX));
    }
}
