//! A new copy of the store: written into the next generation directory,
//! synced, and made current in one atomic step (see [`crate::store::layout`]),
//! for a new store and for one migrated from an earlier release alike.

use std::path::{Path, PathBuf};

use fjall::{Database, PersistMode};

use crate::store::error::StoreError;
use crate::store::keyspaces::{open_db, Keyspaces};
use crate::store::layout;
use crate::store::schema::{SCHEMA_KEY, SCHEMA_VERSION};

/// Writes a new store into the next generation: `fill` puts its records in,
/// then the schema version is written, everything is synced, and the
/// generation becomes current. A crash before that leaves the old copy
/// current, and the next open removes the unfinished one.
pub(crate) fn write<T>(
    path: &Path,
    cache_mb: u64,
    fill: impl FnOnce(&Keyspaces) -> Result<T, StoreError>,
) -> Result<(Database, PathBuf, T), StoreError> {
    let generation = layout::next_generation(path).map_err(StoreError::layout(path))?;
    let dir = layout::generation_dir(path, generation);
    let db = open_db(path, &dir, cache_mb)?;
    let keyspaces = Keyspaces::open(&db)?;
    let filled = fill(&keyspaces)?;
    keyspaces
        .meta
        .insert(SCHEMA_KEY, SCHEMA_VERSION.to_be_bytes())?;
    db.persist(PersistMode::SyncAll)?;
    layout::sync_dir(&dir).map_err(StoreError::layout(path))?;
    layout::commit(path, generation).map_err(StoreError::layout(path))?;
    Ok((db, dir, filled))
}
