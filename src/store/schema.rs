//! The schema version: which record formats a store holds, and the one
//! decision about whether this binary may open it.

use std::path::Path;

use crate::store::error::StoreError;
use crate::store::keyspaces::Keyspaces;

/// The record formats this binary writes. Older ones are migrated when a
/// store of an earlier release is opened; newer ones are refused.
pub const SCHEMA_VERSION: u32 = 3;
pub(crate) const SCHEMA_KEY: &[u8] = b"schema_version";
/// Rewritten by every readiness probe.
pub(crate) const PROBE_KEY: &[u8] = b"readyz_probe";
/// A stored schema version (4 bytes, big-endian).
pub(crate) fn decode_schema(bytes: &[u8]) -> Result<u32, StoreError> {
    <[u8; 4]>::try_from(bytes)
        .map(u32::from_be_bytes)
        .map_err(|_| StoreError::Corrupt {
            what: "schema version",
        })
}

/// Checks the schema version of an open store. Every store this release
/// creates or migrates has one; an empty store without one has nothing to
/// misread.
pub(crate) fn check_schema(path: &Path, keyspaces: &Keyspaces) -> Result<(), StoreError> {
    match keyspaces.meta.get(SCHEMA_KEY)? {
        Some(v) => match decode_schema(&v)? {
            SCHEMA_VERSION => Ok(()),
            found => Err(StoreError::UnknownSchema {
                path: path.to_owned(),
                found,
                known: SCHEMA_VERSION,
            }),
        },
        None if keyspaces.users.is_empty()? && keyspaces.index.is_empty()? => Ok(()),
        None => Err(StoreError::MissingSchema {
            path: path.to_owned(),
        }),
    }
}
