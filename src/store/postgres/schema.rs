//! Versioned migrations, embedded in the binary and run by it at start
//! (and by the offline commands): `schema_migrations` records each one
//! applied. Replicas starting together take turns on an advisory lock, so
//! each migration runs once; a database migrated by a newer release is
//! refused, never misread.

use deadpool_postgres::Client;
use tokio_postgres::GenericClient;

use super::pg_error;
use crate::store::error::StoreError;

/// Each migration's SQL; its version is its position plus one.
const MIGRATIONS: &[&str] = &[include_str!("migrations/0001_tokens.sql")];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The advisory lock migrations hold ("agtokmig" as a number).
const MIGRATION_LOCK: i64 = 0x6167_746f_6b6d_6967;

/// The newest migration applied to the database (0 for none), from its
/// `schema_migrations` table.
pub(crate) async fn applied_version(client: &impl GenericClient) -> Result<i64, StoreError> {
    client
        .query_one(
            "SELECT coalesce(max(version), 0)::bigint FROM schema_migrations",
            &[],
        )
        .await
        .map_err(pg_error)?
        .try_get(0)
        .map_err(pg_error)
}

/// A database a newer release migrated is refused, never misread.
pub(crate) fn refuse_newer(found: i64) -> Result<(), StoreError> {
    if found > SCHEMA_VERSION {
        return Err(StoreError::PostgresSchema {
            found,
            known: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Brings the schema to [`SCHEMA_VERSION`]; returns the version found.
pub async fn migrate(client: &mut Client) -> Result<i64, StoreError> {
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version bigint PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(pg_error)?;
    let found = applied_version(&*tx).await?;
    refuse_newer(found)?;
    for (version, sql) in (1i64..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.batch_execute(sql).await.map_err(pg_error)?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(pg_error)?;
        log::info!("PostgreSQL schema migrated to version {version}");
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(found)
}
