//! What can go wrong in the store, as one error type.

use std::path::PathBuf;

use crate::store::durability::DurabilityError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Engine(#[from] fjall::Error),
    #[error("cannot read the store of an earlier release (sled): {0}")]
    Legacy(#[from] sled::Error),
    #[error("stored data cannot be decoded ({what}); the database may be damaged")]
    Corrupt { what: &'static str },
    #[error("the store at {path} has schema version {found}, but this binary knows versions up to {known}; use a newer release")]
    UnknownSchema {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error(
        "the store at {path} holds data but no schema version; it was not written by agent-tokens"
    )]
    MissingSchema { path: PathBuf },
    #[error("cannot find the store's current copy in {path}: {source}")]
    Layout {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another process (or another open in this one) holds the store's lock.
    #[error("the store at {} is in use by another process", path.display())]
    InUse { path: PathBuf },
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: fjall::Error,
    },
    #[error(transparent)]
    Durability(#[from] DurabilityError),
    #[error("cannot encode a record: {0}")]
    Encode(String),
    /// Cannot happen: a batch committed without running one of its operations.
    #[error("a queued change was not applied")]
    NotApplied,
    /// PostgreSQL cannot be reached (down, restarting, no connection free
    /// in time). Reads and writes fail until it is back; the pool reconnects.
    #[error("PostgreSQL is unreachable: {0}")]
    Unavailable(String),
    /// PostgreSQL answered with an error (the text never holds the URL).
    #[error("PostgreSQL refused a query: {0}")]
    Postgres(String),
    /// A storage setting that cannot work (a bad `storage.url`), in words
    /// that name the key and never repeat a secret.
    #[error("{0}")]
    Setting(String),
    #[error("the PostgreSQL database has schema version {found}, but this binary knows versions up to {known}; use a newer release")]
    PostgresSchema { found: i64, known: i64 },
    /// Writes are refused while the store reopens after an I/O failure.
    #[error("the store is recovering from an I/O failure and refuses writes for now")]
    Recovering,
}

impl StoreError {
    /// Maps an I/O error about the store's directory at `path`.
    pub(crate) fn layout(path: &std::path::Path) -> impl Fn(std::io::Error) -> Self + '_ {
        move |source| Self::Layout {
            path: path.to_owned(),
            source,
        }
    }
}
