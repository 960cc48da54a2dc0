//! PostgreSQL for the offline commands: export, import, check. Unlike the
//! embedded store, the database may be served meanwhile: an export is one
//! consistent snapshot (a repeatable-read transaction), an import one
//! transaction that replicas see all at once or not at all.

use std::sync::Arc;

use super::queries::{from_sql, to_sql};
use super::snapshot::{load, Snapshot};
use super::{pg_error, pool_error, Pg, PgSettings, SCHEMA_VERSION};
use crate::domain::token::TokenHash;
use crate::store::error::StoreError;
use crate::store::offline::ImportedUser;
use crate::store::records::{IndexEntry, NoListener};

type Result<T> = std::result::Result<T, StoreError>;

/// A PostgreSQL database opened by an offline command.
#[derive(Debug)]
pub struct PgOffline {
    pg: Pg,
}

impl PgOffline {
    /// Connects, and creates or migrates the schema as a start would.
    pub fn open(settings: &PgSettings) -> Result<Self> {
        Ok(Self {
            pg: Pg::open(settings, Arc::new(NoListener))?,
        })
    }

    /// Hosts and database, safe to show.
    pub fn target(&self) -> &str {
        self.pg.target()
    }

    /// Everything stored, as one consistent state.
    pub fn snapshot(&self) -> Result<Snapshot> {
        self.pg.block(load(self.pg.pool.clone(), false))
    }

    /// Whether any token is stored.
    pub fn holds_tokens(&self) -> Result<bool> {
        let pool = self.pg.pool.clone();
        self.pg.block(async move {
            let client = pool.get().await.map_err(pool_error)?;
            client
                .query_one("SELECT EXISTS (SELECT 1 FROM tokens)", &[])
                .await
                .map_err(pg_error)?
                .try_get(0)
                .map_err(pg_error)
        })
    }

    /// Replaces every token with `users`, in one transaction: all of them
    /// or, on any error, none. The audit trail is kept.
    pub fn replace_with(&self, users: &[ImportedUser<'_>]) -> Result<()> {
        // Columns of every row to insert, current tokens and grace tokens.
        let mut cols = Columns::default();
        for user in users {
            let r = user.record;
            cols.push(
                user.user_id,
                &r.hash,
                0,
                &r.prefix,
                r.created_at,
                r.last_used_at,
                None,
            );
            if let Some(prev) = &r.previous {
                let (created_at, last_used_at) = user.grace_token_times.unwrap_or_default();
                cols.push(
                    user.user_id,
                    &prev.hash,
                    1,
                    &prev.prefix,
                    created_at,
                    last_used_at,
                    Some(prev.until),
                );
            }
        }
        let pool = self.pg.pool.clone();
        self.pg.block_unbounded(async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(pg_error)?;
            tx.execute("DELETE FROM tokens", &[])
                .await
                .map_err(pg_error)?;
            const CHUNK: usize = 10_000;
            for start in (0..cols.users.len()).step_by(CHUNK) {
                let end = (start + CHUNK).min(cols.users.len());
                tx.execute(
                    "INSERT INTO tokens (user_id, hash, slot, prefix, created_at, last_used_at, grace_until) \
                     SELECT * FROM unnest($1::text[], $2::bytea[], $3::int2[], $4::text[], \
                                          $5::int8[], $6::int8[], $7::int8[])",
                    &[
                        &&cols.users[start..end],
                        &&cols.hashes[start..end],
                        &&cols.slots[start..end],
                        &&cols.prefixes[start..end],
                        &&cols.created[start..end],
                        &&cols.used[start..end],
                        &&cols.grace[start..end],
                    ],
                )
                .await
                .map_err(pg_error)?;
            }
            tx.commit().await.map_err(pg_error)
        })
    }

    /// The index entry of one token.
    pub fn lookup(&self, hash: &TokenHash) -> Result<Option<IndexEntry>> {
        let hash = *hash.as_bytes();
        let pg = &self.pg;
        pg.block({
            let pool = pg.pool.clone();
            async move {
                let client = pool.get().await.map_err(pool_error)?;
                let row = client
                    .query_opt(
                        "SELECT user_id, prefix, created_at, last_used_at, grace_until \
                         FROM tokens WHERE hash = $1",
                        &[&&hash[..]],
                    )
                    .await
                    .map_err(pg_error)?;
                row.map(|row| {
                    Ok(IndexEntry {
                        user_id: row.try_get("user_id").map_err(pg_error)?,
                        prefix: row.try_get("prefix").map_err(pg_error)?,
                        created_at: from_sql(row.try_get("created_at").map_err(pg_error)?)?,
                        last_used_at: row
                            .try_get::<_, Option<i64>>("last_used_at")
                            .map_err(pg_error)?
                            .map(from_sql)
                            .transpose()?,
                        grace_until: row
                            .try_get::<_, Option<i64>>("grace_until")
                            .map_err(pg_error)?
                            .map(from_sql)
                            .transpose()?,
                    })
                })
                .transpose()
            }
        })
    }

    /// The schema version this binary writes.
    pub fn known_schema() -> i64 {
        SCHEMA_VERSION
    }
}

#[derive(Default)]
struct Columns {
    users: Vec<String>,
    hashes: Vec<Vec<u8>>,
    slots: Vec<i16>,
    prefixes: Vec<String>,
    created: Vec<i64>,
    used: Vec<Option<i64>>,
    grace: Vec<Option<i64>>,
}

impl Columns {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        user: &str,
        hash: &[u8; 32],
        slot: i16,
        prefix: &str,
        created_at: u64,
        last_used_at: Option<u64>,
        grace_until: Option<u64>,
    ) {
        self.users.push(user.to_owned());
        self.hashes.push(hash.to_vec());
        self.slots.push(slot);
        self.prefixes.push(prefix.to_owned());
        self.created.push(to_sql(created_at));
        self.used.push(last_used_at.map(to_sql));
        self.grace.push(grace_until.map(to_sql));
    }
}
