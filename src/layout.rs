//! Where sled's files live inside `storage.path`.
//!
//! A store starts with sled's files directly in `storage.path`. Compaction
//! (see [`crate::compact`]) writes a fresh copy into `storage.path/gen-N/`
//! and then names it in `storage.path/CURRENT`, written to a temporary file,
//! synced and renamed over the old one: the switch is one atomic rename, so
//! after a crash the store is either wholly the old copy or wholly the new.
//! Whatever the current copy is not (sled files at the top after a first
//! compaction, older generations, a copy a crash interrupted) is removed
//! once the current copy is open and locked by this process.

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

/// The directory sled's files are in: `path/gen-N` or `path` itself.
pub fn sled_dir(path: &Path) -> io::Result<PathBuf> {
    Ok(match current_generation(path)? {
        Some(n) => generation_dir(path, n),
        None => path.to_owned(),
    })
}

pub fn generation_dir(path: &Path, generation: u64) -> PathBuf {
    path.join(format!("{GENERATION_PREFIX}{generation}"))
}

/// Whether `path` holds a store (sled's data file exists where it should).
pub fn holds_store(path: &Path) -> bool {
    sled_dir(path).is_ok_and(|dir| dir.join("db").is_file())
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
/// holding the current copy open (sled's lock proves no other process uses
/// this store).
pub fn remove_stale(path: &Path) -> io::Result<()> {
    let current = current_generation(path)?;
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let stale = match generation_of(name) {
            Some(n) => current != Some(n),
            // sled's own files at the top belong to the first copy.
            None => current.is_some() && (SLED_FILES.contains(&name) || name.starts_with("snap.")),
        } || name == CURRENT_TMP;
        if stale {
            let target = entry.path();
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(&target)?;
            } else {
                fs::remove_file(&target)?;
            }
            log::info!("removed {}, left over from a compaction", target.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_without_current_is_its_own_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(sled_dir(dir.path()).unwrap(), dir.path());
        assert!(!holds_store(dir.path()));
        fs::write(dir.path().join("db"), b"").unwrap();
        assert!(holds_store(dir.path()));
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
        fs::write(generation_dir(root, 3).join("db"), b"new").unwrap();
        fs::create_dir(generation_dir(root, 2)).unwrap();
        fs::write(root.join("unrelated.txt"), b"keep").unwrap();

        // Before the commit the top-level copy is current: the new one is
        // an interrupted compaction and goes.
        remove_stale(root).unwrap();
        assert!(!generation_dir(root, 3).exists());
        assert!(root.join("db").exists());

        fs::create_dir(generation_dir(root, 3)).unwrap();
        fs::write(generation_dir(root, 3).join("db"), b"new").unwrap();
        commit(root, 3).unwrap();
        assert_eq!(current_generation(root).unwrap(), Some(3));
        assert_eq!(sled_dir(root).unwrap(), generation_dir(root, 3));
        remove_stale(root).unwrap();
        let mut left: Vec<String> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["CURRENT", "gen-3", "unrelated.txt"]);
    }

    #[test]
    fn a_damaged_pointer_is_an_error_not_a_new_store() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CURRENT), b"../elsewhere\n").unwrap();
        let err = sled_dir(dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(!holds_store(dir.path()));
    }
}
