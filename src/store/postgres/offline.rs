//! PostgreSQL for the offline commands: export, import, check. Unlike the
//! embedded store, the database may be served meanwhile: an export is one
//! consistent snapshot (a repeatable-read transaction), an import one
//! transaction that replicas see all at once or not at all.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::queries::{from_sql, to_sql, token_row, user_record, TokenRow};
use super::{pg_error, pool_error, Pg, PgSettings, SCHEMA_VERSION};
use crate::domain::token::TokenHash;
use crate::store::error::StoreError;
use crate::store::offline::ImportedUser;
use crate::store::records::{IndexEntry, NoListener, UserRecord};
use crate::store::snapshot::Records;

type Result<T> = std::result::Result<T, StoreError>;

/// Every token stored, read in one transaction.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Users with a current token, by user id.
    pub users: Vec<(String, UserRecord)>,
    /// Every token (current and in grace), by hash.
    pub index: BTreeMap<[u8; 32], IndexEntry>,
    /// Rotated-out tokens whose user has no current token (a damaged
    /// database: the server never leaves one).
    pub orphans: Vec<(String, String)>,
    pub audit_events: u64,
    pub schema_version: i64,
}

/// As the embedded store's snapshot, for `agent-tokens export`.
impl Records for Snapshot {
    fn user_count(&self) -> Result<usize> {
        Ok(self.users.len())
    }

    fn each_user(&self) -> Box<dyn Iterator<Item = Result<(String, UserRecord)>> + '_> {
        Box::new(self.users.iter().cloned().map(Ok))
    }

    fn index_entry(&self, hash: &TokenHash) -> Result<Option<IndexEntry>> {
        Ok(self.index.get(hash.as_bytes()).cloned())
    }
}

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
        let pool = self.pg.pool.clone();
        self.pg.block(async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(pg_error)?;
            let rows = tx
                .query(
                    "SELECT user_id, hash, slot, prefix, created_at, last_used_at, grace_until \
                     FROM tokens ORDER BY user_id COLLATE \"C\", slot",
                    &[],
                )
                .await
                .map_err(pg_error)?;
            let audit_events: i64 = tx
                .query_one("SELECT count(*) FROM audit_events", &[])
                .await
                .map_err(pg_error)?
                .try_get(0)
                .map_err(pg_error)?;
            let schema_version: i64 = tx
                .query_one(
                    "SELECT coalesce(max(version), 0)::bigint FROM schema_migrations",
                    &[],
                )
                .await
                .map_err(pg_error)?
                .try_get(0)
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            let mut snapshot = Snapshot {
                audit_events: u64::try_from(audit_events).unwrap_or(0),
                schema_version,
                ..Snapshot::default()
            };
            let mut by_user: BTreeMap<String, Vec<TokenRow>> = BTreeMap::new();
            for row in &rows {
                let user: String = row.try_get("user_id").map_err(pg_error)?;
                let token = token_row(row)?;
                snapshot.index.insert(
                    token.hash,
                    IndexEntry {
                        user_id: user.clone(),
                        prefix: token.prefix.clone(),
                        created_at: token.created_at,
                        last_used_at: token.last_used_at,
                        grace_until: token.grace_until,
                    },
                );
                by_user.entry(user).or_default().push(token);
            }
            for (user, tokens) in by_user {
                match user_record(&tokens) {
                    Some(record) => snapshot.users.push((user, record)),
                    None => {
                        for t in tokens {
                            snapshot.orphans.push((user.clone(), t.prefix));
                        }
                    }
                }
            }
            Ok(snapshot)
        })
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
