//! Every token (and, when asked, every audit event) as one consistent
//! state: a read-only repeatable-read transaction, read whole. For the
//! admin verbs that walk everything, and the offline commands.

use std::collections::BTreeMap;

use super::queries::{event_of, token_row, user_record, TokenRow, EVENT_COLUMNS};
use super::{pg_error, pool_error, Pg};
use crate::domain::token::TokenHash;
use crate::domain::user::UserId;
use crate::store::audit::AuditEvent;
use crate::store::error::StoreError;
use crate::store::records::{IndexEntry, UserRecord};
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
    /// Every audit event, oldest first, when asked for.
    pub events: Vec<AuditEvent>,
}

impl Snapshot {
    /// The user's events, newest first, at most `limit`.
    pub fn events_of(&self, user: &UserId, limit: usize) -> Vec<AuditEvent> {
        self.events
            .iter()
            .rev()
            .filter(|e| e.user_id.as_deref() == Some(user.as_str()))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Every event at or after `since`, oldest first.
    pub fn events_since(&self, since: u64) -> impl Iterator<Item = &AuditEvent> + '_ {
        self.events.iter().filter(move |e| e.at >= since)
    }
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

impl Pg {
    /// Every token, and with `events` every audit event, as one
    /// consistent state (for the admin verbs that walk them all).
    pub async fn snapshot(&self, events: bool) -> Result<Snapshot> {
        self.run_unbounded(load(self.pool.clone(), events)).await
    }
}

/// Reads every token (and with `events`, every audit event, oldest
/// first) in one read-only repeatable-read transaction.
pub(crate) async fn load(pool: deadpool_postgres::Pool, events: bool) -> Result<Snapshot> {
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
    let schema_version = super::schema::applied_version(&*tx).await?;
    let events = if events {
        tx.query(
            &format!("SELECT {EVENT_COLUMNS} FROM audit_events ORDER BY at, id"),
            &[],
        )
        .await
        .map_err(pg_error)?
        .iter()
        .map(event_of)
        .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    tx.commit().await.map_err(pg_error)?;
    let mut snapshot = Snapshot {
        events,
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
}
