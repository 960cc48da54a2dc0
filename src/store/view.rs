//! Every token (and, when asked, every audit event) at one moment, for
//! the admin verbs that walk them all, whichever backend holds them: the
//! embedded store's snapshot, or one read-only transaction's rows from
//! PostgreSQL.

use crate::domain::token::TokenHash;
use crate::domain::user::UserId;
use crate::store::audit::AuditEvent;
use crate::store::error::StoreError;
use crate::store::postgres;
use crate::store::records::{IndexEntry, UserRecord};
use crate::store::snapshot::{Records, Snapshot};

pub enum View {
    Embedded(Snapshot),
    /// Read whole: the events only if asked for.
    Postgres(postgres::Snapshot),
}

impl View {
    /// The user's audit events, newest first, at most `limit`.
    pub fn events_of(&self, user: &UserId, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        match self {
            View::Embedded(s) => s.events_of(user, limit),
            View::Postgres(s) => Ok(s.events_of(user, limit)),
        }
    }

    /// Every event at or after `since`, oldest first.
    pub fn events_since(&self, since: u64) -> Result<Vec<AuditEvent>, StoreError> {
        match self {
            View::Embedded(s) => s.events_since(since).collect(),
            View::Postgres(s) => Ok(s.events_since(since).cloned().collect()),
        }
    }
}

impl Records for View {
    fn user_count(&self) -> Result<usize, StoreError> {
        match self {
            View::Embedded(s) => s.user_count(),
            View::Postgres(s) => s.user_count(),
        }
    }

    fn each_user(&self) -> Box<dyn Iterator<Item = Result<(String, UserRecord), StoreError>> + '_> {
        match self {
            View::Embedded(s) => s.each_user(),
            View::Postgres(s) => s.each_user(),
        }
    }

    fn index_entry(&self, hash: &TokenHash) -> Result<Option<IndexEntry>, StoreError> {
        match self {
            View::Embedded(s) => s.index_entry(hash),
            View::Postgres(s) => s.index_entry(hash),
        }
    }
}
