//! What lives inside `storage.path`.
//!
//! - `LOCK`: held (`flock`, exclusive) by the one process using the store,
//!   the server or an offline command, for as long as it has it open.
//! - `CURRENT`: names the directory holding the store, `gen-N`; written to
//!   a temporary file, synced and renamed over the old one, so a switch
//!   (a new store's creation, the migration of an older release's store) is
//!   one atomic rename: after a crash the store is wholly the old copy or
//!   wholly the new one.
//! - `gen-N/`: the store, a fjall database. Stores written by releases
//!   before 0.2 are sled directories, either `gen-N/` or sled's files
//!   directly in `storage.path`; they are migrated at the first open
//!   ([`crate::store::legacy`]).
//!
//! Whatever the current copy is not (a migrated sled store, older
//! generations, a copy a crash interrupted) is removed once the store is
//! open and locked by this process.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Names the directory holding the current copy of the store.
pub const CURRENT: &str = "CURRENT";
const CURRENT_TMP: &str = "CURRENT.tmp";
const GENERATION_PREFIX: &str = "gen-";
/// What sled 0.34 keeps in its directory (`snap.*` files besides these).
const SLED_FILES: [&str; 3] = ["db", "conf", "blobs"];

/// The generation number in a directory name like `gen-12`.
fn generation_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(GENERATION_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The current generation's number, or `None` when sled's files are directly
/// in `path` (no compaction yet, or a new store).
pub fn current_generation(path: &Path) -> io::Result<Option<u64>> {
    match fs::read_to_string(path.join(CURRENT)) {
        Ok(text) => generation_of(text.trim()).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} does not name a store generation (expected gen-<number>)",
                    path.join(CURRENT).display()
                ),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where the store currently is, and in which engine's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Current {
    /// A fjall database: the format this release writes.
    Lsm(PathBuf),
    /// A sled directory from an earlier release, to be migrated.
    Sled(PathBuf),
    /// Nothing yet: a new store.
    Empty,
}

/// What sled 0.34 keeps in a directory besides `snap.*` files; its data file
/// `db` says a directory is one.
const SLED_DATA_FILE: &str = "db";
/// What fjall writes last when it creates a database.
const LSM_MARKER: &str = "version";
/// The lock file, directly in `storage.path`.
pub const LOCK: &str = "LOCK";

pub fn current(path: &Path) -> io::Result<Current> {
    match current_generation(path)? {
        Some(n) => {
            let dir = generation_dir(path, n);
            if dir.join(LSM_MARKER).is_file() {
                Ok(Current::Lsm(dir))
            } else if dir.join(SLED_DATA_FILE).is_file() {
                Ok(Current::Sled(dir))
            } else {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} names {}, which holds no store",
                        path.join(CURRENT).display(),
                        dir.display()
                    ),
                ))
            }
        }
        None if path.join(SLED_DATA_FILE).is_file() => Ok(Current::Sled(path.to_owned())),
        None => Ok(Current::Empty),
    }
}

pub fn generation_dir(path: &Path, generation: u64) -> PathBuf {
    path.join(format!("{GENERATION_PREFIX}{generation}"))
}

/// The generation a new copy is written into: one past the current one.
pub fn next_generation(path: &Path) -> io::Result<u64> {
    Ok(current_generation(path)?.map_or(1, |n| n.saturating_add(1)))
}

/// Whether `path` holds a store (of either format).
pub fn holds_store(path: &Path) -> bool {
    current(path).is_ok_and(|c| c != Current::Empty)
}

/// The store's lock, held until dropped.
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] File);

/// Takes the store's lock; `Ok(None)` when another process (or another
/// open in this one) holds it.
pub fn lock(path: &Path) -> io::Result<Option<Lock>> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.join(LOCK))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(Lock(file))),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Makes generation `generation` the current one: once this returns, an
/// open of `path` opens it, even after a power cut.
pub fn commit(path: &Path, generation: u64) -> io::Result<()> {
    let tmp = path.join(CURRENT_TMP);
    {
        let mut file = File::create(&tmp)?;
        writeln!(file, "{GENERATION_PREFIX}{generation}")?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path.join(CURRENT))?;
    sync_dir(path)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes every copy of the store but the current one. Only call while
/// holding [`lock`].
pub fn remove_stale(path: &Path) -> io::Result<()> {
    let current = current_generation(path)?;
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let stale = match generation_of(name) {
            Some(n) => current != Some(n),
            // sled's own files at the top belong to a store of an earlier
            // release, migrated once a generation is current.
            None => current.is_some() && (SLED_FILES.contains(&name) || name.starts_with("snap.")),
        } || name == CURRENT_TMP;
        if stale {
            let target = entry.path();
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(&target)?;
            } else {
                fs::remove_file(&target)?;
            }
            log::info!("removed {}, an earlier copy of the store", target.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_copy_is_found_and_its_format_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert_eq!(current(root).unwrap(), Current::Empty);
        assert!(!holds_store(root));
        // An earlier release's store, never compacted: sled's files at the top.
        fs::write(root.join("db"), b"").unwrap();
        assert_eq!(current(root).unwrap(), Current::Sled(root.to_owned()));
        assert!(holds_store(root));
        fs::create_dir(generation_dir(root, 2)).unwrap();
        fs::write(generation_dir(root, 2).join("db"), b"").unwrap();
        commit(root, 2).unwrap();
        assert_eq!(
            current(root).unwrap(),
            Current::Sled(generation_dir(root, 2))
        );
        assert_eq!(next_generation(root).unwrap(), 3);
        fs::create_dir(generation_dir(root, 3)).unwrap();
        fs::write(generation_dir(root, 3).join("version"), b"").unwrap();
        commit(root, 3).unwrap();
        assert_eq!(
            current(root).unwrap(),
            Current::Lsm(generation_dir(root, 3))
        );
    }

    #[test]
    fn commit_switches_and_stale_copies_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for name in ["db", "conf", "snap.0000001"] {
            fs::write(root.join(name), b"old").unwrap();
        }
        fs::create_dir(root.join("blobs")).unwrap();
        fs::create_dir(generation_dir(root, 3)).unwrap();
        fs::write(generation_dir(root, 3).join("version"), b"new").unwrap();
        fs::create_dir(generation_dir(root, 2)).unwrap();
        fs::write(root.join("unrelated.txt"), b"keep").unwrap();
        let _lock = lock(root).unwrap().unwrap();

        // Before the commit the top-level copy is current: the new one is
        // an interrupted migration and goes.
        remove_stale(root).unwrap();
        assert!(!generation_dir(root, 3).exists());
        assert!(root.join("db").exists());

        fs::create_dir(generation_dir(root, 3)).unwrap();
        fs::write(generation_dir(root, 3).join("version"), b"new").unwrap();
        commit(root, 3).unwrap();
        assert_eq!(current_generation(root).unwrap(), Some(3));
        remove_stale(root).unwrap();
        let mut left: Vec<String> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["CURRENT", "LOCK", "gen-3", "unrelated.txt"]);
    }

    #[test]
    fn a_damaged_pointer_is_an_error_not_a_new_store() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CURRENT), b"../elsewhere\n").unwrap();
        let err = current(dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(!holds_store(dir.path()));
        // A pointer to a generation that holds nothing is no store either.
        fs::write(dir.path().join(CURRENT), b"gen-4\n").unwrap();
        assert_eq!(
            current(dir.path()).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn the_lock_is_exclusive_and_let_go_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).unwrap().unwrap();
        assert!(lock(dir.path()).unwrap().is_none());
        drop(held);
        assert!(lock(dir.path()).unwrap().is_some());
    }
}
