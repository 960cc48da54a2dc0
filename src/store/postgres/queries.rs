//! The store's operations in SQL. Each change is one transaction: a
//! user's changes first take the advisory lock of the user id, so two
//! replicas changing one user take turns; the constraints of the schema
//! back that up. Audit events are inserted in the same transaction.

use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::Row;

use super::{pg_error, pool_error, Pg};
use crate::domain::token::TokenHash;
use crate::domain::user::UserId;
use crate::store::audit::{Actor, Audit, AuditEvent, EventKind};
use crate::store::error::StoreError;
use crate::store::mutation::TokenRevoked;
use crate::store::records::{Changes, GetOrCreate, GraceToken, IndexEntry, NewToken, UserRecord};

type Result<T> = std::result::Result<T, StoreError>;

const USER_TOKENS: &str = "SELECT hash, slot, prefix, created_at, last_used_at, grace_until \
     FROM tokens WHERE user_id = $1 ORDER BY hash";
const USER_TOKENS_LOCKED: &str =
    "SELECT hash, slot, prefix, created_at, last_used_at, grace_until \
     FROM tokens WHERE user_id = $1 ORDER BY hash FOR UPDATE";
const LOOKUP: &str =
    "SELECT user_id, prefix, created_at, last_used_at, grace_until FROM tokens WHERE hash = $1";
const LOCK_USER: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";
const INSERT_CURRENT: &str =
    "INSERT INTO tokens (hash, user_id, slot, prefix, created_at) VALUES ($1, $2, 0, $3, $4)";
const DELETE_TOKEN: &str = "DELETE FROM tokens WHERE hash = $1";
const INSERT_EVENT: &str = "INSERT INTO audit_events \
     (at, kind, actor, user_id, token_prefix, previous_prefix, request_id, address, detail) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
pub(crate) const EVENT_COLUMNS: &str =
    "at, kind, actor, user_id, token_prefix, previous_prefix, request_id, address, detail";

/// Times are Unix seconds: far inside `i64`.
pub(crate) fn to_sql(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

pub(crate) fn from_sql(t: i64) -> Result<u64> {
    u64::try_from(t).map_err(|_| StoreError::Corrupt { what: "a time" })
}

fn opt_from_sql(t: Option<i64>) -> Result<Option<u64>> {
    t.map(from_sql).transpose()
}

pub(crate) fn hash_of(bytes: &[u8]) -> Result<[u8; 32]> {
    <[u8; 32]>::try_from(bytes).map_err(|_| StoreError::Corrupt { what: "token hash" })
}

/// One row of `tokens` as read by [`USER_TOKENS`].
pub(crate) struct TokenRow {
    pub hash: [u8; 32],
    pub current: bool,
    pub prefix: String,
    pub created_at: u64,
    pub last_used_at: Option<u64>,
    pub grace_until: Option<u64>,
}

pub(crate) fn token_row(row: &Row) -> Result<TokenRow> {
    let slot: i16 = row.try_get("slot").map_err(pg_error)?;
    Ok(TokenRow {
        hash: hash_of(row.try_get::<_, &[u8]>("hash").map_err(pg_error)?)?,
        current: slot == 0,
        prefix: row.try_get("prefix").map_err(pg_error)?,
        created_at: from_sql(row.try_get("created_at").map_err(pg_error)?)?,
        last_used_at: opt_from_sql(row.try_get("last_used_at").map_err(pg_error)?)?,
        grace_until: opt_from_sql(row.try_get("grace_until").map_err(pg_error)?)?,
    })
}

/// A user's record from their rows: none without a current token.
pub(crate) fn user_record(rows: &[TokenRow]) -> Option<UserRecord> {
    let current = rows.iter().find(|r| r.current)?;
    let previous = rows.iter().find(|r| !r.current).map(|r| GraceToken {
        hash: r.hash,
        prefix: r.prefix.clone(),
        until: r.grace_until.unwrap_or_default(),
    });
    Some(UserRecord {
        hash: current.hash,
        prefix: current.prefix.clone(),
        created_at: current.created_at,
        last_used_at: current.last_used_at,
        previous,
    })
}

async fn rows_of(client: &impl GenericClient, sql: &str, user: &str) -> Result<Vec<TokenRow>> {
    let stmt = client.prepare_cached(sql).await.map_err(pg_error)?;
    client
        .query(&stmt, &[&user])
        .await
        .map_err(pg_error)?
        .iter()
        .map(token_row)
        .collect()
}

/// Starts a user's change: waits for any other replica's change of them.
async fn lock_user(client: &impl GenericClient, user: &str) -> Result<Vec<TokenRow>> {
    let stmt = client.prepare_cached(LOCK_USER).await.map_err(pg_error)?;
    client.execute(&stmt, &[&user]).await.map_err(pg_error)?;
    rows_of(client, USER_TOKENS_LOCKED, user).await
}

async fn exec(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64> {
    let stmt = client.prepare_cached(sql).await.map_err(pg_error)?;
    client.execute(&stmt, params).await.map_err(pg_error)
}

pub(crate) async fn insert_event(client: &impl GenericClient, e: &AuditEvent) -> Result<()> {
    exec(
        client,
        INSERT_EVENT,
        &[
            &to_sql(e.at),
            &e.kind.as_str(),
            &e.actor.as_str(),
            &e.user_id,
            &e.token_prefix,
            &e.previous_prefix,
            &e.request_id,
            &e.address,
            &e.detail,
        ],
    )
    .await
    .map(drop)
}

fn kind_of(s: &str) -> Result<EventKind> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
        StoreError::Corrupt {
            what: "audit event kind",
        }
    })
}

fn actor_of(s: &str) -> Result<Actor> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
        StoreError::Corrupt {
            what: "audit event actor",
        }
    })
}

pub(crate) fn event_of(row: &Row) -> Result<AuditEvent> {
    let get = |e| pg_error(e);
    Ok(AuditEvent {
        at: from_sql(row.try_get("at").map_err(get)?)?,
        kind: kind_of(row.try_get("kind").map_err(get)?)?,
        actor: actor_of(row.try_get("actor").map_err(get)?)?,
        user_id: row.try_get("user_id").map_err(get)?,
        token_prefix: row.try_get("token_prefix").map_err(get)?,
        previous_prefix: row.try_get("previous_prefix").map_err(get)?,
        request_id: row.try_get("request_id").map_err(get)?,
        address: row.try_get("address").map_err(get)?,
        detail: row.try_get("detail").map_err(get)?,
    })
}

pub(crate) fn index_entry(row: &Row) -> Result<IndexEntry> {
    Ok(IndexEntry {
        user_id: row.try_get("user_id").map_err(pg_error)?,
        prefix: row.try_get("prefix").map_err(pg_error)?,
        created_at: from_sql(row.try_get("created_at").map_err(pg_error)?)?,
        last_used_at: opt_from_sql(row.try_get("last_used_at").map_err(pg_error)?)?,
        grace_until: opt_from_sql(row.try_get("grace_until").map_err(pg_error)?)?,
    })
}

fn changes(user: &str, tokens: &[[u8; 32]], events: Vec<AuditEvent>) -> Changes {
    Changes {
        users: vec![user.as_bytes().to_vec()],
        tokens: tokens.iter().map(|h| h.to_vec()).collect(),
        grace: Vec::new(),
        stamped_tokens: Vec::new(),
        events,
    }
}

impl Pg {
    fn pool(&self) -> Pool {
        self.pool.clone()
    }

    pub async fn get(&self, user: &UserId) -> Result<Option<UserRecord>> {
        let (pool, user) = (self.pool(), user.as_str().to_owned());
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            Ok(user_record(&rows_of(&client, USER_TOKENS, &user).await?))
        })
        .await
    }

    /// Verify's read: one indexed row.
    pub async fn lookup(&self, hash: &TokenHash) -> Result<Option<IndexEntry>> {
        let (pool, hash) = (self.pool(), *hash.as_bytes());
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let stmt = client.prepare_cached(LOOKUP).await.map_err(pg_error)?;
            let Some(row) = client
                .query_opt(&stmt, &[&&hash[..]])
                .await
                .map_err(pg_error)?
            else {
                return Ok(None);
            };
            index_entry(&row).map(Some)
        })
        .await
    }

    pub async fn rotate_as(
        &self,
        user: &UserId,
        new: &NewToken,
        now: u64,
        grace_secs: u64,
        audit: &Audit,
    ) -> Result<(UserRecord, bool)> {
        let (pool, listener) = (self.pool(), self.listener.clone());
        let (user, hash, prefix) = (
            user.as_str().to_owned(),
            *new.hash.as_bytes(),
            new.prefix.clone(),
        );
        let audit = audit.clone();
        self.run(async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(pg_error)?;
            let old = user_record(&lock_user(&tx, &user).await?);
            let mut event = audit
                .event(EventKind::Created, now, &user)
                .with_prefix(&prefix);
            let mut previous = None;
            let mut touched = vec![hash];
            if let Some(old) = &old {
                event = event.with_previous(&old.prefix);
                event.kind = EventKind::Rotated;
                if let Some(prev) = &old.previous {
                    exec(&tx, DELETE_TOKEN, &[&&prev.hash[..]]).await?;
                    touched.push(prev.hash);
                }
                if grace_secs == 0 {
                    exec(&tx, DELETE_TOKEN, &[&&old.hash[..]]).await?;
                } else {
                    let until = now.saturating_add(grace_secs);
                    exec(
                        &tx,
                        "UPDATE tokens SET slot = 1, grace_until = $2 WHERE hash = $1",
                        &[&&old.hash[..], &to_sql(until)],
                    )
                    .await?;
                    previous = Some(GraceToken {
                        hash: old.hash,
                        prefix: old.prefix.clone(),
                        until,
                    });
                }
                touched.push(old.hash);
            }
            exec(
                &tx,
                INSERT_CURRENT,
                &[&&hash[..], &user, &prefix, &to_sql(now)],
            )
            .await?;
            insert_event(&tx, &event).await?;
            tx.commit().await.map_err(pg_error)?;
            Pg::committed(&*listener, changes(&user, &touched, vec![event]));
            let record = UserRecord {
                hash,
                prefix,
                created_at: now,
                last_used_at: None,
                previous,
            };
            Ok((record, old.is_some()))
        })
        .await
    }

    pub async fn get_or_create_as(
        &self,
        user: &UserId,
        candidate: &NewToken,
        now: u64,
        audit: &Audit,
    ) -> Result<GetOrCreate> {
        let (pool, listener) = (self.pool(), self.listener.clone());
        let (user, hash, prefix) = (
            user.as_str().to_owned(),
            *candidate.hash.as_bytes(),
            candidate.prefix.clone(),
        );
        let audit = audit.clone();
        self.run(async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(pg_error)?;
            if let Some(existing) = user_record(&lock_user(&tx, &user).await?) {
                tx.commit().await.map_err(pg_error)?;
                return Ok(GetOrCreate::Existing(existing));
            }
            exec(
                &tx,
                INSERT_CURRENT,
                &[&&hash[..], &user, &prefix, &to_sql(now)],
            )
            .await?;
            let event = audit
                .event(EventKind::Created, now, &user)
                .with_prefix(&prefix);
            insert_event(&tx, &event).await?;
            tx.commit().await.map_err(pg_error)?;
            Pg::committed(&*listener, changes(&user, &[hash], vec![event]));
            Ok(GetOrCreate::Created(UserRecord {
                hash,
                prefix,
                created_at: now,
                last_used_at: None,
                previous: None,
            }))
        })
        .await
    }

    pub async fn revoke_as(&self, user: &UserId, now: u64, audit: &Audit) -> Result<bool> {
        let (pool, listener) = (self.pool(), self.listener.clone());
        let user = user.as_str().to_owned();
        let audit = audit.clone();
        self.run(async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(pg_error)?;
            let rows = lock_user(&tx, &user).await?;
            let Some(old) = user_record(&rows) else {
                tx.commit().await.map_err(pg_error)?;
                return Ok(false);
            };
            exec(&tx, "DELETE FROM tokens WHERE user_id = $1", &[&user]).await?;
            let mut event = audit
                .event(EventKind::Revoked, now, &user)
                .with_prefix(&old.prefix);
            if let Some(prev) = &old.previous {
                event = event.with_previous(&prev.prefix);
            }
            insert_event(&tx, &event).await?;
            tx.commit().await.map_err(pg_error)?;
            let hashes: Vec<[u8; 32]> = rows.iter().map(|r| r.hash).collect();
            Pg::committed(&*listener, changes(&user, &hashes, vec![event]));
            Ok(true)
        })
        .await
    }

    /// See [`crate::store::Store::revoke_token`].
    pub async fn revoke_token(
        &self,
        hash: &TokenHash,
        now: u64,
        audit: &Audit,
    ) -> Result<TokenRevoked> {
        let (pool, listener) = (self.pool(), self.listener.clone());
        let hash = *hash.as_bytes();
        let audit = audit.clone();
        self.run(async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(pg_error)?;
            let stmt = tx
                .prepare_cached("SELECT user_id FROM tokens WHERE hash = $1")
                .await
                .map_err(pg_error)?;
            let Some(row) = tx.query_opt(&stmt, &[&&hash[..]]).await.map_err(pg_error)? else {
                return Ok(TokenRevoked::Unknown);
            };
            let user: String = row.try_get(0).map_err(pg_error)?;
            // Read again under the lock: another replica may have changed it.
            let rows = lock_user(&tx, &user).await?;
            let Some(row) = rows.iter().find(|r| r.hash == hash) else {
                tx.commit().await.map_err(pg_error)?;
                return Ok(TokenRevoked::Unknown);
            };
            let (outcome, gone, event) = if row.current {
                exec(&tx, "DELETE FROM tokens WHERE user_id = $1", &[&user]).await?;
                let mut event = audit
                    .event(EventKind::Revoked, now, &user)
                    .with_prefix(&row.prefix);
                if let Some(prev) = rows.iter().find(|r| !r.current) {
                    event = event.with_previous(&prev.prefix);
                }
                let gone: Vec<[u8; 32]> = rows.iter().map(|r| r.hash).collect();
                (TokenRevoked::Current { user: user.clone() }, gone, event)
            } else {
                exec(&tx, DELETE_TOKEN, &[&&hash[..]]).await?;
                let event = audit
                    .event(EventKind::Revoked, now, &user)
                    .with_prefix(&row.prefix);
                (
                    TokenRevoked::InGrace { user: user.clone() },
                    vec![hash],
                    event,
                )
            };
            insert_event(&tx, &event).await?;
            tx.commit().await.map_err(pg_error)?;
            Pg::committed(&*listener, changes(&user, &gone, vec![event]));
            Ok(outcome)
        })
        .await
    }

    /// Writes last-used stamps: only to tokens still stored, never back in
    /// time. Rows are locked in hash order, as user changes lock theirs.
    pub fn stamp_blocking(&self, mut stamps: Vec<([u8; 32], u64)>) -> Result<usize> {
        stamps.sort_unstable();
        let pool = self.pool();
        self.block(async move {
            let hashes: Vec<&[u8]> = stamps.iter().map(|(h, _)| &h[..]).collect();
            let times: Vec<i64> = stamps.iter().map(|&(_, t)| to_sql(t)).collect();
            let client = pool.get().await.map_err(pool_error)?;
            let written = exec(
                &client,
                "WITH s AS (SELECT * FROM unnest($1::bytea[], $2::int8[]) AS s(hash, at)), \
                 locked AS (SELECT t.hash FROM tokens t JOIN s USING (hash) \
                    WHERE t.last_used_at IS NULL OR t.last_used_at < s.at \
                    ORDER BY t.hash FOR UPDATE OF t) \
                 UPDATE tokens t SET last_used_at = s.at FROM s \
                 WHERE t.hash = s.hash AND t.hash IN (SELECT hash FROM locked) \
                   AND (t.last_used_at IS NULL OR t.last_used_at < s.at)",
                &[&hashes, &times],
            )
            .await?;
            Ok(usize::try_from(written).unwrap_or(usize::MAX))
        })
    }

    /// Ends the grace windows over by `now`, each with its event. Replicas
    /// may run it together: each row is deleted (and its event written) once.
    pub async fn expire_grace(&self, now: u64) -> Result<usize> {
        let (pool, listener) = (self.pool(), self.listener.clone());
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let stmt = client
                .prepare_cached(&format!(
                    "WITH gone AS (DELETE FROM tokens WHERE slot = 1 AND grace_until <= $1 \
                        RETURNING hash, user_id, prefix, grace_until) \
                     INSERT INTO audit_events (at, kind, actor, user_id, token_prefix) \
                     SELECT grace_until, 'grace_ended', 'system', user_id, prefix FROM gone \
                     RETURNING {EVENT_COLUMNS}"
                ))
                .await
                .map_err(pg_error)?;
            let rows = client
                .query(&stmt, &[&to_sql(now)])
                .await
                .map_err(pg_error)?;
            let events = rows.iter().map(event_of).collect::<Result<Vec<_>>>()?;
            let removed = events.len();
            if removed > 0 {
                let users = events
                    .iter()
                    .filter_map(|e| e.user_id.as_ref().map(|u| u.as_bytes().to_vec()))
                    .collect();
                Pg::committed(
                    &*listener,
                    Changes {
                        users,
                        events,
                        ..Changes::default()
                    },
                );
            }
            Ok(removed)
        })
        .await
    }

    /// The user's events, newest first, at most `limit`.
    pub async fn events_of(&self, user: &UserId, limit: usize) -> Result<Vec<AuditEvent>> {
        let (pool, user) = (self.pool(), user.as_str().to_owned());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM audit_events WHERE user_id = $1 \
                     ORDER BY at DESC, id DESC LIMIT $2"
                ))
                .await
                .map_err(pg_error)?;
            client
                .query(&stmt, &[&user, &limit])
                .await
                .map_err(pg_error)?
                .iter()
                .map(event_of)
                .collect()
        })
        .await
    }

    /// Removes events older than `before`, in bounded steps.
    pub async fn sweep_audit(&self, before: u64) -> Result<usize> {
        let pool = self.pool();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let mut total = 0;
            loop {
                let removed = exec(
                    &client,
                    "DELETE FROM audit_events WHERE id IN \
                     (SELECT id FROM audit_events WHERE at < $1 LIMIT 4096)",
                    &[&to_sql(before)],
                )
                .await?;
                total += usize::try_from(removed).unwrap_or(usize::MAX);
                if removed < 4096 {
                    return Ok(total);
                }
            }
        })
        .await
    }

    /// How many tokens (current and in grace) `counts` picks: a read of
    /// the whole table, for background passes, never a request.
    pub fn count_tokens_blocking(&self, counts: impl Fn(&IndexEntry) -> bool) -> Result<u64> {
        let pool = self.pool();
        let entries = self.block(async move {
            let client = pool.get().await.map_err(pool_error)?;
            client
                .query(
                    "SELECT user_id, prefix, created_at, last_used_at, grace_until FROM tokens",
                    &[],
                )
                .await
                .map_err(pg_error)?
                .iter()
                .map(index_entry)
                .collect::<Result<Vec<_>>>()
        })?;
        Ok(entries.iter().map(|e| u64::from(counts(e))).sum())
    }

    /// How many grace windows end in `[from, until)`.
    pub fn grace_ending_blocking(&self, from: u64, until: u64) -> Result<u64> {
        let pool = self.pool();
        self.block(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM tokens \
                     WHERE slot = 1 AND grace_until >= $1 AND grace_until < $2",
                    &[&to_sql(from), &to_sql(until)],
                )
                .await
                .map_err(pg_error)?
                .try_get(0)
                .map_err(pg_error)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    /// See [`crate::store::Store::revoke_all`]: one transaction, so the
    /// tokens revoked are exactly those committed before it; a token
    /// created after it started survives. Rows are locked in hash order,
    /// as every other change locks its rows.
    pub async fn revoke_all(&self, before: Option<u64>, now: u64, audit: &Audit) -> Result<usize> {
        let (pool, listener) = (self.pool(), self.listener.clone());
        let audit = audit.clone();
        let before = before.map(to_sql);
        self.run_unbounded(async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(pg_error)?;
            let rows = tx
                .query(
                    "WITH doomed AS (SELECT hash FROM tokens \
                        WHERE $1::bigint IS NULL OR created_at < $1 ORDER BY hash FOR UPDATE), \
                     gone AS (DELETE FROM tokens t USING doomed d WHERE t.hash = d.hash \
                        RETURNING t.hash, t.user_id, t.slot, t.prefix) \
                     SELECT hash, user_id, slot, prefix FROM gone ORDER BY user_id, slot",
                    &[&before],
                )
                .await
                .map_err(pg_error)?;
            let listed = rows.len();
            // Per user: (current prefix, in-grace prefix), as revoked.
            let mut by_user: std::collections::BTreeMap<String, (Option<String>, Option<String>)> =
                std::collections::BTreeMap::new();
            let mut hashes = Vec::with_capacity(rows.len());
            for row in &rows {
                let user: String = row.try_get("user_id").map_err(pg_error)?;
                let slot: i16 = row.try_get("slot").map_err(pg_error)?;
                let prefix: String = row.try_get("prefix").map_err(pg_error)?;
                hashes.push(hash_of(row.try_get::<_, &[u8]>("hash").map_err(pg_error)?)?);
                let entry = by_user.entry(user).or_default();
                if slot == 0 {
                    entry.0 = Some(prefix);
                } else {
                    entry.1 = Some(prefix);
                }
            }
            let mut events = Vec::with_capacity(by_user.len() + 1);
            for (user, (current, in_grace)) in &by_user {
                let event = audit.event(EventKind::Revoked, now, user);
                let event = match (current, in_grace) {
                    (Some(c), Some(g)) => event.with_prefix(c).with_previous(g),
                    (Some(p), None) | (None, Some(p)) => event.with_prefix(p),
                    (None, None) => continue,
                };
                events.push(event);
            }
            let revoked = events.len();
            // Expiry (actor system) has no operator's action to sum up.
            let summarise = audit.actor != Actor::System;
            let asked = match before {
                Some(before) => format!(
                    "created before {}",
                    crate::domain::clock::rfc3339(u64::try_from(before).unwrap_or(0))
                ),
                None => "existing when it ran".to_owned(),
            };
            let mut summary = Audit {
                actor: Actor::Admin,
                ..audit.clone()
            }
            .event(EventKind::RevokeAll, now, "")
            .with_detail(format!(
                "revoked {revoked} of the {listed} token(s) {asked}"
            ));
            summary.user_id = None;
            if summarise {
                events.push(summary);
            }
            for event in &events {
                insert_event(&tx, event).await?;
            }
            tx.commit().await.map_err(pg_error)?;
            Pg::committed(
                &*listener,
                Changes {
                    users: by_user.keys().map(|u| u.as_bytes().to_vec()).collect(),
                    tokens: hashes.iter().map(|h| h.to_vec()).collect(),
                    events,
                    ..Changes::default()
                },
            );
            Ok(revoked)
        })
        .await
    }

    /// Stores one admin-action event with no user (an export).
    pub async fn note(&self, event: AuditEvent) -> Result<()> {
        let (pool, listener) = (self.pool(), self.listener.clone());
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            insert_event(&client, &event).await?;
            Pg::committed(
                &*listener,
                Changes {
                    events: vec![event],
                    ..Changes::default()
                },
            );
            Ok(())
        })
        .await
    }

    /// A durable write: the readiness probe's row.
    pub async fn probe_write(&self, now: u64) -> Result<()> {
        let pool = self.pool();
        self.run(probe(pool, now)).await
    }

    pub fn probe_write_blocking(&self) -> Result<()> {
        let now = crate::domain::clock::Clock::system().now();
        self.block(probe(self.pool(), now))
    }
}

async fn probe(pool: Pool, now: u64) -> Result<()> {
    let client = pool.get().await.map_err(pool_error)?;
    exec(
        &client,
        "INSERT INTO readiness (id, at) VALUES (1, $1) \
         ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at",
        &[&to_sql(now)],
    )
    .await
    .map(drop)
}
